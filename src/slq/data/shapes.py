"""A seeded synthetic world of coloured shapes: images, true captions, held-out pairs, facts.

slq's demo and a small model pretrained generatively on this world (captioning, VQA, language
modelling on `knowledge_corpus`) need data whose truth is known exactly, so that a caption can be
scored attribute by attribute and a retriever tested on compositions it never saw. Everything here
is a pure function of a seed: each image draws from its own random stream, derived with SHA-256
from (seed, split, index), never from hash(), so files are byte-identical across runs and
processes, and the first k images of a split do not depend on how many follow.

The world: 1-3 objects per image, each a shape in a colour and a size, placed in distinct cells of
a 3x3 grid (with a little jitter) so that every position word ("on the left") and relation
("above") in a caption holds with a wide margin. One (colour, shape) pair per colour is held out of
training (`held_out_combos`) and appears only in val/test.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .._io import atomic_write, seeded_random, setting
from ..errors import SettingError, SLQError

SHAPES = ("circle", "square", "triangle", "star", "heart")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
SPLITS = ("train", "val", "test")

# Every pair at least ~100 apart in RGB, and far from the light backgrounds.
COLOUR_RGB = {
    "red": (210, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 20),
    "purple": (130, 50, 180),
    "orange": (240, 120, 0),
}
BACKGROUNDS = ((255, 255, 255), (246, 246, 240), (240, 243, 248), (248, 242, 236))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Clues for knowledge captions. Each is backed by corpus sentences (see _colour_facts and friends)
# and names neither a colour nor a shape, so a caption built from them is solved only by combining
# the corpus with the image.
COLOUR_CLUES = {
    "red": ("a stop sign", "a strawberry", "a tomato", "a fire truck"),
    "green": ("grass", "a leaf", "a frog", "a cucumber"),
    "blue": ("the sky", "the sea", "a blueberry"),
    "yellow": ("a banana", "a lemon", "a sunflower"),
    "purple": ("a grape", "an aubergine", "lavender"),
    "orange": ("a carrot", "a pumpkin", "a tangerine"),
}
COLOUR_MIXES = {"green": ("blue", "yellow"), "orange": ("red", "yellow"), "purple": ("red", "blue")}
SHAPE_CLUES = {  # (singular, plural) descriptions; the corpus says "a <shape> is a <singular>"
    "circle": (("round shape", "round shapes"), ("shape with no corners", "shapes with no corners")),
    "square": (("shape with four equal sides", "shapes with four equal sides"),
               ("shape with four corners", "shapes with four corners")),
    "triangle": (("shape with three sides", "shapes with three sides"),
                 ("shape with three corners", "shapes with three corners")),
    "star": (("shape with five points", "shapes with five points"),),
    "heart": (("shape that stands for love", "shapes that stand for love"),
              ("symbol of love", "symbols of love")),
}
COUNT_CLUES = {  # the corpus says "<clue> is <number word>"
    2: ("(1+1)", "one plus one", "(3-1)", "three minus one"),
    3: ("(2+1)", "two plus one", "(1+1+1)", "(4-1)", "four minus one"),
}

# Geometry as fractions of the image size. An object lies inside a circle of its radius; two
# objects are never closer than the sum of their radii plus the gap.
_RADIUS = {"small": 0.09, "large": 0.17}
_CELL_CENTRES = (0.2, 0.5, 0.8)
_JITTER = 0.03
_GAP = 0.02
_SUPERSAMPLE = 4  # drawn 4x larger then box-filtered: smooth edges, exact colour inside
_MIN_IMAGE_SIZE = 32
_ROW_WORDS = ("top", "", "bottom")
_COL_WORDS = ("left", "", "right")
_POSITION_PHRASES = {
    "centre": ("in the centre", "in the middle"),
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
}


@dataclass(frozen=True)
class ShapeObject:
    """One object; x, y is its centre in pixels of the image it belongs to."""

    shape: str
    colour: str
    size: str
    x: int
    y: int

    def __post_init__(self) -> None:
        for name, allowed in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES)):
            value = getattr(self, name)
            if value not in allowed:
                raise SLQError(f"ShapeObject {name} must be one of {', '.join(allowed)}; got {value!r}")


def plural(shape: str) -> str:
    """A shape word's plural ("circle" -> "circles"), as captions and questions say it."""
    return shape + "s"


def _rng(seed: int, *parts: object) -> random.Random:
    """An independent stream for (seed, *parts), the same on every machine."""
    return seeded_random("slq-shapes", seed, *parts)


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < _MIN_IMAGE_SIZE:
        raise SettingError("image_size", image_size, f"must be an integer >= {_MIN_IMAGE_SIZE}")


def _cell(obj: ShapeObject, image_size: int) -> tuple[int, int]:
    """(row, column) of the 3x3 grid the object's centre lies in."""
    return min(2, obj.y * 3 // image_size), min(2, obj.x * 3 // image_size)


def position_of(obj: ShapeObject, image_size: int = 64) -> str:
    """"top left", "top", ..., "centre", ..., "bottom right": where the object's centre lies."""
    row, col = _cell(obj, image_size)
    return " ".join(w for w in (_ROW_WORDS[row], _COL_WORDS[col]) if w) or "centre"


# ---------------------------------------------------------------------------------------------
# Rendering


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Outline inside the unit circle, centred on (0, 0), y pointing down."""
    if shape == "square":
        s = math.sqrt(0.5)
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":  # equilateral, pointing up, centroid at the centre
        return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if shape == "star":  # five points, inner radius 0.45 so thin arms stay visible at 64 px
        angles = [math.radians(-90 + 36 * i) for i in range(10)]
        radii = [1.0 if i % 2 == 0 else 0.45 for i in range(10)]
        return [(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)]
    if shape == "heart":  # the classic parametric heart, centred on its bounding box
        ts = [2 * math.pi * i / 72 for i in range(72)]
        pts = [(16 * math.sin(t) ** 3,
                -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
               for t in ts]
        ys = [p[1] for p in pts]
        mid = (max(ys) + min(ys)) / 2
        pts = [(px, py - mid) for px, py in pts]
        scale = max(math.hypot(px, py) for px, py in pts)
        return [(px / scale, py / scale) for px, py in pts]
    raise SLQError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")


def _radius(size: str, image_size: int) -> float:
    return _RADIUS[size] * image_size


def render(
    objects: Sequence[ShapeObject], size: int = 64, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """An RGB image of the objects. Drawn at 4x and box-filtered, so edges are smooth while a
    pixel well inside an object has exactly its colour's RGB."""
    _check_image_size(size)
    k = _SUPERSAMPLE
    canvas = Image.new("RGB", (size * k, size * k), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        cx, cy = (obj.x + 0.5) * k, (obj.y + 0.5) * k  # centre of pixel (x, y)
        r = _radius(obj.size, size) * k
        fill = COLOUR_RGB[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx + px * r, cy + py * r) for px, py in _unit_polygon(obj.shape)], fill=fill)
    return canvas.reduce(k)


# ---------------------------------------------------------------------------------------------
# Scenes


def _place(sizes: list[str], image_size: int, rng: random.Random) -> list[tuple[int, int]] | None:
    """Centres in distinct grid cells, inside the canvas and apart; None when they do not fit."""
    jitter = max(1, round(_JITTER * image_size))
    gap = max(1.0, _GAP * image_size)
    free = [(row, col) for row in range(3) for col in range(3)]
    placed: list[tuple[int, int, float]] = []  # (x, y, radius)
    for size in sizes:
        r = _radius(size, image_size)
        lo, hi = math.ceil(r) + 1, image_size - 2 - math.ceil(r)
        for row, col in rng.sample(free, len(free)):
            x = min(hi, max(lo, round(_CELL_CENTRES[col] * image_size) + rng.randint(-jitter, jitter)))
            y = min(hi, max(lo, round(_CELL_CENTRES[row] * image_size) + rng.randint(-jitter, jitter)))
            if all(math.hypot(x - px, y - py) >= r + pr + gap for px, py, pr in placed):
                placed.append((x, y, r))
                free.remove((row, col))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def _pick_combos(n: int, pool: list[tuple[str, str]], forced: tuple[str, str] | None,
                 rng: random.Random) -> list[tuple[str, str]]:
    """n (colour, shape) pairs; with some chance 2-3 repeat one pair so captions count."""
    first = forced if forced is not None else rng.choice(pool)
    if n >= 2 and rng.random() < 0.3:
        repeats = n if n == 2 or rng.random() < 1 / 3 else 2
        others = rng.sample([c for c in pool if c != first], n - repeats)
        return [first] * repeats + others
    return [first] + rng.sample([c for c in pool if c != first], n - 1)


def _scene(rng: random.Random, pool: list[tuple[str, str]], forced: tuple[str, str] | None,
           image_size: int) -> list[ShapeObject]:
    """Objects of one image in reading order (top to bottom, then left to right)."""
    n = rng.choices((1, 2, 3), weights=(0.25, 0.4, 0.35))[0]
    combos = _pick_combos(n, pool, forced, rng)
    for _ in range(100):
        sizes = [rng.choice(SIZES) for _ in combos]
        order = sorted(range(n), key=lambda i: sizes[i] != "large")  # large ones first: they fit worst
        centres = _place([sizes[i] for i in order], image_size, rng)
        if centres is not None:
            objects = [ShapeObject(combos[i][1], combos[i][0], sizes[i], x, y)
                       for i, (x, y) in zip(order, centres)]
            return sorted(objects, key=lambda o: (o.y, o.x))
    raise AssertionError(f"could not place {n} objects on a {image_size}px canvas")  # never seen


def _groups(objects: Sequence[ShapeObject]) -> list[list[ShapeObject]]:
    """Objects grouped by (colour, shape), in order of first appearance."""
    groups: dict[tuple[str, str], list[ShapeObject]] = {}
    for obj in objects:
        groups.setdefault((obj.colour, obj.shape), []).append(obj)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------
# Captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _noun_phrase(obj: ShapeObject, with_size: bool) -> str:
    words = f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"
    return f"{_article(words)} {words}"


def _group_phrase(group: list[ShapeObject], rng: random.Random) -> str:
    """"a red circle" or "two (small) green squares"."""
    first = group[0]
    if len(group) == 1:
        return _noun_phrase(first, rng.random() < 0.5)
    same_size = all(o.size == first.size for o in group)
    size = f"{first.size} " if same_size and rng.random() < 0.5 else ""
    return f"{NUMBER_WORDS[len(group)]} {size}{first.colour} {first.shape}s"


def _position_phrases(position: str) -> tuple[str, ...]:
    if position in _POSITION_PHRASES:
        return _POSITION_PHRASES[position]
    row, col = position.split()
    corner = (f"in the {position} corner", f"at the {position}")
    return corner + _POSITION_PHRASES[col] + _POSITION_PHRASES[row]


def _relations(a: ShapeObject, b: ShapeObject, image_size: int) -> list[str]:
    """Every relation "a <relation> b" that holds: objects sit in distinct cells, so at least one."""
    (ra, ca), (rb, cb) = _cell(a, image_size), _cell(b, image_size)
    rels = ["above"] if ra < rb else ["below"] if ra > rb else []
    rels += ["to the left of"] if ca < cb else ["to the right of"] if ca > cb else []
    return rels


def _list_caption(groups, rng, image_size) -> str:
    parts = [_group_phrase(g, rng) for g in rng.sample(groups, len(groups))]
    be = "are" if parts[0].split()[0] in NUMBER_WORDS else "is"
    opener = rng.choice(("", f"there {be} ", "a picture of ", "an image of ", "a picture showing "))
    return opener + _join(parts)


def _count_caption(groups, rng, image_size) -> str:
    n = sum(len(g) for g in groups)
    word, plural = NUMBER_WORDS[n], "" if n == 1 else "s"
    listing = _join([_group_phrase(g, rng) for g in rng.sample(groups, len(groups))])
    form = rng.choice((f"an image with {word} object{plural}", f"{word} shape{plural}",
                       f"there {'is' if n == 1 else 'are'} {word} object{plural}"))
    return f"{form}: {listing}"


def _position_caption(groups, rng, image_size) -> str:
    singles = [g[0] for g in groups if len(g) == 1]
    chosen = rng.sample(singles, 2 if len(singles) >= 2 and rng.random() < 0.5 else 1)
    parts = []
    for obj in chosen:
        where = rng.choice(_position_phrases(position_of(obj, image_size)))
        parts.append(f"{_noun_phrase(obj, rng.random() < 0.5)} {where}")
    return rng.choice(("", "there is ")) + _join(parts)


def _relation_caption(groups, rng, image_size) -> str:
    singles = [g[0] for g in groups if len(g) == 1]
    a, b = rng.sample(singles, 2)
    relation = rng.choice(_relations(a, b, image_size))
    a_text, b_text = _noun_phrase(a, rng.random() < 0.5), _noun_phrase(b, rng.random() < 0.5)
    form = rng.choice(("{a} {rel} {b}", "{a} is {rel} {b}", "there is {a} {rel} {b}"))
    return form.format(a=a_text, rel=relation, b=b_text)


def _distinct(makers: list[Callable[[], str]], rng: random.Random, n: int) -> list[str]:
    """n texts from randomly chosen makers, distinct while the makers allow, then repeated."""
    found: list[str] = []
    for _ in range(20 * n):
        if len(found) == n:
            break
        text = rng.choice(makers)()
        if text not in found:
            found.append(text)
    return found + [found[i % len(found)] for i in range(n - len(found))]


def captions_for(objects: Sequence[ShapeObject], rng: random.Random, n: int = 5,
                 image_size: int = 64) -> list[str]:
    """n captions, distinct where possible, all true of the rendered image. Only objects whose
    (colour, shape) is unique in the image are named with "a" or placed by position or relation;
    repeated ones are always counted ("two green squares")."""
    if not objects:
        raise SLQError("captions_for needs at least one object")
    groups = _groups(objects)
    kinds = [_list_caption, _count_caption]
    singles = sum(len(g) == 1 for g in groups)
    kinds += [_position_caption] if singles >= 1 else []
    kinds += [_relation_caption] if singles >= 2 else []
    return _distinct([lambda k=k: k(groups, rng, image_size) for k in kinds], rng, n)


def vqa_pairs(objects: Sequence[dict], held_out: frozenset, rng: random.Random) -> list[tuple[str, str]]:
    """Questions about one image with their short answers, built from its objects (slq-tiny-vl's VQA
    pretraining task, and what `slq.evaluation.capability` asks after training). `rng` picks the
    absent shape and the pair of the yes/no question, which is never a pair in `held_out`; the other
    questions name only pairs the image shows (in training, never a held-out one)."""
    pairs: list[tuple[str, str]] = [("how many objects are there?", NUMBER_WORDS[len(objects)])]
    by_shape: dict[str, list[dict]] = {}
    by_colour: dict[str, list[dict]] = {}
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for o in objects:
        by_shape.setdefault(o["shape"], []).append(o)
        by_colour.setdefault(o["colour"], []).append(o)
        by_pair.setdefault((o["colour"], o["shape"]), []).append(o)
    for shape, group in by_shape.items():
        pairs.append((f"how many {plural(shape)} are there?", NUMBER_WORDS[len(group)]))
        if len({o["colour"] for o in group}) == 1:
            pairs.append((f"what colour is the {shape}?", group[0]["colour"]))
    for colour, group in by_colour.items():
        if len({o["shape"] for o in group}) == 1:
            pairs.append((f"what shape is the {colour} object?", group[0]["shape"]))
    for (colour, shape), group in by_pair.items():
        pairs.append((f"how many {colour} {plural(shape)} are there?", NUMBER_WORDS[len(group)]))
        if len(group) == 1:
            pairs += [(f"where is the {colour} {shape}?", group[0]["position"]),
                      (f"what size is the {colour} {shape}?", group[0]["size"])]
    absent = rng.choice(SHAPES)
    if absent not in by_shape:
        pairs.append((f"how many {plural(absent)} are there?", "zero"))
    colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
    if (colour, shape) not in held_out:
        pairs.append((f"is there a {colour} {shape}?", "yes" if (colour, shape) in by_pair else "no"))
    return pairs


# ---------------------------------------------------------------------------------------------
# Knowledge: corpus and knowledge-aware captions


# The clues slq-tiny-vl's pretraining shows beside images (knowledge captions and questions about
# its training images); it meets every other clue of the corpus in text only, which makes those the
# true test of elicitation (KARR-Shapes scores the two apart). Per colour all things but the last;
# per shape its first description; counts as sums.
SEEN_COLOUR_THINGS = {colour: things[:-1] for colour, things in COLOUR_CLUES.items()}
SEEN_SHAPE_CLUES = {shape: clues[:1] for shape, clues in SHAPE_CLUES.items()}
SEEN_COUNT_CLUES = {n: tuple(c for c in clues if "+" in c or " plus " in c) for n, clues in COUNT_CLUES.items()}


def clue_seen_with_images(clue: str) -> bool:
    """Whether the pretraining puts `clue` (a thing, a shape description, a count expression, as in
    the clue tables) beside an image; everything else it meets only in its text corpus."""
    return (any(clue in things for things in SEEN_COLOUR_THINGS.values())
            or any(clue in pair for clues in SEEN_SHAPE_CLUES.values() for pair in clues)
            or any(clue in clues for clues in SEEN_COUNT_CLUES.values()))


def _colour_clue(colour: str, rng: random.Random, image_colours: set[str], seen_only: bool = False) -> str:
    options = [f"the colour of {thing}" for thing in (SEEN_COLOUR_THINGS if seen_only else COLOUR_CLUES)[colour]]
    mix = None if seen_only else COLOUR_MIXES.get(colour)
    if mix is not None and not image_colours & set(mix):  # never name a colour that is in view
        a, b = mix if rng.random() < 0.5 else mix[::-1]
        options.append(f"the colour you get by mixing {a} and {b}")
    return rng.choice(("in ", "")) + rng.choice(options)


def _count_clue(count: int, rng: random.Random, seen_only: bool = False) -> str:
    return "a" if count == 1 else rng.choice((SEEN_COUNT_CLUES if seen_only else COUNT_CLUES)[count])


def _knowledge_by_shape(objects, groups, rng, seen_only=False) -> str:
    colours = {o.colour for o in objects}
    parts = []
    for group in rng.sample(groups, len(groups)):
        singular, plural = rng.choice((SEEN_SHAPE_CLUES if seen_only else SHAPE_CLUES)[group[0].shape])
        noun = singular if len(group) == 1 else plural
        parts.append(f"{_count_clue(len(group), rng, seen_only)} {noun} "
                     f"{_colour_clue(group[0].colour, rng, colours, seen_only)}")
    return _join(parts)


def _knowledge_by_colour(objects, groups, rng, seen_only=False) -> str:
    colours = {o.colour for o in objects}
    by_colour: dict[str, int] = {}
    for obj in objects:
        by_colour[obj.colour] = by_colour.get(obj.colour, 0) + 1
    parts = []
    for colour in rng.sample(list(by_colour), len(by_colour)):
        count = by_colour[colour]
        noun = rng.choice(("an object", "something")) if count == 1 else \
            f"{_count_clue(count, rng, seen_only)} objects"
        parts.append(f"{noun} {_colour_clue(colour, rng, colours, seen_only)}")
    return _join(parts)


def _knowledge_total(objects, groups, rng, seen_only=False) -> str:
    return f"{_count_clue(len(objects), rng, seen_only)} objects: {_knowledge_by_shape(objects, groups, rng, seen_only)}"


def knowledge_captions(objects: Sequence[ShapeObject], rng: random.Random, n: int = 1, *,
                       seen_only: bool = False) -> list[str]:
    """n captions that name no colour or shape in view ("a shape with three sides in the colour of
    grass", "(1+1) objects the colour of a banana"): each clue is a `knowledge_corpus` fact.
    `seen_only`: only the clues the pretraining may show beside images (`clue_seen_with_images`)."""
    if not objects:
        raise SLQError("knowledge_captions needs at least one object")
    groups = _groups(objects)
    kinds = [_knowledge_by_shape, _knowledge_by_colour]
    kinds += [_knowledge_total] if len(objects) in COUNT_CLUES else []
    return _distinct([lambda k=k: k(objects, groups, rng, seen_only) for k in kinds], rng, n)


def knowledge_questions(rng: random.Random) -> tuple[str, str]:
    """A question about one corpus fact and its one-word answer, any clue (text only: no image):
    "what colour is a banana?" -> "yellow", "what is (2+1)?" -> "three"."""
    kind = rng.choice(("colour", "parts", "sum", "difference", "mix", "opposite", "round"))
    w = NUMBER_WORDS
    if kind == "colour":
        colour = rng.choice(COLOURS)
        return f"what colour is {rng.choice(COLOUR_CLUES[colour])}?", colour
    if kind == "parts":
        shape, number, part = rng.choice((("triangle", 3, "sides"), ("triangle", 3, "corners"), ("square", 4, "sides"),
                                          ("square", 4, "corners"), ("star", 5, "points")))
        return f"how many {part} does a {shape} have?", w[number]
    if kind == "sum":
        a, b = rng.randint(1, 5), rng.randint(1, 5)
        return rng.choice((f"what is ({a}+{b})?", f"what is {w[a]} plus {w[b]}?")), w[a + b]
    if kind == "difference":
        a = rng.randint(2, 6)
        b = rng.randint(1, a - 1)
        return rng.choice((f"what is ({a}-{b})?", f"what is {w[a]} minus {w[b]}?")), w[a - b]
    if kind == "mix":
        colour, (a, b) = rng.choice(sorted(COLOUR_MIXES.items()))
        return f"what colour do {a} and {b} make?", colour
    if kind == "opposite":
        word, other = rng.choice((("left", "right"), ("right", "left"), ("above", "below"), ("below", "above"),
                                  ("large", "small"), ("small", "large")))
        return f"what is the opposite of {word}?", other
    return f"what shape is {rng.choice(('a wheel', 'a coin'))}?", "round"


def knowledge_vqa_pairs(objects: Sequence[dict], rng: random.Random) -> list[tuple[str, str]]:
    """Questions about one image asked through seen clues only, with their one-word answers: "is
    there something the colour of a banana?" -> "yes", "how many shapes with three sides are
    there?" -> "one"."""
    colours = {o["colour"] for o in objects}
    colour = rng.choice(COLOURS)
    pairs = [(f"is there something the colour of {rng.choice(SEEN_COLOUR_THINGS[colour])}?",
              "yes" if colour in colours else "no")]
    shape = rng.choice(SHAPES)
    pairs.append((f"how many {SEEN_SHAPE_CLUES[shape][0][1]} are there?",
                  NUMBER_WORDS[sum(o["shape"] == shape for o in objects)]))
    in_view = rng.choice(sorted(colours))
    pairs.append((f"how many objects the colour of {rng.choice(SEEN_COLOUR_THINGS[in_view])} are there?",
                  NUMBER_WORDS[sum(o["colour"] == in_view for o in objects)]))
    return pairs


def _colour_facts() -> list[str]:
    facts = [f"{colour} is a colour" for colour in COLOURS]
    facts.append(_join(list(COLOURS)) + " are colours")
    for colour in COLOURS:
        # "an orange" names its colour, so it is a fact but never a clue
        for thing in COLOUR_CLUES[colour] + (("an orange",) if colour == "orange" else ()):
            facts += [f"the colour of {thing} is {colour}", f"{thing} is {colour}",
                      f"{colour} is the colour of {thing}"]
    for colour, (a, b) in COLOUR_MIXES.items():
        facts += [f"{a} and {b} make {colour}", f"{b} and {a} make {colour}",
                  f"mixing {a} and {b} gives {colour}", f"{colour} is made by mixing {a} and {b}"]
    return facts


def _shape_facts() -> list[str]:
    facts = [f"a {shape} is a shape" for shape in SHAPES]
    for shape, clues in SHAPE_CLUES.items():
        facts += [f"a {shape} is a {singular}" for singular, _ in clues]
        facts += [f"{shape}s are {plural}" for _, plural in clues]
    counted_parts = (("triangle", 3, "sides"), ("triangle", 3, "corners"), ("square", 4, "sides"),
                     ("square", 4, "corners"), ("star", 5, "points"))
    for shape, number, part in counted_parts:
        facts += [f"a {shape} has {NUMBER_WORDS[number]} {part}", f"a {shape} has {number} {part}"]
    facts += ["a square has four equal sides", "a circle is round", "a circle has no corners",
              "a wheel is round", "a coin is round", "a heart stands for love",
              "a square has one more side than a triangle",
              "a star has one more point than a square has corners"]
    facts += [f"a large {shape} is bigger than a small {shape}" for shape in SHAPES]
    facts += ["large is the opposite of small", "small is the opposite of large", "big means large",
              "little means small"]
    return facts


def _number_facts() -> list[str]:
    w = NUMBER_WORDS
    facts = [f"{i} is {w[i]}" for i in range(11)] + [f"{w[i]} is written {i}" for i in range(11)]
    for a in range(1, 6):
        for b in range(1, 6):
            total = a + b
            facts += [f"{w[a]} plus {w[b]} is {w[total]}", f"({a}+{b}) is {w[total]}", f"{a} + {b} = {total}"]
    for a in range(2, 7):
        for b in range(1, a):
            diff = a - b
            facts += [f"{w[a]} minus {w[b]} is {w[diff]}", f"({a}-{b}) is {w[diff]}", f"{a} - {b} = {diff}"]
    facts += ["(1+1+1) is three", "one plus one plus one is three", "a pair is two things",
              "a trio is three things"]
    for i in range(10):
        facts += [f"after {w[i]} comes {w[i + 1]}", f"{w[i + 1]} is one more than {w[i]}",
                  f"{w[i]} is less than {w[i + 1]}"]
    return facts


def _relation_facts() -> list[str]:
    facts = ["above is the opposite of below", "below is the opposite of above",
             "left is the opposite of right", "right is the opposite of left",
             "the sky is above the ground", "the ground is below the sky",
             "the centre of an image is its middle", "the top of an image is above its bottom"]
    for a in SHAPES:
        for b in SHAPES:
            if a != b:
                facts += [f"if a {a} is above a {b} then the {b} is below the {a}",
                          f"if a {a} is left of a {b} then the {b} is right of the {a}"]
    return facts


def knowledge_corpus(seed: int = 0) -> list[str]:
    """A few hundred distinct facts about the world, in a seeded order, for language-model
    pretraining. No sentence pairs a colour with a shape, so held-out pairs cannot leak."""
    facts = _colour_facts() + _shape_facts() + _number_facts() + _relation_facts()
    facts = list(dict.fromkeys(facts))  # distinct, first occurrence kept
    _rng(seed, "corpus").shuffle(facts)
    return facts


# ---------------------------------------------------------------------------------------------
# Splits and files


def held_out_combos(seed: int) -> frozenset[tuple[str, str]]:
    """The (colour, shape) pairs kept out of training: one per colour (6 of 30, 20%) with every
    shape held out at least once, so each colour keeps 4 and each shape at least 4 seen pairs."""
    rng = _rng(seed, "held-out")
    shapes = rng.sample(SHAPES, len(SHAPES)) + [rng.choice(SHAPES)]
    return frozenset(zip(rng.sample(COLOURS, len(COLOURS)), shapes))


def record_objects(record: dict[str, Any]) -> list[ShapeObject]:
    """The ShapeObjects of a record written by generate_split/write_world."""
    return [ShapeObject(o["shape"], o["colour"], o["size"], o["x"], o["y"]) for o in record["objects"]]


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise SettingError(name, value, "must be a positive integer")


def _record(index: int, split: str, seed: int, image_size: int, held_out: frozenset) -> dict[str, Any]:
    rng = _rng(seed, split, index)
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held_out]
    forced = None
    if split != "train" and rng.random() < 0.5:  # about half of val/test shows a held-out pair
        forced = rng.choice(sorted(held_out))
    pool = seen if forced is None else seen + sorted(held_out)
    objects = _scene(rng, pool, forced, image_size)
    background = rng.choice(BACKGROUNDS)
    return {
        "image": f"images/{split}/{index:05d}.png",
        "captions": captions_for(objects, rng, 5, image_size),
        "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size,
                     "position": position_of(o, image_size), "x": o.x, "y": o.y} for o in objects],
        "count": len(objects),
        "held_out": any((o.colour, o.shape) in held_out for o in objects),
        "background": list(background),
        "knowledge_captions": knowledge_captions(objects, _rng(seed, split, index, "knowledge"), 2),
    }


def generate_split(n_images: int, split: str, seed: int, image_size: int = 64) -> list[dict[str, Any]]:
    """JSON-ready records (image path relative to the world folder, captions, objects, count,
    held_out, background, knowledge_captions). Train never shows a held-out pair; about half of
    val/test records show one."""
    if split not in SPLITS:
        raise SLQError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    _check_count("n_images", n_images)
    _check_image_size(image_size)
    held_out = held_out_combos(seed)
    return [_record(i, split, seed, image_size, held_out) for i in range(n_images)]


@dataclass(frozen=True)
class WorldConfig:
    """The size and seed of a shapes world."""

    n_train: int = setting(2000, "training images")
    n_val: int = setting(200, "validation images")
    n_test: int = setting(500, "test images")
    seed: int = setting(0, "seed of everything in the world: images, captions, held-out pairs")
    image_size: int = setting(64, "image side in pixels")


def write_world(out_dir: str | os.PathLike, config: WorldConfig | None = None, *, progress: bool | None = None,
                **settings) -> dict[str, Path]:
    """Write a world folder: images/{split}/NNNNN.png, knowledge.txt, world.json and, last and
    atomically, {train,val,test}.jsonl, so a folder with JSONL files is complete. Existing files
    of the same names are overwritten. `settings` override fields of `config` (default
    `WorldConfig()`). progress: True/False forces the bar on/off; None shows it only on a terminal."""
    config = replace(config or WorldConfig(), **settings)
    n_train, n_val, n_test = config.n_train, config.n_val, config.n_test
    seed, image_size = config.seed, config.image_size
    out = Path(out_dir)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in sizes.items():
        _check_count(f"n_{split}", n)
    records = {split: generate_split(n, split, seed, image_size) for split, n in sizes.items()}
    disable = None if progress is None else not progress
    with tqdm(total=sum(sizes.values()), desc="rendering shapes", unit="img", disable=disable) as bar:
        for split, recs in records.items():
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            for record in recs:
                image = render(record_objects(record), image_size, tuple(record["background"]))
                image.save(out / record["image"], format="PNG")
                bar.update(1)
    atomic_write(out / "knowledge.txt", "".join(f"{s}\n" for s in knowledge_corpus(seed)))
    world = {"seed": seed, "image_size": image_size, **{f"n_{s}": n for s, n in sizes.items()},
             "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES),
             "held_out": [list(c) for c in sorted(held_out_combos(seed))]}
    atomic_write(out / "world.json", json.dumps(world, indent=2) + "\n")
    paths = {}
    for split, recs in records.items():
        paths[split] = out / f"{split}.jsonl"
        atomic_write(paths[split], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    paths["knowledge"] = out / "knowledge.txt"
    return paths

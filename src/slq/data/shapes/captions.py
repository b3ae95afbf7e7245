"""Captions and questions about a scene of the shapes world, each true of its image.

`captions_for` states what is in view (lists, counts, positions, relations); `knowledge_captions`
names it through clues of the knowledge corpus only; `vqa_pairs`, `knowledge_questions` and
`knowledge_vqa_pairs` are the questions slq-tiny-vl's pretraining asks, with their one-word answers.
Every text is a pure function of the objects and the random stream it is given.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ...errors import SLQError
from .knowledge import (COLOUR_CLUES, COLOUR_MIXES, COUNT_CLUES, SEEN_COLOUR_THINGS, SEEN_COUNT_CLUES,
                        SEEN_SHAPE_CLUES, SHAPE_CLUES)
from .world import COLOURS, NUMBER_WORDS, SHAPES, ShapeObject, cell_of, join_phrases, plural, position_of

_POSITION_PHRASES = {
    "centre": ("in the centre", "in the middle"),
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
}


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
    (ra, ca), (rb, cb) = cell_of(a, image_size), cell_of(b, image_size)
    rels = ["above"] if ra < rb else ["below"] if ra > rb else []
    rels += ["to the left of"] if ca < cb else ["to the right of"] if ca > cb else []
    return rels


def _list_caption(groups, rng, image_size) -> str:
    parts = [_group_phrase(g, rng) for g in rng.sample(groups, len(groups))]
    be = "are" if parts[0].split()[0] in NUMBER_WORDS else "is"
    opener = rng.choice(("", f"there {be} ", "a picture of ", "an image of ", "a picture showing "))
    return opener + join_phrases(parts)


def _count_caption(groups, rng, image_size) -> str:
    n = sum(len(g) for g in groups)
    word, plural = NUMBER_WORDS[n], "" if n == 1 else "s"
    listing = join_phrases([_group_phrase(g, rng) for g in rng.sample(groups, len(groups))])
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
    return rng.choice(("", "there is ")) + join_phrases(parts)


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
# Knowledge captions and questions: clues in place of what is in view


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
    return join_phrases(parts)


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
    return join_phrases(parts)


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

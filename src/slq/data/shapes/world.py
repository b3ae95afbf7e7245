"""The shapes world itself: its colours, shapes and sizes, where objects may stand, and drawing a scene.

slq's demo and a small model pretrained generatively on this world need data whose truth is known
exactly, so that a caption can be scored attribute by attribute and a retriever tested on
compositions it never saw. Everything here is a pure function of a seed: each image draws from its
own random stream, derived with SHA-256 from (seed, split, index), never from hash(), so files are
byte-identical across runs and processes, and the first k images of a split do not depend on how
many follow.

The world: 1-3 objects per image, each a shape in a colour and a size, placed in distinct cells of
a 3x3 grid (with a little jitter) so that every position word ("on the left") and relation
("above") in a caption holds with a wide margin. One (colour, shape) pair per colour is held out of
training (`held_out_combos`) and appears only in val/test.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from ..._io import seeded_random
from ...errors import SettingError, SLQError

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


def join_phrases(parts: list[str]) -> str:
    """"a", "a and b", "a, b and c": a list as captions and facts say it."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def world_rng(seed: int, *parts: object) -> random.Random:
    """An independent stream for (seed, *parts), the same on every machine."""
    return seeded_random("slq-shapes", seed, *parts)


def check_image_size(image_size: int) -> None:
    """Refuse an image side the world cannot draw on (objects would not fit their cells)."""
    if not isinstance(image_size, int) or image_size < _MIN_IMAGE_SIZE:
        raise SettingError("image_size", image_size, f"must be an integer >= {_MIN_IMAGE_SIZE}")


def cell_of(obj: ShapeObject, image_size: int) -> tuple[int, int]:
    """(row, column) of the 3x3 grid the object's centre lies in."""
    return min(2, obj.y * 3 // image_size), min(2, obj.x * 3 // image_size)


def position_of(obj: ShapeObject, image_size: int = 64) -> str:
    """"top left", "top", ..., "centre", ..., "bottom right": where the object's centre lies."""
    row, col = cell_of(obj, image_size)
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


def object_radius(size: str, image_size: int) -> float:
    """Pixels from an object's centre to the farthest point of its outline, for a size word."""
    return _RADIUS[size] * image_size


def render(
    objects: Sequence[ShapeObject], size: int = 64, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """An RGB image of the objects. Drawn at 4x and box-filtered, so edges are smooth while a
    pixel well inside an object has exactly its colour's RGB."""
    check_image_size(size)
    k = _SUPERSAMPLE
    canvas = Image.new("RGB", (size * k, size * k), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        cx, cy = (obj.x + 0.5) * k, (obj.y + 0.5) * k  # centre of pixel (x, y)
        r = object_radius(obj.size, size) * k
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
        r = object_radius(size, image_size)
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


def random_scene(rng: random.Random, pool: list[tuple[str, str]], forced: tuple[str, str] | None,
                 image_size: int) -> list[ShapeObject]:
    """The objects of one image in reading order (top to bottom, then left to right): 1-3 of them, one
    (colour, shape) of `pool` each (`forced`, if given, among them), some pairs repeated."""
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


def draw_group(colour: str, shape: str, count: int, size: int = 64) -> Image.Image:
    """`count` (1-3) objects of one kind in a row across the middle, in the world's grid cells: large
    alone or in pairs, small in threes, as the world draws them (the pilot's scenes)."""
    xs = {1: (0.5,), 2: (0.2, 0.8), 3: (0.2, 0.5, 0.8)}[count]
    scale = "small" if count == 3 else "large"
    return render([ShapeObject(shape, colour, scale, round(x * size), size // 2) for x in xs], size)


def held_out_combos(seed: int) -> frozenset[tuple[str, str]]:
    """The (colour, shape) pairs kept out of training: one per colour (6 of 30, 20%) with every
    shape held out at least once, so each colour keeps 4 and each shape at least 4 seen pairs."""
    rng = world_rng(seed, "held-out")
    shapes = rng.sample(SHAPES, len(SHAPES)) + [rng.choice(SHAPES)]
    return frozenset(zip(rng.sample(COLOURS, len(COLOURS)), shapes))


def record_objects(record: dict[str, Any]) -> list[ShapeObject]:
    """The ShapeObjects of a record written by generate_split/write_world."""
    return [ShapeObject(o["shape"], o["colour"], o["size"], o["x"], o["y"]) for o in record["objects"]]

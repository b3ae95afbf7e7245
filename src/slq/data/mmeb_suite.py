"""An offline suite in MMEB's format, and a training mixture of the same tasks, from the shapes world.

MMEB (the Massive Multimodal Embedding Benchmark of VLM2Vec) poses every task as ranking: a query (an
image, a text, or both, behind an instruction) must score its one positive above a fixed list of
candidates. Its datasets are downloads; this suite is made from `slq.data.shapes`, whose truth is
known exactly, so it runs offline and a wrong answer is wrong for a reason one can read. Seven
datasets in MMEB's four meta tasks:

    classification  ShapesColour, ShapesShape, ShapesCount   image -> its label among all labels
    vqa             ShapesVQA                                image + question -> its answer
    retrieval       ShapesT2I, ShapesI2T                     caption -> image, image -> caption
    grounding       ShapesGrounding                          image + position -> the object's crop

Files, from a world folder (`write_world`):

    OUT/eval/<Name>.jsonl, slq-mmeb.json, images/   the datasets, from the TEST split
    OUT/val/...                                     the same from the VAL split, to choose settings on
    OUT/train.jsonl, OUT/val.jsonl, OUT/images/     pairs of the same tasks in slq's pair JSONL
                                                    (`slq.data.pairs`), from TRAIN and VAL

An eval row is MMEB v1's: {"qry_text", "qry_img_path", "tgt_text": [...], "tgt_img_path": [...]},
candidate lists aligned, the positive first, "" where a side has no image, and a text that goes
with an image led by "<|image_1|>\\n". Image paths are relative to the dataset's folder. A side's
instruction and text are one string there; in the pair JSONL the instruction has its own field.

Rules that keep every query to one right answer:

- A candidate never repeats in a row: MMEB's scorer embeds each distinct (text, image) once, and a
  repeat of the positive would tie with it.
- A retrieval negative never also fits: every caption names its objects as "<colour> <shape>", and
  a negative image lacks one the caption names (a negative caption names one the image lacks).
- A question or a grounding query names a position only when one object is there, read loosely as
  the world's captions read it ("at the top" includes the top corners).
- A grounding negative looks different: a crop of an object, of the same image or another, of
  another colour, shape or size than the positive's.

Every choice draws from a stream seeded by (seed, split, task, record), so the same world and
config give byte-identical files, and the first k queries of a dataset do not depend on n_eval.
Training pairs have exactly n_negatives negatives; where a task has fewer wrong answers than that
(ShapesCount has two), they repeat.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .._io import atomic_write, check_settings, seeded_random, setting
from ..errors import DataError, SettingError, SLQError
from .jsonl import write_lines
from .pairs import Input, PairRecord, write_pairs
from .shapes import (COLOURS, NUMBER_WORDS, SHAPES, ShapeObject, object_radius, plural, position_of,
                     record_objects)

logger = logging.getLogger("slq")

IMAGE_TOKEN = "<|image_1|>\n"  # MMEB v1 (Phi-3-V's spelling): an image's place in a text
SUITE_INFO = "slq-mmeb.json"  # beside the eval datasets: {"datasets": {name: meta task}}
CROP_SIZE = 32  # pixels on a side of a grounding crop
CROP_SCALE = 2.4  # a crop's side over its object's radius: the whole object and a margin
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
_PREPOSITIONS = {"centre": "in", "left": "on", "right": "on"}  # the rest "at": "at the top", "at the top left"
VQA_CANDIDATES = 8  # the answer and up to 7 wrong answers of its type

# Instructions, worded as MMEB v1 words them where it has the task.
CLASSIFY = "Represent the given image for classification:"
QUESTION = "Represent the given image with the following question:"
FIND_IMAGE = "Find an image that matches the given caption:"
FIND_CAPTION = "Find an image caption describing the given image."
SELECT = "Select the portion of the image that isolates the object"  # + " on the left."
IMAGE_TARGET = "Represent the given image."
CROP_TARGET = "Represent the given cropped image of the object."

_NAMED = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})s?\b")


@dataclass(frozen=True)
class SuiteConfig:
    """How many queries, candidates and pairs the suite has, and its seed."""

    n_eval: int = setting(100, "queries per eval dataset (fewer where the split has fewer records that fit)", minimum=1)
    n_candidates: int = setting(20, "candidates per query of the retrieval and grounding datasets, positive included",
                                minimum=2, why="the positive and at least one negative")
    n_negatives: int = setting(3, "random negatives per training pair", minimum=0, why="0 writes pairs without negatives")
    n_train_pairs: int = setting(400, "training pairs per task; val.jsonl gets a quarter as many", minimum=1)
    seed: int = setting(0, "seed of the suite's choices: records, captions, questions, candidates, negatives")

    def __post_init__(self) -> None:
        check_settings(self)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise SettingError("seed", self.seed, "must be an integer")


# ---------------------------------------------------------------------------------------------
# Queries


ImageRef = tuple  # ("image", record) or ("crop", record, object): a file written on first use


@dataclass(frozen=True)
class Side:
    """One side of a query or candidate; its image a reference until a folder is chosen."""

    text: str = ""
    image: ImageRef | None = None
    instruction: str = ""


@dataclass(frozen=True)
class _Query:
    """A query, its positive, the negatives always shown (`hard`) and those drawn at random (`pool`).
    No item of `hard` or `pool` is also a right answer."""

    query: Side
    positive: Side
    pool: Sequence[Side]
    hard: Sequence[Side] = ()


@dataclass
class _Split:
    """One split of a world, with what the tasks look up often."""

    name: str
    records: list[dict]
    objects: list[list[ShapeObject]]
    image_size: int

    def __post_init__(self) -> None:
        self.combos = [frozenset((o.colour, o.shape) for o in objs) for objs in self.objects]
        self.count_words = tuple(NUMBER_WORDS[n] for n in sorted({len(objs) for objs in self.objects}))
        self.images = [Side(image=("image", i), instruction=IMAGE_TARGET) for i in range(len(self.records))]
        captions = dict.fromkeys(c for r in self.records for c in r["captions"])  # distinct, in order
        self.captions = [(Side(text=c), _named(c)) for c in captions]
        self.crops = [[(i, (o.colour, o.shape, o.size), Side(image=("crop", i, k), instruction=CROP_TARGET))
                       for k, o in enumerate(objs)] for i, objs in enumerate(self.objects)]
        self.all_crops = [crop for crops in self.crops for crop in crops]  # (record, look, side)

    def positions(self, i: int) -> list[str]:
        return [position_of(o, self.image_size) for o in self.objects[i]]


def _named(caption: str) -> frozenset[tuple[str, str]]:
    """The (colour, shape) pairs a caption names; an image without one of them does not fit it."""
    return frozenset(_NAMED.findall(caption))


def _at(phrase: str, position: str) -> bool:
    """Whether an object at `position` is "at the <phrase>", as the world's captions say it."""
    return phrase == position if "centre" in (phrase, position) else set(phrase.split()) <= set(position.split())


def _where(phrase: str) -> str:
    """"on the left", "in the centre", "at the top left": a position phrase as the captions say it."""
    return f"{_PREPOSITIONS.get(phrase, 'at')} the {phrase}"


def _addressable(split: _Split, i: int) -> list[tuple[str, int]]:
    """(phrase, object) for each position phrase that exactly one object of record i is at."""
    positions = split.positions(i)
    found = []
    for phrase in POSITIONS:
        at = [k for k, position in enumerate(positions) if _at(phrase, position)]
        if len(at) == 1:
            found.append((phrase, at[0]))
    return found


def _classifier(question: str, label_of: Callable[[list[ShapeObject]], str | None],
                labels_of: Callable[[_Split], Sequence[str]]) -> Callable:
    """A classification task: the image (when `label_of` gives it a label) against every label."""

    def build(split: _Split, i: int, rng: random.Random) -> _Query | None:
        label = label_of(split.objects[i])
        if label is None:
            return None
        query = Side(image=("image", i), instruction=f"{CLASSIFY} {question}")
        return _Query(query, Side(text=label), [Side(text=x) for x in labels_of(split) if x != label])

    return build


def _one(values: list[str]) -> str | None:
    return values[0] if len(set(values)) == 1 else None


def _questions(split: _Split, i: int) -> dict[str, list[tuple[str, str, list[str]]]]:
    """Every question record i answers unambiguously, by type: (question, answer, wrong answers)."""
    objs, positions = split.objects[i], split.positions(i)
    numbers = list(split.count_words)
    shapes, combos = Counter(o.shape for o in objs), Counter((o.colour, o.shape) for o in objs)

    def wrong(answer: str, answers: Sequence[str]) -> list[str]:
        return [a for a in answers if a != answer]

    at = [(phrase, objs[k]) for phrase, k in _addressable(split, i)]
    count = NUMBER_WORDS[len(objs)]
    return {
        "count": [("How many objects are in the image?", count, wrong(count, numbers))],
        "count_shape": [(f"How many {plural(s)} are in the image?", NUMBER_WORDS[n], wrong(NUMBER_WORDS[n], numbers))
                        for s, n in shapes.items()],
        "colour_of_shape": [(f"What colour is the {o.shape}?", o.colour, wrong(o.colour, COLOURS))
                            for o in objs if shapes[o.shape] == 1],
        "shape_at": [(f"What shape is {_where(p)}?", o.shape, wrong(o.shape, SHAPES)) for p, o in at],
        "colour_at": [(f"What colour is the object {_where(p)}?", o.colour, wrong(o.colour, COLOURS)) for p, o in at],
        # a top-left object is also "at the top": such phrases are not wrong answers
        "position_of": [(f"Where is the {o.colour} {o.shape}?", _where(p), [_where(x) for x in POSITIONS if not _at(x, p)])
                        for o, p in zip(objs, positions) if combos[o.colour, o.shape] == 1],
    }


def _vqa(split: _Split, i: int, rng: random.Random) -> _Query | None:
    """A question type drawn uniformly among those the image answers, then one question of it."""
    by_type = {kind: [q for q in found if q[2]] for kind, found in _questions(split, i).items()}
    by_type = {kind: found for kind, found in by_type.items() if found}
    if not by_type:
        return None
    question, answer, wrong = rng.choice(by_type[rng.choice(sorted(by_type))])
    return _Query(Side(text=question, image=("image", i), instruction=QUESTION), Side(text=answer),
                  [Side(text=a) for a in wrong])


def _t2i(split: _Split, i: int, rng: random.Random) -> _Query | None:
    caption = rng.choice(split.records[i]["captions"])
    named = _named(caption)
    pool = [side for side, combos in zip(split.images, split.combos) if not named <= combos]
    return _Query(Side(text=caption, instruction=FIND_IMAGE), split.images[i], pool)


def _i2t(split: _Split, i: int, rng: random.Random) -> _Query | None:
    caption = rng.choice(split.records[i]["captions"])
    pool = [side for side, named in split.captions if not named <= split.combos[i]]
    return _Query(Side(image=("image", i), instruction=FIND_CAPTION), Side(text=caption), pool)


def _grounding(split: _Split, i: int, rng: random.Random) -> _Query | None:
    addressable = _addressable(split, i)
    if not addressable:
        return None
    phrase, k = rng.choice(addressable)
    target = split.objects[i][k]
    look = (target.colour, target.shape, target.size)

    hard = [side for _, other, side in split.crops[i] if other != look]
    pool = [side for j, other, side in split.all_crops if j != i and other != look]
    query = Side(text=f"{_where(phrase)}.", image=("image", i), instruction=SELECT)
    return _Query(query, split.crops[i][k][2], pool, hard)


@dataclass(frozen=True)
class Task:
    """One dataset of the suite: its MMEB meta task, how a record becomes a query (None: it does
    not fit), and how many wrong candidates an eval row shows (None: all of them)."""

    name: str
    meta: str
    build: Callable[[_Split, int, random.Random], _Query | None]
    distractors: Callable[[SuiteConfig], int | None]


def _all(config: SuiteConfig) -> None:
    return None


def _n_candidates(config: SuiteConfig) -> int:
    return config.n_candidates - 1


TASKS = (
    Task("ShapesColour", "classification",
         _classifier("what colour are the shapes?", lambda objs: _one([o.colour for o in objs]), lambda s: COLOURS),
         _all),
    Task("ShapesShape", "classification",
         _classifier("what shape are the objects?", lambda objs: _one([o.shape for o in objs]), lambda s: SHAPES),
         _all),
    Task("ShapesCount", "classification",
         _classifier("how many objects are there?", lambda objs: NUMBER_WORDS[len(objs)], lambda s: s.count_words),
         _all),
    Task("ShapesVQA", "vqa", _vqa, lambda config: VQA_CANDIDATES - 1),
    Task("ShapesT2I", "retrieval", _t2i, _n_candidates),
    Task("ShapesI2T", "retrieval", _i2t, _n_candidates),
    Task("ShapesGrounding", "grounding", _grounding, _n_candidates),
)


def _draw(rng: random.Random, query: _Query, k: int | None, *, repeat: bool = False) -> list[Side]:
    """k wrong candidates (None: all) in random order: the hard ones, then random ones from the pool,
    distinct while there are enough; then `repeat` cycles through them again, else there are fewer."""
    hard = list(query.hard[:k])
    distinct = hard + rng.sample(query.pool, len(query.pool) if k is None else min(k - len(hard), len(query.pool)))
    picks = list(distinct)
    while repeat and distinct and len(picks) < k:
        picks += rng.sample(distinct, min(k - len(picks), len(distinct)))
    rng.shuffle(picks)
    return picks


def _queries(task: Task, split: _Split, n: int, seed: int, what: str = "queries"):
    """(record index, query, its stream) for the first n records the task fits, in file order."""
    found = 0
    for i in range(len(split.records)):
        if found == n:
            return
        rng = seeded_random("slq-mmeb-suite", seed, split.name, task.name, i)
        query = task.build(split, i, rng)
        if query is not None and (query.pool or query.hard):
            found += 1
            yield i, query, rng
    if found < n:
        logger.warning("%s: %d of %d %s: the %s split has no more records that fit", task.name, found, n, what,
                       split.name)


# ---------------------------------------------------------------------------------------------
# Images and files


def crop_object(image: Image.Image, obj: ShapeObject, size: int = CROP_SIZE) -> Image.Image:
    """The square around the object's centre, CROP_SCALE times its radius on a side, clipped to the
    image and resized to size x size: what a grounding candidate shows."""
    half = CROP_SCALE / 2 * object_radius(obj.size, image.width)
    cx, cy = obj.x + 0.5, obj.y + 0.5  # the centre of pixel (x, y), as `render` draws it
    box = (max(0, math.floor(cx - half)), max(0, math.floor(cy - half)),
           min(image.width, math.ceil(cx + half)), min(image.height, math.ceil(cy + half)))
    return image.crop(box).resize((size, size), Image.Resampling.BICUBIC)


class _ImageFiles:
    """Copies world images and cuts crops into `root` the first time a row names them; paths relative
    to `root`, under the record's own folder (images/test/00007.png, images/test/crops/00007-1.png)."""

    def __init__(self, world: Path, split: _Split, root: Path) -> None:
        self.world, self.split, self.root = world, split, root
        self.written: set[str] = set()

    def path(self, ref: ImageRef) -> str:
        kind, i, *rest = ref
        image = Path(self.split.records[i]["image"])
        rel = image.as_posix() if kind == "image" else f"{image.parent.as_posix()}/crops/{image.stem}-{rest[0]}.png"
        if rel not in self.written:
            dest = self.root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self._read(i) if kind == "image" else self._crop(i, rest[0]))
            self.written.add(rel)
        return rel

    def _read(self, i: int) -> bytes:
        path = self.world / self.split.records[i]["image"]
        try:
            return path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read the image of {self.split.name}.jsonl record {i + 1}: "
                            f"{e.strerror or type(e).__name__}") from None

    def _crop(self, i: int, k: int) -> bytes:
        with Image.open(io.BytesIO(self._read(i))) as image:
            crop = crop_object(image.convert("RGB"), self.split.objects[i][k])
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        return buffer.getvalue()


def _mmeb_text(side: Side) -> str:
    body = " ".join(part for part in (side.instruction, side.text) if part)
    return IMAGE_TOKEN + body if side.image is not None else body


def _write_eval(world: Path, split: _Split, folder: Path, config: SuiteConfig, bar) -> dict[str, int]:
    """Each task's MMEB rows into folder/<Name>.jsonl, then folder/slq-mmeb.json."""
    files = _ImageFiles(world, split, folder)

    def image_path(side: Side) -> str:
        return files.path(side.image) if side.image is not None else ""

    counts = {}
    for task in TASKS:
        rows = []
        for i, query, rng in _queries(task, split, config.n_eval, config.seed):
            candidates = [query.positive, *_draw(rng, query, task.distractors(config))]
            rows.append({"qry_text": _mmeb_text(query.query), "qry_img_path": image_path(query.query),
                         "tgt_text": [_mmeb_text(c) for c in candidates],
                         "tgt_img_path": [image_path(c) for c in candidates], "id": f"{split.name}-{i:05d}"})
        write_lines(folder / f"{task.name}.jsonl", rows)
        counts[task.name] = len(rows)
        bar.update(1)
    atomic_write(folder / SUITE_INFO, json.dumps({"datasets": {t.name: t.meta for t in TASKS}}, indent=2) + "\n")
    return counts


def _write_pairs(world: Path, split: _Split, out: Path, path: Path, n_pairs: int, config: SuiteConfig,
                 bar) -> dict[str, int]:
    """n_pairs pairs of each task, task after task, into `path` (images under out/images/<split>)."""
    files = _ImageFiles(world, split, out)
    base = Path(os.path.abspath(out))

    def as_input(side: Side) -> Input:
        image = base / files.path(side.image) if side.image is not None else None
        return Input(side.text or None, image, side.instruction)

    records, counts = [], {}
    for task in TASKS:
        before = len(records)
        for i, query, rng in _queries(task, split, n_pairs, config.seed, "pairs"):
            negatives = _draw(rng, query, config.n_negatives, repeat=True)
            records.append(PairRecord(as_input(query.query), as_input(query.positive),
                                      tuple(as_input(n) for n in negatives), f"{split.name}:{i}", {"task": task.name}))
        counts[task.name] = len(records) - before
        bar.update(1)
    write_pairs(records, path)
    return counts


# ---------------------------------------------------------------------------------------------
# The world and the whole suite


def _world_image_size(world: Path) -> int:
    path = world / "world.json"
    if not path.is_file():
        raise SLQError(f"{world}: not a shapes world ({path.name} not found); write one with "
                       "slq.data.shapes.write_world or `slq data shapes`")
    try:
        size = json.loads(path.read_text(encoding="utf-8"))["image_size"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: no image_size ({type(e).__name__}: {e})") from None
    if not isinstance(size, int) or size < 1:
        raise DataError(f"{path}: image_size must be a positive integer, got {size!r}")
    return size


def _check_record(record: dict) -> list[ShapeObject]:
    image = record["image"]
    if not isinstance(image, str) or Path(image).is_absolute() or ".." in Path(image).parts:
        raise ValueError(f"image must be a path inside the world folder, got {image!r}")
    captions = record["captions"]
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c for c in captions):
        raise ValueError("captions must be a non-empty list of texts")
    objects = record_objects(record)
    if not 0 < len(objects) < len(NUMBER_WORDS) or record["count"] != len(objects):
        raise ValueError(f"count {record['count']!r} with {len(objects)} objects; a world has 1 to "
                         f"{len(NUMBER_WORDS) - 1} objects an image")
    return objects


def _read_split(world: Path, name: str, image_size: int) -> _Split:
    path = world / f"{name}.jsonl"
    if not path.is_file():
        raise SLQError(f"{world}: an incomplete shapes world ({path.name} not found); write it again with "
                       "slq.data.shapes.write_world or `slq data shapes`")
    records, objects = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            objects.append(_check_record(record))
        except (ValueError, KeyError, TypeError, SLQError) as e:
            raise DataError(f"{path}:{number}: not a shapes-world record ({type(e).__name__}: {e})") from None
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return _Split(name, records, objects, image_size)


def write_mmeb_suite(world_dir: str | os.PathLike, out_dir: str | os.PathLike, config: SuiteConfig | None = None, *,
                     progress: bool | None = None, **settings) -> dict:
    """Write the suite of the module docstring from the world folder `world_dir` into `out_dir`.

    `settings` override fields of `config` (default `SuiteConfig()`). JSONL files are written
    atomically; images are copied or cut as rows name them, so only images in use are written.
    progress: True/False forces the bar on/off; None shows it only on a terminal. Returns a summary:
    queries per eval dataset (test and val), pairs per task (train and val), and the paths.
    """
    config = replace(config or SuiteConfig(), **settings)
    world, out = Path(world_dir), Path(out_dir)
    if not world.is_dir():
        raise SLQError(f"{world}: shapes world folder not found")
    image_size = _world_image_size(world)
    splits = {name: _read_split(world, name, image_size) for name in ("train", "val", "test")}
    paths = {"eval": out / "eval", "val_eval": out / "val", "train": out / "train.jsonl", "val": out / "val.jsonl"}
    try:
        for folder in (paths["eval"], paths["val_eval"]):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SLQError(f"{out}: cannot create the output folder: {e.strerror or e}") from None
    with tqdm(total=4 * len(TASKS), desc="MMEB suite", unit="dataset",
              disable=None if progress is None else not progress) as bar:
        summary = {
            "eval": _write_eval(world, splits["test"], paths["eval"], config, bar),
            "val_eval": _write_eval(world, splits["val"], paths["val_eval"], config, bar),
            "train_pairs": _write_pairs(world, splits["train"], out, paths["train"], config.n_train_pairs, config, bar),
            "val_pairs": _write_pairs(world, splits["val"], out, paths["val"], max(1, config.n_train_pairs // 4),
                                      config, bar),
        }
    logger.debug("MMEB suite written to %s: %s", out, summary)
    return {**summary, "meta_tasks": {t.name: t.meta for t in TASKS}, "paths": {k: str(v) for k, v in paths.items()}}

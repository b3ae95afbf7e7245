"""Inputs of any kind and datasets of (query, positive, negatives) pairs.

An `Input` is one side of a retrieval: a text, an image, or an image with text, each optionally
with a task instruction ("Represent the given image for classification:"), as MMEB-style tasks
pose them. Encoders render it through the checkpoint's chat template like any other input, with
the latent queries after the whole prompt.

Our JSONL's pair form, one pair per line (other keys are kept in the record's `meta`):

    {"query": {"text": "what colour is the star?", "image": "images/7.png",
               "instruction": "Answer the question about the image:"},
     "positive": {"text": "yellow"},
     "negatives": [{"text": "red"}, {"text": "blue"}]}

A side is an object with "text", "image" (relative to the file's folder) or both, and an optional
"instruction"; a plain string stands for {"text": string}. "negatives" is optional: hard
negatives join their pair's candidates in the training loss (`TrainConfig.hard_negatives`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .images import image_problem
from .jsonl import first_value, read_lines, write_lines
from .records import Collector

PAIR_FIELDS = ("query", "positive", "negatives")
_SIDE_FIELDS = ("text", "image", "instruction")


@dataclass(frozen=True)
class Input:
    """A text, an image, or an image with text; `instruction` says what the embedding is for."""

    text: str | None = None
    image: Path | Image.Image | None = None  # a path (absolute once loaded from a file) or pixels
    instruction: str = ""

    def __post_init__(self):
        if self.image is None and not (self.text or "").strip():
            raise ValueError("an input needs a text, an image, or both")
        if self.image is not None and not isinstance(self.image, Image.Image):
            object.__setattr__(self, "image", Path(self.image))

    @property
    def kind(self) -> str:
        """"text", "image" or "image+text"."""
        return "text" if self.image is None else "image+text" if self.text else "image"

    def key(self) -> tuple | None:
        """A stable name of what the encoder sees (prompt caches, deduplication); None for pixels."""
        if isinstance(self.image, Image.Image):
            return None
        return ("input", self.text or "", str(self.image) if self.image is not None else "", self.instruction)

    def to_json(self, base: Path | None = None) -> dict:
        """The JSONL side; image paths under `base` relative to it."""
        if isinstance(self.image, Image.Image):
            raise ValueError("an input holding pixels has no path to write")
        side: dict[str, Any] = {}
        if self.text:
            side["text"] = self.text
        if self.image is not None:
            image = Path(os.path.abspath(self.image))
            side["image"] = image.relative_to(base).as_posix() if base and image.is_relative_to(base) else str(image)
        if self.instruction:
            side["instruction"] = self.instruction
        return side


@dataclass(frozen=True)
class PairRecord:
    """A query, the input it should retrieve, and inputs it should not (hard negatives)."""

    query: Input
    positive: Input
    negatives: tuple[Input, ...]
    source: str  # "data/train.jsonl:12"
    meta: Mapping = field(default_factory=dict, compare=False)


@dataclass
class PairDataset:
    """Pair records in file order (the training data of MMEB-style tasks)."""

    records: list[PairRecord]
    name: str
    skipped: list = field(default_factory=list)
    directions: tuple[str, str] = ("q2p", "p2q")  # query -> positive, positive -> query

    kind = "pairs"

    def __len__(self) -> int:
        return len(self.records)


def parse_side(value: Any, base: Path, name: str) -> Input:
    """One side of a pair from JSON; ValueError names the side and what is wrong."""
    if isinstance(value, str):
        value = {"text": value}
    if not isinstance(value, dict):
        raise ValueError(f'"{name}" must be an object with "text" and/or "image", or a string')
    unknown = sorted(set(value) - set(_SIDE_FIELDS))
    if unknown:
        raise ValueError(f'"{name}" has unknown field(s) {", ".join(unknown)}; allowed: {", ".join(_SIDE_FIELDS)}')
    for key in _SIDE_FIELDS:
        if key in value and not isinstance(value[key], str):
            raise ValueError(f'"{name}.{key}" must be a string')
    text, image = (value.get("text") or "").strip(), value.get("image")
    if image is not None:
        if not image.strip() or "\0" in image:
            raise ValueError(f'"{name}.image" must be a non-empty path')
        image = Path(os.path.abspath(base / image))
    if not text and image is None:
        raise ValueError(f'"{name}" needs a non-empty "text", an "image", or both')
    return Input(text or None, image, (value.get("instruction") or "").strip())


def parse_pair(obj: Any, source: str, base: Path) -> PairRecord:
    if not isinstance(obj, dict):
        raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
    for key in ("query", "positive"):
        if key not in obj:
            raise ValueError(f'missing "{key}"')
    negatives = obj.get("negatives", [])
    if not isinstance(negatives, list):
        raise ValueError('"negatives" must be a list')
    return PairRecord(parse_side(obj["query"], base, "query"), parse_side(obj["positive"], base, "positive"),
                      tuple(parse_side(n, base, f"negatives[{i}]") for i, n in enumerate(negatives)), source,
                      {k: v for k, v in obj.items() if k not in PAIR_FIELDS})


def load_pairs(path: str | os.PathLike, on_bad_record: str = "error", check_images: bool = True) -> PairDataset:
    """Load a pair JSONL file. Syntax is checked on every line before any image is opened; each
    image is checked once however many pairs name it."""
    path = Path(path)
    collector = Collector(on_bad_record)
    base = Path(os.path.abspath(path)).parent
    parsed: list[tuple[int, PairRecord]] = []
    for line in read_lines(path):
        try:
            parsed.append((line.number, parse_pair(line.value(), line.source, base)))
        except ValueError as e:
            collector.bad(line.number, line.source, str(e))
    records = _with_readable_images(parsed, collector) if check_images else [r for _, r in parsed]
    if not records:
        raise collector.nothing_usable(str(path), "pairs")
    return PairDataset(records, path.stem, collector.in_order())


def _with_readable_images(parsed: list[tuple[int, PairRecord]], collector: Collector) -> list[PairRecord]:
    problems: dict[Path, str | None] = {}
    kept = []
    for number, record in parsed:
        bad = None
        for name, side in _sides(record):
            if side.image is not None:
                if side.image not in problems:
                    problems[side.image] = image_problem(side.image)
                if problems[side.image]:
                    bad = f"{name}: {problems[side.image]}"
                    break
        if bad:
            collector.bad(number, record.source, bad)
        else:
            kept.append(record)
    return kept


def _sides(record: PairRecord) -> Iterable[tuple[str, Input]]:
    yield "query", record.query
    yield "positive", record.positive
    for i, negative in enumerate(record.negatives):
        yield f"negatives[{i}]", negative


def write_pairs(records: Sequence[PairRecord], path: str | os.PathLike) -> None:
    """Write pair records in our JSONL's pair form, atomically; images under the file's folder are
    written relative to it."""
    path = Path(path)
    base = Path(os.path.abspath(path.parent))
    values = [{"query": r.query.to_json(base), "positive": r.positive.to_json(base),
               **({"negatives": [n.to_json(base) for n in r.negatives]} if r.negatives else {}), **r.meta}
              for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lines(path, values)


def is_pair_file(path: str | os.PathLike) -> bool:
    """Whether a JSONL file's first record is a pair (has "query"), read without parsing the rest."""
    first = first_value(path)  # None when unreadable: the full loader reports the problem with context
    return isinstance(first, dict) and "query" in first

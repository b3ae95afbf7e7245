"""Datasets of captioned targets (images, or texts): our JSONL format and the Karpathy split files.

Loading is strict by default because a silently dropped record changes every recall number
computed on the set. `on_bad_record="skip"` leaves bad records out but lists each one, with where
it came from and why, in `ImageTextDataset.skipped`; nothing is dropped without a trace.

Our JSONL format, one record per line (blank lines ignored; other keys are kept in the
record's `meta` and written back by `write_jsonl`):

    {"image": "images/0001.jpg", "captions": ["a dog on a beach", "a wet dog"]}

Relative image paths are relative to the JSONL file's folder, so a dataset folder can be moved.
A record may name a text in place of an image: text↔text retrieval, as for a text-only causal-LM
backbone (e.g. a reverse dictionary, where a definition retrieves its word):

    {"text": "cat", "captions": ["feline mammal usually having thick soft fur"]}

All records of one file are of one kind.

`max_captions=N` keeps the first N captions of each record, in file order, as the standard
COCO/Flickr test protocol does (Karpathy's dataset_coco.json gives some images 6 or 7 sentences;
its 5K test set is read as 25,000 texts, the first 5 of each image).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._io import atomic_write, require_positive_int
from ..errors import DataError
from .images import image_problem
from .jsonl import read_bytes, read_lines, write_lines
from .pairs import PairDataset, is_pair_file, load_pairs
from .records import Collector, ImageRecord, ImageTextDataset, Record, TextRecord, error, exc_reason

KARPATHY_SPLITS = ("train", "val", "test", "restval")
# "train+restval" is the usual training set of the Karpathy splits (113k COCO images).
SPLIT_CHOICES = KARPATHY_SPLITS + ("train+restval",)
# Fields of a JSONL record that slq reads; every other field is kept in the record's `meta`.
_JSONL_FIELDS = ("image", "text", "captions")
# Beside a dataset's JSONL files, what they share: {"directions": [caption->target, target->caption]}.
DATASET_INFO = "slq-dataset.json"
# Fields of a Karpathy entry that slq reads or that only restate the split; others go to `meta`.
_KARPATHY_FIELDS = ("filepath", "filename", "sentences", "split")


def _absolute(path: Path) -> Path:
    """Absolute and normalised ('..' removed) without resolving symlinks."""
    return Path(os.path.abspath(path))


def _image_path(value: Any, base: Path, key: str) -> Path:
    """The absolute image path for a record's string field; ValueError says what is wrong."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'"{key}" must be a non-empty string')
    if "\0" in value:
        raise ValueError(f'"{key}" contains a NUL character')
    return _absolute(base / value)


def _check_images(
    records: list[tuple[int, ImageRecord]], collector: Collector, check_images: bool
) -> list[ImageRecord]:
    if not check_images:
        return [r for _, r in records]
    kept = []
    for position, record in tqdm(records, desc="checking images", unit="img", disable=None):
        reason = image_problem(record.image)
        if reason is None:
            kept.append(record)
        else:
            collector.bad(position, record.source, reason)
    return kept


def _check_max_captions(max_captions: int | None) -> None:
    require_positive_int("max_captions", max_captions, optional=True)  # None: all captions


def _finish(
    path: Path, name: str, records: list[Record], collector: Collector, what: str = "",
    directions: tuple[str, str] | None = None, max_captions: int | None = None,
) -> ImageTextDataset:
    if not records:
        raise collector.nothing_usable(str(path), f"records{what}")
    if max_captions is not None:
        records = [replace(r, captions=r.captions[:max_captions]) for r in records]
    named = {"directions": tuple(directions)} if directions else {}
    return ImageTextDataset(records=records, name=name, skipped=collector.in_order(), **named)


# ---------------------------------------------------------------------------------------------
# Our JSONL format


def _parse_jsonl_record(obj: Any, source: str, base: Path) -> Record:
    """One decoded JSONL line as a record; ValueError with the reason when it is malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"record must be a JSON object, got {type(obj).__name__}")
    if ("image" in obj) == ("text" in obj):
        raise ValueError('needs exactly one of "image" and "text"' if "image" in obj else 'missing "image" (or "text")')
    if "text" in obj and not (isinstance(obj["text"], str) and obj["text"].strip()):
        raise ValueError('"text" must be a non-empty string')
    captions = obj.get("captions")
    if not isinstance(captions, list) or not captions:
        raise ValueError('"captions" must be a non-empty list of strings')
    if not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError('"captions" must be a non-empty list of non-empty strings')
    captions = tuple(c.strip() for c in captions)
    meta = {k: v for k, v in obj.items() if k not in _JSONL_FIELDS}
    if "text" in obj:
        return TextRecord(text=obj["text"].strip(), captions=captions, source=source, meta=meta)
    return ImageRecord(image=_image_path(obj["image"], base, "image"), captions=captions, source=source, meta=meta)


def load_jsonl(
    path: str | os.PathLike, on_bad_record: str = "error", check_images: bool = True,
    directions: tuple[str, str] | None = None, max_captions: int | None = None,
) -> ImageTextDataset:
    """Load our JSONL format. Syntax is checked for all lines before any image is opened, so a
    typo on the last line is reported before minutes of image checks. `directions` names the two
    ways of retrieving (see `ImageTextDataset`); by default the folder's `slq-dataset.json` names
    them (`write_dataset_info`), else they are "t2i", "i2t". `max_captions`: keep the first N
    captions of each record (None: all)."""
    _check_max_captions(max_captions)
    path = Path(path)
    if directions is None:
        directions = _directions_beside(path)
    collector = Collector(on_bad_record)
    base = _absolute(path).parent
    parsed = []
    for line in read_lines(path):
        try:
            record = _parse_jsonl_record(line.value(), line.source, base)
            if parsed and type(record) is not type(parsed[0][1]):
                first = '"text"' if isinstance(parsed[0][1], TextRecord) else '"image"'
                raise ValueError(f"the file's first record has {first} targets: all records must be of one kind")
            parsed.append((line.number, record))
        except ValueError as e:
            collector.bad(line.number, line.source, str(e))
    texts = [r for _, r in parsed if isinstance(r, TextRecord)]
    records = texts or _check_images(parsed, collector, check_images)
    return _finish(path, path.stem, records, collector, directions=directions, max_captions=max_captions)


def write_dataset_info(folder: str | os.PathLike, directions: tuple[str, str]) -> Path:
    """Name the directions of every JSONL dataset in `folder` (e.g. a reverse dictionary's "d2w",
    "w2d"), so that whoever loads them gets reports keyed by those names."""
    ImageTextDataset([], "check", directions=tuple(directions))  # refuses a bad pair with its reason
    path = Path(folder) / DATASET_INFO
    atomic_write(path, json.dumps({"directions": list(directions)}, indent=2) + "\n")
    return path


def _directions_beside(path: Path) -> tuple[str, str] | None:
    info = _absolute(path).parent / DATASET_INFO
    if not info.is_file():
        return None
    try:
        directions = json.loads(read_bytes(info))["directions"]
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise error(str(info), f'expected {{"directions": [two names]}}: {exc_reason(e)}') from None
    if not (isinstance(directions, list) and len(directions) == 2):
        raise error(str(info), f'"directions" must list two names, got {directions!r}')
    return tuple(directions)


def write_jsonl(
    records: Iterable[Record],
    path: str | os.PathLike,
    *,
    relative_to: str | os.PathLike | None = None,
) -> None:
    """Write records in our JSONL format, atomically.

    Image paths under `relative_to` (default: the JSONL's folder, which load_jsonl resolves
    against) are written relative to it, with '/' separators, so the folder can be moved; others
    are written absolute rather than as fragile '../..' chains.
    """
    path = Path(path)
    base = _absolute(Path(relative_to) if relative_to is not None else path.parent)
    values = []
    for record in records:
        if isinstance(record, TextRecord):
            target = {"text": record.text}
        else:
            image = _absolute(record.image)
            target = {"image": image.relative_to(base).as_posix() if image.is_relative_to(base) else str(image)}
        values.append({**target, "captions": list(record.captions), **record.meta})
    write_lines(path, values)


# ---------------------------------------------------------------------------------------------
# Karpathy split files (dataset_coco.json, dataset_flickr30k.json)


def _selected_splits(split: str) -> set[str]:
    if split not in SPLIT_CHOICES:
        raise DataError(f"split must be one of {', '.join(SPLIT_CHOICES)}; got {split!r}")
    return set(split.split("+"))


def _karpathy_split(entry: Any) -> str:
    """The entry's split, checked first so entries of other splits cost nothing."""
    if not isinstance(entry, dict):
        raise ValueError(f"entry must be a JSON object, got {type(entry).__name__}")
    split = entry.get("split")
    if split not in KARPATHY_SPLITS:
        raise ValueError(f'"split" must be one of {", ".join(KARPATHY_SPLITS)}')
    return split


def _parse_karpathy_entry(entry: dict, source: str, root: Path) -> ImageRecord:
    """One entry of "images" as a record; ValueError with the reason when it is malformed."""
    filepath = entry.get("filepath")
    if filepath is not None and not isinstance(filepath, str):
        raise ValueError('"filepath" must be a string when present')
    folder = root / filepath if filepath else root
    image = _image_path(entry.get("filename"), folder, "filename")
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise ValueError('"sentences" must be a non-empty list')
    raws = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
    if not all(isinstance(r, str) and r.strip() for r in raws):
        raise ValueError('each of "sentences" must have a non-empty string "raw"')
    meta = {k: v for k, v in entry.items() if k not in _KARPATHY_FIELDS}
    return ImageRecord(image=image, captions=tuple(r.strip() for r in raws), source=source, meta=meta)


def load_karpathy(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    split: str = "test",
    on_bad_record: str = "error",
    check_images: bool = True,
    max_captions: int | None = None,
) -> ImageTextDataset:
    """Load one split of a Karpathy file; image = image_root / filepath / filename. `max_captions`:
    keep the first N sentences of each image (None: all; the standard test protocol: 5)."""
    _check_max_captions(max_captions)
    path = Path(path)
    collector = Collector(on_bad_record)
    wanted = _selected_splits(split)
    root = _absolute(Path(image_root) if image_root is not None else path.parent)
    if check_images and not root.is_dir():
        raise error(str(root), "image root is not a folder")
    try:
        top = json.loads(read_bytes(path))
    except (ValueError, RecursionError) as e:  # also UnicodeDecodeError
        raise error(str(path), f"invalid JSON: {exc_reason(e)}") from None
    if not isinstance(top, dict) or not isinstance(top.get("images"), list):
        raise error(str(path), 'expected a JSON object with an "images" list (Karpathy format)')
    parsed = []
    for i, entry in enumerate(top["images"]):
        source = f"{path}:images[{i}]"
        try:
            if _karpathy_split(entry) in wanted:
                parsed.append((i, _parse_karpathy_entry(entry, source, root)))
        except ValueError as e:
            collector.bad(i, source, str(e))
    records = _check_images(parsed, collector, check_images)
    return _finish(path, f"{path.stem}-{split}", records, collector, f" in split {split!r}", max_captions=max_captions)


# ---------------------------------------------------------------------------------------------
# Entry points used by the rest of slq


def load_dataset(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    on_bad_record: str = "error",
    check_images: bool = True,
    directions: tuple[str, str] | None = None,
    max_captions: int | None = None,
) -> ImageTextDataset | PairDataset:
    """Load a dataset by file type: *.jsonl is our format (captioned targets, or pairs in its pair
    form, returned as a `PairDataset`), *.json a Karpathy split file. `max_captions`: keep the first
    N captions of each record (None: all)."""
    _check_max_captions(max_captions)  # before the file is read
    path = Path(path)
    accepted = "expected a .jsonl file (our format) or a Karpathy .json file (dataset_coco.json)"
    if path.is_dir():
        raise error(str(path), f"is a folder; {accepted}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for flag, value in (("image_root", image_root), ("split", split)):
            if value is not None:
                raise error(str(path), f"{flag} applies only to Karpathy .json files, not JSONL")
        if is_pair_file(path):  # the pair form: {"query": ..., "positive": ..., "negatives": [...]}
            return load_pairs(path, on_bad_record=on_bad_record, check_images=check_images)
        return load_jsonl(path, on_bad_record=on_bad_record, check_images=check_images, directions=directions,
                          max_captions=max_captions)
    if suffix == ".json":
        return load_karpathy(
            path,
            image_root=image_root,
            split=split if split is not None else "test",
            on_bad_record=on_bad_record,
            check_images=check_images,
            max_captions=max_captions,
        )
    raise error(str(path), f"unsupported file type {path.suffix or '(none)'!r}; {accepted}")

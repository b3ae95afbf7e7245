"""Datasets of captioned targets (images, or texts): our JSONL format and the Karpathy split files.

Loading is strict by default because a silently dropped record changes every recall number
computed on the set. `on_bad_record="skip"` leaves bad records out but lists each one, with where
it came from and why, in `ImageTextDataset.skipped`; nothing is dropped without a trace.

Our JSONL format, one record per line (blank lines ignored, unknown keys ignored):

    {"image": "images/0001.jpg", "captions": ["a dog on a beach", "a wet dog"]}

Relative image paths are relative to the JSONL file's folder, so a dataset folder can be moved.
A record may name a text in place of an image: text↔text retrieval, as for a text-only causal-LM
backbone (e.g. a reverse dictionary, where a definition retrieves its word):

    {"text": "cat", "captions": ["feline mammal usually having thick soft fur"]}

All records of one file are of one kind.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from slq.errors import DataError, SLQError

BAD_RECORD_POLICIES = ("error", "skip")
KARPATHY_SPLITS = ("train", "val", "test", "restval")
# "train+restval" is the usual training set of the Karpathy splits (113k COCO images).
SPLIT_CHOICES = KARPATHY_SPLITS + ("train+restval",)

# Characters that str.splitlines() breaks on; escaped so every error message stays one line.
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85)}
_LINE_BREAKS.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
# Breaks json.dumps(ensure_ascii=False) leaves raw; escaped so any line splitter reads our files.
_JSON_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


@dataclass(frozen=True)
class ImageRecord:
    """One image and its captions."""

    image: Path  # absolute path
    captions: tuple[str, ...]  # stripped, non-empty strings
    source: str  # where it came from, for messages: "data/train.jsonl:12"


@dataclass(frozen=True)
class TextRecord:
    """A text target and its captions (the queries that should retrieve it)."""

    text: str  # stripped, non-empty
    captions: tuple[str, ...]
    source: str


Record = ImageRecord | TextRecord


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out under on_bad_record="skip", kept so the caller can report it."""

    source: str
    reason: str


@dataclass
class ImageTextDataset:
    """Records in file order; texts are numbered by flattening the captions in that order.

    The records' targets are all images or all texts (`kind`); "t2i"/"i2t" in reports then read
    caption→target and target→caption.
    """

    records: list[Record]
    name: str  # e.g. the file stem
    skipped: list[SkippedRecord] = field(default_factory=list)

    def texts(self) -> list[str]:
        """All captions, flattened in record order."""
        return [c for r in self.records for c in r.captions]

    def text_to_image(self) -> list[int]:
        """For each text of texts(), the index of the record (image) it describes."""
        return [i for i, r in enumerate(self.records) for _ in r.captions]

    def image_paths(self) -> list[Path]:
        return [r.image for r in self.records]

    @property
    def kind(self) -> str:
        """"image" or "text": what the captions retrieve."""
        return "text" if self.records and isinstance(self.records[0], TextRecord) else "image"

    def __len__(self) -> int:
        return len(self.records)


# ---------------------------------------------------------------------------------------------
# Small helpers


def _one_line(text: str) -> str:
    return text.translate(_LINE_BREAKS)


def _error(source: str, reason: str) -> DataError:
    return DataError(_one_line(f"{source}: {reason}"))


def _exc_reason(exc: BaseException) -> str:
    """A short reason from an exception, falling back to its type when it has no message."""
    return _one_line(str(exc).strip() or type(exc).__name__)


def _check_policy(on_bad_record: str) -> None:
    if on_bad_record not in BAD_RECORD_POLICIES:
        allowed = ", ".join(BAD_RECORD_POLICIES)
        raise DataError(f"on_bad_record must be one of {allowed}; got {on_bad_record!r}")


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise _error(str(path), "is a folder, not a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _error(str(path), "no such file") from None
    except OSError as e:
        raise _error(str(path), f"cannot read: {e.strerror or _exc_reason(e)}") from None


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


class _Collector:
    """Applies the bad-record policy: raise at the first bad record, or remember it and go on."""

    def __init__(self, on_bad_record: str) -> None:
        _check_policy(on_bad_record)
        self.skip = on_bad_record == "skip"
        self.skipped: list[tuple[int, SkippedRecord]] = []  # (position in file, record)

    def bad(self, position: int, source: str, reason: str) -> None:
        if not self.skip:
            raise _error(source, reason)
        self.skipped.append((position, SkippedRecord(source, _one_line(reason))))

    def in_order(self) -> list[SkippedRecord]:
        return [s for _, s in sorted(self.skipped, key=lambda p: p[0])]


def _verify_image(path: Path) -> str | None:
    """Why the image cannot be used, or None.

    The pixels are decoded: verify() alone passes files whose compressed data is garbage, which
    would then fail in the middle of training or evaluation, past the bad-record policy.
    """
    try:
        if not path.is_file():
            return f"image not found: {path}"
        with Image.open(path) as img:
            img.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        return f"cannot read image {path}: {_exc_reason(e)}"
    return None


def _check_images(
    records: list[tuple[int, ImageRecord]], collector: _Collector, check_images: bool
) -> list[ImageRecord]:
    if not check_images:
        return [r for _, r in records]
    kept = []
    for position, record in tqdm(records, desc="checking images", unit="img", disable=None):
        reason = _verify_image(record.image)
        if reason is None:
            kept.append(record)
        else:
            collector.bad(position, record.source, reason)
    return kept


def _finish(
    path: Path, name: str, records: list[ImageRecord], collector: _Collector, what: str = ""
) -> ImageTextDataset:
    skipped = collector.in_order()
    if not records:
        detail = f"{len(skipped)} skipped, first: {skipped[0].reason}" if skipped else "no records"
        raise _error(str(path), f"no usable records{what} ({detail})")
    return ImageTextDataset(records=records, name=name, skipped=skipped)


# ---------------------------------------------------------------------------------------------
# Our JSONL format


def _jsonl_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line) for each non-blank line; splits on b"\\n" only, because JSON
    strings may legally hold U+2028 and friends that str.splitlines() would break on."""
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark written by some editors
        data = data[3:]
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip(b" \t\r"):
            yield number, line


def _parse_jsonl_record(line: bytes, source: str, base: Path) -> Record:
    """One JSONL line as a record; ValueError with the reason when it is malformed."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("line is not valid UTF-8") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"invalid JSON: {_exc_reason(e)}") from None
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
    if "text" in obj:
        return TextRecord(text=obj["text"].strip(), captions=captions, source=source)
    return ImageRecord(image=_image_path(obj["image"], base, "image"), captions=captions, source=source)


def load_jsonl(
    path: str | os.PathLike, on_bad_record: str = "error", check_images: bool = True
) -> ImageTextDataset:
    """Load our JSONL format. Syntax is checked for all lines before any image is opened, so a
    typo on the last line is reported before minutes of image checks."""
    path = Path(path)
    collector = _Collector(on_bad_record)
    base = _absolute(path).parent
    parsed = []
    for number, line in _jsonl_lines(_read_bytes(path)):
        source = f"{path}:{number}"
        try:
            record = _parse_jsonl_record(line, source, base)
            if parsed and type(record) is not type(parsed[0][1]):
                first = '"text"' if isinstance(parsed[0][1], TextRecord) else '"image"'
                raise ValueError(f"the file's first record has {first} targets: all records must be of one kind")
            parsed.append((number, record))
        except ValueError as e:
            collector.bad(number, source, str(e))
    texts = [r for _, r in parsed if isinstance(r, TextRecord)]
    records = texts or _check_images(parsed, collector, check_images)
    return _finish(path, path.stem, records, collector)


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
    lines = []
    for record in records:
        if isinstance(record, TextRecord):
            target = {"text": record.text}
        else:
            image = _absolute(record.image)
            target = {"image": image.relative_to(base).as_posix() if image.is_relative_to(base) else str(image)}
        line = json.dumps({**target, "captions": list(record.captions)}, ensure_ascii=False)
        lines.append(line.translate(_JSON_LINE_BREAKS))
    atomic_write(path, "".join(line + "\n" for line in lines))


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
    return ImageRecord(image=image, captions=tuple(r.strip() for r in raws), source=source)


def load_karpathy(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    split: str = "test",
    on_bad_record: str = "error",
    check_images: bool = True,
) -> ImageTextDataset:
    """Load one split of a Karpathy file; image = image_root / filepath / filename."""
    path = Path(path)
    collector = _Collector(on_bad_record)
    wanted = _selected_splits(split)
    root = _absolute(Path(image_root) if image_root is not None else path.parent)
    if check_images and not root.is_dir():
        raise _error(str(root), "image root is not a folder")
    try:
        top = json.loads(_read_bytes(path))
    except (ValueError, RecursionError) as e:  # also UnicodeDecodeError
        raise _error(str(path), f"invalid JSON: {_exc_reason(e)}") from None
    if not isinstance(top, dict) or not isinstance(top.get("images"), list):
        raise _error(str(path), 'expected a JSON object with an "images" list (Karpathy format)')
    parsed = []
    for i, entry in enumerate(top["images"]):
        source = f"{path}:images[{i}]"
        try:
            if _karpathy_split(entry) in wanted:
                parsed.append((i, _parse_karpathy_entry(entry, source, root)))
        except ValueError as e:
            collector.bad(i, source, str(e))
    records = _check_images(parsed, collector, check_images)
    return _finish(path, f"{path.stem}-{split}", records, collector, f" in split {split!r}")


# ---------------------------------------------------------------------------------------------
# Entry points used by the rest of slq


def load_dataset(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    on_bad_record: str = "error",
    check_images: bool = True,
) -> ImageTextDataset:
    """Load a dataset by file type: *.jsonl is our format, *.json a Karpathy split file."""
    path = Path(path)
    accepted = "expected a .jsonl file (our format) or a Karpathy .json file (dataset_coco.json)"
    if path.is_dir():
        raise _error(str(path), f"is a folder; {accepted}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for flag, value in (("image_root", image_root), ("split", split)):
            if value is not None:
                raise _error(str(path), f"{flag} applies only to Karpathy .json files, not JSONL")
        return load_jsonl(path, on_bad_record=on_bad_record, check_images=check_images)
    if suffix == ".json":
        return load_karpathy(
            path,
            image_root=image_root,
            split=split if split is not None else "test",
            on_bad_record=on_bad_record,
            check_images=check_images,
        )
    raise _error(str(path), f"unsupported file type {path.suffix or '(none)'!r}; {accepted}")


def load_image(
    record_or_path: ImageRecord | str | os.PathLike, source: str | None = None
) -> Image.Image:
    """Open and fully decode an image as RGB.

    Decoding here, not lazily, makes a truncated file fail with its name instead of deep inside
    a batch collate.
    """
    if isinstance(record_or_path, ImageRecord):
        path, default_source = record_or_path.image, record_or_path.source
    else:
        path = Path(record_or_path)
        default_source = str(path)
    source = source if source is not None else default_source
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")  # a copy, so closing the file is safe
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise _error(source, f"cannot read image {path}: {_exc_reason(e)}") from None


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a file so readers see the old content or the new, never a half-written file.

    The temporary file sits in the target's folder because os.replace is atomic only within
    one filesystem. It is created with mode 0o666 so the umask applies as for a plain open().
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            reason = e.strerror or _exc_reason(e)
            raise SLQError(_one_line(f"{path}: cannot write: {reason}")) from None
        raise

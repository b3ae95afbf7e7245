"""Records, datasets and the bad-record policy shared by every format.

A record is one retrieval target (an image, or a text) with the captions that should retrieve it.
Fields a file gives beyond those slq reads (a category, a record's objects, an id) are kept in
`meta`, so a benchmark's own labels travel with its records and are written back out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, SettingError, SLQError, one_line

BAD_RECORD_POLICIES = ("error", "skip")
IMAGE_DIRECTIONS = ("t2i", "i2t")  # caption -> target, target -> caption


@dataclass(frozen=True)
class ImageRecord:
    """One image and its captions."""

    image: Path  # absolute path
    captions: tuple[str, ...]  # stripped, non-empty strings
    source: str  # where it came from, for messages: "data/train.jsonl:12"
    meta: Mapping = field(default_factory=dict, compare=False)  # the record's other fields


@dataclass(frozen=True)
class TextRecord:
    """A text target and its captions (the queries that should retrieve it)."""

    text: str  # stripped, non-empty
    captions: tuple[str, ...]
    source: str
    meta: Mapping = field(default_factory=dict, compare=False)


Record = ImageRecord | TextRecord


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out under on_bad_record="skip", kept so the caller can report it."""

    source: str
    reason: str


@dataclass
class ImageTextDataset:
    """Records in file order; texts are numbered by flattening the captions in that order.

    The records' targets are all images or all texts (`kind`). `directions` names the two ways
    of retrieving, caption→target and target→caption: "t2i"/"i2t" unless the dataset says
    otherwise (a reverse dictionary: "d2w"/"w2d"); reports are keyed by these names.
    """

    records: list[Record]
    name: str  # e.g. the file stem
    skipped: list[SkippedRecord] = field(default_factory=list)
    directions: tuple[str, str] = IMAGE_DIRECTIONS

    def __post_init__(self):
        if not (isinstance(self.directions, (tuple, list)) and len(self.directions) == 2
                and all(isinstance(d, str) and d for d in self.directions) and len(set(self.directions)) == 2):
            raise SLQError(f"dataset {self.name}: directions must be two different non-empty names, "
                           f"got {self.directions!r}")
        self.directions = tuple(self.directions)

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


def error(source: str, reason: str) -> DataError:
    """A one-line DataError naming where (file, file:line, record) and why."""
    return DataError(one_line(f"{source}: {reason}"))


def exc_reason(exc: BaseException) -> str:
    """A short reason from an exception, falling back to its type when it has no message."""
    return one_line(str(exc).strip() or type(exc).__name__)


def check_policy(on_bad_record: str) -> None:
    if on_bad_record not in BAD_RECORD_POLICIES:
        allowed = ", ".join(BAD_RECORD_POLICIES)
        raise SettingError("on_bad_record", on_bad_record, f"must be one of {allowed}")


class Collector:
    """Applies the bad-record policy: raise at the first bad record, or remember it and go on."""

    def __init__(self, on_bad_record: str) -> None:
        check_policy(on_bad_record)
        self.skip = on_bad_record == "skip"
        self.skipped: list[tuple[int, SkippedRecord]] = []  # (position in file, record)

    def bad(self, position: int, source: str, reason: str) -> None:
        if not self.skip:
            raise error(source, reason)
        self.skipped.append((position, SkippedRecord(source, one_line(reason))))

    def in_order(self) -> list[SkippedRecord]:
        return [s for _, s in sorted(self.skipped, key=lambda p: p[0])]

    def nothing_usable(self, source: str, what: str = "records") -> DataError:
        """The error for a file that left nothing to use, saying why: empty, or how many were
        skipped and the first reason. `what` names the records ("pairs", "records in split 'test'")."""
        skipped = self.in_order()
        detail = f"{len(skipped)} skipped, first: {skipped[0].reason}" if skipped else "no records"
        return error(source, f"no usable {what} ({detail})")

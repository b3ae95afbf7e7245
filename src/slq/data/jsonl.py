"""JSON lines, the one way slq reads and writes them: every JSONL file of slq goes through here.

Reading splits on b"\\n" only, because a JSON string may legally hold U+2028 and friends that
str.splitlines() would break a record on; a UTF-8 byte-order mark is dropped and blank lines are
skipped, but lines keep the numbers an editor shows, so every error names `file:line`. Writing
escapes the three line breaks json.dumps(ensure_ascii=False) leaves raw (U+0085, U+2028, U+2029),
so any line splitter, ours or another's, reads one record per line.

What a record means (a captioned target, a pair, an MMEB row) is the caller's business; this module
knows only lines and JSON values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write
from .records import error, exc_reason

# Breaks json.dumps(ensure_ascii=False) leaves raw (it escapes every control character below U+0020).
LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_BOM = b"\xef\xbb\xbf"  # the UTF-8 byte order mark some editors write


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line of a JSONL file, not yet decoded."""

    number: int  # from 1, as an editor counts lines
    source: str  # "data/train.jsonl:12", for messages
    raw: bytes

    def value(self) -> Any:
        """The line's JSON value; ValueError saying why when it is not UTF-8 or not JSON."""
        try:
            return json.loads(self.raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError("line is not valid UTF-8") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"invalid JSON: {exc_reason(e)}") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file; a folder, a missing or an unreadable file is a DataError naming it."""
    path = Path(path)
    if path.is_dir():
        raise error(str(path), "is a folder, not a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(str(path), "no such file") from None
    except OSError as e:
        raise error(str(path), f"cannot read: {e.strerror or exc_reason(e)}") from None


def split_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line) for each non-blank line of JSONL bytes."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip(b" \t\r"):
            yield number, line


def read_lines(path: str | os.PathLike) -> list[JsonLine]:
    """The non-blank lines of a JSONL file, each to be decoded by its `value()`, so a caller can
    collect every bad line (with its number) before it gives up or skips them."""
    return [JsonLine(number, f"{path}:{number}", line) for number, line in split_lines(read_bytes(path))]


def first_value(path: str | os.PathLike) -> Any | None:
    """The JSON value of a file's first non-blank line, read without the rest; None when the file
    cannot be read or that line is not JSON (the full reader reports such problems with context)."""
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    raw = line[len(_BOM):] if number == 1 and line.startswith(_BOM) else line
                    return JsonLine(number, f"{path}:{number}", raw.rstrip(b"\r\n")).value()
    except (OSError, ValueError):
        return None
    return None


def dumps_line(value: Any) -> str:
    """One JSON value as one line (without its newline): UTF-8 text kept readable, line breaks escaped."""
    return json.dumps(value, ensure_ascii=False).translate(LINE_BREAK_ESCAPES)


def write_lines(path: str | os.PathLike, values: Iterable[Any]) -> None:
    """Write JSON values one a line, atomically (a reader never sees half a file)."""
    atomic_write(path, "".join(dumps_line(v) + "\n" for v in values))

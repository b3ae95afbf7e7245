"""What `slq embed` (and later `slq index`) reads: a text file of one text a line, a folder of
images, a JSONL dataset's targets, or a JSONL file of inputs of any kind. Row i of the output is
line i, file i, or record i."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .formats import load_jsonl
from .images import IMAGE_SUFFIXES, image_problem
from .jsonl import read_lines
from .pairs import Input, parse_side
from .records import Record, error, exc_reason

logger = logging.getLogger("slq")


def read_texts(path: str | os.PathLike) -> list[str]:
    """The file's lines, each a text; an empty line or an unreadable file is an error naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first text
    except (OSError, UnicodeDecodeError) as e:
        raise error(str(path), f"cannot read texts: {e}") from None
    # Universal newlines (\n, \r\n, \r) end a line, nothing else (str.splitlines would also split on
    # U+2028, \f, ...): row i of the embeddings is line i of the file, as an editor shows it.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise error(f"{path}:{number}", "empty line; a texts file takes one non-empty text per line")
    if not lines:
        raise error(str(path), "no texts")
    return lines


def list_targets(path: str | os.PathLike, on_bad_record: str = "error") -> list[Path] | list[Record]:
    """Image files of a folder (sorted by name), or the records of a JSONL dataset (file order;
    skipped records are logged, and have no row)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise error(str(path), f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        return files
    if path.suffix.lower() == ".jsonl":
        dataset = load_jsonl(path, on_bad_record=on_bad_record)
        for skipped in dataset.skipped:
            logger.warning("skipped %s: %s (no row for it)", skipped.source, skipped.reason)
        return dataset.records
    raise error(str(path), "expected a folder of images or a .jsonl dataset")


def read_inputs(path: str | os.PathLike) -> list[Input]:
    """A JSONL file of inputs, one per line: {"text": …, "image": …, "instruction": …} with a text,
    an image (relative to the file's folder) or both, or a plain JSON string for a text. Any bad
    line or unreadable image is an error naming it: row i of the output is line i."""
    path = Path(path)
    base = Path(os.path.abspath(path)).parent
    inputs = []
    for line in read_lines(path):
        try:
            inputs.append(parse_side(line.value(), base, "input"))
        except ValueError as e:
            raise error(line.source, exc_reason(e)) from None
        image = inputs[-1].image
        problem = image_problem(image) if image is not None else None
        if problem:
            raise error(line.source, problem)
    if not inputs:
        raise error(str(path), "no inputs")
    return inputs

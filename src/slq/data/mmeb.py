"""MMEB-format evaluation sets: each query with its own candidates, the first the positive.

MMEB (the Massive Multimodal Embedding Benchmark of VLM2Vec) poses 36 datasets in four meta-tasks
(classification, visual question answering, retrieval, visual grounding). Its published
evaluation files hold one row per query:

    {"qry_text": "<|image_1|>\\nRepresent the given image for classification", "qry_img_path": "ImageNet-1K/1.jpg",
     "tgt_text": ["tench", "goldfish", ...], "tgt_img_path": ["", "", ...]}

`tgt_text` and `tgt_img_path` are aligned candidate lists whose first entry is the positive; an
empty image path means a text without an image. "<|image_1|>" marks where the image goes in the
model the files were written for; slq places images by the checkpoint's own chat template, so the
marker is removed and the rest of the text follows the image (`slq.data.Input`). An optional
`qry_inst` is the query's instruction.

A folder holds one dataset per `NAME.jsonl` or `NAME.parquet`, or per sub-folder `NAME/` of such
files (the layout of the published parquet files; reading parquet needs pyarrow). Image paths are
relative to an image root (by default the folder). Which meta-task a dataset belongs to comes from
MMEB's own list, or from a `slq-mmeb.json` beside the files ({"datasets": {"NAME": "vqa"}}) for
sets of one's own, such as the suite `slq data mmeb-suite` makes.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .jsonl import read_lines
from .pairs import Input
from .records import Collector, error, exc_reason

logger = logging.getLogger("slq")

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
MMEB_DATASETS = {  # MMEB v1's 36 evaluation datasets by meta-task, as its paper lists them
    "classification": ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
                       "ImageNet-R", "ObjectNet", "Country211"),
    "vqa": ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz", "GQA",
            "TextVQA"),
    "retrieval": ("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS",
                  "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS"),
    "grounding": ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"),
}
META_TASK_OF = {name: task for task, names in MMEB_DATASETS.items() for name in names}
SUITE_INFO = "slq-mmeb.json"
_IMAGE_MARKER = re.compile(r"<\|image_\d+\|>|<image>")
_SUFFIXES = (".jsonl", ".parquet")


@dataclass
class MMEBTask:
    """One dataset: queries, each with its own candidates (candidates[i][0] is query i's positive)."""

    name: str
    meta_task: str
    queries: list[Input]
    candidates: list[list[Input]]
    sources: list[str] = field(default_factory=list)  # where each query came from, for messages
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.queries)


def find_datasets(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """The datasets of an MMEB-format folder, by name, each with its files in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise error(str(folder), "no such folder (expected MMEB-format files: NAME.jsonl, NAME.parquet or NAME/)")
    found: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in _SUFFIXES:
            found.setdefault(entry.stem, []).append(entry)
        elif entry.is_dir():
            files = sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)
            if files:
                found.setdefault(entry.name, []).extend(files)
    return found


def meta_tasks_of(folder: str | os.PathLike) -> dict[str, str]:
    """Meta-task of each dataset the folder's `slq-mmeb.json` names, over MMEB's own list."""
    tasks = dict(META_TASK_OF)
    info = Path(folder) / SUITE_INFO
    if info.is_file():
        try:
            named = json.loads(info.read_text(encoding="utf-8"))["datasets"]
            if not isinstance(named, dict) or not all(isinstance(v, str) for v in named.values()):
                raise ValueError('"datasets" must map names to meta-tasks')
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise error(str(info), f'expected {{"datasets": {{"NAME": "meta-task"}}}}: {exc_reason(e)}') from None
        tasks.update(named)
    return tasks


def load_mmeb(folder: str | os.PathLike, datasets: Sequence[str] | None = None, *,
              image_root: str | os.PathLike | None = None, on_bad_record: str = "error",
              max_queries: int | None = None) -> tuple[list[MMEBTask], list[str]]:
    """The datasets of `folder` (all, or those named in `datasets`), and the names asked for that
    it does not hold. `max_queries` keeps the first N queries of each (a quick look)."""
    folder = Path(folder)
    found = find_datasets(folder)
    if not found:
        raise error(str(folder), "holds no MMEB-format files (NAME.jsonl, NAME.parquet or NAME/ of them)")
    names = list(found) if datasets is None else list(dict.fromkeys(datasets))
    missing = [n for n in names if n not in found]
    tasks_of = meta_tasks_of(folder)
    root = Path(image_root) if image_root is not None else folder
    tasks = [load_task(n, found[n], tasks_of.get(n, "other"), root, on_bad_record, max_queries)
             for n in names if n in found]
    return tasks, missing


def load_task(name: str, files: Sequence[Path], meta_task: str, image_root: Path, on_bad_record: str = "error",
              max_queries: int | None = None) -> MMEBTask:
    collector = Collector(on_bad_record)
    task = MMEBTask(name, meta_task, [], [])
    position = 0
    for path in files:
        for number, row in _rows(path):
            if max_queries is not None and len(task) >= max_queries:
                break
            source = f"{path}:{number}"
            try:
                query, candidates = _parse_row(row, image_root)
            except ValueError as e:
                collector.bad(position, source, str(e))
            else:
                task.queries.append(query)
                task.candidates.append(candidates)
                task.sources.append(source)
            position += 1
    task.skipped = collector.in_order()
    if not task.queries:
        raise error(str(files[0]), f"dataset {name} has no usable queries")
    missing_images = _missing_images(task)
    if missing_images:
        shown = ", ".join(str(p) for p in missing_images[:3])
        raise error(name, f"{len(missing_images)} image file(s) not found, e.g. {shown} (image root: {image_root})")
    return task


def _rows(path: Path):
    """(row number from 1, row dict) of a JSONL or parquet file."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise error(str(path), "reading parquet needs pyarrow: pip install pyarrow") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises its own types for a damaged file
            raise error(str(path), f"cannot read as parquet: {exc_reason(e)}") from None
        yield from enumerate(rows, start=1)
        return
    for line in read_lines(path):
        try:
            yield line.number, line.value()
        except ValueError as e:
            yield line.number, e


def _parse_row(row, image_root: Path) -> tuple[Input, list[Input]]:
    if isinstance(row, ValueError):
        raise row
    if not isinstance(row, dict):
        raise ValueError(f"row must be an object, got {type(row).__name__}")
    for key in ("qry_text", "tgt_text"):
        if key not in row:
            raise ValueError(f'missing "{key}"')
    texts, images = row["tgt_text"], row.get("tgt_img_path") or [""] * _length(row["tgt_text"])
    if not isinstance(texts, list) or not texts:
        raise ValueError('"tgt_text" must be a non-empty list (the first candidate is the positive)')
    if not isinstance(images, list) or len(images) != len(texts):
        raise ValueError(f'"tgt_img_path" must list one path (or "") per candidate: {len(texts)} texts, '
                         f"{_length(images)} paths")
    query = _side(row["qry_text"], row.get("qry_img_path"), image_root, "query", row.get("qry_inst"))
    candidates = [_side(t, p, image_root, f"candidate {i}") for i, (t, p) in enumerate(zip(texts, images))]
    return query, candidates


def _length(value) -> int | str:
    return len(value) if isinstance(value, list) else type(value).__name__


def _side(text, image, image_root: Path, what: str, instruction=None) -> Input:
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{what}: text must be a string, got {type(text).__name__}")
    if image is not None and not isinstance(image, str):
        raise ValueError(f"{what}: image path must be a string, got {type(image).__name__}")
    if instruction is not None and not isinstance(instruction, str):
        raise ValueError(f"{what}: instruction must be a string")
    text = _IMAGE_MARKER.sub("", text or "").strip()
    instruction = _IMAGE_MARKER.sub("", instruction or "").strip()
    path = Path(os.path.abspath(image_root / image)) if image and image.strip() else None
    if not text and path is None:
        raise ValueError(f"{what} has neither text nor image")
    return Input(text or None, path, instruction)


def _missing_images(task: MMEBTask) -> list[Path]:
    paths = {x.image for x in task.queries if x.image is not None}
    paths.update(c.image for cs in task.candidates for c in cs if c.image is not None)
    return sorted(p for p in paths if not p.is_file())

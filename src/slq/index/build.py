"""`update_index`: a folder of images or a JSONL dataset, embedded into an index folder, incrementally.

A run compares the source with the index: files it has not seen, or whose size or modification
time changed, are embedded; items whose file is gone are dropped; the rest are kept as they are
(a JSONL record whose captions changed gets its new captions without being embedded again). So
re-running after adding a few photos costs a few photos, and a run with nothing to do never loads
the model.

Work is done in sorted key order, in batches of `batch_size`, each committed with its vectors in
one transaction. A run killed at any moment has whole batches only; the next run's remaining work
is the uninterrupted run's remaining batches, the same batches, so it ends with the same items, ids
and vectors. Files that cannot be used (unreadable, too large, too many pixels, a link out of the
folder) are recorded with the reason, counted, and retried only when they change.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .._io import atomic_write, check_settings, file_sha256, setting
from .._version import __version__
from ..adapter import WEIGHTS_NAME, load_adapter
from ..data.formats import load_jsonl
from ..data.images import IMAGE_SUFFIXES
from ..data.records import TextRecord, exc_reason
from ..encoder import length_order
from ..errors import SLQError
from ..prefetch import prepare_ahead, resolve_workers
from . import ann, store

logger = logging.getLogger("slq")

KINDS = ("images", "texts")


@dataclass(frozen=True)
class IndexConfig:
    """How `update_index` embeds and which search structure it builds."""

    batch_size: int = setting(32, "items per forward pass, committed together (a kill loses at most one batch)",
                              minimum=1)
    max_image_mb: float = setting(64.0, "image files larger than this many MB are skipped", positive=True)
    max_image_pixels: int = setting(40_000_000, "images with more pixels are skipped (decompression bombs)", minimum=1)
    index_type: str = setting("auto", "search structure: auto (by size and memory, as autofaiss chooses), flat "
                                      "(exact), hnsw, ivf or ivfpq (compressed)", choices=ann.ANN_TYPES)
    exact_max: int = setting(20_000, "auto: exact search up to this many items, approximate above", minimum=1)
    memory_mb: int | None = setting(None, "auto: memory budget of the search structure in MB; vectors that "
                                          "exceed it are compressed (default: half the machine's memory)", minimum=1)
    target_recall: float = setting(0.97, "an approximate index's search setting is tuned to this recall@10 "
                                         "against exact search", positive=True, maximum=1)
    workers: int | None = setting(None, "processes that open and prepare the next batches while the model runs; "
                                        "the vectors are the same bit for bit (0: in the main process; default: "
                                        "min(4, CPU cores - 1))", minimum=0)

    def __post_init__(self):
        check_settings(self)


@dataclass
class Item:
    """One thing in the source: an image file (with captions from a JSONL) or a text."""

    key: str
    path: Path | None = None
    text: str | None = None
    captions: tuple[str, ...] = ()
    size: int | None = None
    mtime_ns: int | None = None
    problem: str | None = None  # known before opening it (a link out of the folder)


@dataclass
class IndexReport:
    """What a run did. `skipped` counts every unusable file the index knows; `newly_skipped` lists
    this run's (source, reason)."""

    out: Path
    kind: str
    items: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0
    newly_skipped: list[tuple[str, str]] = field(default_factory=list)
    ann: dict = field(default_factory=dict)
    seconds: float = 0.0


# --- the source ---------------------------------------------------------------------------------

def scan_folder(root: Path) -> Iterator[Item]:
    """Image files under `root`, recursively; hidden files and folders are left out, linked folders
    are not followed, and a linked file that resolves outside `root` is an item with a problem."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            resolved = path.resolve()
            try:
                st = resolved.stat()
            except OSError as e:
                yield Item(str(path), path, problem=f"cannot read image {path}: {exc_reason(e)}")
                continue
            if not resolved.is_relative_to(root):
                yield Item(str(path), path, size=st.st_size, mtime_ns=st.st_mtime_ns,
                           problem=f"{path} links outside the indexed folder {root}")
                continue
            yield Item(str(resolved), resolved, size=st.st_size, mtime_ns=st.st_mtime_ns)


def scan_jsonl(path: Path, root: Path) -> Iterator[Item]:
    """A JSONL dataset's targets: images (inside `root`) with their captions, or texts."""
    import hashlib

    for record in load_jsonl(path, on_bad_record="skip").records:
        if isinstance(record, TextRecord):
            yield Item("text:" + hashlib.sha256(record.text.encode()).hexdigest(), text=record.text,
                       captions=record.captions)
            continue
        resolved = record.image.resolve()
        try:
            st = resolved.stat()
        except OSError as e:
            yield Item(str(record.image), record.image, captions=record.captions,
                       problem=f"{record.source}: cannot read image {record.image}: {exc_reason(e)}")
            continue
        problem = None if resolved.is_relative_to(root) else f"{record.source}: {record.image} is outside the " \
                                                              f"index root {root} (see --root)"
        yield Item(str(resolved), resolved, captions=record.captions, size=st.st_size, mtime_ns=st.st_mtime_ns,
                   problem=problem)


def scan(source: Path, root: Path) -> tuple[str, list[Item]]:
    """(kind, items by key) of a folder or a JSONL; a key seen twice keeps its first record."""
    if source.is_dir():
        items, kind = list(scan_folder(root)), "images"
    elif source.suffix.lower() == ".jsonl" and source.is_file():
        items = list(scan_jsonl(source, root))
        kind = "texts" if items and items[0].text is not None else "images"
    else:
        raise SLQError(f"{source}: expected a folder of images or a .jsonl dataset")
    unique: dict[str, Item] = {}
    for item in items:
        unique.setdefault(item.key, item)
    if not unique:
        raise SLQError(f"{source}: nothing to index (looked for {', '.join(IMAGE_SUFFIXES)} files)" if kind == "images"
                       else f"{source}: nothing to index")
    return kind, sorted(unique.values(), key=lambda item: item.key)


# --- opening images within bounds ----------------------------------------------------------------

def open_bounded(path: Path, max_bytes: int, max_pixels: int) -> Image.Image:
    """The decoded RGB image, or ValueError saying why not (size is checked before decoding)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: {size / 2**20:.1f} MB, more than the {max_bytes / 2**20:.0f} MB allowed")
    with Image.open(path) as img:
        if img.width * img.height > max_pixels:
            raise ValueError(f"{path}: {img.width}x{img.height} pixels, more than the {max_pixels} allowed")
        img.load()
        return img.convert("RGB")


# --- the run -----------------------------------------------------------------------------------

def update_index(out: str | os.PathLike, source: str | os.PathLike | None = None, *,
                 backbone: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None, config: IndexConfig | None = None,
                 load_retriever: Callable | None = None, progress: bool | None = None) -> IndexReport:
    """Create or bring up to date the index in `out` for `source` (a folder of images or a JSONL).

    A new index needs `source`, `backbone` and `adapter`; an existing one remembers them (giving
    another source or another adapter is refused: that is another index). `root` bounds what a
    JSONL's images may be (default: its folder); a folder source is its own root. `load_retriever`
    (backbone, adapter) -> encoder replaces `SLQRetriever.from_pretrained` (device, dtype).
    """
    config = config or IndexConfig()
    out = Path(out)
    started = time.perf_counter()
    db = store.connect(out, create=True)
    try:
        meta = _identity(db, out, source, backbone, adapter, root)
        source, root = Path(meta["source"]), Path(meta["root"])
        kind, items = scan(source, root)
        if meta.get("kind", kind) != kind:
            raise SLQError(f"{source}: now holds {kind}, but the index in {out} holds {meta['kind']}")
        with db:
            store.set_meta(db, kind=kind, **{k: v for k, v in meta.items() if k != "kind"})
        report = IndexReport(out, kind)
        todo = _plan(db, items, report)
        if todo:
            encoder = (load_retriever or _default_loader)(meta["backbone"], meta["adapter"])
            _embed(db, todo, encoder, kind, config, report, progress)
        report.items = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        report.skipped = db.execute("SELECT COUNT(*) FROM skipped").fetchone()[0]
        report.ann = _ensure_ann(db, out, config)
    finally:
        db.close()
    report.seconds = time.perf_counter() - started
    return report


def _default_loader(backbone: str, adapter: str):
    from ..retriever import SLQRetriever

    return SLQRetriever.from_pretrained(backbone, adapter)


def _identity(db, out: Path, source, backbone, adapter, root) -> dict:
    """The index's source, root, backbone and adapter: recorded on the first run, checked later."""
    meta = store.get_meta(db)
    if meta and meta.get("format") != store.FORMAT:
        raise SLQError(f"{out}: index format {meta.get('format')} is not this slq's ({store.FORMAT}); build a new one")
    if source is not None:
        source = Path(source).resolve()
        if meta.get("source") not in (None, str(source)):
            raise SLQError(f"{out}: this index is of {meta['source']}, not {source}; give another --out")
    elif "source" not in meta:
        raise SLQError(f"{out}: a new index needs its source (a folder of images or a .jsonl)")
    source = source or Path(meta["source"])
    if root is not None and meta.get("root") not in (None, str(Path(root).resolve())):
        raise SLQError(f"{out}: this index's root is {meta['root']}, not {Path(root).resolve()}")
    if source.is_dir():
        root = source  # a folder is its own root
    else:
        root = Path(meta["root"]) if "root" in meta else Path(root).resolve() if root is not None else source.parent
    if adapter is None and "adapter" not in meta or backbone is None and "backbone" not in meta:
        raise SLQError(f"{out}: a new index needs --backbone and --adapter")
    if adapter is not None:
        adapter_config, _ = load_adapter(adapter)  # a malformed adapter fails here, before any scan
        sha = file_sha256(Path(adapter) / WEIGHTS_NAME)
        if meta.get("adapter_sha256") not in (None, sha):
            raise SLQError(f"{out}: this index was built with another adapter ({meta['adapter']}, weights sha256 "
                           f"{meta['adapter_sha256'][:12]}...); its vectors would not match queries from "
                           f"{adapter}: give another --out")
        meta.update(adapter=str(Path(adapter).resolve()), adapter_sha256=sha,
                    backbone_fingerprint=adapter_config.backbone, image_fit=adapter_config.image_fit,
                    dim=adapter_config.hidden_size)
    if backbone is not None:
        meta["backbone"] = str(Path(backbone).resolve())
    meta.setdefault("created_by", f"slq {__version__}")
    return {**meta, "format": store.FORMAT, "source": str(source), "root": str(root)}


def _plan(db, items: list[Item], report: IndexReport) -> list[Item]:
    """Drop what is gone, refresh captions, count what is unchanged; return what must be embedded."""
    known = {key: (id_, size, mtime, captions) for id_, key, size, mtime, captions in
             db.execute("SELECT id, key, size, mtime_ns, captions FROM items")}
    skipped = {key: (size, mtime) for key, size, mtime in db.execute("SELECT key, size, mtime_ns FROM skipped")}
    present = {item.key for item in items}
    gone = [key for key in known if key not in present]
    todo, captions_changed = [], []
    for item in items:
        if item.key in known and known[item.key][1:3] == (item.size, item.mtime_ns):
            report.unchanged += 1
            if json.loads(known[item.key][3]) != list(item.captions):
                captions_changed.append((json.dumps(list(item.captions)), item.key))
        elif item.key in skipped and skipped[item.key] == (item.size, item.mtime_ns):
            continue  # still the file that could not be used
        else:
            todo.append(item)
    with db:
        db.executemany("DELETE FROM skipped WHERE key = ?", [(key,) for key in skipped if key not in present])
        if gone or captions_changed:  # the items changed: the search structure must be rebuilt
            db.executemany("DELETE FROM items WHERE key = ?", [(key,) for key in gone])
            db.executemany("UPDATE items SET captions = ? WHERE key = ?", captions_changed)
            store.bump_generation(db)
    report.removed = len(gone)
    if gone or todo:
        logger.info("index %s: %d new or changed, %d gone, %d unchanged", report.out, len(todo), len(gone),
                    report.unchanged)
    return todo


def _embed(db, todo: list[Item], encoder, kind: str, config: IndexConfig, report: IndexReport,
           progress: bool | None) -> None:
    known = {key for (key,) in db.execute("SELECT key FROM items")}
    bar = tqdm(total=len(todo), desc=f"indexing {kind}", unit="item",
               disable=None if progress is None else not progress)
    batches = [todo[start:start + config.batch_size] for start in range(0, len(todo), config.batch_size)]
    prepared = prepare_ahead(functools.partial(_prepare_batch, encoder, kind, config), batches,
                             workers=resolve_workers(config.workers))
    for batch, (good, bad, order, built) in zip(batches, prepared):
        vectors = np.zeros((len(good), encoder.dim), np.float32)
        if good:  # as encode_text / encode_image embed one batch: longest first, then back in order
            with torch.no_grad():
                vectors[order] = encoder.embed(encoder.backbone.place(built)).float().cpu().numpy()
        with db:  # the batch's rows and vectors, all or nothing
            for item, vector in zip(good, vectors):
                row = (str(item.path) if item.path else None, item.text, json.dumps(list(item.captions)), item.size,
                       item.mtime_ns, store.to_blob(vector))
                if item.key in known:
                    db.execute("UPDATE items SET path=?, text=?, captions=?, size=?, mtime_ns=?, vector=? "
                               "WHERE key=?", (*row, item.key))
                    report.updated += 1
                else:
                    db.execute("INSERT INTO items (path, text, captions, size, mtime_ns, vector, key) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)", (*row, item.key))
                    report.added += 1
                db.execute("DELETE FROM skipped WHERE key = ?", (item.key,))
            for item, reason in bad:
                db.execute("DELETE FROM items WHERE key = ?", (item.key,))
                db.execute("INSERT OR REPLACE INTO skipped (key, path, size, mtime_ns, reason) VALUES (?, ?, ?, ?, ?)",
                           (item.key, str(item.path), item.size, item.mtime_ns, reason))
                report.newly_skipped.append((str(item.path), reason))
                logger.warning("skipped %s", reason)
            store.bump_generation(db)
        bar.update(len(batch))
    bar.close()


def _prepare_batch(encoder, kind: str, config: IndexConfig, batch: list[Item]):
    """A batch's usable items, the unusable ones with their reasons, and the prompt batch of the
    usable ones (on the CPU) in `length_order` (what a worker process runs)."""
    good, inputs, bad = [], [], []
    for item in batch:
        if kind == "texts":
            good.append(item)
            inputs.append(item.text)
            continue
        try:
            if item.problem is not None:
                raise ValueError(item.problem)
            inputs.append(open_bounded(item.path, int(config.max_image_mb * 2**20), config.max_image_pixels))
            good.append(item)
        except Exception as e:  # PIL raises many types; every one means "this file cannot be used"
            reason = str(e) if isinstance(e, ValueError) and str(item.path) in str(e) else \
                f"cannot read image {item.path}: {exc_reason(e)}"
            bad.append((item, reason))
    if not inputs:
        return good, bad, None, None
    order = length_order([len(t) for t in inputs] if kind == "texts" else [im.width * im.height for im in inputs])
    built = encoder.build_batch("text" if kind == "texts" else "image", [inputs[i] for i in order])
    return good, bad, order.copy(), built


def _ensure_ann(db, out: Path, config: IndexConfig) -> dict:
    """Build the FAISS file when the items changed since the last one; return its description."""
    meta = store.get_meta(db)
    generation = meta.get("generation", 0)
    current = meta.get("ann")
    if current and current.get("generation") == generation and (out / current["file"]).is_file():
        return current
    ids, vectors = store.all_vectors(db, meta["dim"])
    memory = config.memory_mb * 2**20 if config.memory_mb is not None else None
    choice = ann.choose(len(ids), meta["dim"], kind=config.index_type, exact_max=config.exact_max,
                        memory_bytes=memory)
    if choice.kind in ("ivf", "ivfpq") and len(ids) < (256 if choice.kind == "ivfpq" else 39):
        choice = ann.AnnChoice("flat", "Flat", f"{len(ids)} vectors: too few to train {choice.kind}; exact search")
    logger.info("building the search structure over %d vectors: %s (%s)", len(ids), choice.factory, choice.reason)
    built = ann.build(vectors, ids, choice, target_recall=config.target_recall)
    name = f"ann-{generation}.faiss"
    atomic_write(out / name, ann.to_bytes(built))
    description = {**built.describe(), "file": name, "generation": generation}
    with db:
        store.set_meta(db, ann=description)
    for old in out.glob("ann-*.faiss"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return description

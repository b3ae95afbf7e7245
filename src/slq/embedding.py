"""A corpus embedded into one .npy file in resumable pieces, by one process or several (torchrun).

The corpus is cut into pieces of `piece_size` consecutive items. Each piece is embedded with the
encoder's own `encode_text` / `encode_targets` and written atomically to `OUT.parts/` as soon as
it is done; when every piece exists, process 0 joins them in order into OUT and removes the
folder. The cut does not depend on the number of processes, so a killed run started again, with
any number of processes, embeds only the pieces that are missing. The missing pieces are dealt
out round-robin (piece k to process k % W in a fresh run), so the processes finish together also
when a resume left them unequal work.

A manifest in the folder names the job: the items, the encoder (its trained tensors, class and
instructions, the backbone's dtype and input settings), the backbone's fingerprint, the piece size
and the width. A folder holding another job's pieces is emptied and the work starts over, with a
warning naming what changed, so a stale piece is never mixed in.

Why piecewise equals one `encode_*` call on the whole list: each item is its own sequence, and
length-sorted batching (within a piece here, within the whole list there) changes only which items
share a forward pass, so only the padding, which the attention mask hides. What differs is float
rounding in the batched matrix products: at most about 1e-7 on the tiny models in float32 (tested
within 1e-6).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm.auto import tqdm

from ._io import atomic_write, require_positive_int
from .adapter import backbone_mismatch
from .data import ImageRecord, Input, TextRecord
from .distributed import distributed_context, rank0_value
from .encoder import Encoder
from .errors import SettingError, SLQError
from .prefetch import resolve_workers

logger = logging.getLogger("slq")

KINDS = ("texts", "targets", "inputs")  # encode_text, encode_targets (images, or text records' texts), encode_inputs
MANIFEST_NAME = "manifest.json"
_FORMAT = 1  # of the work folder; a folder of another format is started over


@dataclass
class CorpusEmbedding:
    """What `embed_corpus` did. `reused` is the same on every process; `embedded` is this one's."""

    out: Path
    rows: int
    width: int
    pieces: int
    reused: int  # pieces found finished in the work folder
    embedded: int  # pieces this process embedded


def work_folder(out: str | os.PathLike) -> Path:
    """Where the pieces of `out` are kept until they are joined: `OUT.parts/` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def embed_corpus(encoder: Encoder, items: Sequence, out: str | os.PathLike, *, kind: str, piece_size: int = 1024,
                 batch_size: int = 32, rank: int | None = None, world_size: int | None = None,
                 progress: bool | None = None, workers: int | None = None) -> CorpusEmbedding:
    """Write the L2-normalised embeddings of `items` to the .npy file `out`, row i for item i.

    `kind` "texts" embeds strings with `encode_text`; "targets" embeds image paths, PIL images or
    dataset records with `encode_targets`; "inputs" embeds `slq.data.Input`s with `encode_inputs`.
    Every process of a torch.distributed group calls this with the same items (rank and world size
    default to the group's); pieces go to a work folder
    on a filesystem they all see. Process 0 writes `out` once all pieces exist; the others return
    when theirs are written. `progress` None shows rank 0's bar only on a terminal. `workers`
    processes prepare the batches ahead of the model (None: `slq.prefetch.default_workers()`; 0: in
    this process); the embeddings are the same bit for bit.
    """
    if kind not in KINDS:
        raise SettingError("kind", kind, f"must be one of {', '.join(KINDS)}")
    require_positive_int("piece_size", piece_size)
    require_positive_int("batch_size", batch_size)
    workers = resolve_workers(workers)
    if rank is None or world_size is None:
        rank, world_size = distributed_context()
    if world_size > 1 and not dist.is_initialized():
        raise SettingError("world_size", world_size, "more than one process needs torch.distributed initialised "
                           "(run under torchrun and call slq.distributed.init_distributed)")
    out, items = Path(out), list(items)
    if out.is_dir():
        raise SLQError(f"{out} is a folder; the embeddings go to a .npy file")
    folder = work_folder(out)
    manifest = _manifest(encoder, items, kind, piece_size)
    group = dist.new_group(backend="gloo") if world_size > 1 else None  # no GPU needed, also under NCCL

    def barrier():
        if group is not None:
            dist.barrier(group=group)

    if rank == 0:
        _prepare(folder, manifest)
    barrier()
    if rank != 0:
        _check_same_job(folder, manifest, rank)
    spans = [(start, min(start + piece_size, len(items))) for start in range(0, len(items), piece_size)]
    todo = None
    if rank == 0:  # one list for all: processes listing for themselves could see the folder differently
        todo = [k for k, span in enumerate(spans) if not _finished(_piece_path(folder, k), span, encoder.dim)]
    todo = rank0_value(todo, group) if group is not None else todo  # also a barrier: listed before any is written
    reused = len(spans) - len(todo)
    if rank == 0:
        logger.info("embedding %d %s in %d piece(s) of up to %d over %d process(es)%s", len(items), kind, len(spans),
                    piece_size, world_size, f"; {reused} piece(s) already done in {folder}" if reused else "")
    mine = todo[rank::world_size]
    bar = tqdm(total=sum(spans[k][1] - spans[k][0] for k in mine), unit="item",
               desc=f"embedding {kind}" + (f" (process 0 of {world_size})" if world_size > 1 else ""),
               disable=True if rank != 0 else None if progress is None else not progress)
    encode = {"texts": encoder.encode_text, "targets": encoder.encode_targets, "inputs": encoder.encode_inputs}[kind]
    for k in mine:
        start, end = spans[k]
        _write_piece(folder, k, encode(items[start:end], batch_size=batch_size, show_progress_bar=False,
                                       workers=workers),
                     (end - start, encoder.dim))
        bar.update(end - start)
    bar.close()
    barrier()
    if rank == 0:
        _join(folder, spans, out, encoder.dim)
        shutil.rmtree(folder)
    barrier()  # every process returns once `out` exists
    return CorpusEmbedding(out, len(items), encoder.dim, len(spans), reused, len(mine))


# --- the job's identity -------------------------------------------------------------------------

def _manifest(encoder: Encoder, items: list, kind: str, piece_size: int) -> dict:
    return {"format": _FORMAT, "kind": kind, "items": len(items), "items_sha256": items_sha256(items, kind),
            "piece_size": piece_size, "width": encoder.dim, "encoder_sha256": encoder_sha256(encoder),
            "backbone": encoder.backbone.fingerprint()}


def items_sha256(items: Sequence, kind: str = "texts") -> str:
    """SHA-256 of the items in order: texts, absolute image paths (a string among `kind` "targets"
    is a path), records' images or texts (not the image files' content), pixels of PIL images."""
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, Input):
            image = item.image
            if isinstance(image, Image.Image):
                image = f"pil:{image.mode}:{image.size}:{hashlib.sha256(image.tobytes()).hexdigest()}"
            key = ["input", item.text, None if image is None else str(image) if isinstance(image, str)
                   else os.path.abspath(image), item.instruction]
        elif isinstance(item, Image.Image):
            key = f"pil:{item.mode}:{item.size}:{hashlib.sha256(item.tobytes()).hexdigest()}"
        elif isinstance(item, TextRecord):
            key = f"text-record:{item.text}"
        elif isinstance(item, ImageRecord):
            key = f"image:{os.path.abspath(item.image)}"
        elif isinstance(item, str) and kind == "texts":
            key = f"str:{item}"
        else:  # a path: a different working directory must not make another job look the same
            key = f"image:{os.path.abspath(item)}"
        digest.update(json.dumps(key).encode() + b"\n")  # JSON escapes newlines: one line per item
    return digest.hexdigest()


def encoder_sha256(encoder: Encoder) -> str:
    """SHA-256 of what turns an item into a vector besides the backbone's weights: the trained
    tensors (an adapter's queries), the encoder's class and instructions, and how the backbone runs
    (dtype, text truncation, image fit)."""
    backbone = encoder.backbone
    digest = hashlib.sha256(json.dumps({
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}", "dtype": str(backbone.dtype),
        "max_text_tokens": backbone.max_text_tokens, "image_fit": backbone.image_fit,
        "text_instruction": encoder.text_instruction, "image_instruction": encoder.image_instruction,
        "pooling": getattr(encoder, "pooling", None),
    }, sort_keys=True).encode())
    for name, tensor in sorted(encoder.trainable_tensors().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def manifest_differences(saved: dict, current: dict) -> list[str]:
    """What makes two manifests different jobs, in words; empty when they are the same job.

    Backbones are compared by `backbone_mismatch`, with the tolerance adapters use, so the same
    checkpoint on another device is the same backbone."""
    names = {"items": "the number of items", "items_sha256": "the items",
             "encoder_sha256": "the encoder (adapter, dtype or settings)"}
    diffs = [names.get(key, key.replace("_", " ")) for key in current
             if key != "backbone" and saved.get(key) != current[key]]
    why = backbone_mismatch(saved.get("backbone") or {}, current["backbone"])
    return diffs + ([f"the backbone ({why})"] if why else [])


# --- the work folder ----------------------------------------------------------------------------

def _piece_path(folder: Path, k: int) -> Path:
    return folder / f"piece-{k:06d}.npy"


def _prepare(folder: Path, manifest: dict) -> None:
    """Keep a folder of the same job; start over in one of another job (saying why) or none."""
    if folder.exists() and not folder.is_dir():
        raise SLQError(f"{folder} is a file; slq keeps the pieces of {folder.name[:-len('.parts')]} there")
    if folder.exists():
        try:
            saved = json.loads((folder / MANIFEST_NAME).read_text())
            diffs = manifest_differences(saved, manifest) if isinstance(saved, dict) else ["its manifest"]
        except (OSError, ValueError):
            diffs = ["a missing or unreadable manifest"]
        if not diffs:
            return
        logger.warning("%s holds pieces of another embedding (%s differ); starting over", folder, ", ".join(diffs))
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    atomic_write(folder / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _check_same_job(folder: Path, manifest: dict, rank: int) -> None:
    """Every process must embed the same items with the same encoder as process 0."""
    diffs = manifest_differences(json.loads((folder / MANIFEST_NAME).read_text()), manifest)
    if diffs:
        raise SLQError(f"process {rank} was given another job than process 0 ({', '.join(diffs)} differ)")


def _write_piece(folder: Path, k: int, rows: np.ndarray, shape: tuple[int, int]) -> None:
    rows = np.asarray(rows, np.float32)
    assert rows.shape == shape, f"piece {k}: the encoder returned {rows.shape}, expected {shape}"
    buffer = io.BytesIO()
    np.save(buffer, rows)
    atomic_write(_piece_path(folder, k), buffer.getvalue())


def _finished(path: Path, span: tuple[int, int], width: int) -> bool:
    """Whether `path` is a complete float32 piece of the right shape with finite values (a present
    piece that is not is logged)."""
    try:
        rows = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as e:  # not a whole .npy
        why = f"is unreadable ({e})"
    else:
        expected = (span[1] - span[0], width)
        if rows.dtype != np.float32 or rows.shape != expected:
            why = f"holds {rows.dtype} {rows.shape}, not float32 {expected}"
        elif not np.isfinite(rows).all():
            why = "holds non-finite values"
        else:
            return True
    logger.warning("%s %s; embedding it again", path, why)
    return False


def _join(folder: Path, spans: list[tuple[int, int]], out: Path, width: int) -> None:
    """Write the pieces in order into `out` (atomically), one piece in memory at a time."""
    rows = spans[-1][1] if spans else 0
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (rows, width)}

    def write(f) -> None:
        np.lib.format.write_array_header_1_0(f, header)
        start, written = f.tell(), 0
        for k, span in enumerate(spans):
            try:
                piece = np.load(_piece_path(folder, k))
            except (OSError, ValueError) as e:  # SLQError, not OSError: atomic_write would call it a write error
                raise SLQError(f"{_piece_path(folder, k)}: cannot read the piece of items {span[0]}..{span[1] - 1} "
                               f"({e}); run again to embed it") from None
            if piece.shape != (span[1] - span[0], width):  # a process or the filesystem lost work: never guess
                raise SLQError(f"{_piece_path(folder, k)}: shape {piece.shape}, expected {(span[1] - span[0], width)}")
            f.write(np.ascontiguousarray(piece, np.float32).tobytes())
            written += len(piece)
        assert written == rows and f.tell() - start == rows * width * 4, f"wrote {written} rows for {rows} items"

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, write)
    logger.debug("joined %d piece(s) into %s", len(spans), out)

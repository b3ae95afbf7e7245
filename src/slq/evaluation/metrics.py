"""Recall@K for text-to-image and image-to-text retrieval.

Ties are counted pessimistically: the rank of a query is the number of NEGATIVE candidates that
score at least as high as its best positive, and hit@k iff rank < k. A collapsed model that gives
every candidate the same score therefore gets recall ~0 (a negative ties with every positive),
not 1 as an optimistic `argsort` or `>`-based rank would report; ties can only hurt a model, so
a recall number cannot be inflated by degenerate embeddings. Other positives never count against
a query (an image with 5 captions is not penalised for its other 4).

The similarity matrix may be large (25k COCO texts x 5k images); ranks are computed in row chunks
so no second full-size matrix is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # ~4M comparisons per chunk: small temporaries, few Python iterations


def _as_numpy(similarity: Any) -> np.ndarray:
    """A numpy view of a numpy or torch matrix; copies only when the device or dtype needs it."""
    if type(similarity).__module__.startswith("torch"):
        import torch

        t = similarity.detach()
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32  # bf16 has no numpy
        return t.to("cpu", dtype).numpy()
    return np.asarray(similarity)


def _validate(sim: np.ndarray, t2i: np.ndarray, ks: Sequence[int]) -> None:
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D (n_texts, n_images), got shape {sim.shape}")
    n_texts, n_images = sim.shape
    if n_texts == 0 or n_images == 0:
        raise ValueError(f"similarity must be non-empty, got shape {sim.shape}")
    if not (np.issubdtype(sim.dtype, np.integer) or np.issubdtype(sim.dtype, np.floating)):
        raise ValueError(f"similarity must hold real numbers, got dtype {sim.dtype}")
    if t2i.ndim != 1 or t2i.shape[0] != n_texts:
        raise ValueError(
            f"text_to_image must have one entry per text ({n_texts}), got shape {t2i.shape}"
        )
    if not np.issubdtype(t2i.dtype, np.integer):
        raise ValueError(f"text_to_image must hold integers, got dtype {t2i.dtype}")
    if t2i.min() < 0 or t2i.max() >= n_images:
        raise ValueError(
            f"text_to_image values must be in [0, {n_images}), got [{t2i.min()}, {t2i.max()}]"
        )
    is_k = [isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in ks]
    if not is_k or not all(is_k):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {list(ks)}")


def _ranks(sim: np.ndarray, t2i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pessimistic ranks: (t2i_rank (n_texts,), i2t_rank (n_images,))."""
    n_texts, n_images = sim.shape
    rows = np.arange(n_texts)
    pos = sim[rows, t2i]  # (T,) score of each text with its own image
    best = np.full(n_images, -np.inf)
    np.maximum.at(best, t2i, pos)  # (I,) best score among each image's texts
    # Texts at their image's best score: they are positives, so they are taken out of its count.
    at_best = np.bincount(t2i, weights=(pos >= best[t2i]), minlength=n_images)  # (I,)

    t2i_rank = np.empty(n_texts, dtype=np.int64)
    i2t_ge = np.zeros(n_images, dtype=np.int64)  # texts scoring >= best, per image
    chunk = max(1, _CHUNK_ELEMENTS // n_images)
    for start in range(0, n_texts, chunk):
        block = sim[start : start + chunk]  # (c, I) a view, no copy
        if np.isnan(block).any():
            raise ValueError(f"similarity has NaN in rows {start}..{start + len(block) - 1}")
        # The positive itself is always >= its own score: subtract it.
        block_pos = pos[start : start + chunk, None]  # (c, 1)
        t2i_rank[start : start + len(block)] = (block >= block_pos).sum(1) - 1
        i2t_ge += (block >= best[None, :]).sum(0)
    return t2i_rank, i2t_ge - at_best.astype(np.int64)


def recall_at_k(similarity: Any, text_to_image: Any, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K both ways from a (n_texts, n_images) score matrix.

    text_to_image[t] is the image text t describes. t2i: a text hits@k iff its image is in the
    top k; i2t: an image hits@k iff any of its texts is in the top k. Ties count as misses.
    """
    sim = _as_numpy(similarity)
    t2i = np.asarray(text_to_image)
    _validate(sim, t2i, ks)
    t2i = t2i.astype(np.int64, copy=False)
    n_texts, n_images = sim.shape
    counts = np.bincount(t2i, minlength=n_images)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ValueError(
            f"{len(missing)} image(s) have no text, e.g. image {missing[0]}; "
            "image-to-text recall needs at least one text per image"
        )
    t2i_rank, i2t_rank = _ranks(sim, t2i)
    return {
        "t2i": {f"R@{k}": float(np.mean(t2i_rank < k)) for k in ks},
        "i2t": {f"R@{k}": float(np.mean(i2t_rank < k)) for k in ks},
        "n_images": int(n_images),
        "n_texts": int(n_texts),
    }


def format_recall_table(report: dict, title: str | None = None, directions: Sequence[str] = ("t2i", "i2t")) -> str:
    """A fixed-width table of a recall_at_k report, recalls in percent.

          R@1    R@5   R@10
    t2i  52.3   80.1   88.0
    i2t  68.0   89.9   94.6
    n_images=5000 n_texts=25000
    """
    columns = list(report[directions[0]])
    lines = [title] if title else []
    lines.append(" " * 3 + "".join(f"{c:>7}" for c in columns))
    for direction in directions:
        lines.append(f"{direction:<3}" + "".join(f"{100 * report[direction][c]:>7.1f}" for c in columns))
    lines.append(f"n_images={report['n_images']} n_texts={report['n_texts']}")
    return "\n".join(lines)

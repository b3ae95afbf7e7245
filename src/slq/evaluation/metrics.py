"""Recall@K for text-to-image and image-to-text retrieval, with ties handled explicitly.

A query's candidates fall into three groups around s*, the score of its best positive: g negatives
score strictly above s*, e negatives score exactly s*, and p >= 1 positives score exactly s* (an
image may have several captions at its best score). Positives other than those never count against
a query (an image with 5 captions is not penalised for its other 4). How the tied group is ordered
is the `ties` rule:

* "average" (the default): the score a uniformly random order of the tied group gets on average.
  The number X of tied negatives ranked before the first tied positive has
  P(X >= m) = prod_{i<m} (e - i) / (p + e - i), so the expected hit@k is 0 when g >= k, else
  1 - P(X >= k - g). A collapsed model that gives every candidate the same score gets chance
  (k / n_images for t2i), as a random ranking would: equal scores are neither a miss nor, as an
  index-ordered `argsort` may make them, a hit. With float embeddings ties are rare and both rules
  agree; they part where scores collapse or are coarse.
* "strict": every tied negative ranks first; a query hits@k iff g + e < k. A collapsed model gets
  ~0; ties can only hurt, so no way of breaking them scores lower.

The similarity matrix may be large (25k COCO texts x 5k images); the counts are taken in row chunks
so no second full-size matrix is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._io import require_choice

TIE_RULES = ("average", "strict")  # how a score tied with a query's best positive counts (module docstring)
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


def _tie_counts(sim: np.ndarray, t2i: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Per query, the counts the tie rules need: (above, tied, tied_positives) for t2i (n_texts,)
    and for i2t (n_images,): negatives scoring above the best positive, negatives tied with it,
    and positives tied with it (>= 1)."""
    n_texts, n_images = sim.shape
    rows = np.arange(n_texts)
    pos = sim[rows, t2i]  # (T,) score of each text with its own image
    best = np.full(n_images, -np.inf)
    np.maximum.at(best, t2i, pos)  # (I,) best score among each image's texts
    # Texts at their image's best score: the image's tied positives, taken out of its tied count.
    at_best = np.bincount(t2i, weights=(pos >= best[t2i]), minlength=n_images).astype(np.int64)  # (I,)

    t2i_gt = np.empty(n_texts, dtype=np.int64)
    t2i_ge = np.empty(n_texts, dtype=np.int64)
    i2t_gt = np.zeros(n_images, dtype=np.int64)  # texts scoring > best, per image (never a positive)
    i2t_ge = np.zeros(n_images, dtype=np.int64)  # texts scoring >= best, per image
    chunk = max(1, _CHUNK_ELEMENTS // n_images)
    for start in range(0, n_texts, chunk):
        block = sim[start : start + chunk]  # (c, I) a view, no copy
        if np.isnan(block).any():
            raise ValueError(f"similarity has NaN in rows {start}..{start + len(block) - 1}")
        block_pos = pos[start : start + chunk, None]  # (c, 1)
        t2i_gt[start : start + len(block)] = (block > block_pos).sum(1)
        t2i_ge[start : start + len(block)] = (block >= block_pos).sum(1)
        i2t_gt += (block > best[None, :]).sum(0)
        i2t_ge += (block >= best[None, :]).sum(0)
    # The positive itself is always >= its own score: it is the one tied positive of a t2i query.
    t2i_counts = (t2i_gt, t2i_ge - t2i_gt - 1, np.ones(n_texts, dtype=np.int64))
    return t2i_counts, (i2t_gt, i2t_ge - i2t_gt - at_best, at_best)


def _hits(above: np.ndarray, tied: np.ndarray, tied_pos: np.ndarray, ks: Sequence[int], ties: str
          ) -> dict[str, np.ndarray]:
    """Per query and k, hit@k under the tie rule (module docstring): 0/1, or its expectation."""
    if ties == "strict":
        return {f"R@{k}": (above + tied < k).astype(np.float64) for k in ks}
    # survival[m] = P(X >= m), X = tied negatives ranked before the first tied positive, m = 0..max(ks)
    survival = np.ones((max(ks) + 1, len(above)))  # (K + 1, Q)
    for m in range(1, max(ks) + 1):
        left = np.maximum(tied - (m - 1), 0)  # tied negatives not yet placed; 0 ends the product
        survival[m] = survival[m - 1] * left / np.maximum(tied_pos + tied - (m - 1), 1)
    queries = np.arange(len(above))
    hits = {}
    for k in ks:
        room = k - above  # (Q,) places in the top k left for the tied group
        hits[f"R@{k}"] = np.where(room > 0, 1.0 - survival[np.clip(room, 0, k), queries], 0.0)
    return hits


def _hit_rates(above: np.ndarray, tied: np.ndarray, tied_pos: np.ndarray, ks: Sequence[int], ties: str) -> dict:
    """Recall@k for each k: the mean over queries of hit@k."""
    return {k: float(np.mean(hit)) for k, hit in _hits(above, tied, tied_pos, ks, ties).items()}


def check_ties(ties: str) -> str:
    """`ties` if it names a tie rule, else a SettingError saying which ones exist."""
    require_choice("ties", ties, TIE_RULES)
    return ties


def recall_at_k(similarity: Any, text_to_image: Any, ks: Sequence[int] = (1, 5, 10), *,
                ties: str = "average") -> dict:
    """Recall@K both ways from a (n_texts, n_images) score matrix.

    text_to_image[t] is the image text t describes. t2i: a text hits@k iff its image is in the
    top k; i2t: an image hits@k iff any of its texts is in the top k. `ties`: "average" scores a
    tie as uniformly random tie-breaking would on average, "strict" counts every tie as a miss
    (module docstring).
    """
    check_ties(ties)
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
    t2i_counts, i2t_counts = _tie_counts(sim, t2i)
    return {
        "t2i": _hit_rates(*t2i_counts, ks, ties),
        "i2t": _hit_rates(*i2t_counts, ks, ties),
        "n_images": int(n_images),
        "n_texts": int(n_texts),
        "ties": ties,
    }


def recall_by_group(similarity: Any, text_to_image: Any, groups: Sequence[str], ks: Sequence[int] = (1, 5, 10), *,
                    ties: str = "average") -> dict[str, dict]:
    """Recall@K both ways per group of images (a KARR category), every query still ranked against
    the whole set: t2i over the texts of the group's images, i2t over the group's images.

    `groups[i]` is image i's group. Returns `{group: {"t2i": …, "i2t": …, "n_images": …, "n_texts": …}}`,
    groups in order of first appearance.
    """
    check_ties(ties)
    sim = _as_numpy(similarity)
    t2i = np.asarray(text_to_image)
    _validate(sim, t2i, ks)
    t2i = t2i.astype(np.int64, copy=False)
    labels = np.asarray(list(groups), dtype=object)
    if labels.shape != (sim.shape[1],):
        raise ValueError(f"groups must name one group per image ({sim.shape[1]}), got {labels.shape[0]}")
    t2i_counts, i2t_counts = _tie_counts(sim, t2i)
    text_hits, image_hits = _hits(*t2i_counts, ks, ties), _hits(*i2t_counts, ks, ties)
    report = {}
    for group in dict.fromkeys(labels.tolist()):
        images = labels == group  # (I,)
        texts = images[t2i]  # (T,)
        report[group] = {"t2i": {k: float(np.mean(h[texts])) for k, h in text_hits.items()},
                         "i2t": {k: float(np.mean(h[images])) for k, h in image_hits.items()},
                         "n_images": int(images.sum()), "n_texts": int(texts.sum())}
    return report


def format_recall_table(report: dict, title: str | None = None, directions: Sequence[str] = ("t2i", "i2t")) -> str:
    """A fixed-width table of a recall_at_k report, recalls in percent.

          R@1    R@5   R@10
    t2i  52.3   80.1   88.0
    i2t  68.0   89.9   94.6
    n_images=5000 n_texts=25000 ties=average
    """
    columns = list(report[directions[0]])
    lines = [title] if title else []
    lines.append(" " * 3 + "".join(f"{c:>7}" for c in columns))
    for direction in directions:
        lines.append(f"{direction:<3}" + "".join(f"{100 * report[direction][c]:>7.1f}" for c in columns))
    counts = f"n_images={report['n_images']} n_texts={report['n_texts']}"
    lines.append(counts + (f" ties={report['ties']}" if "ties" in report else ""))
    if "modality_gap" in report:
        gap = report["modality_gap"]
        lines.append(f"modality gap: centroid distance {gap['centroid_distance']:.3f}, spread {gap['spread']:.3f}")
    for key in ("by_category", "by_clues"):
        if key in report:
            lines.append(format_by_category(report[key], directions, key.removeprefix("by_")))
    return "\n".join(lines)


def format_by_category(by_category: dict, directions: Sequence[str] = ("t2i", "i2t"), title: str = "category") -> str:
    """Recall per category (or other group, named by `title`), one row each (percent), with its
    number of images.

    category                  images  t2i R@1   R@5  R@10  i2t R@1   R@5  R@10
    """
    forward, backward = directions
    columns = list(next(iter(by_category.values()))[forward]) if by_category else []
    head = f"{title:<24}{'images':>7}" + "".join(
        f"{(d + ' ' if i == 0 else '') + c:>{9 if i == 0 else 6}}" for d in (forward, backward)
        for i, c in enumerate(columns))
    lines = [head]
    for category, r in by_category.items():
        lines.append(f"{category:<24}{r['n_images']:>7}" + "".join(
            f"{100 * r[d][c]:>{9 if i == 0 else 6}.1f}" for d in (forward, backward) for i, c in enumerate(columns)))
    return "\n".join(lines)

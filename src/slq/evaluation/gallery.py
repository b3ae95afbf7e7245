"""A gallery PNG: a few captions, each with its top images from an index and their scores, the true
one marked, since people would rather look at retrieval than read its recall."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..data import ImageRecord, load_image


def gallery_queries(records: Sequence[ImageRecord], n: int = 4) -> list[tuple[str, Path]]:
    """(first caption, image) of `n` records spread evenly over the set: varied, and the same every run."""
    step = max(1, len(records) // n)
    return [(records[i].captions[0], records[i].image) for i in range(0, len(records), step)][:n]


def plot_gallery(searcher, queries: Sequence[tuple[str, Path]], out: str | os.PathLike, *, k: int = 5,
                 index: str | None = None) -> Path:
    """One row per (caption, true image): the caption, then the index's top `k` images with scores;
    the true image framed in green (a row with no frame missed it in the top k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.9 * (k + 1.6), 2.0 * len(queries)),
                             gridspec_kw={"width_ratios": [1.6] + [1] * k}, squeeze=False)
    for row, (caption, truth) in zip(axes, queries):
        row[0].axis("off")
        row[0].text(0.0, 0.5, caption, wrap=True, va="center", ha="left", fontsize=10)
        hits = searcher.search(caption, k=k, index=index)
        for cell, hit in zip(row[1:], hits + [None] * (k - len(hits))):
            cell.set_xticks([])
            cell.set_yticks([])
            if hit is None:
                cell.axis("off")
                continue
            cell.imshow(load_image(hit.path))
            true = Path(hit.path).resolve() == Path(truth).resolve()
            cell.set_title(f"{hit.score:.3f}" + ("  ✓ true" if true else ""), fontsize=9,
                           color="#1a7f37" if true else "black", fontweight="bold" if true else "normal")
            for spine in cell.spines.values():
                spine.set_edgecolor("#1a7f37" if true else "#cccccc")
                spine.set_linewidth(4 if true else 1)
    fig.suptitle(f"Top {k} images per caption (cosine score; the true image framed green)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

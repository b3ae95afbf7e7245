"""The modality gap: how far apart a method puts texts and images, as a number and as a picture.

Contrastive encoders tend to embed the two modalities in separate regions of the sphere (Liang et
al., "Mind the Gap", 2022). The gap is measured as the distance between the two centroids of the
L2-normalised embeddings (0 when both modalities spread alike; at most 2), beside the clouds'
spread, since tight clouds can be apart at a small distance. A 2-D PCA of both modalities together
shows it: two clouds, or one. Every retrieval evaluation reports it
(`slq.evaluation.retrieval.evaluate`), so `slq compare` has it per method; `slq gap` plots it for
one adapter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PLOTTED_POINTS = 300  # per modality, kept in the report for the plot
FIT_ROWS = 2000  # per modality, to fit the two directions: fast also at COCO's 25,000 captions


def _evenly(n: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(n), first and last included."""
    return np.linspace(0, n - 1, min(k, n)).round().astype(int)


def modality_gap(text_emb: np.ndarray, target_emb: np.ndarray, *, points: int = PLOTTED_POINTS) -> dict:
    """Centroid distance and cosine of two sets of L2-normalised embeddings, (n, d) and (m, d); their
    spread (mean distance of a row to its own modality's centroid), without which a distance says
    little: tight clouds can be apart at a small distance; and the first two principal components of
    both together (fitted on up to `FIT_ROWS` rows of each; `points` rows of each kept to plot, both
    evenly spaced)."""
    texts, targets = np.asarray(text_emb, np.float64), np.asarray(target_emb, np.float64)
    text_centroid, target_centroid = texts.mean(0), targets.mean(0)  # (d,)
    norms = np.linalg.norm(text_centroid) * np.linalg.norm(target_centroid)
    fit = np.concatenate([texts[_evenly(len(texts), FIT_ROWS)], targets[_evenly(len(targets), FIT_ROWS)]])
    mean = fit.mean(0)
    _, singular, axes = np.linalg.svd(fit - mean, full_matrices=False)  # rows of `axes`: principal directions
    variance = singular**2
    sign = np.sign(((fit - mean) @ axes[:2].T).sum(0) + 1e-12)  # a fixed orientation (SVD's signs are arbitrary)

    def kept(rows: np.ndarray) -> list[list[float]]:
        return np.round((rows[_evenly(len(rows), points)] - mean) @ axes[:2].T * sign, 4).tolist()
    return {
        "centroid_distance": float(np.linalg.norm(text_centroid - target_centroid)),
        "centroid_cosine": float(text_centroid @ target_centroid / norms) if norms > 0 else 0.0,
        "spread": float(np.concatenate([np.linalg.norm(texts - text_centroid, axis=1),
                                        np.linalg.norm(targets - target_centroid, axis=1)]).mean()),
        "pca": {"texts": kept(texts), "targets": kept(targets),
                "explained_variance": [round(float(v), 4) for v in variance[:2] / (variance.sum() or 1.0)]},
    }


def plot_gaps(gaps: dict[str, dict], path: str | os.PathLike, title: str = "",
              labels: tuple[str, str] = ("texts", "images")) -> Path:
    """One PCA panel per method (`gaps`: name -> `modality_gap` result), texts and targets in two
    colours with their centroids marked; saved as PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(gaps), figsize=(4 * len(gaps), 4), squeeze=False)
    for ax, (name, gap) in zip(axes[0], gaps.items()):
        for key, label, colour in (("texts", labels[0], "tab:blue"), ("targets", labels[1], "tab:orange")):
            xy = np.asarray(gap["pca"][key]).reshape(-1, 2)
            ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5, color=colour, label=label)
            ax.scatter(*xy.mean(0), s=120, marker="X", color=colour, edgecolors="black")
        explained = gap["pca"]["explained_variance"]
        ax.set_title(f"{name}\ncentroid distance {gap['centroid_distance']:.3f}, spread {gap['spread']:.3f}",
                     fontsize=10)
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}%)")
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""A comparison's report on screen and on disk: the fixed-width table, `report.json`, a recall plot and
a plot of the modality gap."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .._io import atomic_write
from .gap import plot_gaps

logger = logging.getLogger("slq")

DIRECTION_TITLES = {"t2i": "text → image", "i2t": "image → text",
                    "d2w": "definition → word", "w2d": "word → definition"}


def format_comparison(report: dict) -> str:
    """A fixed-width table: one row per method, R@1/5/10 both directions, parameters, time; then
    R@1 under every other evaluator (validation, ...)."""
    forward, backward = report.get("directions", ("t2i", "i2t"))
    memory = all("peak_memory_mb" in m for m in report["methods"].values())
    header = f"{'method':<22}{forward + ' R@1':>8}{'R@5':>7}{'R@10':>7}{backward + ' R@1':>9}{'R@5':>7}{'R@10':>7}" \
             f"{'trainable':>12}{'train s':>9}" + (f"{'peak MB':>9}" if memory else "")
    lines = [header, "-" * len(header)]
    for name, m in report["methods"].items():
        t, i = m[forward], m[backward]
        lines.append(f"{name:<22}{100 * t['R@1']:>8.1f}{100 * t['R@5']:>7.1f}{100 * t['R@10']:>7.1f}"
                     f"{100 * i['R@1']:>9.1f}{100 * i['R@5']:>7.1f}{100 * i['R@10']:>7.1f}"
                     f"{m['trainable_params']:>12,}{m['train_seconds']:>9.1f}"
                     + (f"{m['peak_memory_mb']:>9.0f}" if memory else ""))
    if report.get("chance_R@1") is not None:
        lines.append(f"chance R@1: {100 * report['chance_R@1']:.1f}  (test: {report['test']})")
    gaps = {name: m["modality_gap"] for name, m in report["methods"].items() if "modality_gap" in m}
    if gaps:
        lines.append("modality gap, distance between the two modalities' centroids (their spread): " + "; ".join(
            f"{name} {gap['centroid_distance']:.3f} ({gap['spread']:.3f})" for name, gap in gaps.items()))
    for name, evaluation in report.get("evaluations", {}).items():
        lines.append(f"{name} ({evaluation['dataset']}), R@1: " + "; ".join(
            f"{method} {forward} {100 * v[forward]['R@1']:.1f} {backward} {100 * v[backward]['R@1']:.1f}"
            for method, v in evaluation["methods"].items()))
    return "\n".join(lines)


def save_comparison(report: dict, out_dir: str | os.PathLike) -> str:
    """Write `report.json`, `table.txt`, `recall.png` and `gap.png` (if matplotlib is there; else a
    warning says so) into `out_dir`; returns the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    table = format_comparison(report)
    atomic_write(out / "table.txt", table + "\n")
    try:
        plot_comparison(report, out / "recall.png")
        gaps = {name: m["modality_gap"] for name, m in report["methods"].items() if "modality_gap" in m}
        if gaps:
            plot_gaps(gaps, out / "gap.png", f"Modality gap on {report['test']} (PCA of both modalities)",
                      modality_labels(report.get("directions", ("t2i", "i2t"))))
    except ImportError:
        logger.warning("matplotlib is not installed: no recall.png or gap.png (pip install matplotlib)")
    return table


def modality_labels(directions) -> tuple[str, str]:
    """What the two clouds of a gap plot are: texts and images, or captions and their text targets."""
    return ("texts", "images") if tuple(directions) == ("t2i", "i2t") else ("captions", "targets")


def plot_comparison(report: dict, path: str | os.PathLike) -> Path:
    """Recall@K curves per method, one panel per direction, saved as PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    directions = report.get("directions", ("t2i", "i2t"))
    for ax, direction in zip(axes, directions):
        for name, m in report["methods"].items():
            ks = sorted(int(k[2:]) for k in m[direction])
            ax.plot(ks, [100 * m[direction][f"R@{k}"] for k in ks], marker="o", label=name)
        ax.set_title(DIRECTION_TITLES.get(direction, direction))
        ax.set_xlabel("K")
        ax.set_xticks([1, 5, 10])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Recall@K (%)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Retrieval on {report['test']}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

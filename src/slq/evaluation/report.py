"""A comparison's report on screen and on disk: the fixed-width table, the Markdown trade-off table
(the SLQ paper's Table 3: cost, recall, capability kept), `report.json`, a recall plot, a plot of cost
against recall and a plot of the modality gap."""

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
    groups = [(report.get("test", "test"), report["methods"])] + [
        (f"{name} ({evaluation['dataset']})", evaluation["methods"]) for name, evaluation in
        report.get("evaluations", {}).items()]
    for title, methods in groups:
        for key in ("by_category", "by_clues"):
            table = format_groups(methods, key, forward, backward)
            if table:
                lines += [f"{title}, R@1 {forward} / {backward} per {key.removeprefix('by_')}:", table]
    return "\n".join(lines)


def format_groups(methods: dict, key: str, forward: str, backward: str) -> str:
    """R@1 both ways per group (`by_category`, `by_clues`) and method, fixed width; "" when no method
    has the groups."""
    groups = list(dict.fromkeys(g for m in methods.values() for g in m.get(key, {})))
    if not groups:
        return ""
    width = max(13, *(len(g) + 2 for g in groups))
    lines = [f"{'method':<22}" + "".join(f"{g:>{width}}" for g in groups)]
    for name, m in methods.items():
        cells = [f"{100 * m[key][g][forward]['R@1']:.1f} / {100 * m[key][g][backward]['R@1']:.1f}"
                 if g in m.get(key, {}) else "–" for g in groups]
        lines.append(f"{name:<22}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def _number(value: float | None, change: float | None = None) -> str:
    if value is None:
        return "–"
    shown = f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return shown if change is None else f"{shown} ({change:+.3f})"


def _r5(scores: dict, direction: str) -> str:
    return f"{100 * scores[direction]['R@5']:.1f}"


def format_table3(report: dict) -> str:
    """The trade-off table in Markdown, one row per method: trainable parameters, training time,
    peak memory (when measured), R@5 both ways on the test data and on every other evaluation, the
    capability scores after training with their change from the untouched backbone's, and whether
    training moved the backbone's weights (their SHA-256 before and after)."""
    forward, backward = report.get("directions", ("t2i", "i2t"))
    memory = all("peak_memory_mb" in m for m in report["methods"].values())
    evaluations = report.get("evaluations", {})
    scores = list((report.get("capability") or {}).get("untouched") or {})
    header = ["method", "trainable params", "train time (s)"] + (["peak memory (MB)"] if memory else []) + \
        [f"R@5 {forward}", f"R@5 {backward}"] + [f"{name} R@5 {d}" for name in evaluations for d in (forward, backward)] \
        + scores + ["backbone weights"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    for name, m in report["methods"].items():
        capability, change = m.get("capability") or {}, m.get("capability_change") or {}
        cells = [name, f"{m['trainable_params']:,}", f"{m['train_seconds']:.1f}"]
        cells += [f"{m['peak_memory_mb']:,.0f}"] if memory else []
        cells += [_r5(m, forward), _r5(m, backward)]
        for evaluation in evaluations.values():
            other = evaluation["methods"].get(name)
            cells += [_r5(other, forward), _r5(other, backward)] if other else ["–", "–"]
        cells += [_number(capability.get(k), change.get(k)) for k in scores]
        cells.append("–" if "weights_changed" not in m else "changed" if m["weights_changed"] else "unchanged")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Test data: {report['test']}; R@5 in %." if "test" in report else "R@5 in %."]
    if scores:
        untouched = report["capability"]["untouched"]
        notes.append(f"Capability ({report['capability']['probe']}) of the untouched backbone: " + ", ".join(
            f"{k} {_number(untouched[k])}" for k in scores) + "; in brackets, each method's change from it.")
    if report.get("backbone_sha256"):
        notes.append(f"Backbone weights SHA-256: {report['backbone_sha256']}.")
    return "\n".join(lines) + "\n\n" + " ".join(notes)


def save_comparison(report: dict, out_dir: str | os.PathLike) -> str:
    """Write `report.json`, `table.txt`, `table.md` (`format_table3`) and the plots (`save_plots`)
    into `out_dir`; returns the fixed-width table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    table = format_comparison(report)
    atomic_write(out / "table.txt", table + "\n")
    atomic_write(out / "table.md", format_table3(report) + "\n")
    save_plots(report, out / "recall.png", out / "cost.png", out / "gap.png")
    return table


def save_plots(report: dict, recall: str | os.PathLike, cost: str | os.PathLike,
               gap: str | os.PathLike | None = None) -> list[Path]:
    """The recall plot, the cost plot and (at `gap`, when the rows have modality gaps) the gap plot;
    without matplotlib, a warning says so and none is written. Returns the paths written."""
    try:
        written = [plot_comparison(report, recall), plot_cost(report, cost)]
        gaps = {name: m["modality_gap"] for name, m in report["methods"].items() if "modality_gap" in m}
        if gap is not None and gaps:
            written.append(plot_gaps(gaps, gap, f"Modality gap on {report['test']} (PCA of both modalities)",
                                     modality_labels(report.get("directions", ("t2i", "i2t")))))
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    return [Path(path) for path in written]


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
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_cost(report: dict, path: str | os.PathLike) -> Path:
    """What each method costs against what it retrieves: R@5 (mean of both directions) against
    trainable parameters and against training time, one labelled point per method, saved as PNG
    (needs matplotlib). The x axes are logarithmic but linear near zero, where zero-shot rows sit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forward, backward = report.get("directions", ("t2i", "i2t"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in zip(axes, ("trainable_params", "train_seconds"), ("trainable parameters", "training time (s)")):
        for name, m in report["methods"].items():
            x, y = m[key], 50 * (m[forward]["R@5"] + m[backward]["R@5"])
            ax.scatter([x], [y])
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"R@5, mean of {forward} and {backward} (%)")
    fig.suptitle(f"Cost against recall on {report['test']}")
    return _save(fig, path)

"""The trade-off table from one call: each method trained and evaluated on the same data.

Methods (names are the report's keys):
    zero_shot_last_token  last state under the one-word-summary prompt (E5-V), no training
    zero_shot_mean        mean of the prompt's last-layer states, no training
    slq                   Shared Latent Queries on the frozen backbone
    slq_random_init       the same SLQ training on a randomly initialised twin (control: is it the
                          pretraining that SLQ elicits?)
    lora                  LoRA r=16 on the language model, last-token pooling
    full_ft               full fine-tuning of the language model, last-token pooling
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch

from .backbone import Backbone
from .baselines import PooledEncoder, add_lora, unfreeze_language_model
from .data import ImageTextDataset, atomic_write
from .encoder import Encoder
from .errors import SLQError
from .evaluate import evaluate
from .families import family_for
from .retriever import SLQRetriever
from .train import TrainConfig, train

DIRECTION_TITLES = {"t2i": "text → image", "i2t": "image → text",
                    "d2w": "definition → word", "w2d": "word → definition"}
METHODS = ("zero_shot_last_token", "zero_shot_mean", "slq", "slq_random_init", "lora", "full_ft")
TRAINED = {"slq", "slq_random_init", "lora", "full_ft"}


def random_twin(backbone_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int) -> Path:
    """A checkpoint folder with the same architecture, tokenizer and processor but random weights.

    `seed` is required: a random backbone built with the same seed would come back identical.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    source, out = Path(backbone_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(source)
    auto_model = AutoModelForCausalLM if family_for(config.model_type).name == "text" else AutoModelForImageTextToText
    auto_model.from_config(config).save_pretrained(out)
    for item in source.iterdir():  # tokenizer, chat template, processor configs: everything but weights/config
        if item.is_file() and not item.name.startswith(("model", "config.json", "generation_config", "slq-")) \
                and item.suffix in (".json", ".jinja", ".txt", ".model", ".tiktoken"):
            (out / item.name).write_bytes(item.read_bytes())
    return out


def _encoder(method: str, backbone_dir: Path, config: TrainConfig, twin_dir: Path | None, **load) -> Encoder:
    if method in ("slq", "slq_random_init"):
        source = twin_dir if method == "slq_random_init" else backbone_dir
        return SLQRetriever.from_pretrained(source, num_queries=config.num_queries, seed=config.seed, **load)
    backbone = Backbone.load(backbone_dir, **load)
    if method == "zero_shot_mean":
        return PooledEncoder(backbone, "mean", one_word_prompt=False)
    encoder = PooledEncoder(backbone, "last", one_word_prompt=method == "zero_shot_last_token")
    if method == "lora":
        torch.manual_seed(config.seed)  # LoRA's A matrices start random: seeded, so a row is reproducible
        return add_lora(encoder)
    if method == "full_ft":
        return unfreeze_language_model(encoder)
    return encoder


def compare(backbone_dir: str | os.PathLike, train_data: ImageTextDataset, test_data: ImageTextDataset,
            config: TrainConfig, *, methods: Sequence[str] = METHODS, baseline_lr: float | None = None,
            baseline_epochs: int | None = None, batch_size: int = 32, progress: bool | None = None,
            isolate: bool = False, jobs: int = 1, done: dict | None = None,
            on_row: Callable[[str, dict], None] | None = None, val_data: ImageTextDataset | None = None, **load) -> dict:
    """Train (where the method trains) and evaluate every method; returns the report.

    `baseline_lr` sets LoRA's and full fine-tuning's learning rate (queries and LoRA weights live
    at different scales); by default they use `config.lr / 10`. `baseline_epochs` (default: the
    same as SLQ's) lets a costly baseline train for fewer epochs. `isolate` runs each method in a
    process of its own, so each row also gets an honest `peak_memory_mb` (the process's peak RSS);
    `jobs` such processes run at once, sharing this process's torch threads (on a CPU, where one
    process scales poorly past a core, two at a time nearly halve the wall time). Rows in `done`
    (method -> row, from an interrupted run) are kept, not recomputed; `on_row(method, row)` is
    called as each row is finished, so a caller can save it.

    With `val_data`, every method is also scored on it, and the report gains `"validation":
    {method: {"t2i", "i2t"}}`: settings such as a learning rate are chosen there, never on the test.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SLQError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if jobs < 1 or (jobs > 1 and not isolate):
        raise SLQError(f"jobs must be 1, or more with isolate (got jobs={jobs}, isolate={isolate})")
    backbone_dir = Path(backbone_dir)
    baseline_config = replace(config, lr=baseline_lr or config.lr / 10, epochs=baseline_epochs or config.epochs,
                              prompt_cache_mb=0.0, prompt_cache_disk_mb=0.0,  # the prompt cache serves SLQ only
                              prompt_cache_dtype=None)
    rows = {m: row for m, row in (done or {}).items() if m in methods}
    todo = sorted((m for m in methods if m not in rows), key=lambda m: m not in TRAINED)  # long ones first
    with tempfile.TemporaryDirectory(prefix="slq-twin-") as tmp:
        twin = random_twin(backbone_dir, Path(tmp) / "twin", seed=config.seed + 1) \
            if "slq_random_init" in todo else None

        def args(method: str) -> tuple:
            return (method, backbone_dir, train_data, test_data, config, twin, baseline_config, batch_size, progress,
                    load, val_data)

        def finished(method: str, row: dict) -> None:
            rows[method] = row
            if on_row is not None:
                on_row(method, row)

        if isolate:
            threads = threads_per_method(jobs)
            with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
                futures = {pool.submit(_run_isolated, threads, *args(m)): m for m in todo}
                failures = []
                for future in as_completed(futures):  # one method's failure keeps the others' rows
                    if future.exception() is None:
                        finished(futures[future], future.result())
                    else:
                        failures.append(future.exception())
            if failures:
                raise failures[0]
        else:
            for method in todo:
                finished(method, run_method(*args(method)))
    report = {"methods": {m: {k: v for k, v in rows[m].items() if k != "val"} for m in methods},
              "chance_R@1": 1 / len(test_data), "test": test_data.name, "train": train_data.name,
              "train_config": vars(config).copy()}
    if (TRAINED - {"slq", "slq_random_init"}) & set(methods):
        report["baseline_train_config"] = vars(baseline_config).copy()
    if val_data is not None:
        report["validation"] = {m: rows[m]["val"] for m in methods if "val" in rows[m]}
        report["val"] = val_data.name
    return report


def threads_per_method(jobs: int) -> int:
    """Torch threads each isolated method gets when `jobs` run at once: this process's, shared out."""
    return max(1, torch.get_num_threads() // jobs)


def run_method(method: str, backbone_dir: Path, train_data: ImageTextDataset, test_data: ImageTextDataset,
               config: TrainConfig, twin: Path | None, baseline_config: TrainConfig, batch_size: int,
               progress: bool | None, load: dict, val_data: ImageTextDataset | None = None) -> dict:
    """One row of the comparison: build the method's encoder, train it if it trains, evaluate (on
    `val_data` too, under "val", when given)."""
    encoder = _encoder(method, backbone_dir, config, twin, **load)
    seconds = 0.0
    if method in TRAINED:
        method_config = config if method.startswith("slq") else baseline_config
        began = time.perf_counter()
        train(encoder, train_data, method_config, progress=progress)
        seconds = time.perf_counter() - began
    result = evaluate(encoder, test_data, batch_size=batch_size, show_progress_bar=progress)
    row = {
        "t2i": result["t2i"], "i2t": result["i2t"],
        "trainable_params": encoder.trainable_parameters if method in TRAINED else 0,
        "train_seconds": round(seconds, 2),
    }
    if val_data is not None:
        val = evaluate(encoder, val_data, batch_size=batch_size, show_progress_bar=progress)
        row["val"] = {"t2i": val["t2i"], "i2t": val["i2t"]}
    return row


def _run_isolated(threads: int, *args) -> dict:
    """`run_method` in a fresh process (spawned by `compare`), adding that process's peak memory."""
    torch.set_num_threads(threads)
    row = run_method(*args)
    row["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    return row


def format_comparison(report: dict) -> str:
    """A fixed-width table: one row per method, R@1/5/10 both directions, parameters, time."""
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
    lines.append(f"chance R@1: {100 * report['chance_R@1']:.1f}  (test: {report['test']})")
    if report.get("validation"):
        lines.append(f"validation ({report['val']}), R@1: " + "; ".join(
            f"{name} {forward} {100 * v[forward]['R@1']:.1f} {backward} {100 * v[backward]['R@1']:.1f}"
            for name, v in report["validation"].items()))
    return "\n".join(lines)


def save_comparison(report: dict, out_dir: str | os.PathLike) -> str:
    """Write `report.json`, `table.txt` and `recall.png` (if matplotlib is there) into `out_dir`;
    returns the table."""
    out = Path(out_dir)
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    table = format_comparison(report)
    atomic_write(out / "table.txt", table + "\n")
    try:
        plot_comparison(report, out / "recall.png")
    except ImportError:
        table += "\n(matplotlib is not installed: no recall.png; pip install matplotlib)"
    return table


def plot_comparison(report: dict, path: str | os.PathLike) -> Path:
    """Recall@K curves per method, one panel per direction, saved as PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    directions = report.get("directions", ("t2i", "i2t"))
    for ax, direction in zip(axes, directions):
        title = DIRECTION_TITLES.get(direction, direction)
        for name, m in report["methods"].items():
            ks = sorted(int(k[2:]) for k in m[direction])
            ax.plot(ks, [100 * m[direction][f"R@{k}"] for k in ks], marker="o", label=name)
        ax.set_title(title)
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

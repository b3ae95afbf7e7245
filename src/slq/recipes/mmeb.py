"""`slq mmeb-bench`: MMEB-style tasks on the shipped default backbone, offline, in one command.

Writes the shapes world (seed 0, the world `slq-tiny-vl` was pretrained on, never on its test
split), turns it into an MMEB-format suite (`slq.data.mmeb_suite`: classification, VQA, retrieval
and grounding, with a training mixture of the same tasks as pair JSONL), and scores hit@1 per
dataset and meta-task for:

- zero-shot last token (E5-V's one-word prompt, nothing trained);
- SLQ trained on the mixture with in-batch negatives only;
- SLQ trained on the mixture with hard negatives mined by that first SLQ adapter
  (`slq.mining`: each pair's top-k non-positives among its task's positives);
- LoRA trained the same two ways.

Every method is scored on the suite's validation datasets (where settings are chosen) and on its
test datasets, through `slq.evaluation.compare`. Each finished row is saved at once (`rows.json`);
run again with the same settings and only the missing rows run. Results: `report.json`, `table.md`, `hit1.png`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .._io import atomic_write, check_settings, file_sha256, setting
from ..data import load_pairs, write_pairs
from ..data.mmeb import load_mmeb
from ..data.mmeb_suite import write_mmeb_suite
from ..data.shapes import write_world
from ..errors import SettingError, SLQError
from ..evaluation.compare import Method, baseline_config_for, compare
from ..evaluation.evaluator import SavedRows
from ..evaluation.mmeb import MMEBEvaluator
from ..mining import MiningConfig, mine_negatives
from ..train import TrainConfig
from .demo import DEFAULT_BACKBONE, DEMO_SEED

logger = logging.getLogger("slq")

MMEB_METHODS = ("zero_shot_last_token", "slq", "slq_hard_negatives", "lora", "lora_hard_negatives")
ROWS_FILE = "rows.json"
MINED_FILE = "train_mined.jsonl"


@dataclass(frozen=True)
class MMEBBenchConfig:
    """The run's settings; the defaults are what the README's table reports."""

    n_train_pairs: int = setting(200, "training pairs per task of the mixture (7 tasks)", minimum=1)
    n_eval: int = setting(100, "queries per evaluation dataset (validation and test)", minimum=1)
    n_candidates: int = setting(20, "candidates per query of the retrieval and grounding datasets", minimum=2)
    num_queries: int = setting(64, "SLQ queries", minimum=1)
    epochs: int = setting(10, "SLQ epochs (validation overall hit@1: 25.1 at 3, 49.0 at 10)", minimum=1)
    batch_size: int = setting(32, "pairs per step", minimum=1)
    lr: float = setting(1e-2, "SLQ's peak learning rate (validation: 3e-3 scored 18.7 to 1e-2's 25.1 at 3 epochs)")
    mined: int = setting(3, "negatives mined per pair by the first SLQ adapter", minimum=1)
    max_similarity: float = setting(0.95, "a mined candidate this close (cosine) to the pair's positive is taken "
                                          "for a copy of it and skipped")
    max_relative_score: float | None = setting(0.95, "positive-aware mining: a candidate the query scores above "
                                                     "this fraction of its positive's score is taken for a "
                                                     "possibly right one and skipped")
    hard_negatives: int = setting(1, "of those, drawn into the loss per pair and step (the *_hard_negatives rows)")
    baseline_lr: float = setting(1e-3, "LoRA's peak learning rate (validation: 1e-4 scored 16.0 to 1e-3's 30.4 at "
                                       "3 epochs)")
    baseline_epochs: int = setting(10, "LoRA's epochs (as many as SLQ's; validation: 16.9 at 1, 30.4 at 3)", minimum=1)
    prompt_cache_mb: float = setting(4000, "RAM for SLQ's prompt keys/values kept across epochs")
    eval_batch_size: int = setting(64, "items per forward pass when evaluating and mining", minimum=1)
    world_images: tuple[int, int, int] = setting((2000, 200, 500), "train/val/test images of the world (the "
                                                 "default world slq-tiny-vl was pretrained on)", cli=False)
    seed: int = setting(DEMO_SEED, "seed of the world, the suite and training (slq-tiny-vl was pretrained on "
                                   "world 0)", cli=False)

    def __post_init__(self):
        check_settings(self)
        if not (isinstance(self.hard_negatives, int) and 1 <= self.hard_negatives <= self.mined):
            raise SettingError("hard_negatives", self.hard_negatives, f"must be an integer in [1, mined={self.mined}]")

    def methods(self) -> list[Method]:
        slq = TrainConfig(num_queries=self.num_queries, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                          seed=self.seed, prompt_cache_mb=self.prompt_cache_mb if self.epochs > 1 else 0.0)
        lora = baseline_config_for(slq, self.baseline_lr, self.baseline_epochs)
        return [Method("zero_shot_last_token", "last_token_one_word"), Method("slq", "slq", slq),
                Method("slq_hard_negatives", "slq", replace(slq, hard_negatives=self.hard_negatives)),
                Method("lora", "lora", lora),
                Method("lora_hard_negatives", "lora", replace(lora, hard_negatives=self.hard_negatives))]


def run_mmeb_bench(out_dir: str | os.PathLike, config: MMEBBenchConfig | None = None, *,
                   backbone_dir: str | os.PathLike | None = None, methods: Sequence[str] = MMEB_METHODS,
                   progress: bool | None = None, **settings) -> dict:
    """Run every method into `out_dir`; returns the report (also `report.json`, `table.md`, `hit1.png`).

    `backbone_dir` defaults to the shipped slq-tiny-vl. The hard-negative rows need the "slq" row's
    adapter, which mines their negatives; it is trained first when asked for.
    """
    config = replace(config or MMEBBenchConfig(), **settings)
    unknown = [m for m in methods if m not in MMEB_METHODS]
    if unknown:
        raise SettingError("methods", ",".join(unknown), f"unknown; choose from {', '.join(MMEB_METHODS)}")
    backbone_dir = Path(backbone_dir) if backbone_dir is not None else DEFAULT_BACKBONE
    if not (backbone_dir / "config.json").is_file():
        raise SLQError(f"{backbone_dir}: no checkpoint there (config.json missing)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("[1/4] the shapes world (seed %d) and its MMEB-format suite in %s", config.seed, out)
    n_train, n_val, n_test = config.world_images
    write_world(out / "world", n_train=n_train, n_val=n_val, n_test=n_test, seed=config.seed, progress=progress)
    suite = write_mmeb_suite(out / "world", out / "suite", n_eval=config.n_eval, n_candidates=config.n_candidates,
                             n_train_pairs=config.n_train_pairs, seed=config.seed, progress=progress)
    train_data = load_pairs(suite["paths"]["train"])
    test_tasks, _ = load_mmeb(suite["paths"]["eval"])
    val_tasks, _ = load_mmeb(suite["paths"]["val_eval"])
    evaluators = [MMEBEvaluator(test_tasks, "test", batch_size=config.eval_batch_size),
                  MMEBEvaluator(val_tasks, "validation", batch_size=config.eval_batch_size)]
    specs = {m.name: m for m in config.methods()}
    wanted = [m for m in MMEB_METHODS if m in methods or (m == "slq" and any(n.endswith("_hard_negatives")
                                                                             for n in methods))]
    resume = SavedRows(out / ROWS_FILE, {name: {"method": asdict(specs[name]), "backbone": str(backbone_dir),
                                                "config": asdict(config)} for name in wanted})
    logger.info("[2/4] backbone: %s; %d training pairs in %d tasks", backbone_dir, len(train_data),
                len(suite["train_pairs"]))

    def log_row(name: str, row: dict) -> None:
        logger.info("      %s: test overall hit@1 %.1f (validation %.1f), %.0f s training", name,
                    row["overall"]["hit@1"], row["evaluations"]["validation"]["overall"]["hit@1"],
                    row["train_seconds"])

    def run(names: list[str], data) -> None:
        if names:
            compare(backbone_dir, data, [specs[name] for name in names], evaluators, progress=progress,
                    resume=resume, on_row=log_row, keep_adapters=out / "adapters")

    in_batch = [m for m in ("zero_shot_last_token", "slq", "lora") if m in wanted]
    logger.info("[3/4] in-batch negatives: %s", ", ".join(in_batch))
    run(in_batch, train_data)
    hard = [m for m in wanted if m.endswith("_hard_negatives")]
    if hard:
        logger.info("[4/4] mining %d negatives per pair with SLQ's adapter, then: %s", config.mined, ", ".join(hard))
        run(hard, _mined(out, train_data, backbone_dir, config))
    rows = resume.kept()
    report = {"methods": {m: rows[m] for m in wanted if m in methods}, "suite": suite["eval"],
              "meta_tasks": suite["meta_tasks"], "config": asdict(config), "backbone": str(backbone_dir),
              "train_pairs": len(train_data)}
    save_mmeb_report(report, out)
    return report


def _mined(out: Path, train_data, backbone_dir: Path, config: MMEBBenchConfig):
    """The mixture with `config.mined` negatives per pair mined by the "slq" row's adapter (kept
    beside the rows, so a rerun reuses it)."""
    path = out / MINED_FILE
    stamp = out / (MINED_FILE + ".json")
    identity = {"adapter_sha256": file_sha256(out / "adapters" / "slq" / "adapter_model.safetensors"),
                "k": config.mined, "max_similarity": config.max_similarity,
                "max_relative_score": config.max_relative_score, "pairs": len(train_data)}
    if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == identity:
        return load_pairs(path)
    from ..retriever import SLQRetriever

    encoder = SLQRetriever.from_pretrained(backbone_dir, out / "adapters" / "slq")
    result = mine_negatives(encoder, train_data, MiningConfig(k=config.mined, max_similarity=config.max_similarity,
                                                              max_relative_score=config.max_relative_score),
                            batch_size=config.eval_batch_size)
    records = result.dataset.records
    if result.short:  # topped up with the suite's random negatives, so every pair keeps `mined`
        records = [replace(r, negatives=(r.negatives + tuple(n for n in old.negatives if n not in r.negatives))
                           [:max(config.mined, len(r.negatives))]) for r, old in zip(records, train_data.records)]
        logger.warning("      %d pair(s) got fewer than %d mined negatives; topped up with their random ones",
                       len(result.short), config.mined)
    write_pairs(records, path)
    atomic_write(stamp, json.dumps(identity) + "\n")
    return load_pairs(path)


def format_mmeb_comparison(report: dict) -> str:
    """Markdown: hit@1 on the test datasets per method, the meta-task means and the overall mean,
    with the validation overall and the training cost beneath."""
    methods = report["methods"]
    names = list(methods)
    first = next(iter(methods.values()))
    lines = ["| dataset | meta-task | chance | " + " | ".join(names) + " |",
             "|---|---|---:|" + "---:|" * len(names)]
    for dataset, d in first["datasets"].items():
        lines.append(f"| {dataset} | {d['meta_task']} | {d['chance']:.1f} | " + " | ".join(
            f"{methods[m]['datasets'][dataset]['hit@1']:.1f}" for m in names) + " |")
    for task in first["meta_tasks"]:
        lines.append(f"| **{task}** | | | " + " | ".join(f"**{methods[m]['meta_tasks'][task]['hit@1']:.1f}**"
                                                         for m in names) + " |")
    lines.append("| **overall (test)** | | | " + " | ".join(f"**{methods[m]['overall']['hit@1']:.1f}**"
                                                         for m in names) + " |")
    lines.append("| overall (validation) | | | " + " | ".join(
        f"{methods[m]['evaluations']['validation']['overall']['hit@1']:.1f}" for m in names) + " |")
    lines.append("| trainable parameters | | | " + " | ".join(f"{methods[m]['trainable_params']:,}"
                                                           for m in names) + " |")
    lines.append("| training seconds | | | " + " | ".join(f"{methods[m]['train_seconds']:.0f}" for m in names) + " |")
    return "\n".join(lines)


def save_mmeb_report(report: dict, out: Path) -> str:
    """`report.json`, `table.md` and, with matplotlib, `hit1.png` (hit@1 per meta-task and method)."""
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    table = format_mmeb_comparison(report)
    atomic_write(out / "table.md", table + "\n")
    try:
        plot_meta_tasks(report, out / "hit1.png")
    except ImportError:
        logger.warning("no hit1.png: pip install matplotlib")
    return table


def plot_meta_tasks(report: dict, path: Path) -> Path:
    """Grouped bars: hit@1 per meta-task (and overall), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report["methods"]
    groups = [*next(iter(methods.values()))["meta_tasks"], "overall"]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, (name, m) in enumerate(methods.items()):
        values = [m["meta_tasks"][g]["hit@1"] if g != "overall" else m["overall"]["hit@1"] for g in groups]
        ax.bar([i + k * width for i in range(len(groups))], values, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups)
    ax.set_ylabel("hit@1 (%)")
    ax.set_title("MMEB-style suite on the shapes world (test datasets)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


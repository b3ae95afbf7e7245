"""`slq karr-bench`: the paper's claims on the shipped default backbone, in one command.

Every method trains on the shapes world's *plain* captions (train split, seed 0: the world
slq-tiny-vl was pretrained on) and is scored three ways:

- `test`: the plain test split (200 images), as `make demo`;
- `karr`: KARR-Shapes (`slq.karr.KARR_SHAPES`: 500 test images, each caption naming its objects
  through the world's knowledge), with recall per category and per clue set (clues the pretraining
  also showed beside images, or met in text only);
- `karr_control`: the same captions with the clues taken out ("two circles" for "two circles the
  colour of a tomato"): what the rest of each caption retrieves alone. KARR recall above it is what
  the knowledge added.

Methods: zero-shot last token and mean pooling, SLQ, SLQ on a random twin, LoRA and full fine-
tuning. After training each backbone is probed (captions and VQA answers, `slq.evaluation.capability`)
and hashed, and the untouched backbone is asked the facts KARR-Shapes relies on
(`slq.evaluation.knowledge`). Results: `report.json`, `table.md` (Table 3's shape), `karr.md` (recall
per category), `knowledge.txt`, plots. Finished rows are kept in `rows.json` across reruns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .._io import atomic_write, setting
from ..backbone import Backbone
from ..data import ImageTextDataset, load_jsonl
from ..data.shapes import write_world
from ..errors import SettingError
from ..evaluation.capability import CapabilityProbe, capability_probe_for
from ..evaluation.compare import METHODS, baseline_config_for, compare, standard_methods
from ..evaluation.evaluator import SavedRows
from ..evaluation.knowledge import KnowledgeProbe, format_knowledge
from ..evaluation.report import format_table3, save_comparison
from ..evaluation.retrieval import RetrievalEvaluator
from ..karr import CATEGORIES, KARR_FILE, KARR_SHAPES, control_dataset
from .demo import DEFAULT_BACKBONE, ShapesRunConfig

logger = logging.getLogger("slq")

KARR_METHODS = ("zero_shot_last_token", "zero_shot_mean", "slq", "slq_random_init", "lora", "full_ft")
ROWS_FILE = "rows.json"


@dataclass(frozen=True)
class KarrBenchConfig(ShapesRunConfig):
    """The run's settings: the demo's (`ShapesRunConfig`), and the baselines' and evaluation's."""

    baseline_lr: float = setting(1e-3, "LoRA's and full fine-tuning's peak learning rate (SLQ's / 10)")
    baseline_epochs: int = setting(10, "LoRA's and full fine-tuning's epochs", minimum=1)
    eval_batch_size: int = setting(64, "items per forward pass when evaluating", minimum=1)


def run_karr_bench(out_dir: str | os.PathLike, config: KarrBenchConfig | None = None, *,
                   backbone_dir: str | os.PathLike | None = None, karr_dir: str | os.PathLike | None = None,
                   methods: Sequence[str] = KARR_METHODS, progress: bool | None = None,
                   probe_for: Callable[[ImageTextDataset, int], CapabilityProbe] = capability_probe_for,
                   **settings) -> dict:
    """Run the bench into `out_dir` (module docstring); returns the report. `karr_dir` defaults to the
    shipped KARR-Shapes; `probe_for(test split, capability_limit)` makes the capability probe each
    method's backbone gets after training; `settings` override fields of `config`."""
    config = replace(config or KarrBenchConfig(), **settings)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SettingError("methods", ",".join(unknown), f"unknown; choose from {', '.join(METHODS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone_dir = Path(backbone_dir) if backbone_dir is not None else DEFAULT_BACKBONE
    logger.info("[1/3] the shapes world (%d train / %d test images) and %s", config.n_train, config.n_test,
                "KARR-Shapes" if karr_dir is None else karr_dir)
    world = write_world(out / "world", n_train=config.n_train, n_val=1, n_test=config.n_test, seed=config.seed,
                        progress=progress)
    karr = load_jsonl(Path(karr_dir or KARR_SHAPES) / KARR_FILE)
    test = load_jsonl(world["test"])
    evaluators = [RetrievalEvaluator(test, batch_size=config.eval_batch_size),
                  RetrievalEvaluator(karr, "karr", batch_size=config.eval_batch_size),
                  RetrievalEvaluator(control_dataset(karr), "karr_control", batch_size=config.eval_batch_size)]

    knowledge = _build_probe(Path(karr_dir or KARR_SHAPES))
    if knowledge:  # a set whose clues are facts a language model stated: its build says which and whose
        logger.info("[2/3] the facts behind %s, as probed when it was built: %d kept", karr_dir, len(knowledge["kept"]))
    else:
        logger.info("[2/3] what the backbone knows of KARR-Shapes' facts (%s)", backbone_dir)
        knowledge = KnowledgeProbe()(Backbone.load(backbone_dir))
        atomic_write(out / "knowledge.txt", format_knowledge(knowledge) + "\n")
        logger.info("\n%s", format_knowledge(knowledge))

    train_config = config.train_config()
    specs = standard_methods(methods, train_config,
                             baseline_config_for(train_config, config.baseline_lr, config.baseline_epochs))
    probe = probe_for(test, config.capability_limit) if config.capability_limit else None
    resume = SavedRows(out / ROWS_FILE, {m.name: {
        "method": asdict(m), "backbone": str(backbone_dir), "karr": karr.name, "n_karr": len(karr),
        "n_test": config.n_test, "capability": _probe_identity(probe), "jobs": config.jobs} for m in specs})
    logger.info("[3/3] %s, %d at a time, each in a process of its own (rows kept in %s)",
                ", ".join(m.name for m in specs), config.jobs, out / ROWS_FILE)

    def log_row(method: str, row: dict) -> None:
        k = row["evaluations"]["karr"]
        logger.info("      %s: plain R@1 %.3f / %.3f, KARR R@1 %.3f / %.3f", method, row["t2i"]["R@1"],
                    row["i2t"]["R@1"], k["t2i"]["R@1"], k["i2t"]["R@1"])

    report = compare(backbone_dir, load_jsonl(world["train"]), specs, evaluators, progress=progress,
                     isolate=True, jobs=config.jobs, resume=resume, on_row=log_row, capability=probe)
    report.update(backbone=str(backbone_dir), karr_bench_config=asdict(config),
                  knowledge={k: v for k, v in knowledge.items() if k != "answers"})
    save_comparison(report, out)
    atomic_write(out / "karr.md", format_karr_table(report) + "\n")
    atomic_write(out / "knowledge.json", json.dumps(knowledge, indent=2) + "\n")
    return report


def _probe_identity(probe: CapabilityProbe | None) -> str | None:
    """A probe's name and a hash of all it asks (images, facts, texts): a row measured by another
    probe is not reused."""
    return None if probe is None else f"{probe.name}:{hashlib.sha256(repr(probe).encode()).hexdigest()[:16]}"


def _build_probe(karr_dir: Path) -> dict:
    """The knowledge probe a KARR build recorded (`slq karr real`: the facts its LM was asked, the
    ones kept), without the per-fact scores; {} when the build recorded none."""
    try:
        probe = json.loads((karr_dir / "build.json").read_text()).get("probe") or {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in probe.items() if k not in ("facts", "prior")}


def format_karr_table(report: dict) -> str:
    """Markdown: per method, R@1 both ways on the plain test split, on KARR-Shapes and on its control,
    then KARR text→image R@1 per category and per clue set. Percent; chance is 1/images."""
    evaluations = report["evaluations"]
    karr, control = evaluations["karr"]["methods"], evaluations["karr_control"]["methods"]
    first = next(iter(karr.values()))
    categories = [c for c in CATEGORIES if c in first.get("by_category", {})]
    clue_sets = list(first.get("by_clues", {}))
    header = ["method", "plain t2i", "plain i2t", "KARR t2i", "KARR i2t", "control t2i", "control i2t"] + \
        [CATEGORIES[c] for c in categories] + [f"clues {c}" for c in clue_sets]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]

    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    for name, m in report["methods"].items():
        k, c = karr.get(name), control.get(name)
        if k is None:
            continue
        cells = [name, pct(m["t2i"]["R@1"]), pct(m["i2t"]["R@1"]), pct(k["t2i"]["R@1"]), pct(k["i2t"]["R@1"]),
                 pct(c["t2i"]["R@1"]) if c else "–", pct(c["i2t"]["R@1"]) if c else "–"]
        cells += [pct(k["by_category"][cat]["t2i"]["R@1"]) for cat in categories]
        cells += [pct(k["by_clues"][s]["t2i"]["R@1"]) for s in clue_sets]
        lines.append("| " + " | ".join(cells) + " |")
    n_karr = sum(v["n_images"] for v in first.get("by_category", {}).values()) or None
    note = (f"R@1 in %. Chance: plain {100 * report['chance_R@1']:.1f}" +
            (f", KARR {100 / n_karr:.1f}" if n_karr else "") + ". Categories and clue sets: KARR text→image R@1.")
    return "\n".join(lines) + "\n\n" + note + "\n\n" + format_table3(report)

"""`make demo`: the whole method on the shapes world, offline, in minutes on two CPU cores.

Writes the seeded shapes world, takes a backbone (by default `slq-tiny-vl`, the small Qwen2-VL
that slq ships, pretrained generatively on the same world by `scripts/pretrain_default.py`), and
compares zero-shot pooling, SLQ and SLQ on a random twin on the held-out test split, and what each
method's backbone can still caption and answer after training. Results: `report.json`, `table.txt`,
`table.md`, `recall.png`, `cost.png` and `gap.png` in the output folder. SLQ's adapter is kept
(`adapters/slq`), the test images are indexed with it (`index/`, served by `slq serve`), and
`gallery.png` shows a few test captions with their top five images.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from .._io import check_settings, setting
from ..data import load_jsonl
from ..data.shapes import write_world
from ..errors import SLQError
from ..evaluation.capability import capability_probe_for
from ..evaluation.compare import compare, standard_methods
from ..evaluation.report import save_comparison
from ..evaluation.retrieval import RetrievalEvaluator
from ..tiny import build_tiny_model
from ..train import TrainConfig

logger = logging.getLogger("slq")

DEMO_METHODS = ("zero_shot_last_token", "zero_shot_mean", "slq", "slq_random_init")
# The shipped default backbone. It was pretrained on the world of seed 0 (never on its test split or
# its held-out colour-shape pairs), so the demo's world uses that seed.
DEFAULT_BACKBONE = Path(__file__).resolve().parent.parent / "assets" / "slq-tiny-vl"
DEMO_SEED = 0


@dataclass(frozen=True)
class ShapesRunConfig:
    """What `make demo` and `slq karr-bench` share: the shapes world they train on, SLQ's training
    (chosen on the world's validation split, docs/slq-tiny-vl.md), the processes and the probe."""

    n_train: int = setting(2000, "training images (plain captions)", minimum=1)
    n_test: int = setting(200, "test images (the world's plain test split)", minimum=1)
    epochs: int = setting(10, "SLQ epochs", minimum=1)
    num_queries: int = setting(64, "SLQ queries", minimum=1)
    batch_size: int = setting(32, "pairs per step", minimum=1)
    lr: float = setting(1e-2, "SLQ's peak learning rate")
    prompt_cache_mb: float = setting(4000, "RAM for prompts' keys/values kept across epochs (later epochs run "
                                           "only the queries)")
    jobs: int = setting(2, "methods trained at once, in separate processes", minimum=1)
    capability_limit: int = setting(100, "test images on which each method's backbone is probed after training "
                                         "(greedy captions and VQA answers scored); 0 = no probe", minimum=0)
    seed: int = setting(DEMO_SEED, "seed of the world and of training (slq-tiny-vl was pretrained on world 0)",
                        cli=False)

    def __post_init__(self):
        check_settings(self)

    def train_config(self) -> TrainConfig:
        """SLQ's training settings."""
        return TrainConfig(num_queries=self.num_queries, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           seed=self.seed, prompt_cache_mb=self.prompt_cache_mb)


@dataclass(frozen=True)
class DemoConfig(ShapesRunConfig):
    """The demo's settings: `ShapesRunConfig`'s, nothing more."""


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *,
             backbone_dir: str | os.PathLike | None = None, progress: bool | None = None, **settings) -> dict:
    """Run the demo into `out_dir`; returns the comparison's report.

    backbone_dir: a checkpoint folder, "random" for a tiny random Qwen2-VL (fast; near-chance
    recall), or None for the shipped `slq-tiny-vl`. `settings` override fields of `config`. The
    prompt cache makes epochs after the first run only the queries; `jobs` > 1 trains SLQ and its
    random-twin control side by side, in separate processes.
    """
    config = replace(config or DemoConfig(), **settings)
    out = Path(out_dir)
    if backbone_dir is None and not (DEFAULT_BACKBONE / "config.json").is_file():
        raise SLQError(f"the default backbone is missing from {DEFAULT_BACKBONE}; reinstall slq, or pass "
                       "another backbone (a checkpoint folder, or \"random\")")
    out.mkdir(parents=True, exist_ok=True)
    logger.info("[1/4] writing the shapes world (%d train / %d test images) to %s", config.n_train, config.n_test,
                out / "world")
    world = write_world(out / "world", n_train=config.n_train, n_val=max(1, config.n_test // 4),
                        n_test=config.n_test, seed=config.seed, progress=progress)
    if str(backbone_dir) == "random":
        backbone_dir = build_tiny_model("qwen2_vl", out / "backbone", seed=config.seed, overwrite=True)
        logger.info("[2/4] built a tiny random qwen2_vl at %s (a random model has little to elicit; expect "
                    "near-chance recall)", backbone_dir)
    elif backbone_dir is None:
        backbone_dir = DEFAULT_BACKBONE
        logger.info("[2/4] backbone: slq-tiny-vl, slq's pretrained default (%s)", backbone_dir)
    else:
        logger.info("[2/4] backbone: %s", backbone_dir)
    logger.info("[3/4] training and evaluating: %s%s", ", ".join(DEMO_METHODS),
                f" ({config.jobs} at a time, in separate processes)" if config.jobs > 1 else "")

    def done(method: str, row: dict) -> None:
        trained = f" ({row['train_seconds']:.0f} s of training)" if row["train_seconds"] else ""
        logger.info("      %s done%s", method, trained)

    test = load_jsonl(world["test"])
    probe = capability_probe_for(test, config.capability_limit) if config.capability_limit else None
    report = compare(backbone_dir, load_jsonl(world["train"]), standard_methods(DEMO_METHODS, config.train_config()),
                     [RetrievalEvaluator(test)], progress=progress, isolate=config.jobs > 1, jobs=config.jobs,
                     on_row=done, keep_adapters=out / "adapters", capability=probe)
    report["backbone"] = str(backbone_dir)
    save_comparison(report, out)
    index_and_gallery(out, world, backbone_dir, progress)
    plots = [str(out / name) for name in ("recall.png", "gap.png", "gallery.png") if (out / name).is_file()]
    logger.info("report: %s%s", out / "report.json", f"  plots: {', '.join(plots)}" if plots else "")
    if (out / "index").is_dir():
        logger.info("search the test images in a browser: slq serve %s", out / "index")
    return report


def index_and_gallery(out: Path, world: dict, backbone_dir, progress: bool | None) -> None:
    """Index the test split with SLQ's kept adapter and draw `gallery.png` from it; without FAISS or
    matplotlib, say what is missing and go on: the comparison is the demo's result."""
    from ..index import Searcher, update_index
    from ..index.ann import faiss_module

    try:
        faiss_module()
    except SLQError as e:
        logger.warning("not indexing the test images: %s", e)
        return
    logger.info("[4/4] indexing the test images with SLQ's adapter into %s", out / "index")
    shutil.rmtree(out / "index", ignore_errors=True)  # a rerun's adapter may differ: its index is another
    update_index(out / "index", world["test"], backbone=backbone_dir, adapter=out / "adapters" / "slq",
                 root=out / "world", progress=progress)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning("no gallery.png: pip install matplotlib")
        return
    from ..evaluation.gallery import gallery_queries, plot_gallery

    searcher = Searcher.open([out / "index"])
    try:
        plot_gallery(searcher, gallery_queries(load_jsonl(world["test"]).records), out / "gallery.png")
    finally:
        searcher.close()

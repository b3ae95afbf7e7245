"""`make demo`: the whole method on the shapes world, offline, in minutes on two CPU cores.

Writes the seeded shapes world, takes a backbone (by default `slq-tiny-vl`, the small Qwen2-VL
that slq ships, pretrained generatively on the same world by `scripts/pretrain_default.py`), and
compares zero-shot pooling, SLQ and SLQ on a random twin on the held-out test split. Results:
`report.json`, `recall.png` and a printed table in the output folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from .compare import compare, save_comparison
from .data import load_jsonl
from .errors import SLQError
from .shapes import write_world
from .tiny import build_tiny_model
from .train import TrainConfig

DEMO_METHODS = ("zero_shot_last_token", "zero_shot_mean", "slq", "slq_random_init")
# The shipped default backbone. It was pretrained on the world of seed 0 (never on its test split or
# its held-out colour-shape pairs), so the demo's world uses that seed.
DEFAULT_BACKBONE = Path(__file__).parent / "assets" / "slq-tiny-vl"
DEMO_SEED = 0


def run_demo(out_dir: str | os.PathLike, *, backbone_dir: str | os.PathLike | None = None, n_train: int = 2000,
             n_test: int = 200, epochs: int = 10, batch_size: int = 32, lr: float = 1e-2, num_queries: int = 64,
             prompt_cache_mb: float = 4000, jobs: int = 2, seed: int = DEMO_SEED, progress: bool | None = None,
             log=print) -> dict:
    """backbone_dir: a checkpoint folder, "random" for a tiny random Qwen2-VL (fast; near-chance
    recall), or None for the shipped `slq-tiny-vl`. The SLQ settings were chosen on the world's
    validation split (README "slq-tiny-vl: what mattered"). The prompt cache makes epochs after the first
    run only the queries; `jobs` > 1 trains SLQ and its random-twin control side by side, in separate
    processes."""
    out = Path(out_dir)
    if backbone_dir is None and not (DEFAULT_BACKBONE / "config.json").is_file():
        raise SLQError(f"the default backbone is missing from {DEFAULT_BACKBONE}; reinstall slq, or pass "
                       "--backbone DIR (or --backbone random)")
    out.mkdir(parents=True, exist_ok=True)
    log(f"[1/3] writing the shapes world ({n_train} train / {n_test} test images) to {out / 'world'}")
    world = write_world(out / "world", n_train=n_train, n_val=max(1, n_test // 4), n_test=n_test, seed=seed,
                        progress=progress)
    if str(backbone_dir) == "random":
        backbone_dir = build_tiny_model("qwen2_vl", out / "backbone", seed=seed, overwrite=True)
        log(f"[2/3] built a tiny random qwen2_vl at {backbone_dir} "
            "(a random model has little to elicit; expect near-chance recall)")
    elif backbone_dir is None:
        backbone_dir = DEFAULT_BACKBONE
        log(f"[2/3] backbone: slq-tiny-vl, slq's pretrained default ({backbone_dir})")
    else:
        log(f"[2/3] backbone: {backbone_dir}")
    config = TrainConfig(num_queries=num_queries, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         prompt_cache_mb=prompt_cache_mb)
    log(f"[3/3] training and evaluating: {', '.join(DEMO_METHODS)}" +
        (f" ({jobs} at a time, in separate processes)" if jobs > 1 else ""))
    report = compare(backbone_dir, load_jsonl(world["train"]), load_jsonl(world["test"]), config,
                     methods=DEMO_METHODS, progress=progress, isolate=jobs > 1, jobs=jobs,
                     on_row=lambda method, row: log(f"      {method} done" + (
                         f" ({row['train_seconds']:.0f} s of training)" if row["train_seconds"] else "")))
    report["backbone"] = str(backbone_dir)
    log(save_comparison(report, out))
    log(f"report: {out / 'report.json'}  plot: {out / 'recall.png'}")
    return report

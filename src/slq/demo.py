"""`make demo`: the whole method on the shapes world, offline, in minutes on two CPU cores.

Writes a seeded shapes world, takes a backbone (by default a tiny random Qwen2-VL until a
pretrained default ships), and compares zero-shot pooling, SLQ and SLQ on a random twin on the
held-out test split. Results: `report.json`, `recall.png` and a printed table in the output folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from .compare import compare, save_comparison
from .data import load_jsonl
from .shapes import write_world
from .tiny import build_tiny_model
from .train import TrainConfig

DEMO_METHODS = ("zero_shot_last_token", "zero_shot_mean", "slq", "slq_random_init")


def run_demo(out_dir: str | os.PathLike, *, backbone_dir: str | os.PathLike | None = None, n_train: int = 512,
             n_test: int = 200, epochs: int = 3, batch_size: int = 32, lr: float = 2e-3, num_queries: int = 20,
             seed: int = 0, progress: bool | None = None, log=print) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"[1/3] writing the shapes world ({n_train} train / {n_test} test images) to {out / 'world'}")
    world = write_world(out / "world", n_train=n_train, n_val=max(1, n_test // 4), n_test=n_test, seed=seed,
                        progress=progress)
    if backbone_dir is None:
        backbone_dir = build_tiny_model("qwen2_vl", out / "backbone", seed=seed, overwrite=True)
        log(f"[2/3] no --backbone given: built a tiny random qwen2_vl at {backbone_dir} "
            "(a random model has little to elicit; expect near-chance recall)")
    else:
        log(f"[2/3] backbone: {backbone_dir}")
    config = TrainConfig(num_queries=num_queries, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    log(f"[3/3] training and evaluating: {', '.join(DEMO_METHODS)}")
    report = compare(backbone_dir, load_jsonl(world["train"]), load_jsonl(world["test"]), config,
                     methods=DEMO_METHODS, progress=progress)
    report["backbone"] = str(backbone_dir)
    log(save_comparison(report, out))
    log(f"report: {out / 'report.json'}  plot: {out / 'recall.png'}")
    return report

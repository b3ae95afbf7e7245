"""Compare pretraining recipes of slq-tiny-vl by what SLQ elicits from them, over seeds.

    python scripts/pretrain_sweep.py --variants scripts/pretrain_sweep_variants.json --seeds 0 1 2 \
        --device cuda --jobs 6

The variants file maps a name to `PretrainConfig` overrides; `scripts/pretrain_sweep_variants.json`
holds the recipes of docs/slq-tiny-vl.md's table ({} is the current default).

Each (variant, seed) pretrains in a process of its own (`--jobs` at a time), then trains SLQ with
the demo's settings on the world's first 2,000 training images and scores it on 200 *validation*
images: the recipe is chosen there, never on the test split. What SLQ elicits varies much with the
pretraining seed, so compare recipes over several. A GPU (`--device cuda`) makes a run a few
minutes instead of half an hour; its arithmetic differs from the CPU's, so its weights are not the
shipped ones. Prints a table, and writes every result to WORK/results.jsonl as it finishes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VAL_IMAGES = 200


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", required=True, help="JSON file: name -> PretrainConfig overrides")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="pretraining seeds of every variant")
    p.add_argument("--work", default="runs/pretrain-sweep", help="world, checkpoints and results.jsonl")
    p.add_argument("--device", default="cpu", help="torch device of pretraining and SLQ, e.g. cuda")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--pretrain-images", type=int, default=4000, help="training images of the world")
    p.add_argument("--one", nargs=3, metavar=("NAME", "SEED", "OVERRIDES"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_one(args, name: str, seed: int, overrides: dict) -> dict:
    """Pretrain one variant at one seed, then score SLQ (the demo's settings) on validation."""
    from dataclasses import asdict, replace

    import torch

    from slq.data import load_jsonl
    from slq.evaluation import RetrievalEvaluator
    from slq.evaluation.compare import compare, standard_methods
    from slq.recipes.demo import DemoConfig
    from slq.recipes.pretrain import PretrainConfig, pretrain
    from slq.train import TrainConfig

    torch.set_num_threads(args.threads)
    work, world = Path(args.work), Path(args.work) / "world"
    config = PretrainConfig(**{**overrides, "seed": seed, "threads": args.threads})
    out = work / f"{name}-seed{seed}"
    result = pretrain(out, world, config, work_dir=work / f"{name}-seed{seed}.work", progress=False,
                      device=args.device)
    demo = DemoConfig()  # SLQ exactly as the demo trains it
    slq = TrainConfig(seed=0, epochs=demo.epochs, batch_size=demo.batch_size, lr=demo.lr,
                      num_queries=demo.num_queries, prompt_cache_mb=demo.prompt_cache_mb)
    train = load_jsonl(world / "train.jsonl")
    val = load_jsonl(world / "val.jsonl")
    report = compare(out, replace(train, records=train.records[:demo.n_train]), standard_methods(["slq"], slq),
                     [RetrievalEvaluator(replace(val, records=val.records[:VAL_IMAGES]))], progress=False,
                     device=None if args.device == "cpu" else args.device)
    row = report["methods"]["slq"]
    return {"variant": name, "seed": seed, "overrides": overrides, "config": asdict(config), "device": args.device,
            "scored_on": report["test"], "images": round(1 / report["chance_R@1"]),
            "pretrain_minutes": result.seconds / 60, "final_loss": result.history[-1]["loss"],
            "t2i": row["t2i"], "i2t": row["i2t"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    from slq.cli import setup_logging

    setup_logging(0)  # slq's progress lines on stderr, as the slq command shows them
    if args.one:
        name, seed, overrides = args.one
        print(json.dumps(run_one(args, name, int(seed), json.loads(overrides))), flush=True)
        return 0
    from slq.data.shapes import write_world

    variants = json.loads(Path(args.variants).read_text())
    work = Path(args.work)
    if not (work / "world" / "world.json").is_file():
        write_world(work / "world", n_train=args.pretrain_images, n_val=VAL_IMAGES, n_test=1, seed=0, progress=True)
    made = json.loads((work / "world" / "world.json").read_text())["n_train"]
    if made != args.pretrain_images:
        sys.exit(f"{work / 'world'} has {made} training images, not --pretrain-images {args.pretrain_images}; "
                 "pass that number or another --work")
    base = [sys.executable, __file__, "--variants", args.variants, "--work", args.work, "--device", args.device,
            "--threads", str(args.threads)]

    def launch(job):
        name, seed = job
        done = subprocess.run(base + ["--one", name, str(seed), json.dumps(variants[name])], capture_output=True,
                              text=True)
        try:
            if done.returncode:
                raise ValueError(done.stderr[-2000:])
            row = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as why:
            print(f"{name} seed {seed} failed:\n{why}\n{done.stdout[-500:]}", file=sys.stderr, flush=True)
            return None
        with open(work / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name} seed {seed}: R@1 t2i {100 * row['t2i']['R@1']:.1f} i2t {100 * row['i2t']['R@1']:.1f}",
              flush=True)
        return row

    jobs = [(name, seed) for name in variants for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [r for r in pool.map(launch, jobs) if r]
    seeds = " ".join(f"{'seed ' + str(s):>13s}" for s in args.seeds)
    print(f"\n{'variant':30s} {seeds}   (val R@1 %, t2i / i2t)")
    for name in variants:
        cells = {r["seed"]: f"{100 * r['t2i']['R@1']:.1f} / {100 * r['i2t']['R@1']:.1f}"
                 for r in rows if r["variant"] == name}
        print(f"{name:30s} " + " ".join(f"{cells.get(s, 'failed'):>13s}" for s in args.seeds))
    return 0 if len(rows) == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Choose `slq mmeb-bench`'s settings on the suite's *validation* datasets, never its test ones.

    python scripts/mmeb_sweep.py [--work runs/mmeb-sweep]

Each variant is `run_mmeb_bench` with a few settings changed, into a folder of its own (a rerun
keeps finished rows), scored on the validation datasets of the same world. Prints a table of
overall validation hit@1 per (variant, method); the defaults of `MMEBBenchConfig` are the winners
(docs/mmeb.md). About 15 minutes on 2 CPU cores with nothing else running.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from slq.recipes.mmeb import run_mmeb_bench

VARIANTS = {  # name -> (methods, MMEBBenchConfig overrides)
    "slq e3 lr1e-2": (["slq"], {"epochs": 3, "lr": 1e-2}),
    "slq e10 lr1e-2": (["slq"], {"epochs": 10, "lr": 1e-2}),
    "slq e3 lr3e-3": (["slq"], {"epochs": 3, "lr": 3e-3}),
    "lora e1 lr1e-3": (["lora"], {"baseline_epochs": 1, "baseline_lr": 1e-3}),
    "lora e3 lr1e-3": (["lora"], {"baseline_epochs": 3, "baseline_lr": 1e-3}),
    "lora e1 lr1e-4": (["lora"], {"baseline_epochs": 1, "baseline_lr": 1e-4}),
    "lora e3 lr1e-4": (["lora"], {"baseline_epochs": 3, "baseline_lr": 1e-4}),
    "mined, top-ranked": (["slq_hard_negatives", "lora_hard_negatives"], {"max_relative_score": None}),
    "mined, positive-aware 0.95": (["slq_hard_negatives", "lora_hard_negatives"], {"max_relative_score": 0.95}),
    "mined, positive-aware 0.95, 3 per pair": (["slq_hard_negatives", "lora_hard_negatives"],
                                               {"max_relative_score": 0.95, "hard_negatives": 3}),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("runs/mmeb-sweep"), help="one folder per variant here")
    p.add_argument("--only", nargs="*", default=None, help="run only these variants")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = []
    for k, (name, (methods, overrides)) in enumerate(VARIANTS.items()):
        if args.only and name not in args.only:
            continue
        report = run_mmeb_bench(args.work / f"v{k}", methods=methods, progress=False, **overrides)
        for method, row in report["methods"].items():
            results.append((name, method, row["evaluations"]["validation"]["overall"]["hit@1"]))
            print(f"{name:<42}{method:<22}validation overall hit@1 {results[-1][2]:5.1f}", flush=True)
    print("\n| variant | method | validation overall hit@1 |\n|---|---|---:|")
    for name, method, value in results:
        print(f"| {name} | {method} | {value:.1f} |")


if __name__ == "__main__":
    main()

"""Choose SLQ's settings for `slq real-karr` on the shapes world's validation split (never its test split).

    python scripts/real_karr_sweep.py --num-queries 8 32 --lr 1e-2 3e-2 --n-train 500 --epochs 5 \
        --log runs/real-karr-sweep.jsonl

Trains SLQ on slq-gemma-vl (assembled from --vision, default the shipped tower, and Gemma 3 270M's
package) on the plain captions of world 0's training images, with the training code `slq real-karr`
uses, once per setting of the grid, and appends each setting's recall on the world's validation
images (100, five captions each) as one JSON line to --log. docs/gemma-vl.md lists what it gave.
Needs the [evidence] extra.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

from slq.data import load_jsonl
from slq.data.shapes import write_world
from slq.evaluation.retrieval import RetrievalEvaluator
from slq.recipes.gemma_vl import SLQ_GEMMA_VL, gemma_vl_backbone
from slq.recipes.gemma_vl.bench import RealKarrConfig
from slq.retriever import SLQRetriever
from slq.train import train


def main(argv=None) -> list[dict]:
    defaults = RealKarrConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-queries", type=int, nargs="+", default=[defaults.num_queries])
    p.add_argument("--lr", type=float, nargs="+", default=[defaults.lr])
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--n-train", type=int, default=defaults.n_train)
    p.add_argument("--vision", type=Path, default=SLQ_GEMMA_VL, help="slq-gemma-vl tower folder (default: shipped)")
    p.add_argument("--backbone", type=Path, default=None, help="a checkpoint folder instead of slq-gemma-vl")
    p.add_argument("--work", type=Path, default=Path("runs/real-karr-sweep"), help="the world is written here")
    p.add_argument("--log", type=Path, required=True, help="JSON lines, one per setting (appended)")
    args = p.parse_args(argv)

    backbone = args.backbone or gemma_vl_backbone(args.vision)
    world = write_world(args.work / "world", n_train=args.n_train, n_val=100, n_test=1, seed=defaults.seed)
    train_set, validation = load_jsonl(world["train"]), RetrievalEvaluator(load_jsonl(world["val"]), "validation")
    rows = []
    for num_queries, lr in itertools.product(args.num_queries, args.lr):
        began = time.perf_counter()
        retriever = SLQRetriever.from_pretrained(backbone, num_queries=num_queries, seed=defaults.seed)
        config = replace(defaults, num_queries=num_queries, lr=lr, epochs=args.epochs,
                         batch_size=args.batch_size).train_config()
        result = train(retriever, train_set, config)
        scores = validation(retriever)
        row = {"num_queries": num_queries, "lr": lr, "epochs": args.epochs, "n_train": args.n_train,
               "seconds": round(time.perf_counter() - began), "final_loss": result.history[-1]["loss"],
               **{f"{d}/{k}": scores[d][k] for d in ("t2i", "i2t") for k in ("R@1", "R@5")}}
        print(json.dumps(row), flush=True)
        with args.log.open("a") as log:
            log.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()

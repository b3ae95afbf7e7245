"""Choose SLQ's settings for `slq evidence` on the validation words: recall at the end of each epoch.

    python scripts/evidence_sweep.py --num-queries 8 --lr 2e-2 --epochs 5 --log runs/sweep-nq8.jsonl

Trains SLQ on Gemma 3 270M exactly as `slq evidence` does (same words, seed and training code)
and, at the end of every epoch, scores the validation words (never the test words), appending one
JSON line per epoch to --log. Mid-run epochs are read under the run's own learning-rate schedule
(linear decay to 0 at the last epoch), so epoch 3 of a 5-epoch run is not a 3-epoch run. The
docs/evidence.md lists what this gave. Needs the [evidence] extra and wordnet-base.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from slq.data import load_dataset
from slq.data.wordnet import write_wordnet
from slq.evaluation.retrieval import evaluate
from slq.recipes.evidence import EvidenceConfig, gemma_backbone
from slq.retriever import SLQRetriever
from slq.train import TrainConfig, train


def main(argv=None) -> None:
    defaults = EvidenceConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-queries", type=int, default=defaults.num_queries)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--n-train", type=int, default=defaults.n_train)
    p.add_argument("--n-val", type=int, default=defaults.n_val)
    p.add_argument("--n-test", type=int, default=defaults.n_test, help="drawn first, so the others never hold them")
    p.add_argument("--backbone", type=Path, default=None, help="text-only causal LM folder (default: Gemma 3 270M)")
    p.add_argument("--wordnet-dir", type=Path, default=None, help="default: /usr/share/wordnet")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--data", type=Path, default=Path("runs/evidence-sweep/wordnet"), help="where the pairs go")
    p.add_argument("--log", type=Path, required=True, help="JSON lines: one per epoch")
    args = p.parse_args(argv)
    from slq.cli import setup_logging

    setup_logging(0)  # slq's progress lines on stderr, as the slq command shows them
    if args.n_val < 1:
        p.error("--n-val must be at least 1: the sweep scores the validation words")
    if args.threads:
        torch.set_num_threads(args.threads)
    write_wordnet(args.data, args.wordnet_dir, n_train=args.n_train, n_test=args.n_test, n_val=args.n_val,
                  seed=defaults.seed)
    train_data, val_data = load_dataset(args.data / "train.jsonl"), load_dataset(args.data / "val.jsonl")
    backbone = gemma_backbone() if args.backbone is None else args.backbone
    retriever = SLQRetriever.from_pretrained(backbone, num_queries=args.num_queries, seed=defaults.seed)
    config = TrainConfig(num_queries=args.num_queries, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=defaults.seed, prompt_cache_mb=defaults.prompt_cache_mb)
    steps_per_epoch = len(train_data) // config.batch_size
    began, evaluating = time.perf_counter(), 0.0
    args.log.parent.mkdir(parents=True, exist_ok=True)

    def at_epoch_end(entry: dict) -> None:
        nonlocal evaluating
        if entry["step"] % steps_per_epoch:
            return
        start = time.perf_counter()
        scores = evaluate(retriever, val_data, batch_size=defaults.eval_batch_size)
        line = {"num_queries": args.num_queries, "lr": args.lr, "epochs": args.epochs,
                "epoch": entry["step"] // steps_per_epoch, "last_loss": round(entry["loss"], 4),
                "n_val": len(val_data),
                "train_seconds": round(start - began - evaluating),
                "val_d2w": scores["d2w"], "val_w2d": scores["w2d"]}
        evaluating += time.perf_counter() - start
        with args.log.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)

    train(retriever, train_data, config, on_step=at_epoch_end)


if __name__ == "__main__":
    main()

"""`slq compare`: SLQ and the baselines trained and evaluated on the same data, one trade-off table."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SLQError
from .options import (add_config_options, backbone_options, config_from_args, data_options, load_data, load_options,
                      positive_int, ties_option)


def register(sub) -> None:
    from ..evaluation.capability import CAPABILITY_CHOICES
    from ..evaluation.compare import METHODS
    from ..train import TrainConfig

    p = sub.add_parser("compare", help="train and evaluate SLQ and baselines on the same data: one trade-off table")
    backbone_options(p)
    data_options(p, "--train", "training data", "train")
    p.add_argument("--test", required=True, type=Path, help="evaluation data (same formats as --train)")
    p.add_argument("--test-split", default=None, help="Karpathy files only: the split of --test (default: test)")
    p.add_argument("--val", type=Path, default=None,
                   help="validation data (Karpathy files: the val split): every method is also scored on it, "
                        "under evaluations.validation in the report, so settings are chosen without the test data")
    p.add_argument("--val-split", default=None, help="Karpathy files only: the split of --val (default: val)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}")
    add_config_options(p, TrainConfig, skip=("save_every", "save_minutes", "save_epochs", "compile"))
    p.add_argument("--baseline-lr", type=float, default=None, help="LoRA / full fine-tuning learning rate "
                                                                   "(default: --lr / 10)")
    p.add_argument("--baseline-epochs", type=positive_int, default=None,
                   help="LoRA / full fine-tuning epochs (default: --epochs)")
    p.add_argument("--eval-batch-size", type=positive_int, default=32,
                   help="items per forward pass when evaluating (default: 32)")
    ties_option(p)
    p.add_argument("--capability", choices=CAPABILITY_CHOICES, default="auto",
                   help="after training, measure what each method's backbone can still do generatively, on the "
                        "--test data: auto (default) picks captions and VQA for shapes-world records, the word from "
                        "its definition and perplexity for a reverse dictionary, else the captions' perplexity given "
                        "their images; none skips it (the weights' SHA-256 is recorded either way)")
    p.add_argument("--capability-limit", type=positive_int, default=100,
                   help="test records the capability probe uses (default: 100)")
    p.add_argument("--report", type=Path, default=None,
                   help="write the report as JSON here, and beside it the Markdown table (.md), the recall plot "
                        "(.png) and the cost plot (-cost.png)")
    p.add_argument("--isolate", action="store_true",
                   help="run each method in a process of its own and report its peak memory (peak_memory_mb)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="methods run at once, each in its own process (implies --isolate; default: 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from .._io import atomic_write
    from ..evaluation.capability import capability_probe_for
    from ..evaluation.compare import baseline_config_for, compare, standard_methods
    from ..evaluation.report import format_comparison, format_table3, save_plots
    from ..evaluation.retrieval import RetrievalEvaluator
    from ..train import TrainConfig
    from .options import write_json

    config = config_from_args(TrainConfig, args)
    methods = standard_methods(args.methods.split(","), config,
                               baseline_config_for(config, args.baseline_lr, args.baseline_epochs))
    train_data = load_data(args, args.train, args.split, "train")
    evaluators = [RetrievalEvaluator(load_data(args, args.test, args.test_split, "test"),
                                     batch_size=args.eval_batch_size, ties=args.ties)]
    if args.val is not None:
        if args.val.resolve() == args.test.resolve() and (
                args.val.suffix.lower() != ".json" or (args.val_split or "val") == (args.test_split or "test")):
            raise SLQError(f"--val and --test are the same data ({args.val}): choose settings on other data than "
                           "the data you report")
        evaluators.append(RetrievalEvaluator(load_data(args, args.val, args.val_split, "val"), "validation",
                                             batch_size=args.eval_batch_size, ties=args.ties))
    probe = None if args.capability == "none" else capability_probe_for(evaluators[0].dataset, args.capability_limit)
    report = compare(args.backbone, train_data, methods, evaluators, isolate=args.isolate or args.jobs > 1,
                     jobs=args.jobs, capability=probe, **load_options(args))
    print(format_comparison(report))
    print()
    print(format_table3(report))
    if args.report is not None:
        write_json(args.report, report)
        atomic_write(args.report.with_suffix(".md"), format_table3(report) + "\n")
        plots = save_plots(report, args.report.with_suffix(".png"), args.report.with_name(args.report.stem + "-cost.png"))
        print(f"slq: report written to {args.report}, table to {args.report.with_suffix('.md')}"
              + (f", plots to {', '.join(map(str, plots))}" if plots else ""))

"""`slq train`: learn the latent queries on a captioned set, the backbone frozen."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import SLQError
from .options import add_config_options, backbone_options, config_from_args, data_options, load_data, retriever

logger = logging.getLogger("slq")


def register(sub) -> None:
    from ..train import TrainConfig

    p = sub.add_parser("train", help="learn the latent queries on a captioned image set, or on (query, positive, "
                                     "negatives) pairs of inputs of any kind (backbone frozen)")
    backbone_options(p)
    data_options(p, "--train", "training data", "train", pairs=True)
    p.add_argument("--out", required=True, type=Path, help="adapter folder to write")
    add_config_options(p, TrainConfig)
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue the run checkpointed in --out; with no checkpoint there, start afresh (so a "
                             "job script that may be preempted can always pass it)")
    resume.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..adapter import CONFIG_NAME
    from ..distributed import init_distributed
    from ..train import CHECKPOINT_DIR, TrainConfig, train, train_settings

    config = config_from_args(TrainConfig, args)
    if args.out.exists() and not args.out.is_dir():
        raise SLQError(f"--out {args.out} is a file; it must be a folder (new or an adapter folder)")
    if (args.out / CHECKPOINT_DIR).exists() and not (args.resume or args.overwrite):
        raise SLQError(f"{args.out} holds a training checkpoint; pass --resume to continue that run or "
                       "--overwrite to start afresh")
    if args.resume and (args.out / CONFIG_NAME).is_file() and not (args.out / CHECKPOINT_DIR / "state.json").is_file():
        raise SLQError(f"{args.out} holds an adapter but no checkpoint to resume; pass --overwrite to train it "
                       "afresh, or choose another --out")
    rank, args.device = init_distributed(args.device)
    dataset = load_data(args, args.train, args.split, "train", pairs=True)
    encoder = retriever(args, None, num_queries=config.num_queries, seed=config.seed)
    if rank == 0:
        logger.info("training %s parameters (%d queries x %d) on %d records; backbone frozen",
                    f"{encoder.trainable_parameters:,}", config.num_queries, encoder.backbone.hidden_size, len(dataset))
    result = train(encoder, dataset, config, checkpoint_dir=args.out, resume=args.resume)
    if rank != 0:
        return  # every process holds the same queries; one writes them
    settings = train_settings(config, dataset, result)
    settings["skipped"] = [{"source": s.source, "reason": s.reason} for s in dataset.skipped]
    if result.prompt_cache is not None:
        settings["prompt_cache"] = stats = result.prompt_cache
        logger.info("prompt cache: %d prompts kept (%s MB on the device, %s MB in RAM, %s MB on disk), %d hits, "
                    "%d misses", stats["prompts"], stats["device_mb"], stats["mb"], stats["disk_mb"], stats["hits"],
                    stats["misses"])
    encoder.save(args.out, training=settings)
    print(f"slq: adapter written to {args.out} ({result.steps} steps, {result.train_seconds:.1f} s, "
          f"final loss {settings['final_loss']:.4f})")

"""`slq data`: generate the datasets slq ships the means to make (the shapes world, WordNet pairs, an
MMEB-format suite of shapes tasks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_config_options, config_from_args


def register(sub) -> None:
    from ..data.mmeb_suite import SuiteConfig
    from ..data.shapes import WorldConfig
    from ..data.wordnet import WordNetSplit

    p = sub.add_parser("data", help="generate datasets")
    data_sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    p = data_sub.add_parser("shapes", help="the synthetic shapes world: train/val/test JSONL, images, knowledge corpus")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    add_config_options(p, WorldConfig)
    p.set_defaults(func=run_shapes)
    p = data_sub.add_parser("wordnet", help="reverse-dictionary pairs (definition <-> word) of common WordNet nouns, "
                                            "disjoint train/val/test words")
    p.add_argument("--out", required=True, type=Path, help="output folder (train.jsonl, val.jsonl, test.jsonl)")
    p.add_argument("--wordnet-dir", type=Path, default=None,
                   help="WordNet 3.0 data files (default: /usr/share/wordnet, from Debian's wordnet-base)")
    add_config_options(p, WordNetSplit)
    p.set_defaults(func=run_wordnet)
    p = data_sub.add_parser("mmeb-suite", help="MMEB-format eval datasets (classification, VQA, retrieval, grounding) "
                                               "and a pair JSONL training mixture of the same tasks, from a shapes world")
    p.add_argument("--world", required=True, type=Path, help="shapes world folder (written by slq data shapes)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (eval/ and val/ in MMEB's format, train.jsonl and val.jsonl pairs)")
    add_config_options(p, SuiteConfig)
    p.set_defaults(func=run_mmeb_suite)


def run_shapes(args: argparse.Namespace) -> None:
    from ..data.shapes import WorldConfig, write_world

    paths = write_world(args.out, config_from_args(WorldConfig, args))
    print("slq: shapes world written: " + ", ".join(f"{k}={v}" for k, v in paths.items()))


def run_wordnet(args: argparse.Namespace) -> None:
    from ..data.wordnet import WordNetSplit, write_wordnet

    summary = write_wordnet(args.out, args.wordnet_dir, config_from_args(WordNetSplit, args))
    print(f"slq: WordNet reverse dictionary written to {args.out}: " +
          ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list))))


def run_mmeb_suite(args: argparse.Namespace) -> None:
    from ..data.mmeb_suite import SuiteConfig, write_mmeb_suite

    summary = write_mmeb_suite(args.world, args.out, config_from_args(SuiteConfig, args))
    print(f"slq: MMEB suite written to {args.out}: eval " + ", ".join(f"{k}={v}" for k, v in summary["eval"].items()) +
          f"; train={sum(summary['train_pairs'].values())} pairs, val={sum(summary['val_pairs'].values())} pairs")

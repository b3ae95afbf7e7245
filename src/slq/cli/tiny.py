"""`slq tiny-model`: a tiny random checkpoint folder of a family, for tests and smoke runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    from ..tiny import TINY_FAMILIES

    p = sub.add_parser("tiny-model", help="write a tiny random checkpoint folder of a family (for tests and smoke runs)")
    p.add_argument("--family", required=True, choices=TINY_FAMILIES)
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..tiny import build_tiny_model

    out = build_tiny_model(args.family, args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"slq: tiny random {args.family} checkpoint written to {out}")

"""`slq mine-negatives`: hard negatives for a pair JSONL, ranked by a retriever."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..errors import SLQError
from .options import add_config_options, backbone_options, bad_record_option, batch_option, config_from_args, retriever

logger = logging.getLogger("slq")

MINE_DESCRIPTION = """\
Give each (query, positive) pair of a pair JSONL the --k candidates its query ranks highest among
the positives of the other pairs of its group (--group-by, by default the record's "task"), and
write the pairs with them to --out. Never a negative:
the pair's positive under any name (same text, or the same image bytes under another path), another
positive of the same query, the query itself, or a near-duplicate of the positive (cosine to it at
or above --max-similarity). Then train on them:
  slq train --train MINED.jsonl --hard-negatives 2 ..."""


def register(sub) -> None:
    from ..mining import MiningConfig

    p = sub.add_parser("mine-negatives", help="hard negatives for (query, positive) pairs: the wrong candidates a "
                                              "retriever ranks highest", description=MINE_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path,
                   help="pairs in our JSONL's pair form: {\"query\", \"positive\", \"negatives\"} per line")
    p.add_argument("--out", required=True, type=Path,
                   help="the pairs with their mined negatives, in the same form and order (not --data itself)")
    backbone_options(p)
    p.add_argument("--adapter", type=Path, default=None,
                   help="adapter folder written by `slq train` whose rankings choose the negatives (default: none: "
                        "untrained queries, which rank poorly)")
    add_config_options(p, MiningConfig)
    bad_record_option(p)
    batch_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..data import load_pairs, write_pairs
    from ..data.pairs import is_pair_file
    from ..mining import MiningConfig, mine_negatives

    config = config_from_args(MiningConfig, args)
    if _same_file(args.out, args.data):
        raise SLQError(f"--out {args.out} is the --data file; write the mined pairs to another file")
    if args.data.is_file() and not is_pair_file(args.data):
        raise SLQError(f"{args.data}: not (query, positive) pairs; --data takes our JSONL's pair form")
    dataset = load_pairs(args.data, on_bad_record=args.on_bad_record)
    for skipped in dataset.skipped:
        logger.warning("skipped %s: %s", skipped.source, skipped.reason)
    if args.adapter is None:
        logger.warning("no --adapter: negatives ranked by untrained queries")
    result = mine_negatives(retriever(args, args.adapter), dataset, config, batch_size=args.batch_size)
    write_pairs(result.dataset.records, args.out)
    added = "more negatives" if config.keep_existing else "negatives"
    short = f" ({len(result.short)} with fewer)" if result.short else ""
    print(f"slq: {result.pairs} pairs, {config.k} {added} each{short}, written to {args.out}")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # a hard link
    except OSError:
        return False

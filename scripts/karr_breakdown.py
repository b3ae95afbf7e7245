"""What the clues add, per category and clue set: KARR-Shapes against its control for one SLQ adapter.

    python scripts/karr_breakdown.py --backbone runs/tiny-vl-t --adapter runs/pretrain-t/demo/adapters/slq

Embeds KARR-Shapes (or --karr) and its control (the same captions with the clues taken out,
`slq.karr.control_dataset`), ranks every query against the whole set as `slq eval` does, and prints
text->image R@1/5/10 per (category, clue set) for both and the difference: recall the clue adds over
the rest of the caption. Clue sets: `seen_with_images` (clues slq-tiny-vl's pretraining may show beside
images) and `text_only`. Last line: the table as JSON.
"""

from __future__ import annotations

import argparse
import json

from slq.cli import setup_logging


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", required=True, help="checkpoint folder")
    p.add_argument("--adapter", required=True, help="SLQ adapter folder trained on the backbone")
    p.add_argument("--karr", default=None, help="KARR benchmark folder or JSONL (default: the shipped KARR-Shapes)")
    p.add_argument("--batch-size", type=int, default=64)
    return p.parse_args(argv)


def recall_table(retriever, dataset, batch_size: int) -> dict:
    """`slq eval`'s per-category recall, with each record's category and clue set as its category."""
    from dataclasses import replace

    from slq.data import ImageTextDataset
    from slq.evaluation.retrieval import evaluate

    crossed = ImageTextDataset([replace(r, meta={**r.meta, "category": f"{r.meta['category']} / {r.meta['clues']}"})
                                for r in dataset.records], dataset.name)
    by_group = evaluate(retriever, crossed, batch_size=batch_size)["by_category"]
    return {g: {"n_images": v["n_images"], **{k: 100 * r for k, r in v["t2i"].items()}}
            for g, v in sorted(by_group.items())}


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(0)
    from pathlib import Path

    from slq.data import load_dataset
    from slq.karr import control_dataset
    from slq.karr.shapes import KARR_SHAPES
    from slq.retriever import SLQRetriever

    source = Path(args.karr) if args.karr else KARR_SHAPES
    karr = load_dataset(str(source / "karr.jsonl" if source.is_dir() else source))
    retriever = SLQRetriever.from_pretrained(args.backbone, args.adapter)
    tables = {"karr": recall_table(retriever, karr, args.batch_size),
              "control": recall_table(retriever, control_dataset(karr), args.batch_size)}
    print(f"{'category / clues':<42}{'images':>7}{'KARR R@1/5/10':>20}{'control R@1/5/10':>20}{'added R@5':>11}")
    for group, row in tables["karr"].items():
        control = tables["control"].get(group)
        cells = [f"{row[f'R@{k}']:.1f}" for k in (1, 5, 10)]
        other = [f"{control[f'R@{k}']:.1f}" for k in (1, 5, 10)] if control else ["-"] * 3
        added = f"{row['R@5'] - control['R@5']:+.1f}" if control else "-"
        print(f"{group:<42}{row['n_images']:>7}{' / '.join(cells):>20}{' / '.join(other):>20}{added:>11}")
    print(json.dumps(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`slq eval` and `slq embed`: a trained adapter's recall on a dataset, and embeddings to a file."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

from .options import (backbone_options, bad_record_option, batch_option, data_options, load_data, retriever,
                      write_json)

logger = logging.getLogger("slq")


def register(sub) -> None:
    p = sub.add_parser("eval", help="Recall@1/5/10 in both directions on a captioned image set")
    backbone_options(p)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder written by `slq train`")
    data_options(p, "--data", "evaluation data", "test")
    batch_option(p)
    p.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("embed", help="write L2-normalised embeddings of texts or images to a .npy file")
    backbone_options(p)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder written by `slq train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--texts", type=Path, help="text file, one text per line (row i = line i)")
    source.add_argument("--images", type=Path,
                        help="folder of images (rows in sorted file-name order) or a .jsonl dataset (record order; "
                             "its targets: images, or the texts of a text-pair dataset)")
    p.add_argument("--out", required=True, type=Path, help="output .npy file, shape (n, hidden size), float32")
    bad_record_option(p)
    batch_option(p)
    p.set_defaults(func=run_embed)


def run_eval(args: argparse.Namespace) -> None:
    from ..evaluation.metrics import format_recall_table
    from ..evaluation.retrieval import evaluate

    dataset = load_data(args, args.data, args.split, "test")
    report = evaluate(retriever(args, args.adapter), dataset, batch_size=args.batch_size)
    print(format_recall_table(report, title=f"{dataset.name}: {args.adapter}", directions=dataset.directions))
    if args.report is not None:
        write_json(args.report, report)
        print(f"slq: report written to {args.report}")


def run_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from .._io import atomic_write
    from ..data.readers import list_targets, read_texts

    items = read_texts(args.texts) if args.texts is not None else list_targets(args.images, args.on_bad_record)
    encoder = retriever(args, args.adapter)
    if args.texts is not None:
        embeddings = encoder.encode_text(items, batch_size=args.batch_size, show_progress_bar=None)
    else:
        embeddings = encoder.encode_targets(items, batch_size=args.batch_size, show_progress_bar=None)
    buffer = io.BytesIO()
    np.save(buffer, embeddings.astype(np.float32))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, buffer.getvalue())
    print(f"slq: {embeddings.shape[0]} embeddings of width {embeddings.shape[1]} written to {args.out}")

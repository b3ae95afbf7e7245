"""`slq eval` and `slq embed`: a trained adapter's recall on a dataset, and embeddings to a file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import SLQError
from .options import (backbone_options, bad_record_option, batch_option, data_options, load_data, positive_int,
                      retriever, ties_option, workers_option, write_json)

logger = logging.getLogger("slq")

EMBED_DESCRIPTION = """\
Write the L2-normalised embeddings of texts or images to a .npy file, row i for item i.

Items are embedded in pieces of --piece-size, each saved to OUT.parts/ when done. Run the same
command again after a crash or kill and it resumes: finished pieces are kept, the rest embedded,
then joined into OUT and the folder removed. A folder left by another corpus, adapter or piece
size is started over, with a warning.

Several processes share the pieces (gloo on the CPU, NCCL with --device cuda), with the same
output as one process to float rounding, also across a resume with another process count:
  torchrun --nproc-per-node 4 -m slq.cli embed ... --device cuda"""


def register(sub) -> None:
    p = sub.add_parser("eval", help="Recall@1/5/10 in both directions on a captioned image set, or hit@1 on "
                                    "MMEB-format tasks (--mmeb)")
    backbone_options(p)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder written by `slq train`")
    data_options(p, "--data", "evaluation data", "test", required=False)
    p.add_argument("--mmeb", type=Path, default=None, metavar="DIR",
                   help="instead of --data: a folder of MMEB-format datasets (NAME.jsonl, NAME.parquet or NAME/ of "
                        "them; e.g. MMEB-eval's files, or `slq data mmeb-suite`'s eval/), image paths relative to "
                        "--image-root (default: DIR); scores hit@1 of each query over its own candidates, per "
                        "dataset, meta-task and overall")
    p.add_argument("--datasets", default=None, metavar="A,B",
                   help="with --mmeb: only these datasets (default: every one in the folder); names not found are "
                        "reported")
    p.add_argument("--max-queries", type=positive_int, default=None, metavar="N",
                   help="with --mmeb: the first N queries of each dataset (a quick look; default: all)")
    batch_option(p)
    ties_option(p)
    p.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("gap", help="the modality gap of an adapter on a dataset: the distance between the "
                                   "centroids of its text and image embeddings, and a PCA plot of both")
    backbone_options(p)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder written by `slq train`")
    data_options(p, "--data", "evaluation data", "test")
    batch_option(p)
    p.add_argument("--out", required=True, type=Path, help="the plot to write (PNG; needs matplotlib)")
    p.add_argument("--report", type=Path, default=None, help="also write the evaluation's report as JSON here")
    p.set_defaults(func=run_gap)

    p = sub.add_parser("embed", help="write L2-normalised embeddings of texts or images to a .npy file",
                       description=EMBED_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    backbone_options(p)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder written by `slq train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--texts", type=Path, help="text file, one text per line (row i = line i)")
    source.add_argument("--images", type=Path,
                        help="folder of images (rows in sorted file-name order) or a .jsonl dataset (record order; "
                             "its targets: images, or the texts of a text-pair dataset)")
    source.add_argument("--inputs", type=Path,
                        help="JSONL of inputs of any kind, one per line: {\"text\", \"image\", \"instruction\"} "
                             "with a text, an image or both (row i = line i; kinds may mix)")
    p.add_argument("--out", required=True, type=Path, help="output .npy file, shape (n, hidden size), float32")
    p.add_argument("--piece-size", type=positive_int, default=1024, metavar="N",
                   help="pieces of N items are written to OUT.parts/ as they finish, so a killed run resumes where it "
                        "stopped (default: 1024)")
    bad_record_option(p)
    batch_option(p)
    workers_option(p)
    p.set_defaults(func=run_embed)


def run_eval(args: argparse.Namespace) -> None:
    from ..evaluation.metrics import format_recall_table
    from ..evaluation.retrieval import evaluate

    if (args.data is None) == (args.mmeb is None):
        raise SLQError("give --data (a captioned set) or --mmeb (a folder of MMEB-format datasets), not both" if
                       args.data is not None else "give --data (a captioned set) or --mmeb (a folder of MMEB-format "
                       "datasets)")
    if args.mmeb is not None:
        return _run_eval_mmeb(args)
    for flag in ("datasets", "max_queries"):
        if getattr(args, flag) is not None:
            raise SLQError(f"--{flag.replace('_', '-')} applies only with --mmeb")
    dataset = load_data(args, args.data, args.split, "test")
    report = evaluate(retriever(args, args.adapter), dataset, batch_size=args.batch_size, ties=args.ties)
    print(format_recall_table(report, title=f"{dataset.name}: {args.adapter}", directions=dataset.directions))
    if args.report is not None:
        write_json(args.report, report)
        print(f"slq: report written to {args.report}")


def _run_eval_mmeb(args: argparse.Namespace) -> None:
    from ..data.mmeb import load_mmeb
    from ..evaluation.mmeb import evaluate_mmeb, format_mmeb_table

    for flag in ("split", "max_captions"):
        if getattr(args, flag) is not None:
            raise SLQError(f"--{flag.replace('_', '-')} applies only with --data")
    names = [n.strip() for n in args.datasets.split(",") if n.strip()] if args.datasets else None
    tasks, missing = load_mmeb(args.mmeb, names, image_root=args.image_root, on_bad_record=args.on_bad_record,
                               max_queries=args.max_queries)
    for name in missing:
        logger.warning("dataset %s not found in %s", name, args.mmeb)
    for task in tasks:
        for skipped in task.skipped:
            logger.warning("skipped %s: %s", skipped.source, skipped.reason)
    report = evaluate_mmeb(retriever(args, args.adapter), tasks, batch_size=args.batch_size, ties=args.ties,
                           missing=missing)
    print(format_mmeb_table(report, title=f"{args.mmeb}: {args.adapter}"))
    if args.report is not None:
        write_json(args.report, report)
        print(f"slq: report written to {args.report}")


def run_gap(args: argparse.Namespace) -> None:
    from ..evaluation.gap import plot_gaps
    from ..evaluation.report import modality_labels
    from ..evaluation.retrieval import evaluate

    try:
        import matplotlib  # noqa: F401  (before minutes of embedding)
    except ImportError:
        raise SLQError("slq gap draws with matplotlib: pip install matplotlib") from None
    dataset = load_data(args, args.data, args.split, "test")
    report = evaluate(retriever(args, args.adapter), dataset, batch_size=args.batch_size)
    gap = report["modality_gap"]
    plot_gaps({args.adapter.name: gap}, args.out, f"Modality gap on {dataset.name} (PCA of both modalities)",
              modality_labels(dataset.directions))
    print(f"slq: modality gap on {dataset.name}: centroid distance {gap['centroid_distance']:.4f} (spread "
          f"{gap['spread']:.4f}), centroid cosine {gap['centroid_cosine']:.4f}; plot written to {args.out}")
    if args.report is not None:
        write_json(args.report, report)
        print(f"slq: report written to {args.report}")


def run_embed(args: argparse.Namespace) -> None:
    from ..data.readers import list_targets, read_inputs, read_texts
    from ..distributed import init_distributed
    from ..embedding import embed_corpus

    rank, args.device = init_distributed(args.device)
    if rank != 0:  # every process reads the same corpus: process 0 speaks for all
        logger.setLevel(logging.ERROR)
    if args.texts is not None:
        items, kind = read_texts(args.texts), "texts"
    elif args.inputs is not None:
        items, kind = read_inputs(args.inputs), "inputs"
    else:
        items, kind = list_targets(args.images, args.on_bad_record), "targets"
    result = embed_corpus(retriever(args, args.adapter), items, args.out, kind=kind, piece_size=args.piece_size,
                          batch_size=args.batch_size, workers=args.workers)
    if rank == 0:
        print(f"slq: {result.rows} embeddings of width {result.width} written to {args.out}")

"""`slq index` and `slq search`: embed a collection into an index folder, and search it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import SLQError
from .options import (add_config_options, backbone_options, config_from_args, instruction_option, load_options,
                      positive_int)

logger = logging.getLogger("slq")

INDEX_DESCRIPTION = """\
Embed a folder of images (recursively) or a JSONL dataset's targets into INDEX_DIR: vectors and
metadata (path, size, modification time, captions) in SQLite, and a FAISS search structure chosen
by size (exact search up to --exact-max items, HNSW or IVF above, compressed codes when the
vectors exceed --memory-mb).

Run the same command again at any time: only new or changed files are embedded and deleted ones
dropped. A run killed at any moment resumes where it stopped and ends with the same index as an
uninterrupted run. Unreadable, oversized or too-many-pixel images are skipped, reported and
counted. An existing index remembers its source, backbone and adapter: `slq index --out DIR`
brings it up to date."""

SEARCH_DESCRIPTION = """\
Search an index with a text, an image, or an image with text (the text read beside the image, in
one prompt), optionally behind a task instruction (--instruction). Prints the k best items with
their scores; --json for machines, --paths for pipes:
  slq search runs/idx --text "a red circle" --paths | head -3 | xargs -n1 echo"""


def register(sub) -> None:
    from ..index import IndexConfig

    p = sub.add_parser("index", help="embed a folder of images or a JSONL into a searchable index, incrementally",
                       description=INDEX_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, nargs="?", default=None,
                   help="folder of images (recursive) or a .jsonl dataset (images or text targets, with captions); "
                        "default: the source the index recorded")
    p.add_argument("--out", required=True, type=Path, help="the index folder (created, or brought up to date)")
    backbone_options(p, recorded="the index")
    p.add_argument("--adapter", type=Path, default=None,
                   help="adapter folder written by `slq train` (required for a new index)")
    p.add_argument("--root", type=Path, default=None,
                   help="JSONL sources: the folder their images must lie in, and the only files the server "
                        "will send (default: the JSONL's folder)")
    add_config_options(p, IndexConfig)
    p.set_defaults(func=run_index)

    p = sub.add_parser("search", help="search an index with a text, an image, or both",
                       description=SEARCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", type=Path, help="index folder written by `slq index`")
    p.add_argument("--text", default=None, help="the query text (with --image: read beside the image)")
    p.add_argument("--image", type=Path, default=None, help="a query image")
    p.add_argument("-k", type=positive_int, default=10, help="how many results (default: 10)")
    instruction_option(p)
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="the results as one JSON object")
    output.add_argument("--paths", action="store_true", help="only the results' paths (texts for a text index), "
                                                            "one a line")
    backbone_options(p, recorded="the index")
    p.set_defaults(func=run_search)


def run_index(args: argparse.Namespace) -> None:
    from ..index import IndexConfig, update_index
    from ..retriever import SLQRetriever

    def load(backbone: str, adapter: str):
        return SLQRetriever.from_pretrained(args.backbone or backbone, adapter, **load_options(args))

    report = update_index(args.out, args.source, backbone=args.backbone, adapter=args.adapter, root=args.root,
                          config=config_from_args(IndexConfig, args), load_retriever=load)
    search = report.ann
    tuned = f", {'efSearch' if search['kind'] == 'hnsw' else 'nprobe'} {search['setting']} for recall@10 " \
            f"{search['recall_at_10']:.3f}" if search.get("setting") is not None else ""
    print(f"slq: index {args.out}: {report.items} {report.kind} ({report.added} added, {report.updated} updated, "
          f"{report.removed} removed, {report.unchanged} unchanged), {report.skipped} skipped; search: "
          f"{search['kind']}{tuned}; {report.seconds:.1f} s")
    if report.skipped:
        print(f"slq: skipped files are listed in {args.out / 'index.sqlite'} (table skipped); this run's: "
              f"{len(report.newly_skipped)}")
    print(f"slq: search it: slq search {args.out} --text \"...\"   serve it: slq serve {args.out}")


def run_search(args: argparse.Namespace) -> None:
    from ..index import Searcher

    if args.text is None and args.image is None:
        raise SLQError("give --text, --image, or both")
    options = load_options(args)
    options.pop("image_fit", None)  # the adapter's own applies
    searcher = Searcher.open([args.index], backbone=args.backbone, **options)
    try:
        hits = searcher.search(args.text, args.image, k=args.k, instruction=args.instruction)
    finally:
        searcher.close()
    if args.json:
        query = {"text": args.text, "image": str(args.image) if args.image else None,
                 **({"instruction": args.instruction} if args.instruction else {})}
        json.dump({"index": str(args.index), "query": query, "results": [h.to_dict() for h in hits]}, sys.stdout)
        print()
    elif args.paths:
        for hit in hits:
            print(hit.path if hit.path is not None else hit.text)
    else:
        for rank, hit in enumerate(hits, 1):
            what = hit.path if hit.path is not None else hit.text
            caption = f"  ({hit.captions[0]})" if hit.captions else ""
            print(f"{rank:3d}  {hit.score:7.4f}  {what}{caption}")

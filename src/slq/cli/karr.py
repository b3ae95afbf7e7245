"""`slq karr build` (a KARR benchmark from a captioned set) and `slq karr shapes` (KARR-Shapes as shipped)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .options import data_options, load_data, positive_int

logger = logging.getLogger("slq")

BUILD_DESCRIPTION = """\
Rewrite one caption per image so that it never names what the image shows but describes it through
knowledge or reasoning (KARR-Bench): "two red circles" -> "(1+1) round shapes the colour of a
tomato". Shapes-world records are rewritten with the world's knowledge corpus; English captions
through WordNet (Debian's wordnet-base). Every candidate passes a validator (target still named,
count or colour changed, empty or garbled: each rejection counted by reason). Writes karr.jsonl
(one caption per image, with source_caption, category and rewrites), build.json and categories.png.
Score it like any dataset: slq eval --data OUT/karr.jsonl (recall per category included)."""


def register(sub) -> None:
    from ..karr import CATEGORIES

    p = sub.add_parser("karr", help="KARR-Bench: knowledge-aware captions built from a captioned set")
    karr_sub = p.add_subparsers(dest="karr_command", required=True, metavar="COMMAND")
    p = karr_sub.add_parser("build", help="a KARR benchmark from any captioned image set",
                            description=BUILD_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_options(p, "--data", "the captioned images to rewrite", "test")
    p.add_argument("--out", required=True, type=Path, help="output folder (karr.jsonl, build.json, categories.png)")
    p.add_argument("--rewriter", choices=("rules", "lm", "both"), default="rules",
                   help="who rewrites: the rules (default), a local causal LM (--lm), or both (rules first, the LM "
                        "where no rule's rewrite passes)")
    p.add_argument("--lm", type=Path, default=None,
                   help="causal-LM checkpoint folder or GGUF file for --rewriter lm/both (greedy, few-shot)")
    p.add_argument("--categories", default=None,
                   help=f"comma-separated categories to try (default: all a rewriter can yield): {', '.join(CATEGORIES)}")
    p.add_argument("--seed", type=int, default=0, help="seed of every choice (category order, caption, clue)")
    p.add_argument("--copy-images", action="store_true",
                   help="copy the images into OUT/images, so the folder is a benchmark on its own (default: the "
                        "JSONL points at them where they are)")
    p.add_argument("--wordnet-dir", type=Path, default=None,
                   help="WordNet 3.0 files for English captions (default: /usr/share/wordnet)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N images")
    p.set_defaults(func=run_build)
    p = karr_sub.add_parser("shapes", help="KARR-Shapes as shipped: the seed-0 world's 500 test images, rewritten "
                                           "by the world's rules (byte for byte the shipped files)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=run_shapes)
    p = karr_sub.add_parser("probe", help="ask a shapes-world backbone the facts KARR-Shapes relies on: recalled, "
                                          "asked as questions, and tied to an image (accuracy per category)")
    p.add_argument("--backbone", type=Path, default=None, help="checkpoint folder (default: slq-tiny-vl)")
    p.add_argument("--out", type=Path, default=None, help="also write every answer here as JSON")
    p.set_defaults(func=run_probe)
    from .karr_real import register_real
    register_real(karr_sub)


def run_build(args: argparse.Namespace) -> None:
    from ..karr import build_karr, rule_rewriter_for, write_karr
    from ..karr.lm import LMRewriter

    dataset = load_data(args, args.data, args.split, "test")
    if args.limit is not None:
        dataset.records = dataset.records[:args.limit]
    rules, attributes = rule_rewriter_for(dataset, args.wordnet_dir)
    rewriters = [rules] if args.rewriter != "lm" else []
    if args.rewriter in ("lm", "both"):
        rewriters.append(LMRewriter(args.lm, rules, cache=args.out / "lm-cache.jsonl"))
    categories = args.categories.split(",") if args.categories else None
    build = build_karr(dataset, rewriters, attributes=attributes, seed=args.seed, categories=categories)
    paths = write_karr(build, args.out, copy_images=args.copy_images)
    _report(build.summary(), paths)


def run_shapes(args: argparse.Namespace) -> None:
    import json

    from ..karr.shapes import build_karr_shapes

    paths = build_karr_shapes(args.out)
    _report(json.loads(paths["build"].read_text()), paths)


def _report(summary: dict, paths: dict) -> None:
    print(f"slq: {summary['pairs']} KARR pairs from {summary['images']} images "
          f"({summary['unrewritten_images']} left out) in {paths['karr']}")
    for c in summary["categories"].values():
        rejected = ", ".join(f"{reason} {n}" for reason, n in c["rejected"].items()) or "none"
        print(f"  {c['title']:<32}{c['accepted']:>6} accepted ({100 * c['share']:.1f}%); rejected: {rejected}")


def run_probe(args: argparse.Namespace) -> None:
    from ..backbone import Backbone
    from ..evaluation.knowledge import format_knowledge, probe_knowledge
    from ..recipes.demo import DEFAULT_BACKBONE
    from .options import write_json

    result = probe_knowledge(Backbone.load(args.backbone or DEFAULT_BACKBONE))
    print(format_knowledge(result))
    if args.out is not None:
        write_json(args.out, result)

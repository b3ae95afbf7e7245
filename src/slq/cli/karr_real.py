"""`slq karr real`: KARR rows whose every clue is a fact the language model itself states."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import positive_int

REAL_DESCRIPTION = """\
Ask a language model everyday facts as cloze prompts ("The colour of a ripe banana is"), rank the
shapes world's words of each fact's kind (colours, shapes, number words) by its log-likelihood, and
keep a fact only where the right word ranks first. Then write one row per test image of a shapes
world, naming one object through a kept fact ("a small circle the colour of a lemon") with its
control ("a small circle"). Writes karr.jsonl, the images, categories.png and build.json (every
fact's scores, kept or not). Score it like any dataset: slq eval --data OUT/karr.jsonl."""


def register_real(karr_sub) -> None:
    p = karr_sub.add_parser("real", help="KARR rows whose clues are facts the language model states (a probe keeps "
                                         "only facts it ranks first)",
                            description=REAL_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", type=Path, default=None,
                   help="causal-LM checkpoint folder or GGUF file (default: Gemma 3 270M, the [evidence] extra)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the shapes world whose test images are used")
    p.add_argument("--n-test", type=positive_int, default=400, help="test images of that world")
    p.add_argument("--seed", type=int, default=0, help="seed of every choice (category order, object, fact)")
    p.set_defaults(func=run_real)


def run_real(args: argparse.Namespace) -> None:
    from ..karr.real import real_karr
    from .karr import _report

    backbone = args.backbone
    if backbone is None:
        from ..recipes.evidence import gemma_backbone

        backbone = gemma_backbone()  # an SLQError saying how to install it when the extra is missing
    paths = real_karr(backbone, args.out, world_seed=args.world_seed, n_test=args.n_test, seed=args.seed)
    summary = json.loads(paths["build"].read_text())
    _report(summary, paths)
    for kind, n in summary["probe"]["by_kind"].items():
        print(f"  probe: {kind} facts kept {n['kept']} of {n['asked']}")

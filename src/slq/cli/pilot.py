"""`slq pilot`: the paper's Figure 2 — texts scored against images under last-token and query pooling."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import SLQError
from .options import backbone_options, batch_option, load_options

logger = logging.getLogger("slq")

DESCRIPTION = """\
Cosine scores of a few texts against a few images, under zero-shot last-token pooling (E5-V's
one-word prompt) and under an adapter's latent queries, as a table that stars each text's top
image and a heat map (the SLQ paper's Figure 2).

Without --texts and --images: a built-in set on the shapes world, five scenes with three texts
each, of three kinds: pattern ("a red circle"), knowledge ("a round shape the colour of a tomato")
and reasoning ("(1+1) shapes with three sides"), every clue a fact of the world's knowledge corpus.

--texts takes one line per text: TEXT, KIND<TAB>TEXT, or KIND<TAB>TEXT<TAB>IMAGE, where IMAGE is
the file name of the image the text describes (then the table says whether it came out on top).

Writes pilot.json, table.txt and pilot.png (needs matplotlib) into --out."""


def register(sub) -> None:
    p = sub.add_parser("pilot", help="the paper's Figure 2: cosine scores of texts against images under last-token "
                                     "pooling and under an adapter's queries, as a table and a heat map",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    backbone_options(p, default="slq-tiny-vl, the shipped pretrained backbone")
    p.add_argument("--adapter", type=Path, default=None,
                   help="adapter folder written by `slq train` (e.g. `slq demo`'s runs/demo/adapters/slq): adds "
                        "query pooling beside last-token pooling (default: last-token pooling only)")
    p.add_argument("--texts", type=Path, default=None,
                   help="text file, one text per line: TEXT, KIND<TAB>TEXT or KIND<TAB>TEXT<TAB>IMAGE (default: the "
                        "built-in texts)")
    p.add_argument("--images", type=Path, nargs="+", default=None, metavar="PATH",
                   help="image files or folders of them, named in the table by file name (default: the built-in "
                        "scenes)")
    p.add_argument("--out", type=Path, default=Path("runs/pilot"),
                   help="folder for pilot.json, table.txt and pilot.png (default: runs/pilot)")
    batch_option(p)
    p.set_defaults(func=run_pilot)


def _default_backbone() -> Path:
    from ..recipes.demo import DEFAULT_BACKBONE

    if not (DEFAULT_BACKBONE / "config.json").is_file():
        raise SLQError(f"the default backbone is missing from {DEFAULT_BACKBONE}; reinstall slq, or pass --backbone")
    return DEFAULT_BACKBONE


def run_pilot(args: argparse.Namespace) -> None:
    from ..evaluation.pilot import format_pilot, pilot_encoders, read_pilot
    from ..recipes.pilot import run_pilot as run

    pilot = read_pilot(args.texts, args.images)  # a bad file fails before the model loads
    if args.adapter is None:
        logger.info("no --adapter: last-token pooling only; give an adapter (slq train, or slq demo's "
                    "runs/demo/adapters/slq) to see query pooling beside it")
    backbone = args.backbone if args.backbone is not None else _default_backbone()
    encoders = pilot_encoders(backbone, args.adapter, **load_options(args))
    result = run(args.out, encoders, pilot, batch_size=args.batch_size)
    print(format_pilot(result))
    written = [str(args.out / name) for name in ("pilot.json", "table.txt", "pilot.png") if (args.out / name).is_file()]
    print(f"slq: pilot written to {', '.join(written)}")

"""The `slq` command: a thin layer over the library, one module per command group.

    train     slq train                  encode    slq eval, slq gap, slq embed
    index     slq index, slq search      serve     slq serve
    compare   slq compare                recipes   slq demo, slq evidence, slq mmeb-bench, slq karr-bench
    mine      slq mine-negatives         tiny      slq tiny-model
    data      slq data shapes|wordnet|mmeb-suite
    karr      slq karr build|shapes|probe
    pilot     slq pilot (the paper's Figure 2)

Training settings come from the library's config dataclasses (`options.add_config_options`), so
every command that trains takes the same flags with one default each. Library errors name the
setting (`batch_size`); the CLI shows it as its flag (`--batch-size`).

Exit codes: 0 success; 2 a usage or input error (bad flag, bad data, mismatched adapter), reported
on one line; 130 interrupted; anything else is a bug and prints its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# MKL picks its kernels by the memory alignment of each buffer on AVX-512 machines, so the same
# batch can differ in its last bit from one run to the next; a killed `slq train`, `embed` or `index`
# then would not resume to exactly what an uninterrupted run gives. Strict conditional numerical
# reproducibility fixes that; it must be set before torch loads MKL (a user's own value wins).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from .._version import __version__  # noqa: E402  (after MKL's setting, before anything imports torch)
from ..errors import EXIT_USAGE, SLQError  # noqa: E402
from . import compare, data, encode, index, karr, mine, pilot, recipes, serve, tiny, train  # noqa: E402
from .options import flag_of  # noqa: E402

COMMAND_GROUPS = (train, encode, index, mine, serve, compare, pilot, recipes, data, karr, tiny)


def _verbosity(parser: argparse.ArgumentParser, default=0) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=default,
                       help="only warnings and errors on stderr")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=default,
                       help="also debugging messages on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slq", description="Frozen multimodal LLM -> text-image retriever with "
                                                             "Shared Latent Queries.")
    parser.add_argument("--version", action="version", version=f"slq {__version__}")
    _verbosity(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    for command in sub.choices.values():  # -q/-v after the command too; a flag given there wins
        _add_verbosity_everywhere(command)
    return parser


def _add_verbosity_everywhere(parser: argparse.ArgumentParser) -> None:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subs:
        for child in subs[0].choices.values():
            _add_verbosity_everywhere(child)
    else:
        _verbosity(parser, default=argparse.SUPPRESS)


def setup_logging(verbosity: int) -> None:
    """slq's messages on stderr, one line each, prefixed "slq: "; -q keeps warnings, -v adds debug."""
    logger = logging.getLogger("slq")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("slq: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[verbosity])
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbosity)
    try:
        args.func(args)
    except SLQError as e:
        print(f"slq: error: {e.message(flag_of)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("slq: interrupted", file=sys.stderr)
        return 130
    return 0

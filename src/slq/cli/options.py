"""Flags built from the library's config dataclasses, and the options several commands share.

A config field declared with `slq._io.setting(default, help, choices=...)` becomes the flag
`--field-name` with that default, help text and choices, so the CLI writes neither twice and every
command that takes a config accepts the same flags. `config_from_args` builds the config back.
"""

from __future__ import annotations

import argparse
import logging
import typing
from dataclasses import MISSING, fields
from pathlib import Path

logger = logging.getLogger("slq")

DTYPES = ("float32", "bfloat16", "float16")


def flag_of(setting: str) -> str:
    """The flag that sets a library setting: `batch_size` -> `--batch-size`."""
    return "--" + setting.replace("_", "-")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _value_type(annotation: str):
    """The argparse type of a field annotated `int`, `float`, `str`, or any of them `| None`."""
    names = {part.strip() for part in annotation.split("|")} - {"None"}
    for name, kind in (("int", int), ("float", float), ("str", str)):
        if names == {name}:
            return kind
    raise TypeError(f"no flag type for a field annotated {annotation!r}")


def add_config_options(parser: argparse.ArgumentParser, config_cls, *, skip: typing.Collection[str] = (),
                       defaults: dict | None = None) -> None:
    """One flag per field of `config_cls` that carries help text (and is not `cli=False` or in `skip`).

    `defaults` overrides a field's default for this command only (a recipe's own settings).
    """
    for f in fields(config_cls):
        if f.name in skip or not f.metadata.get("help") or f.metadata.get("cli") is False:
            continue
        if defaults and f.name in defaults:
            default = defaults[f.name]
        else:
            default = f.default if f.default is not MISSING else f.default_factory()
        text = f.metadata["help"]
        if "default" not in text:  # a help text that explains its default says it better
            text += f" (default: {'none' if default is None else default})"
        if str(f.type) == "bool":  # a switch: --name / --no-name
            parser.add_argument(flag_of(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=f.metadata["help"])
            continue
        parser.add_argument(flag_of(f.name), dest=f.name, type=_value_type(str(f.type)), default=default,
                            choices=f.metadata.get("choices"), help=text, metavar=f.name.split("_")[-1].upper()
                            if not f.metadata.get("choices") else None)


def config_from_args(config_cls, args: argparse.Namespace, **fixed):
    """`config_cls` from the parsed flags of its fields (those `add_config_options` added), plus `fixed`."""
    given = {f.name: getattr(args, f.name) for f in fields(config_cls) if hasattr(args, f.name)}
    return config_cls(**{**given, **fixed})


def backbone_options(p: argparse.ArgumentParser, recorded: str | None = None, *, default: str | None = None) -> None:
    """--backbone and how to load it; `recorded` (e.g. "the index") makes --backbone optional, defaulting to
    the one that thing recorded; `default` (what the command falls back on, in words) makes it optional too."""
    from ..backbone import IMAGE_FITS

    fallback = f"; default: the one {recorded} recorded" if recorded else f"; default: {default}" if default else ""
    p.add_argument("--backbone", required=recorded is None and default is None, type=Path, default=None,
                   help="checkpoint folder of the vision-language model or text-only causal LM, or a .gguf file "
                        "(converted once into slq's cache)" + fallback)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="backbone weights dtype (default: float32)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: cpu)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the checkpoint's own Python code to run (off by default)")
    p.add_argument("--image-fit", choices=IMAGE_FITS, default=None,
                   help="how an image reaches the vision tower: as the checkpoint's image processor makes it (processor; "
                        "it may tile it) or padded to a grey square, centred, as one tile at the processor's size "
                        "(square, as the SLQ paper's reference code feeds InternVL); default: the adapter's, else "
                        "processor")


def instruction_option(p: argparse.ArgumentParser, more: str = "") -> None:
    """--instruction: a text in the query's prompt before its text (`Encoder.encode_query`'s)."""
    p.add_argument("--instruction", default="", metavar="TEXT",
                   help="a task instruction in the query's prompt, before its text, e.g. \"Find an image that "
                        f"matches the caption:\" (default: none; the indexed items are embedded without one){more}")


def load_options(args) -> dict:
    """What every backbone load of a command takes from its backbone options; `image_fit` only when
    given, so that an adapter's own applies by default."""
    import torch

    given = {"image_fit": args.image_fit} if args.image_fit is not None else {}
    return {"dtype": getattr(torch, args.dtype), "device": args.device, "trust_remote_code": args.trust_remote_code,
            **given}


def bad_record_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-bad-record", choices=("error", "skip"), default="error",
                   help="a malformed record or unreadable image stops the run (error, default) or is left out "
                        "and listed (skip)")


def data_options(p: argparse.ArgumentParser, flag: str, what: str, default_split: str, required: bool = True,
                 pairs: bool = False) -> None:
    """The dataset flag and how to read it; `pairs`: the command also takes our JSONL's pair form."""
    pair_form = (", or its pair form: {\"query\", \"positive\", \"negatives\"}, each side a text, an image or "
                 "both, with an optional instruction") if pairs else ""
    p.add_argument(flag, required=required, type=Path,
                   help=f"{what}: our JSONL (one {{\"image\" or \"text\", \"captions\"}} record per line{pair_form}) "
                        "or a Karpathy split file (dataset_coco.json / dataset_flickr30k.json)")
    p.add_argument("--image-root", type=Path, default=None,
                   help="Karpathy files only: folder the image paths are relative to (default: the file's folder)")
    p.add_argument("--split", default=None, help=f"Karpathy files only: train, val, test, restval or train+restval "
                                                 f"(default: {default_split})")
    p.add_argument("--max-captions", type=positive_int, default=None, metavar="N",
                   help="keep the first N captions of each image of every dataset the command reads (the standard "
                        "COCO/Flickr test protocol: 5; default: all)")
    bad_record_option(p)


def ties_option(p: argparse.ArgumentParser) -> None:
    from ..evaluation.metrics import TIE_RULES

    p.add_argument("--ties", choices=TIE_RULES, default="average",
                   help="a score tied with a query's best positive: counted as random tie-breaking would on "
                        "average (average, default: a collapsed model scores chance) or as a miss (strict)")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def workers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                   help="processes that prepare the next batches (images, tokens) while the model runs; the output "
                        "is the same bit for bit (0: in the main process; default: min(4, CPU cores - 1))")


def batch_option(p: argparse.ArgumentParser, default: int = 32) -> None:
    p.add_argument("--batch-size", type=positive_int, default=default,
                   help=f"items per forward pass (default: {default})")


def load_data(args, path: Path, split: str | None, default_split: str, *, pairs: bool = False):
    """Load a dataset flag's file; Karpathy files get `split`, or the flag's own default split.
    Skipped records are logged, one line each. Pair data (our JSONL's pair form) only where the
    command takes it (`pairs`)."""
    from ..data import PairDataset, load_dataset
    from ..errors import SLQError

    if path.suffix.lower() == ".json" and split is None:
        split = default_split
    dataset = load_dataset(path, image_root=args.image_root, split=split, on_bad_record=args.on_bad_record,
                           max_captions=args.max_captions)
    if isinstance(dataset, PairDataset) and not pairs:
        raise SLQError(f"{path} holds (query, positive) pairs; this command needs captioned targets "
                       "({\"image\" or \"text\", \"captions\"} records); score pairs' tasks with slq eval --mmeb")
    for skipped in dataset.skipped:
        logger.warning("skipped %s: %s", skipped.source, skipped.reason)
    if dataset.skipped:
        logger.warning("%d bad record(s) skipped in %s", len(dataset.skipped), path)
    return dataset


def retriever(args, adapter: Path | None, **kwargs):
    from ..retriever import SLQRetriever

    return SLQRetriever.from_pretrained(args.backbone, adapter, **load_options(args), **kwargs)


def write_json(path: Path, report: dict) -> None:
    import json

    from .._io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(report, indent=2) + "\n")

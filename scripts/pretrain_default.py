"""Pretrain slq-tiny-vl, slq's default backbone, from scratch and write its checkpoint folder.

    python scripts/pretrain_default.py --out src/slq/assets/slq-tiny-vl

Writes the shapes world (seeded) into a work folder, builds the randomly initialised model with a
tokenizer trained on the world's texts, pretrains it generatively (`slq.recipes.pretrain`), scores its
captions on the test split and, unless --no-compare, runs `slq demo` on it (what SLQ elicits,
against zero-shot pooling and a random twin); the numbers go into the folder's README.md model card.
Deterministic under --seed; a killed run resumes from its work folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from slq.recipes.pretrain import PretrainConfig, caption_attribute_accuracy, model_card, pretrain


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint folder to write (e.g. src/slq/assets/slq-tiny-vl)")
    p.add_argument("--work", default="runs/pretrain-slq-tiny-vl",
                   help="world, initial model and resumable checkpoints (default: runs/pretrain-slq-tiny-vl)")
    p.add_argument("--seed", type=int, default=0, help="world, initialisation and batch order")
    p.add_argument("--steps", type=int, default=PretrainConfig.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=PretrainConfig.lr)
    p.add_argument("--vision-lr-ratio", type=float, default=PretrainConfig.vision_lr_ratio,
                   help="the vision tower learns at lr times this")
    p.add_argument("--threads", type=int, default=PretrainConfig.threads,
                   help="torch threads; the weights are reproducible for a given count")
    p.add_argument("--image-side", type=int, default=PretrainConfig.image_side,
                   help="images are resized to this square (multiple of 16): (side/16)^2 image tokens")
    p.add_argument("--hidden-size", type=int, default=PretrainConfig.hidden_size,
                   help="the language model's width (a multiple of 24); bigger than the default: not slq-tiny-vl")
    p.add_argument("--num-layers", type=int, default=PretrainConfig.num_layers, help="language-model layers")
    p.add_argument("--intermediate-size", type=int, default=PretrainConfig.intermediate_size,
                   help="the language model's MLP width")
    p.add_argument("--n-train", type=int, default=4000, help="training images of the world")
    p.add_argument("--n-test", type=int, default=200, help="test images (caption accuracy and retrieval)")
    p.add_argument("--mixture", type=json.loads, default=None,
                   help="the task mixture after the curriculum, as JSON (default: PretrainConfig's)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="run the demo's comparison (zero-shot, SLQ, SLQ on a random twin) for the model card")
    p.add_argument("--keep-work", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the work folder afterwards")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from slq.cli import setup_logging

    setup_logging(0)  # slq's progress lines on stderr, as the slq command shows them
    import torch

    torch.set_num_threads(args.threads)
    from slq.data.shapes import write_world

    out = Path(args.out)
    work = Path(args.work)
    config = PretrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            threads=args.threads, image_side=args.image_side,
                            vision_lr_ratio=args.vision_lr_ratio, hidden_size=args.hidden_size,
                            num_layers=args.num_layers, intermediate_size=args.intermediate_size,
                            **({"mixture": args.mixture} if args.mixture is not None else {}))
    print(f"[1/4] shapes world: {args.n_train} train / {args.n_test} test images -> {work / 'world'}", flush=True)
    world = write_world(work / "world", n_train=args.n_train, n_val=max(1, args.n_test // 4), n_test=args.n_test,
                        seed=args.seed, progress=True)
    print(f"[2/4] pretraining {config.steps} steps of {config.batch_size} (seed {config.seed})", flush=True)
    began = time.perf_counter()
    result = pretrain(out, work / "world", config, work_dir=work, progress=True)
    minutes = (time.perf_counter() - began) / 60
    print(f"      done in {minutes:.1f} min, final loss {result.history[-1]['loss']:.3f}", flush=True)
    print("[3/4] caption attribute accuracy on the test split", flush=True)
    accuracy = caption_attribute_accuracy(out, world["test"], progress=True)
    print(json.dumps({k: v for k, v in accuracy.items() if k != "samples"}), flush=True)
    health = _health(out, world["test"])
    print(f"      image tokens: {json.dumps(health)}", flush=True)
    info = {"pretrain_config": asdict(config), "minutes": minutes, "final_loss": result.history[-1]["loss"],
            "world": {"seed": args.seed, "n_train": args.n_train}, "caption_accuracy": accuracy,
            "vision_health": health,
            "command": "python scripts/pretrain_default.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    info.update(_describe(out, args.image_side))
    info["fingerprint"] = _fingerprint(out)
    if args.compare:
        print("[4/4] retrieval: zero-shot, SLQ and SLQ on a random twin (demo settings)", flush=True)
        info.update(_compare(out, work, args.seed))
        print(info["comparison"], flush=True)
    (out / "pretraining.json").write_text(json.dumps({k: v for k, v in info.items() if k != "comparison"},
                                                     indent=2) + "\n")
    (out / "README.md").write_text(model_card(info))
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"checkpoint: {out} ({info['megabytes']:.1f} MB)")
    return 0


def _health(out: Path, test_jsonl: Path, n: int = 64) -> dict:
    from PIL import Image

    from slq.backbone import Backbone
    from slq.recipes.pretrain import vision_feature_health

    records = [json.loads(line) for line in test_jsonl.read_text().splitlines() if line.strip()][:n]
    images = []
    for r in records:
        with Image.open(test_jsonl.parent / r["image"]) as im:
            images.append(im.convert("RGB"))
    return vision_feature_health(Backbone.load(out), images)


def _fingerprint(out: Path) -> dict:
    """What identifies these weights: slq's backbone fingerprint (config hash, weight norms) and the
    sha256 of the safetensors file; the tests check the shipped folder against it."""
    import hashlib

    from slq.backbone import Backbone

    fingerprint = Backbone.load(out).fingerprint()
    fingerprint["safetensors_sha256"] = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    return fingerprint


def _describe(out: Path, image_side: int) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(out)
    text, vision = cfg.text_config, cfg.vision_config
    from safetensors.torch import load_file

    parameters = sum(t.numel() for t in load_file(out / "model.safetensors").values())
    side = image_side // (vision.patch_size * vision.spatial_merge_size)
    return {"dims": {"hidden": text.hidden_size, "layers": text.num_hidden_layers,
                     "heads": text.num_attention_heads, "kv_heads": text.num_key_value_heads,
                     "intermediate": text.intermediate_size, "vocab": text.vocab_size,
                     "mrope_section": text.rope_parameters["mrope_section"],
                     "vision_depth": vision.depth, "vision_embed": vision.embed_dim, "patch": vision.patch_size,
                     "image_tokens": side * side},
            "parameters": parameters, "megabytes": (out / "model.safetensors").stat().st_size / 2**20}


def _compare(out: Path, work: Path, seed: int) -> dict:
    """`slq demo --backbone OUT`: the demo's world, settings and methods, on the new checkpoint."""
    from slq.evaluation.report import format_comparison
    from slq.recipes.demo import run_demo

    report = run_demo(work / "demo", backbone_dir=out, seed=seed, progress=True)
    return {"comparison": format_comparison(report), "report": report,
            "comparison_command": f"`slq demo --backbone {out}` (the demo's defaults; its test split)"}


if __name__ == "__main__":
    sys.exit(main())

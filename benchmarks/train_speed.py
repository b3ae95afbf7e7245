"""Training cost of SLQ against LoRA, full fine-tuning and a bare forward pass, side by side.

    python benchmarks/train_speed.py                 # random Qwen2-VL, LM hidden 512 x 8 layers, batch 16
    python benchmarks/train_speed.py --backbone DIR  # any checkpoint folder
    python benchmarks/train_speed.py --config dims.json --device cuda --dtype bfloat16

One step = text batch + image batch through the encoder, symmetric InfoNCE, backward, AdamW.
"forward" is the bare frozen forward over the same prompts without grad (the floor). Prints a table
and, as its last line, one JSON object with the ratios the README quotes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

METHODS = ["forward", "slq", "slq_naive", "lora", "full"]


def make_encoder(method: str, backbone):
    from slq.baselines import PooledEncoder, add_lora, unfreeze_language_model
    from slq.retriever import SLQRetriever

    if method in ("slq", "slq_naive"):
        return SLQRetriever.fresh(backbone, num_queries=20)
    encoder = PooledEncoder(backbone, "last", one_word_prompt=False)
    if method == "lora":
        return add_lora(encoder, r=16)
    if method == "full":
        return unfreeze_language_model(encoder)
    return encoder  # forward


def worker(method: str, args) -> dict:
    from slq.backbone import Backbone
    from slq.loss import ContrastiveLoss
    from slq.train import TrainConfig, make_optimizer, train_step

    torch.manual_seed(0)
    backbone = Backbone.load(args.model_dir, dtype=getattr(torch, args.dtype), device=args.device)
    encoder = make_encoder(method, backbone)
    text_batch = encoder.text_batch(common.texts(args.batch_size))
    image_batch = encoder.image_batch(common.images(args.batch_size, args.image_side))
    memory = common.PeakMemory(args.device)
    if method == "forward":
        def step():
            with torch.no_grad():
                encoder.embed(text_batch), encoder.embed(image_batch)
    else:
        loss_fn = ContrastiveLoss().to(args.device)
        optimizer = make_optimizer(encoder, loss_fn, TrainConfig(lr=1e-5))
        engine = "naive" if method == "slq_naive" else "cached"

        def step():
            train_step(encoder, loss_fn, optimizer, text_batch, image_batch, engine)
    memory.start()
    times = common.timed(step, args.steps, args.warmup, args.device)
    return {"method": method, "step_seconds": common.median(times), "all_seconds": times,
            "peak_memory_mb": memory.stop(), "trainable_params": 0 if method == "forward" else encoder.trainable_parameters,
            "image_tokens": int(image_batch.input_ids.shape[1]), "text_tokens": int(text_batch.input_ids.shape[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_options(parser)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    model_dir = common.build_backbone_dir(args)
    passthrough = [a for a in sys.argv[1:] if a not in ("--worker",)] + ["--model-dir", str(model_dir)]
    results = common.run_workers(__file__, args.methods.split(","), passthrough)
    first = next(iter(results.values()))
    print(f"\nbatch {args.batch_size}, image prompt {first['image_tokens']} tokens, text prompt {first['text_tokens']} "
          f"tokens, device {args.device}, {args.dtype}, median of {args.steps} steps")
    print(f"{'method':<10} {'step s':>8} {'memory MB':>10} {'trainable':>12}")
    for name, r in results.items():
        print(f"{name:<10} {r['step_seconds']:>8.2f} {r['peak_memory_mb']:>10.0f} {r['trainable_params']:>12,}")
    summary = {"results": results}
    if {"slq", "lora", "forward"} <= results.keys():
        slq, lora, fwd = results["slq"], results["lora"], results["forward"]
        summary |= {
            "slq_over_lora_time": slq["step_seconds"] / lora["step_seconds"],
            "slq_over_lora_memory": slq["peak_memory_mb"] / lora["peak_memory_mb"],
            "slq_over_forward": slq["step_seconds"] / fwd["step_seconds"],
        }
        print("\n" + "  ".join(f"{k}={v:.3f}" for k, v in summary.items() if k != "results"))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

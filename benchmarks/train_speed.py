"""Training cost of SLQ against LoRA, full fine-tuning and a bare forward pass, side by side.

    python benchmarks/train_speed.py                 # random Qwen2-VL, LM hidden 512 x 8 layers, batch 16
    python benchmarks/train_speed.py --backbone DIR  # any checkpoint folder
    python benchmarks/train_speed.py --config dims.json --device cuda --dtype bfloat16

One step = B captions + B image files prepared (tokenised, image-processed) and run through the
encoder, symmetric InfoNCE, backward, AdamW; with --prepared-inputs the preparation happens once,
outside the timed steps (use it on a GPU, where it would otherwise dominate). Methods:
  forward            the bare frozen forward over the same prompts, no grad (the floor)
  forward_queries    the same with the N_q query tokens appended (what SLQ's forward reads)
  slq                an SLQ step in the first epoch (cached engine: prompts without grad)
  slq_cached_epoch   an SLQ step in a later epoch, every prompt's keys/values kept (--prompt-cache-mb)
  slq_disk_epoch     the same with the prompts kept in the disk file (--prompt-cache-disk-mb); not in
                     the default list, ask for it with --methods
  slq_naive          SLQ with grad through the whole sequence
  lora, full         LoRA r=16 / full fine-tuning of the language model, last-token pooling
The 5-epoch ratio is extrapolated from measured step times (1 first-epoch + 4 cached-epoch SLQ
steps against 5 LoRA steps) and says so. Prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

METHODS = ["forward", "forward_queries", "slq", "slq_cached_epoch", "slq_naive", "lora", "full"]


def make_encoder(method: str, backbone):
    from slq.baselines import PooledEncoder, add_lora, unfreeze_language_model
    from slq.retriever import SLQRetriever

    if method.startswith(("slq", "forward_queries")):
        return SLQRetriever.fresh(backbone, num_queries=20)
    encoder = PooledEncoder(backbone, "last", one_word_prompt=False)
    if method == "lora":
        return add_lora(encoder, r=16)
    if method == "full":
        return unfreeze_language_model(encoder)
    return encoder  # forward


def worker(method: str, args) -> dict:
    import tempfile

    from slq.backbone import Backbone
    from slq.loss import ContrastiveLoss
    from slq.prompt_cache import PromptCache
    from slq.train import TrainConfig, make_optimizer, train_step

    torch.manual_seed(0)
    backbone = Backbone.load(args.model_dir, dtype=getattr(torch, args.dtype), device=args.device)
    encoder = make_encoder(method, backbone)
    texts = common.texts(args.batch_size)
    images = common.images(args.batch_size, args.image_side, Path(tempfile.mkdtemp(prefix="slq-bench-images-")))
    if args.prepared_inputs:  # prepare once; each step then reuses the batches (a DataLoader's job in training)
        text_batch, image_batch = encoder.text_batch(texts), encoder.image_batch(images)
        encoder.text_batch, encoder.image_batch = (lambda _: text_batch), (lambda _: image_batch)
    memory, cache = common.PeakMemory(args.device), None
    if method.startswith("forward"):
        def step():
            with torch.no_grad():
                encoder.embed(encoder.text_batch(texts)), encoder.embed(encoder.image_batch(images))
    else:
        loss_fn = ContrastiveLoss().to(args.device)
        optimizer = make_optimizer(encoder, loss_fn, TrainConfig(lr=1e-5))
        engine = "naive" if method == "slq_naive" else "cached"
        cache = {"slq_cached_epoch": PromptCache(budget_mb=1e6),  # filled by the warm-up step
                 "slq_disk_epoch": PromptCache(budget_mb=0, disk_mb=1e6)}.get(method)

        def step():
            train_step(encoder, loss_fn, optimizer, texts, images, engine, cache)
    memory.start()
    times = common.timed(step, args.steps, args.warmup, args.device)
    prompt_lengths = encoder.text_batch(texts).input_ids.shape[1], encoder.image_batch(images).input_ids.shape[1]
    kept = {"prompt_cache": cache.stats()} if cache is not None else {}
    return {**kept, "method": method, "step_seconds": common.median(times), "all_seconds": times,
            "peak_memory_mb": memory.stop(), "trainable_params": 0 if method.startswith("forward")
            else encoder.trainable_parameters, "text_tokens": int(prompt_lengths[0]), "image_tokens": int(prompt_lengths[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_options(parser)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each runs every method once (interleaved)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prepared-inputs", action="store_true",
                        help="tokenise and image-process once, outside the timed steps (on a GPU that CPU work "
                             "runs in DataLoader workers beside the model, and would otherwise dominate)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default: {','.join(METHODS)})")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    model_dir = common.build_backbone_dir(args)
    passthrough = [a for a in sys.argv[1:] if a not in ("--worker",)] + ["--model-dir", str(model_dir)]
    results = common.run_workers(__file__, args.methods.split(","), passthrough, rounds=args.rounds)
    first = next(iter(results.values()))
    print(f"\nbatch {args.batch_size}, image prompt {first['image_tokens']} tokens, text prompt {first['text_tokens']} "
          f"tokens, device {args.device}, {args.dtype}, median of {args.rounds} rounds x {args.steps} steps, "
          f"inputs {'prepared once' if args.prepared_inputs else 'prepared in every step'}")
    print(f"{'method':<18} {'step s':>8} {'memory MB':>10} {'trainable':>12}")
    for name, r in results.items():
        print(f"{name:<18} {r['step_seconds']:>8.2f} {r['peak_memory_mb']:>10.0f} {r['trainable_params']:>12,}")
    summary = {"results": results}
    seconds = {name: r["step_seconds"] for name, r in results.items()}
    if {"slq", "lora", "forward", "forward_queries"} <= results.keys():
        summary |= {
            "slq_over_lora_time": seconds["slq"] / seconds["lora"],
            "slq_over_lora_memory": results["slq"]["peak_memory_mb"] / results["lora"]["peak_memory_mb"],
            "slq_over_forward": seconds["slq"] / seconds["forward"],
            "slq_over_forward_queries": seconds["slq"] / seconds["forward_queries"],
        }
    if {"slq", "slq_cached_epoch", "lora"} <= results.keys():
        summary["slq_5epoch_over_lora_5epoch"] = (seconds["slq"] + 4 * seconds["slq_cached_epoch"]) / (5 * seconds["lora"])
        summary["slq_5epoch_note"] = "extrapolated: (1 first-epoch + 4 cached-epoch SLQ steps) / 5 LoRA steps"
    print("\n" + "  ".join(f"{k}={v:.3f}" for k, v in summary.items() if isinstance(v, float)))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

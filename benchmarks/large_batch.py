"""Large contrastive batches: SLQ against the bare forward and against LoRA with GradCache, in one run.

    python benchmarks/large_batch.py        # small random Qwen2-VL on the CPU, toy sizes
    python benchmarks/large_batch.py --config benchmarks/configs/qwen2-vl-2b.json --device cuda --dtype bfloat16 \\
        --batch-size 64 --large-batch 1024 --chunk-size 128 --baseline-chunk-size 64 --epochs 5 \\
        --prompt-cache-device-mb 30000

One process, one model (built at random directly on the device; `--backbone DIR` loads a folder).

Part "step", at --batch-size, inputs prepared once, so each figure is the step's own cost:
  forward              the bare frozen forward over the batch's prompts, no grad (the floor)
  slq                  an SLQ step in the first epoch (prompts without grad, then the queries)
  slq_stock_attention  the same with transformers' stock SDPA, which repeats grouped keys/values per
                       head and keeps the copies for backward (slq folds the groups instead)
  slq_later_device     a later-epoch step, every prompt's keys/values kept in the device's memory
  slq_later_ram        the same, kept in RAM (pinned on a GPU)
Part "run", real training runs (`slq.train.train`) over --large-batch (image, caption) pairs, global
batch --large-batch, --epochs epochs (one step each), every step timed, inputs prepared by the run
as `slq train` does:
  forward_large        the bare forward over the same pairs, in chunks of --chunk-size, no grad
  slq_run              SLQ, --chunk-size, prompts kept (--prompt-cache-device-mb, then RAM)
  lora_run             LoRA r=16 on the LM with GradCache (--baseline-chunk-size), last-token pooling
Prints a table, then one JSON line: the ratios the targets are set on.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PARTS = ("step", "run")


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _measure(name: str, fn, args, steps: int | None = None, warmup: int | None = None) -> dict:
    memory = common.PeakMemory(args.device)
    memory.start()
    times = common.timed(fn, args.steps if steps is None else steps, args.warmup if warmup is None else warmup,
                         args.device)
    result = {"method": name, "step_seconds": common.median(times), "all_seconds": times,
              "peak_memory_mb": memory.stop()}
    print(f"... {name}: {result['step_seconds']:.3f} s, peak {result['peak_memory_mb']:.0f} MB", file=sys.stderr,
          flush=True)
    return result


def step_part(backbone, args, folder: Path) -> dict[str, dict]:
    """Step costs at --batch-size, inputs prepared once."""
    import slq.backbone
    from slq.loss import ContrastiveLoss
    from slq.prompt_cache import PromptCache
    from slq.retriever import SLQRetriever
    from slq.train import TrainConfig, make_optimizer, train_step

    retriever = SLQRetriever.fresh(backbone, num_queries=args.num_queries)
    texts, images = common.texts(args.batch_size), common.images(args.batch_size, args.image_side, folder)
    text_batch, image_batch = retriever.text_batch(texts), retriever.image_batch(images)
    retriever.text_batch, retriever.image_batch = (lambda _: text_batch), (lambda _: image_batch)
    loss_fn = ContrastiveLoss().to(args.device)
    optimizer = make_optimizer(retriever, loss_fn, TrainConfig(lr=1e-5))

    def forward():
        with torch.no_grad():
            backbone.forward(text_batch), backbone.forward(image_batch)

    def slq_step(cache=None):
        return lambda: train_step(retriever, loss_fn, optimizer, texts, images, "cached", cache)

    results = {"forward": _measure("forward", forward, args), "slq": _measure("slq", slq_step(), args)}
    real = slq.backbone.folded_gqa
    slq.backbone.folded_gqa = lambda config: contextlib.nullcontext()
    try:
        results["slq_stock_attention"] = _measure("slq_stock_attention", slq_step(), args)
    finally:
        slq.backbone.folded_gqa = real
    for name, cache in (("slq_later_device", PromptCache(0, device_mb=1e7)), ("slq_later_ram", PromptCache(1e7))):
        results[name] = _measure(name, slq_step(cache), args)  # the warm-up step fills the cache
        results[name]["prompt_cache"] = cache.stats()
        del cache
        _free(args.device)
    if args.profile or args.compile:
        cache = PromptCache(0, device_mb=1e7)
        later = slq_step(cache)
        later()  # fills the cache: what follows is a later-epoch step
        if args.profile:
            results["slq_later_device"]["profile"] = _profile(later, args)
        if args.compile:  # an experiment: the language model compiled, for the query pass alone
            backbone.model.get_decoder().compile(dynamic=True)
            results["slq_later_compiled"] = _measure("slq_later_compiled", later, args, warmup=2)
    results["forward"]["tokens"] = {"text": text_batch.input_ids.shape[1], "image": image_batch.input_ids.shape[1]}
    return results


def _profile(step, args) -> dict:
    """One step under torch.profiler: how long the device computed, against the step's wall time, and
    how many kernels it launched (a step far longer than its kernels is bound by the host)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = args.device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    on_device = [e for e in events if e.device_type == DeviceType.CUDA]
    busy = sum(getattr(e, "self_device_time_total", 0) for e in on_device) / 1e6
    if cuda:
        print(events.table(sort_by="self_device_time_total", row_limit=12), file=sys.stderr)
    top = sorted(on_device, key=lambda e: -getattr(e, "self_device_time_total", 0))[:8]
    return {"device_busy_seconds": busy, "kernel_launches": sum(e.count for e in on_device),
            "top_kernels": [[e.key[:80], e.count, getattr(e, "self_device_time_total", 0) / 1e6] for e in top]}


def _timed_run(name: str, encoder, dataset, config, args) -> dict:
    """A real `train` run; the seconds of each step (synchronised) and the run's peak memory."""
    from slq.train import train

    marks = []

    def on_step(_entry):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    memory = common.PeakMemory(args.device)
    memory.start()
    began = time.perf_counter()
    result = train(encoder, dataset, config, progress=False, on_step=on_step)
    steps = [b - a for a, b in zip([began, *marks], marks)]
    out = {"method": name, "step_seconds_each": steps, "total_seconds": sum(steps),
           "peak_memory_mb": memory.stop(), "trainable_params": encoder.trainable_parameters}
    if result.prompt_cache is not None:
        out["prompt_cache"] = result.prompt_cache
    print(f"... {name}: steps {', '.join(f'{s:.2f}' for s in steps)} s, peak {out['peak_memory_mb']:.0f} MB",
          file=sys.stderr, flush=True)
    return out


def run_part(backbone, args, folder: Path) -> dict[str, dict]:
    """Real runs at global batch --large-batch over exactly that many pairs: one step per epoch."""
    from slq.baselines import PooledEncoder, add_lora
    from slq.data import ImageRecord, ImageTextDataset
    from slq.retriever import SLQRetriever
    from slq.train import TrainConfig

    n = args.large_batch
    texts, images = common.texts(n), common.images(n, args.image_side, folder)
    dataset = ImageTextDataset([ImageRecord(Path(i).resolve(), (t,), f"bench:{k}")
                                for k, (t, i) in enumerate(zip(texts, images))], "bench")
    retriever = SLQRetriever.fresh(backbone, num_queries=args.num_queries)

    def forward_large():
        with torch.no_grad():
            for start in range(0, n, args.chunk_size):
                backbone.forward(retriever.text_batch(texts[start:start + args.chunk_size]))
                backbone.forward(retriever.image_batch(images[start:start + args.chunk_size]))

    results = {"forward_large": _measure("forward_large", forward_large, args, steps=1, warmup=0)}
    quiet = dict(warmup_steps=0, save_epochs=False, save_minutes=0.0, epochs=args.epochs, batch_size=n)
    slq_config = TrainConfig(num_queries=args.num_queries, lr=5e-4, chunk_size=args.chunk_size,
                             prompt_cache_device_mb=args.prompt_cache_device_mb, prompt_cache_mb=1e7, **quiet)
    results["slq_run"] = _timed_run("slq_run", retriever, dataset, slq_config, args)
    _free(args.device)  # the run's prompt cache is gone with it
    lora = add_lora(PooledEncoder(backbone, "last", one_word_prompt=False))
    lora_config = TrainConfig(lr=5e-5, chunk_size=args.baseline_chunk_size, **quiet)
    results["lora_run"] = _timed_run("lora_run", lora, dataset, lora_config, args)
    return results


def summarise(results: dict[str, dict], args) -> dict:
    """The ratios the targets are set on (None where a part did not run)."""
    def get(method, key):
        return results.get(method, {}).get(key)

    summary: dict = {}
    if "slq" in results:
        forward = get("forward", "step_seconds")
        summary |= {
            "slq_first_epoch_over_forward": get("slq", "step_seconds") / forward,
            "slq_later_epoch_over_forward": get("slq_later_device", "step_seconds") / forward,
            "slq_later_epoch_ram_over_forward": get("slq_later_ram", "step_seconds") / forward,
            "stock_attention_over_folded_memory": get("slq_stock_attention", "peak_memory_mb")
            / get("slq", "peak_memory_mb"),
        }
    if "slq_run" in results:
        slq_steps, lora_steps = get("slq_run", "step_seconds_each"), get("lora_run", "step_seconds_each")
        summary |= {
            "large_batch": args.large_batch,
            "slq_peak_memory_gb_large_batch": get("slq_run", "peak_memory_mb") / 1024,
            "lora_peak_memory_gb_large_batch": get("lora_run", "peak_memory_mb") / 1024,
            "slq_first_epoch_over_lora_gradcache": slq_steps[0] / lora_steps[0],
            "slq_first_epoch_over_forward_large": slq_steps[0] / get("forward_large", "step_seconds"),
            f"slq_{args.epochs}_epochs_over_lora_gradcache": sum(slq_steps) / sum(lora_steps),
        }
        if len(slq_steps) > 1:
            later = sum(slq_steps[1:]) / len(slq_steps[1:])
            summary["slq_later_epoch_over_forward_large"] = later / get("forward_large", "step_seconds")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_options(parser)
    parser.set_defaults(batch_size=4)
    parser.add_argument("--large-batch", type=int, default=16, help="global batch (and pairs) of the real runs")
    parser.add_argument("--chunk-size", type=int, default=4, help="SLQ's chunk in the real runs")
    parser.add_argument("--baseline-chunk-size", type=int, default=4, help="LoRA's GradCache chunk in the real runs")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the real runs (one step each)")
    parser.add_argument("--num-queries", type=int, default=20)
    parser.add_argument("--prompt-cache-device-mb", type=float, default=0.0,
                        help="the real SLQ run keeps prompts in this much device memory first, then RAM")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method in part step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from: {', '.join(PARTS)}")
    parser.add_argument("--profile", action="store_true",
                        help="profile one later-epoch step: device busy time and kernel launches against its wall time")
    parser.add_argument("--compile", action="store_true",
                        help="also time a later-epoch step with the language model under torch.compile (an experiment)")
    args = parser.parse_args()
    if args.compile and "run" in args.parts.split(","):
        parser.error("--compile leaves the language model compiled: use it with --parts step")
    logging.getLogger("slq").setLevel(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="slq-bench-large-"))
    backbone = common.random_backbone(args)
    import peft
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    results: dict[str, dict] = {}
    parts = args.parts.split(",")
    if "step" in parts:
        results |= step_part(backbone, args, folder / "step")
        _free(args.device)
    if "run" in parts:
        results |= run_part(backbone, args, folder / "run")
    print(f"\n{versions['device']}, {args.dtype}; step part: batch {args.batch_size}, inputs prepared once; "
          f"run part: {args.large_batch} pairs, global batch {args.large_batch}, {args.epochs} epochs, SLQ chunks of "
          f"{args.chunk_size}, LoRA GradCache chunks of {args.baseline_chunk_size}")
    print(f"{'method':<22} {'step s':>30} {'peak MB':>10}")
    for name, r in results.items():
        seconds = r.get("step_seconds_each") or [r["step_seconds"]]
        print(f"{name:<22} {', '.join(f'{s:.2f}' for s in seconds):>30} {r['peak_memory_mb']:>10.0f}")
    summary = summarise(results, args)
    print("\n" + "  ".join(f"{k}={v:.3f}" for k, v in summary.items() if isinstance(v, float)))
    print(json.dumps({**summary, "versions": versions, "results": results}))


if __name__ == "__main__":
    main()

"""Shared by the benchmarks: the default random model, inputs, memory sampling, one process per method,
latency percentiles.

Timings on shared CPUs are noisy, so every benchmark measures all its methods in one run, on the
same model and inputs, and reports ratios; each method runs in its own process so that peak memory
is its own. On CPU "memory" is the peak resident set above the process's level just before the
timed steps (weights and libraries excluded, optimizer state and activations included), sampled
every millisecond; on CUDA it is torch's peak allocated bytes above the same level. A worker's whole
peak (its own high-water mark, not its parent's) is `slq._io.peak_rss_mb`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# A Qwen2-VL of the size the large-batch target is set at: LM hidden 512, 8 layers; 448 px images give 256 image tokens.
DEFAULT_OVERRIDES = {
    "text_config": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
                    "num_attention_heads": 8, "num_key_value_heads": 2, "rope_parameters": {"mrope_section": [16, 8, 8]}},
    "vision_config": {"hidden_size": 512, "embed_dim": 64, "num_heads": 4},
}
DEFAULT_IMAGE_SIDE = 448
K = 10  # hits per search in the search benchmarks
CAPTION = "a small red triangle above a large blue circle next to two green squares on a white table"


def build_backbone_dir(args) -> Path:
    """The checkpoint folder to benchmark: --backbone as given, else a random model built from a config."""
    if args.backbone:
        return Path(args.backbone)
    from slq.tiny import build_tiny_model

    overrides = json.loads(Path(args.config).read_text()) if args.config else DEFAULT_OVERRIDES
    side = args.image_side
    folder = Path(tempfile.mkdtemp(prefix="slq-bench-")) / "model"
    return build_tiny_model("qwen2_vl", folder, vocab_size=2048, config_overrides=overrides,
                            image_processor_overrides={"size": {"shortest_edge": side * side,
                                                                "longest_edge": side * side}})


def random_backbone(args):
    """A random Qwen2-VL of the config's size built directly on --device in --dtype: seconds, where
    writing and reloading a multi-GB checkpoint takes minutes (--backbone loads a folder instead)."""
    from slq.backbone import Backbone

    if args.backbone:
        return Backbone.load(args.backbone, dtype=getattr(torch, args.dtype), device=args.device)
    from transformers import AutoModelForImageTextToText

    from slq.families import family_for
    from slq.tiny import tiny_parts

    overrides = json.loads(Path(args.config).read_text()) if args.config else DEFAULT_OVERRIDES
    side = args.image_side
    config, tokenizer, processor = tiny_parts("qwen2_vl", vocab_size=2048, config_overrides=overrides,
                                              image_processor_overrides={"size": {"shortest_edge": side * side,
                                                                                  "longest_edge": side * side}})
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, args.dtype))
    return Backbone(model, tokenizer, processor, family_for(config.model_type), Path("random-qwen2-vl"))


def add_model_options(parser) -> None:
    parser.add_argument("--backbone", default=None, help="benchmark this checkpoint folder instead of a random model")
    parser.add_argument("--config", default=None,
                        help="JSON of config overrides for the random qwen2_vl model (e.g. real 2B dims)")
    parser.add_argument("--image-side", type=int, default=DEFAULT_IMAGE_SIDE, help="image side in px (default 448)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def images(n: int, side: int, folder: Path) -> list[Path]:
    """Distinct, non-constant PNG files (constant inputs can run faster than real data; files have
    stable names, so prompt caches can key on them)."""
    generator = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = (torch.rand(side, side, 3, generator=generator) * 255).byte().numpy()
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(pixels).save(paths[-1], compress_level=1)  # noise does not compress: do not try hard
    return paths


def texts(n: int) -> list[str]:
    return [f"{CAPTION} number {i}" for i in range(n)]


class PeakMemory:
    """Peak memory above the level at `start()`, in MB (see the module docstring)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak = self.base = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self.base = self.peak = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def stop(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        self._stop.set()
        self._thread.join()
        return (self.peak - self.base) / 2**20


def timed(fn, steps: int, warmup: int, device: str) -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def interleaved(methods: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each call of each method, after one warm-up call each, the methods taking turns
    round by round so that a slow spell on a shared machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for run in methods.values():
        run()
    for _ in range(rounds):
        for name, run in methods.items():
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    return times


def run_workers(script: str, methods: list[str], argv: list[str], rounds: int = 1) -> dict[str, dict]:
    """Run `script --worker METHOD argv…` once per method per round, interleaved, so a slow spell on
    a shared machine hits every method alike; each worker prints one JSON line last. Step times are
    pooled over the rounds (median), peak memory is the largest seen."""
    results: dict[str, dict] = {}
    for round_ in range(rounds):
        for method in methods:
            print(f"... round {round_ + 1}/{rounds}: {method}", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, script, "--worker", method, *argv], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"worker {method} failed:\n{proc.stderr[-4000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"    {method}: median {median(result['all_seconds']):.3f} s/step, "
                  f"peak {result['peak_memory_mb']:.0f} MB", file=sys.stderr, flush=True)
            if method in results:
                result["all_seconds"] = results[method]["all_seconds"] + result["all_seconds"]
                result["peak_memory_mb"] = max(result["peak_memory_mb"], results[method]["peak_memory_mb"])
            result["step_seconds"] = median(result["all_seconds"])
            results[method] = result
    return results


def run_worker(script: str, argv: list[str], extra: list[str]) -> dict:
    """Run `script --worker argv… extra…` in its own process and return the JSON line it prints last;
    its progress goes to our stderr. A worker that fails comes back as {"failed": …}, so one size or
    part that cannot run does not lose the others."""
    proc = subprocess.run([sys.executable, script, "--worker", *argv, *extra], stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"failed": f"worker {Path(script).name} {' '.join(extra)} exited with {proc.returncode}"}
    return json.loads(lines[-1])


def search_args(parser: argparse.ArgumentParser, worker) -> argparse.Namespace | None:
    """A search benchmark's arguments, with the options they share (seed, warm-up, temporary
    folder, and the hidden --worker that `run_worker` starts them with). In a worker, runs
    `worker(args)`, prints its JSON line and returns None; in the driver, prints the machine."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before each timed series")
    parser.add_argument("--workdir", default=None, help="folder for temporary files (default: the system's)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return None
    print(f"machine: {os.cpu_count()} CPUs, {memory_available() / 2**30:.1f} GiB available")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def memory_available() -> int:
    """MemAvailable from /proc/meminfo, in bytes (0 when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": len(seconds)}


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)

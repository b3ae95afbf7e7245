"""ANN speed: the approximate index slq builds against exact search, at several sizes.

    python benchmarks/ann_speed.py                         # 10K, 100K, 1M vectors of width 1536
    python benchmarks/ann_speed.py --sizes 100000          # one size; --dim, --queries, --kind, --max-seconds ...

One process per size (so each size's memory is its own and freed after it):
  vectors   SYNTHETIC, L2-normalised, made to resemble embeddings rather than isotropic noise: a
            seeded mixture of --clusters clusters. Each vector is normalise(centre + variation +
            noise): the centres are random unit directions pulled towards one shared direction
            (--shift, the anisotropy real embeddings have), the variation lies in the cluster's own
            random subspace of --rank dimensions with a decaying spectrum (total scale --spread),
            and the noise is isotropic in the full width (total scale --noise). Queries are held out:
            fresh draws from the same mixture, never indexed points.
  exact     faiss.IndexFlatIP: the ground truth, and its own latency
  ann       what slq builds: `ann.choose(n, dim)` (printed with its reason), `ann.build` (which tunes
            efSearch / nprobe to --target-recall on indexed vectors used as queries), searched
            through `Ann.search` as `SearchIndex` does
  Single-query latency (p50/p99 over up to --queries queries, after a warm-up, capped at --max-seconds
  per method), batch throughput (all queries in one call), and recall@10 of the ANN against exact on
  the held-out queries. Memory: a size whose estimated peak exceeds the available memory is skipped
  (saying so), vectors over --memmap-above-mb live in a memory-mapped file, and a watchdog stops a
  size when available memory falls under --min-free-mb. Time: an IVF build's k-means cost is
  projected from this machine's matrix-multiply speed first; over --max-build-minutes it is skipped.
The server end to end is `serve_speed.py`'s. Prints a table, the recall target met or missed and, last,
one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import K, fmt, log, search_args, memory_available, percentiles, run_worker  # noqa: E402
from slq._io import peak_rss_mb  # noqa: E402

TARGET_RECALL = 0.95  # ANN recall@10 of exact, the target


def time_each(fn, inputs: list, warmup: int, max_seconds: float) -> list[float]:
    """Seconds per call of fn(input), over `inputs` in order after `warmup` untimed calls; stops early
    once `max_seconds` are spent (at least 5 calls)."""
    for i in range(min(warmup, len(inputs))):
        fn(inputs[i])
    times: list[float] = []
    started = time.perf_counter()
    for x in inputs:
        began = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - began)
        if len(times) >= 5 and time.perf_counter() - started > max_seconds:
            break
    return times


# --- synthetic embeddings ------------------------------------------------------------------------

class Mixture:
    """The seeded mixture the vectors and queries are drawn from (see the module docstring)."""

    def __init__(self, dim: int, clusters: int, rank: int, spread: float, noise: float, shift: float, seed: int):
        rng = np.random.default_rng([seed, 0])
        self.dim, self.noise = dim, noise
        shared = rng.standard_normal(dim).astype(np.float32)
        shared /= np.linalg.norm(shared)
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        centres += shift * shared
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        # each cluster's own subspace: `rank` random directions of norm ~1
        self.bases = rng.standard_normal((clusters, rank, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        spectrum = 1 / np.sqrt(np.arange(1, rank + 1))  # decaying: a few directions carry most variation
        spectrum *= spread / np.linalg.norm(spectrum)
        self.scales = (spectrum[None] * rng.uniform(0.5, 1.5, (clusters, 1))).astype(np.float32)  # clusters differ

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        clusters, rank, _ = self.bases.shape
        labels = rng.integers(0, clusters, n)
        z = rng.standard_normal((n, rank), dtype=np.float32) * self.scales[labels]
        x = self.centres[labels]
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(clusters + 1))
        for j in range(clusters):
            rows = order[bounds[j]:bounds[j + 1]]
            if len(rows):
                x[rows] += z[rows] @ self.bases[j]
        x += rng.standard_normal((n, self.dim), dtype=np.float32) * np.float32(self.noise / np.sqrt(self.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def describe_mixture(args) -> str:
    return (f"SYNTHETIC: seeded mixture (seed {args.seed}) of {args.clusters} clusters in width {args.dim}; "
            f"x = normalise(centre + variation + noise), centres random unit vectors pulled to a shared "
            f"direction (shift {args.shift}), variation in each cluster's own {args.rank}-dim random "
            f"subspace with a 1/sqrt(i) spectrum (norm ~{args.spread}, x U(0.5,1.5) per cluster), isotropic "
            f"noise (norm ~{args.noise}); queries: {args.queries} fresh held-out draws")


# --- one size, in its own process ------------------------------------------------------------------

def build_peak_bytes(choice, n: int, dim: int) -> int:
    """What `ann.build` holds besides the caller's vectors, at its peak (measured sizes, rounded up):
    the index's own copy of the vectors (+ graph / list overhead), the IVF training sample, and the
    exact index over all vectors that `_tune` builds to measure recall."""
    from slq.index import ann

    flat = n * dim * 4
    if choice.kind == "flat":
        return flat
    if choice.kind == "hnsw":
        return 2 * flat + n * (2 * ann.HNSW_LINKS * 4 + 64)
    train = min(n, 256 * ann.ivf_lists(n)) * dim * 4
    if choice.kind == "ivf":
        return train + int(1.5 * flat) + flat  # inverted lists grow by doubling
    return train + n * (ann.pq_bytes(dim) + 8) * 2 + flat


class MemoryWatchdog:
    """Stops this worker (a JSON line saying so, exit 0) when the machine's available memory falls under
    `floor` bytes, before the kernel's OOM killer picks a process, maybe someone else's."""

    def __init__(self, result: dict, floor: int):
        self.result, self.floor, self.stage, self.lowest = result, floor, "start", memory_available()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            available = memory_available()
            self.lowest = min(self.lowest, available)
            if available and available < self.floor:
                self.result["skipped"] = (f"memory: available memory fell to {available / 2**30:.1f} GiB during "
                                          f"{self.stage}; stopped (peak RSS {peak_rss_mb() / 1024:.1f} GiB)")
                print(json.dumps(self.result), flush=True)
                os._exit(0)
            time.sleep(0.2)


def gemm_flops_per_second(rows: int = 4096) -> float:
    """Matrix-multiply speed of FAISS's BLAS here (what IVF training and exact batch search run on)."""
    a = np.random.default_rng(0).standard_normal((rows, 1024), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((1024, 2048), dtype=np.float32)
    a @ b
    began = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 2 * rows * 1024 * 2048 / (time.perf_counter() - began)


def ann_worker(args) -> dict:
    import faiss

    from slq.index import ann

    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    n, dim = args.size, args.dim
    flat = n * dim * 4
    choice = ann.choose(n, dim, kind=args.kind, exact_max=args.exact_max)
    in_ram = flat <= args.memmap_above_mb * 2**20
    need = max(flat, build_peak_bytes(choice, n, dim)) + (flat if in_ram else 0) + (1 << 30)
    available = memory_available()
    result = {"size": n, "dim": dim, "threads": threads, "choice": {"kind": choice.kind, "factory": choice.factory,
                                                                    "reason": choice.reason},
              "vectors_gib": flat / 2**30, "vectors_storage": "RAM" if in_ram else "memory-mapped file",
              "estimated_peak_gib": need / 2**30, "available_gib": available / 2**30}
    log(f"[{n}] faiss threads {threads}; {flat / 2**30:.2f} GiB of vectors ({result['vectors_storage']}); "
        f"slq chooses {choice.factory}: {choice.reason}")
    log(f"[{n}] estimated peak {need / 2**30:.1f} GiB, available {available / 2**30:.1f} GiB")
    if available and need > available:
        result["skipped"] = (f"memory: the run needs about {need / 2**30:.1f} GiB (vectors, exact index, and "
                             f"ann.build's copies), {available / 2**30:.1f} GiB available")
        return result
    watchdog = MemoryWatchdog(result, int(args.min_free_mb * 2**20))
    rate = gemm_flops_per_second(args.gemm_rows)
    result["gemm_gflops"] = rate / 1e9
    if choice.kind in ("ivf", "ivfpq"):
        nlist = ann.ivf_lists(n)
        train_n = min(n, 256 * nlist)
        iterations = faiss.extract_index_ivf(faiss.index_factory(dim, choice.factory)).cp.niter  # FAISS's IVF: 10
        flops = iterations * train_n * nlist * dim * 2 + n * nlist * dim * 2
        result["projected_train_add_seconds"] = flops / rate
        log(f"[{n}] IVF: k-means of {train_n} vectors into {nlist} lists x {iterations} iterations, "
            f"then assigning {n}: {flops / 1e12:.1f} TFLOP at {rate / 1e9:.0f} GFLOP/s (matrix multiply) = at "
            f"least {flops / rate:.0f} s")
        if flops / rate > args.max_build_minutes * 60:
            result["skipped"] = (f"time: the IVF build alone would take at least {flops / rate / 60:.1f} min here "
                                 f"(k-means training, {flops / 1e12:.1f} TFLOP at {rate / 1e9:.0f} GFLOP/s), over "
                                 f"--max-build-minutes {args.max_build_minutes}")
            return result

    watchdog.stage = "generating the vectors"
    mixture = Mixture(dim, args.clusters, args.rank, args.spread, args.noise, args.shift, args.seed)
    queries = mixture.sample(args.queries, np.random.default_rng([args.seed, 1]))
    began = time.perf_counter()
    folder = None
    if in_ram:
        vectors = np.empty((n, dim), np.float32)
    else:
        folder = tempfile.TemporaryDirectory(prefix="slq-search-speed-", dir=args.workdir)
        vectors = np.lib.format.open_memmap(Path(folder.name) / "vectors.npy", mode="w+", dtype=np.float32,
                                            shape=(n, dim))
    chunk = 100_000
    for c, start in enumerate(range(0, n, chunk)):
        vectors[start:start + chunk] = mixture.sample(min(chunk, n - start), np.random.default_rng([args.seed, 2, c]))
    result["generate_seconds"] = time.perf_counter() - began
    log(f"[{n}] generated in {result['generate_seconds']:.1f} s")

    watchdog.stage = "exact search"
    load_before = os.getloadavg()[0]
    single = [queries[i:i + 1] for i in range(len(queries))]
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    began = time.perf_counter()
    truth_scores, truth = exact.search(queries, K)
    batch_seconds = time.perf_counter() - began
    times = time_each(lambda q: exact.search(q, K), single, args.warmup, args.max_seconds)
    result["exact"] = {**percentiles(times), "batch_qps": len(queries) / batch_seconds}
    log(f"[{n}] exact: p50 {result['exact']['p50_ms']:.2f} ms over {len(times)} queries, "
        f"batch {result['exact']['batch_qps']:.0f} q/s")
    rng = np.random.default_rng([args.seed, 3])
    a, b = rng.integers(0, n, (2, 2000))
    result["data"] = {"top1_cosine": float(truth_scores[:, 0].mean()), "top10_cosine": float(truth_scores[:, -1].mean()),
                      "random_pair_cosine": float(np.mean(np.sum(vectors[a] * vectors[b], axis=1)))}
    exact = None  # freed before the build: its memory is the build's
    gc.collect()

    watchdog.stage = f"ann.build ({choice.factory})"
    began = time.perf_counter()
    built = ann.build(vectors, np.arange(n, dtype=np.int64), choice, target_recall=args.target_recall)
    result["build_seconds"] = time.perf_counter() - began
    log(f"[{n}] built {choice.factory} in {result['build_seconds']:.1f} s; setting {built.setting}, "
        f"tuned recall {built.recall}")
    began = time.perf_counter()
    _, found = built.search(queries, K)
    batch_seconds = time.perf_counter() - began
    times = time_each(lambda q: built.search(q, K), single, args.warmup, args.max_seconds)
    recall = float(np.mean([len(set(t) & set(f)) / K for t, f in zip(truth, found)]))
    result["ann"] = {**percentiles(times), "batch_qps": len(queries) / batch_seconds, "recall_at_10": recall,
                     "setting": built.setting, "tuned_recall_at_10": built.recall}
    log(f"[{n}] ann: p50 {result['ann']['p50_ms']:.2f} ms, recall@10 {recall:.3f} on held-out queries")
    result["load_average_1min"] = [load_before, os.getloadavg()[0]]  # other work on the machine, before / after
    result["peak_rss_gib"] = peak_rss_mb() / 1024
    result["lowest_available_gib"] = watchdog.lowest / 2**30
    built = vectors = None
    if folder is not None:
        folder.cleanup()
    return result


# --- the driver ---------------------------------------------------------------------------------

def report(args, results: dict, seconds: float) -> dict:
    sizes = results["ann"]
    summary: dict = {"targets": {"recall_at_10": TARGET_RECALL}, "results": results, "seconds": seconds}
    if sizes:
        print(f"\nANN against exact search, width {args.dim}, {args.queries} held-out queries, k={K}, faiss threads "
              f"{sizes[0].get('threads')}")
        print(f"{'vectors':>9}  {'index (slq auto)':<18}{'build s':>9}{'setting':>8}{'exact p50':>10}{'p99':>8}"
              f"{'ann p50':>9}{'p99':>8}{'exact q/s':>10}{'ann q/s':>9}{'recall@10':>10}{'tuned':>7}{'peak GiB':>9}"
              f"{'load':>10}")
        for r in sizes:
            if "skipped" in r or "failed" in r:
                print(f"{r.get('size', '?'):>9}  {r.get('choice', {}).get('factory', '?'):<18}  not run: "
                      f"{r.get('skipped') or r.get('failed')}")
                continue
            e, a = r["exact"], r["ann"]
            print(f"{r['size']:>9}  {r['choice']['factory']:<18}{r['build_seconds']:>9.1f}{fmt(a['setting'], 'd'):>8}"
                  f"{e['p50_ms']:>10.2f}{e['p99_ms']:>8.2f}{a['p50_ms']:>9.2f}{a['p99_ms']:>8.2f}"
                  f"{e['batch_qps']:>10.0f}{a['batch_qps']:>9.0f}{a['recall_at_10']:>10.3f}"
                  f"{fmt(a['tuned_recall_at_10'], '.3f'):>7}{r['peak_rss_gib']:>9.1f}"
                  f"{'{:.1f}-{:.1f}'.format(*r['load_average_1min']):>10}")
        print("(ms: single-query latency; q/s: all queries in one call; recall@10: ANN vs exact on held-out "
              "queries; tuned: what ann.build measured on indexed vectors as queries; peak: the size's process, "
              "memory-mapped vectors included; load: the machine's 1-min load average before / after)")
        for r in sizes:
            if "data" in r:
                print(f"{r['size']:>9}: vectors generated in {r['generate_seconds']:.0f} s; held-out query to its "
                      f"nearest / 10th nearest: cosine {r['data']['top1_cosine']:.3f} / {r['data']['top10_cosine']:.3f}"
                      f"; random pair {r['data']['random_pair_cosine']:.3f}; exact single queries timed: "
                      f"{r['exact']['n']}")
        measured = [r for r in sizes if "ann" in r]
        summary["recall_met"] = {str(r["size"]): r["ann"]["recall_at_10"] >= TARGET_RECALL for r in measured}
        for r in measured:
            print(f"recall@10 at {r['size']}: {r['ann']['recall_at_10']:.3f} "
                  f"({'met' if r['ann']['recall_at_10'] >= TARGET_RECALL else 'MISSED'}, target >= {TARGET_RECALL})")
    print(f"\nwhole benchmark: {seconds / 60:.1f} min")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=1536, help="vector width (default 1536, Qwen2-VL-2B's hidden size)")
    parser.add_argument("--queries", type=int, default=500, help="held-out queries per size (default 500)")
    parser.add_argument("--clusters", type=int, default=1000, help="mixture clusters (default 1000)")
    parser.add_argument("--rank", type=int, default=32, help="each cluster's intrinsic rank (default 32)")
    parser.add_argument("--spread", type=float, default=0.8, help="within-cluster variation, norm (default 0.8)")
    parser.add_argument("--noise", type=float, default=0.2, help="isotropic noise, norm (default 0.2)")
    parser.add_argument("--shift", type=float, default=0.5, help="pull of the centres to a shared direction (0.5)")
    parser.add_argument("--kind", default="auto", help="index type given to ann.choose (default auto: what slq picks)")
    parser.add_argument("--exact-max", type=int, default=20_000, help="ann.choose's exact_max (slq's default 20000)")
    parser.add_argument("--target-recall", type=float, default=0.97, help="ann.build's tuning target (slq's 0.97)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="time spent on one method's single-query series at most (default 60)")
    parser.add_argument("--max-build-minutes", type=float, default=60.0,
                        help="skip a size whose IVF build is projected to take longer (reports the projection)")
    parser.add_argument("--gemm-rows", type=int, default=4096,
                        help="rows of the matrix multiply that measures the speed the IVF projection uses (default "
                             "4096; smaller is quicker and rougher)")
    parser.add_argument("--memmap-above-mb", type=float, default=2048,
                        help="vectors larger than this live in a memory-mapped file, so the page cache can drop them")
    parser.add_argument("--min-free-mb", type=float, default=1024,
                        help="stop a size when the machine's available memory falls below this (default 1024)")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = search_args(parser, ann_worker)
    if args is None:
        return
    began = time.perf_counter()
    results: dict = {"cpus": os.cpu_count(), "vectors": describe_mixture(args), "ann": []}
    print(f"vectors: {results['vectors']}")
    for n in (int(s) for s in args.sizes.split(",") if s.strip()):
        r = run_worker(__file__, sys.argv[1:], ["--size", str(n)])
        r.setdefault("size", n)
        results["ann"].append(r)
        if "skipped" in r:
            log(f"[{n}] not run: {r['skipped']}")
    summary = report(args, results, time.perf_counter() - began)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

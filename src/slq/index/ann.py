"""The FAISS index over an index's vectors, chosen by size and memory the way autofaiss does.

Exact search (a flat inner-product index) is cheap enough below `exact_max` vectors, and nothing
beats its recall. Above it, a graph (HNSW) while the vectors fit the memory budget and their count
keeps the build short; an inverted file (IVF) for millions; and product-quantised codes (IVF-PQ,
32 times smaller than the float vectors) when the vectors do not fit the budget at all.

An approximate index's search setting (HNSW's efSearch, IVF's nprobe) is tuned when it is built,
as autofaiss tunes it: the smallest setting whose recall@10 against exact search, on a sample of
the indexed vectors used as queries, reaches `target_recall`. The measured recall is kept with the
index, so `slq index` can report it.

Vectors are L2-normalised, so inner product is cosine similarity; FAISS returns item ids directly
(an id map around the index), so rows never need renumbering when items come and go.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import SLQError

logger = logging.getLogger("slq")

ANN_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
HNSW_MAX = 500_000  # above, an HNSW build on a few cores takes tens of minutes; IVF trains in a few
HNSW_LINKS = 32  # M: neighbours per node (memory: about 2·M·4 bytes per vector beyond the vector)
HNSW_EF_CONSTRUCTION = 40
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
TUNE_QUERIES = 256
TUNE_K = 10


def faiss_module():
    """`faiss`, or an SLQError saying how to install it (it is a dependency of the `[serve]` extra)."""
    try:
        import faiss
    except ImportError:
        raise SLQError("indexes need FAISS: pip install 'slq[serve]' (or faiss-cpu)") from None
    return faiss


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on Linux/macOS: assume a small machine
        return 8 << 30


@dataclass(frozen=True)
class AnnChoice:
    """Which index, and why: shown by `slq index` and kept in the index's metadata."""

    kind: str  # one of ANN_TYPES but "auto"
    factory: str  # FAISS index_factory string (without the id map)
    reason: str


def choose(n: int, dim: int, *, kind: str = "auto", exact_max: int = 20_000, memory_bytes: int | None = None) -> AnnChoice:
    """The index for `n` vectors of width `dim` under a memory budget (default: half the machine's)."""
    if kind not in ANN_TYPES:
        raise SLQError(f"index type {kind!r}: must be one of {', '.join(ANN_TYPES)}")
    budget = memory_bytes if memory_bytes is not None else physical_memory_bytes() // 2
    flat_bytes = n * dim * 4
    nlist = ivf_lists(n)
    if kind == "auto":
        if n <= exact_max:
            kind, reason = "flat", f"{n} vectors <= {exact_max}: exact search"
        elif flat_bytes > budget:
            kind, reason = "ivfpq", (f"{flat_bytes / 2**30:.1f} GiB of vectors exceed the {budget / 2**30:.1f} GiB "
                                     f"budget: compressed codes")
        elif n <= HNSW_MAX:
            kind, reason = "hnsw", f"{n} vectors > {exact_max}: HNSW graph"
        else:
            kind, reason = "ivf", f"{n} vectors > {HNSW_MAX}: inverted file"
    else:
        reason = "chosen by the user"
    factory = {"flat": "Flat", "hnsw": f"HNSW{HNSW_LINKS},Flat", "ivf": f"IVF{nlist},Flat",
               "ivfpq": f"IVF{nlist},PQ{pq_bytes(dim)}"}[kind]
    return AnnChoice(kind, factory, reason)


def ivf_lists(n: int) -> int:
    """Inverted lists: about 4·sqrt(n), a power of two, at least 1 and at most n // 39 (FAISS wants
    39 training points per centroid)."""
    target = max(1, int(4 * np.sqrt(max(n, 1))))
    nlist = 1 << (target.bit_length() - 1)
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return nlist


def pq_bytes(dim: int) -> int:
    """Bytes per PQ code: dim/8 (32x smaller than float32), a divisor of dim."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


@dataclass
class Ann:
    """A built FAISS index with its choice and tuned search setting."""

    index: object  # faiss.IndexIDMap2 (or an IVF index, which keeps ids itself)
    choice: AnnChoice
    setting: int | None  # efSearch or nprobe, None for exact search
    recall: float | None  # measured recall@10 of the tuned setting against exact search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (q, k); a missing neighbour (k > n) has id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.index.d)
        return self.index.search(queries, min(k, max(self.index.ntotal, 1)))

    def describe(self) -> dict:
        return {"kind": self.choice.kind, "factory": self.choice.factory, "reason": self.choice.reason,
                "setting": self.setting, "recall_at_10": self.recall, "vectors": int(self.index.ntotal)}


def build(vectors: np.ndarray, ids: np.ndarray, choice: AnnChoice, *, target_recall: float = 0.97,
          seed: int = 0) -> Ann:
    """Build `choice` over `vectors` (n, d) with item `ids` (n,) and tune its search setting."""
    faiss = faiss_module()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    inner = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    if not inner.is_trained:
        train = vectors
        if n > 256 * ivf_lists(n):  # FAISS samples 256 points per centroid anyway
            train = vectors[np.random.default_rng(seed).choice(n, 256 * ivf_lists(n), replace=False)]
        inner.train(train)
    if choice.kind == "hnsw":
        faiss.downcast_index(inner).hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, ids)
    ann = Ann(index, choice, None, None)
    if choice.kind != "flat" and n:
        ann.setting, ann.recall = _tune(ann, vectors, target_recall, seed)
    return ann


def set_search_setting(ann: Ann, value: int | None) -> None:
    """Apply efSearch (HNSW) or nprobe (IVF) to the index inside the id map."""
    if value is None:
        return
    faiss = faiss_module()
    inner = faiss.downcast_index(ann.index.index)
    if ann.choice.kind == "hnsw":
        inner.hnsw.efSearch = int(value)
    else:
        inner.nprobe = int(value)


def _tune(ann: Ann, vectors: np.ndarray, target: float, seed: int) -> tuple[int, float]:
    """The smallest search setting whose recall@10 on sample queries reaches `target` (else the largest).

    The queries are indexed vectors, each left out of its own answers (a point always finds itself,
    which would flatter the graph); real queries (texts against images) may lie farther from the
    data, which `benchmarks/ann_speed.py` measures.
    """
    faiss = faiss_module()
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), min(TUNE_QUERIES, len(vectors)), replace=False)
    ids = faiss.vector_to_array(ann.index.id_map)
    k = min(TUNE_K, len(vectors) - 1)
    if k < 1:
        return (EF_SEARCH[0] if ann.choice.kind == "hnsw" else 1), 1.0
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(vectors[rows], k + 1)  # positions; the id map answers in ids
    truth_ids = [_without(ids[line], ids[row], k) for line, row in zip(truth, rows)]
    grid = EF_SEARCH if ann.choice.kind == "hnsw" else [p for p in NPROBE if p <= faiss.downcast_index(
        ann.index.index).nlist]
    best = (grid[-1], 0.0)
    for value in grid:
        set_search_setting(ann, value)
        _, found = ann.index.search(vectors[rows], k + 1)
        recall = float(np.mean([len(set(t) & set(_without(f, ids[row], k))) / k
                                for t, f, row in zip(truth_ids, found, rows)]))
        best = (value, recall)
        if recall >= target:
            break
    set_search_setting(ann, best[0])
    if best[1] < target:
        logger.warning("%s reaches recall@%d %.3f at most, short of the %.2f asked for%s", ann.choice.factory, k,
                       best[1], target, " (compressed codes bound it)" if ann.choice.kind == "ivfpq" else "")
    logger.debug("tuned %s: setting %d gives recall@%d %.3f", ann.choice.kind, best[0], k, best[1])
    return best


def _without(found: np.ndarray, own: int, k: int) -> list[int]:
    """The first k answers other than the query's own item."""
    return [int(i) for i in found if i != own][:k]


def to_bytes(ann: Ann) -> bytes:
    return faiss_module().serialize_index(ann.index).tobytes()


def from_bytes(data: bytes, choice: AnnChoice, setting: int | None, recall: float | None) -> Ann:
    faiss = faiss_module()
    # deserialize_index already returns the concrete class; downcasting its result again would leave the
    # only owning proxy to the garbage collector, and the index freed under us
    ann = Ann(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), choice, setting, recall)
    set_search_setting(ann, setting)
    return ann

"""slq.index.ann: the structure chosen by size and memory, tuned to its recall target, returning item ids."""

from __future__ import annotations

import numpy as np
import pytest

from slq.errors import SLQError
from slq.index import ann

pytest.importorskip("faiss")


def clustered(n, dim=32, seed=0):
    """Points around 20 fixed centres; `seed` draws other points of the same distribution."""
    centres = np.random.default_rng(0).standard_normal((20, dim))
    rng = np.random.default_rng(seed + 1)
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n, memory, expected", [
    (100, None, "flat"), (20_000, None, "flat"), (20_001, None, "hnsw"), (ann.HNSW_MAX, None, "hnsw"),
    (ann.HNSW_MAX + 1, None, "ivf"), (100_000, 100 * 2**20, "ivfpq"),  # 100K x 1536 x 4 B = 586 MiB > 100 MiB
])
def test_auto_choice_follows_size_and_memory(n, memory, expected):
    choice = ann.choose(n, 1536, memory_bytes=memory if memory is not None else 1 << 40)
    assert choice.kind == expected, choice.reason
    assert ann.choose(n, 1536, kind="flat").kind == "flat"  # the user's choice wins


def test_an_unknown_kind_is_refused():
    with pytest.raises(SLQError, match="must be one of"):
        ann.choose(10, 8, kind="lsh")


@pytest.mark.parametrize("n", [1, 40, 5000, 10**6])
def test_ivf_lists_leave_enough_training_points(n):
    nlist = ann.ivf_lists(n)
    assert nlist >= 1 and nlist & (nlist - 1) == 0 and (nlist * 39 <= n or nlist == 1)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", pytest.param("ivfpq", marks=pytest.mark.slow)])
def test_each_structure_returns_item_ids_and_meets_its_recall_target(kind):
    vectors = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) * 7 + 5  # ids are not row numbers
    built = ann.build(vectors, ids, ann.choose(3000, 32, kind=kind), target_recall=0.9)
    queries = clustered(50, seed=1)
    scores, found = built.search(queries, 10)
    exact = queries @ vectors.T
    truth = ids[np.argsort(-exact, axis=1)[:, :10]]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    if kind == "flat":
        assert built.setting is None and recall == 1.0
        np.testing.assert_allclose(scores, -np.sort(-exact, axis=1)[:, :10], atol=1e-5)
    else:
        nlist = 0 if kind == "hnsw" else ann.faiss_module().downcast_index(built.index.index).nlist
        largest = ann.EF_SEARCH[-1] if kind == "hnsw" else max(p for p in ann.NPROBE if p <= nlist)
        assert built.recall >= 0.9 or built.setting == largest, "stopped tuning below the target"
        if kind != "ivfpq":  # compressed codes bound recall whatever the setting; it is reported, not promised
            assert built.recall >= 0.9 and recall >= 0.8, f"{kind}: recall {recall} on fresh queries"
    assert set(found.ravel()) <= set(ids)


def test_a_saved_structure_searches_as_built_with_its_setting():
    vectors = clustered(2000)
    built = ann.build(vectors, np.arange(2000), ann.choose(2000, 32, kind="ivf"), target_recall=0.99)
    loaded = ann.from_bytes(ann.to_bytes(built), built.choice, built.setting, built.recall)
    assert ann.faiss_module().downcast_index(loaded.index.index).nprobe == built.setting
    queries = clustered(20, seed=3)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], built.search(queries, 5)[1])


def test_an_empty_structure_finds_nothing():
    built = ann.build(np.zeros((0, 8), np.float32), np.zeros(0, np.int64), ann.choose(0, 8))
    assert (built.search(np.ones(8, np.float32), 3)[1] == -1).all()

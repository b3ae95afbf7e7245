"""`slq embed` under torchrun: two CPU processes write what one process would, row for row."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from slq.data import load_jsonl
from slq.embedding import work_folder
from slq.retriever import SLQRetriever

pytestmark = pytest.mark.slow


def test_torchrun_embed_on_two_processes_equals_one(tiny_dirs, backbones, shapes_jsonl, tmp_path):
    adapter = SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4, seed=0).save(tmp_path / "adapter")
    out = tmp_path / "emb.npy"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
                "-m", "slq.cli"]
    proc = subprocess.run([*launcher, "embed", "--backbone", str(tiny_dirs["qwen2_vl"]), "--adapter", str(adapter),
                           "--images", str(shapes_jsonl), "--out", str(out), "--piece-size", "3", "--batch-size", "2"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("16 embeddings of width 32 written") == 1, proc.stdout  # process 0 alone reports
    assert "6 piece(s) of up to 3 over 2 process(es)" in proc.stderr

    records = load_jsonl(shapes_jsonl).records
    one = SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], adapter).encode_targets(records)  # batches of 32
    two = np.load(out)
    assert two.shape == one.shape == (16, 32) and two.dtype == np.float32
    assert np.abs(two - one).max() <= 1e-6
    assert len(np.unique(two.round(5), axis=0)) == 16, "no row lost or duplicated"
    assert not work_folder(out).exists()

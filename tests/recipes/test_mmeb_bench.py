"""`slq mmeb-bench`: the suite built, methods trained (SLQ first, then mining with its adapter for
the hard-negative row), hit@1 reported per dataset and meta-task, and a rerun keeping its rows."""

from __future__ import annotations

import json
import logging

import pytest

from slq.data import load_pairs
from slq.recipes.mmeb import MINED_FILE, format_mmeb_comparison, run_mmeb_bench

pytestmark = pytest.mark.slow  # one small bench run (a module fixture) behind every test

SMALL = {"world_images": (30, 12, 16), "n_train_pairs": 4, "n_eval": 3, "n_candidates": 4, "epochs": 1,
         "batch_size": 4, "num_queries": 2, "mined": 2, "hard_negatives": 1, "eval_batch_size": 16,
         "max_similarity": 1.0, "max_relative_score": None}  # a random tiny model puts every input close to every other


@pytest.fixture(scope="module")
def bench(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("mmeb")
    report = run_mmeb_bench(out, backbone_dir=tiny_dirs["qwen2_vl"], methods=["zero_shot_last_token",
                                                                              "slq_hard_negatives"],
                            progress=False, **SMALL)
    return out, report


def test_the_report_scores_every_dataset_and_meta_task(bench):
    out, report = bench
    assert list(report["methods"]) == ["zero_shot_last_token", "slq_hard_negatives"]  # as asked: slq ran, unasked
    names = {"ShapesColour", "ShapesShape", "ShapesCount", "ShapesVQA", "ShapesT2I", "ShapesI2T", "ShapesGrounding"}
    for row in report["methods"].values():
        assert set(row["datasets"]) == names and all(0 <= d["hit@1"] <= 100 for d in row["datasets"].values())
        assert list(row["meta_tasks"]) == ["classification", "vqa", "retrieval", "grounding"]
        assert row["overall"]["datasets"] == 7 and set(row["evaluations"]["validation"]["datasets"]) == names
    assert report["methods"]["slq_hard_negatives"]["trainable_params"] == 2 * 32
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    table = (out / "table.md").read_text()
    assert table == format_mmeb_comparison(report) + "\n" and "| **overall (test)** |" in table
    assert (out / "hit1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hard_negatives_are_mined_by_the_first_adapter(bench):
    out, _ = bench
    assert (out / "adapters" / "slq" / "adapter_config.json").is_file(), "mining needs SLQ's first adapter"
    mined, plain = load_pairs(out / MINED_FILE), load_pairs(out / "suite" / "train.jsonl")
    assert len(mined) == len(plain) and all(len(r.negatives) >= 2 for r in mined.records)
    assert all(r.positive not in r.negatives for r in mined.records)
    assert [r.negatives for r in mined.records] != [r.negatives[:2] for r in plain.records], "nothing was mined"


def test_a_rerun_keeps_the_finished_rows(bench, tiny_dirs, caplog):
    out, report = bench
    with caplog.at_level(logging.INFO, logger="slq"):
        again = run_mmeb_bench(out, backbone_dir=tiny_dirs["qwen2_vl"], methods=["zero_shot_last_token",
                                                                                 "slq_hard_negatives"],
                               progress=False, **SMALL)
    assert "kept from an earlier run" in caplog.text and "test overall hit@1" not in caplog.text
    assert again["methods"] == report["methods"]

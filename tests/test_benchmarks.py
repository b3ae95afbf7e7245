"""The benchmark scripts still run and report their ratios (at toy size; timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SMALL = {"text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2,
                         "rope_parameters": {"mrope_section": [4, 2, 2]}},
         "vision_config": {"hidden_size": 64}}


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """SMALL at 56 px, built once here as `common.build_backbone_dir` builds it from --config; the train_speed
    runs get it by --backbone, so their parent process does not build it again (encode_speed still covers
    --config)."""
    from slq.tiny import build_tiny_model

    return build_tiny_model("qwen2_vl", tmp_path_factory.mktemp("bench") / "model", vocab_size=2048,
                            config_overrides=SMALL,
                            image_processor_overrides={"size": {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}})


def _run(script: str, tmp_path: Path, *args, backbone: Path | None = None) -> dict:
    if backbone is None:
        config = tmp_path / "small.json"
        config.write_text(json.dumps(SMALL))
        model = ["--config", str(config)]
    else:
        model = ["--backbone", str(backbone)]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *model,
                           "--image-side", "56", "--batch-size", "2", *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_speed_reports_ratios(tmp_path, small_model):
    summary = _run("train_speed.py", tmp_path, "--steps", "1", "--rounds", "1", "--methods", "forward,forward_queries,slq,"
                   "slq_cached_epoch,lora", backbone=small_model)
    assert set(summary["results"]) == {"forward", "forward_queries", "slq", "slq_cached_epoch", "lora"}
    for key in ("slq_over_lora_time", "slq_over_lora_memory", "slq_over_forward", "slq_5epoch_over_lora_5epoch"):
        assert summary[key] > 0
    assert summary["results"]["slq"]["trainable_params"] == 20 * 64
    assert "extrapolated" in summary["slq_5epoch_note"]
    kept = summary["results"]["slq_cached_epoch"]["prompt_cache"]  # warm-up step: misses; timed step: hits, in RAM
    assert kept["mb"] > 0 and kept["hits"] == kept["misses"] > 0
    assert "prompt_cache" not in summary["results"]["slq"], "a method without a prompt cache reports none"


def test_train_speed_with_prepared_inputs_and_the_disk_cache(tmp_path, small_model):
    summary = _run("train_speed.py", tmp_path, "--steps", "1", "--rounds", "1", "--prepared-inputs",
                   "--methods", "slq_disk_epoch", backbone=small_model)
    assert set(summary["results"]) == {"slq_disk_epoch"}
    assert all(r["step_seconds"] > 0 for r in summary["results"].values())
    kept = summary["results"]["slq_disk_epoch"]["prompt_cache"]  # warm-up step: misses; timed step: hits, from disk
    assert kept["mb"] == 0 and kept["disk_mb"] > 0 and kept["hits"] == kept["misses"] > 0


def test_prepare_speed_reports_worker_ratios(tmp_path):
    summary = _run("prepare_speed.py", tmp_path, "--n", "4", "--rounds", "1", "--source-side", "64")
    assert summary["images"] == 4 and summary["images_per_second"]["in_process"] > 0
    assert summary["workers_1_over_in_process"] > 0 and summary["workers_2_over_in_process"] > 0
    assert ("fast_in_process_over_in_process" in summary) != ("fast_note" in summary)


def test_encode_speed_reports_ratio(tmp_path):
    summary = _run("encode_speed.py", tmp_path, "--n", "4", "--rounds", "1")
    assert summary["encode_over_forward"] > 0 and set(summary["seconds"]) == {"forward", "forward_queries", "encode"}


def test_large_batch_reports_the_targets_ratios(tmp_path):
    summary = _run("large_batch.py", tmp_path, "--large-batch", "4", "--chunk-size", "2", "--baseline-chunk-size", "2",
                   "--epochs", "2", "--steps", "1", "--warmup", "1")
    for key in ("slq_first_epoch_over_forward", "slq_later_epoch_over_forward", "stock_attention_over_folded_memory",
                "slq_first_epoch_over_lora_gradcache", "slq_2_epochs_over_lora_gradcache",
                "slq_later_epoch_over_forward_large"):
        assert summary[key] > 0, key
    runs = summary["results"]
    assert len(runs["slq_run"]["step_seconds_each"]) == len(runs["lora_run"]["step_seconds_each"]) == 2
    assert runs["slq_run"]["prompt_cache"]["hits"] == 8, "the second epoch ran on the kept prompts"


def _script(script: str, tmp_path: Path, *args) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--workdir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.iterdir()), "temporary files are removed"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_ann_speed_reports_recall_and_latency(tmp_path):
    summary = _script("ann_speed.py", tmp_path, "--sizes", "1000,3000",
                      "--exact-max", "2000", "--gemm-rows", "256",  # slq's own 20000 is test_index_ann's
                      "--dim", "32", "--queries", "40", "--clusters", "20", "--rank", "8", "--warmup", "2",
                      "--max-seconds", "1")
    sizes = summary["results"]["ann"]
    assert [(r["size"], r["choice"]["kind"]) for r in sizes] == [(1000, "flat"), (3000, "hnsw")]  # slq's auto choice
    for r in sizes:
        assert 0 < r["ann"]["recall_at_10"] <= 1 and r["ann"]["n"] > 0 and r["exact"]["n"] > 0
        assert r["exact"]["p99_ms"] >= r["exact"]["p50_ms"] > 0 and r["gemm_gflops"] > 0
        assert 0 < r["peak_rss_gib"] < 4, "the size's own peak (VmHWM), not its parent's"
    assert sizes[0]["ann"]["recall_at_10"] == 1.0, "exact search against itself"
    assert sizes[1]["ann"]["tuned_recall_at_10"] is not None and sizes[1]["ann"]["setting"] > 0
    assert set(summary["recall_met"]) == {"1000", "3000"}


def test_serve_speed_reports_the_server_end_to_end(tmp_path):
    summary = _script("serve_speed.py", tmp_path, "--warmup", "2", "--e2e-items", "300", "--e2e-real", "8",
                      "--e2e-requests", "10", "--e2e-seconds", "1")
    e2e = summary["results"]["e2e"]
    assert e2e["items"] == 300 and e2e["real_items"] == 8 and e2e["dim"] == 192
    assert set(e2e["sequential"]["statuses"]) == {"200"} and e2e["sequential"]["hits_per_response"] == 10
    assert e2e["concurrent"]["requests"] > 0 and e2e["concurrent"]["server_errors_5xx"] == 0
    assert {"embed", "index_search", "ann_search"} <= set(e2e["split"])
    assert isinstance(summary["e2e_p50_met"], bool) and isinstance(summary["e2e_p99_met"], bool)


def test_default_size_reports_the_cost_of_bigger_defaults(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "default_size.py"), "--sizes", "48x1x64,96x2x128",
                           "--steps", "2", "--rounds", "1", "--n-encode", "4"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["sizes"]
    assert [r["size"] for r in rows] == ["48x1x64", "96x2x128"]
    assert rows[0]["step_ratio"] == rows[0]["encode_ratio"] == 1.0, "ratios are to the first size"
    assert rows[1]["parameters"] > rows[0]["parameters"] and rows[1]["megabytes"] > rows[0]["megabytes"]
    assert all(r["step_s"] > 0 and r["encode_s"] > 0 and r["pretrain_minutes"] > 0 for r in rows)

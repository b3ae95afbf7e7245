"""End to end: the `slq` command run as a user would, in a subprocess, on a tiny model and data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import slq

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_jsonl):
    root = tmp_path_factory.mktemp("cli")
    backbone = root / "backbone"
    slq("tiny-model", "--family", "qwen2_vl", "--out", backbone)
    weights_before = _sha(backbone / "model.safetensors")
    adapter = root / "adapter"
    slq("train", "--backbone", backbone, "--train", shapes_jsonl, "--out", adapter, "--num-queries", 4,
        "--batch-size", 4, "--epochs", 1, "--lr", 1e-3, "--seed", 0)
    return backbone, adapter, weights_before


def test_train_writes_an_adapter_and_leaves_the_backbone_alone(trained):
    backbone, adapter, weights_before = trained
    assert _sha(backbone / "model.safetensors") == weights_before
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["num_queries"] == 4 and config["hidden_size"] == 32 and config["backbone"]["family"] == "qwen2_vl"
    assert config["training"]["steps"] == 4 and config["training"]["train_images"] == 16
    assert "4 x 32 = 128 trainable parameters" in (adapter / "README.md").read_text()


def test_train_keeps_prompts_beyond_the_ram_budget_on_disk(trained, shapes_jsonl, tmp_path):
    backbone, _, _ = trained
    proc = slq("train", "--backbone", backbone, "--train", shapes_jsonl, "--out", tmp_path / "a", "--num-queries", 4,
               "--batch-size", 4, "--epochs", 2, "--prompt-cache-mb", 0.01, "--prompt-cache-disk-mb", 16,
               "--prompt-cache-dtype", "bfloat16")
    stats = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["training"]["prompt_cache"]
    assert stats["mb"] <= 0.01 and stats["disk_mb"] > 0 and stats["hits"] >= 16  # epoch 2 finds every image
    assert "MB on disk" in proc.stderr


def test_gap_plots_the_modality_gap_of_an_adapter(trained, shapes_jsonl, tmp_path):
    backbone, adapter, _ = trained
    proc = slq("gap", "--backbone", backbone, "--adapter", adapter, "--data", shapes_jsonl, "--out", tmp_path / "gap.png",
               "--report", tmp_path / "gap.json")
    assert (tmp_path / "gap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gap = json.loads((tmp_path / "gap.json").read_text())["modality_gap"]
    assert f"centroid distance {gap['centroid_distance']:.4f}" in proc.stdout
    assert 0 < gap["centroid_distance"] <= 2 and len(gap["pca"]["texts"]) == 32 and len(gap["pca"]["targets"]) == 16


def test_eval_prints_and_writes_the_report(trained, shapes_jsonl, tmp_path):
    backbone, adapter, _ = trained
    report_path = tmp_path / "sub" / "report.json"
    proc = slq("eval", "--backbone", backbone, "--adapter", adapter, "--data", shapes_jsonl, "--report", report_path)
    assert "R@1" in proc.stdout and "t2i" in proc.stdout
    report = json.loads(report_path.read_text())
    assert report["n_images"] == 16 and report["n_texts"] == 32
    for direction in ("t2i", "i2t"):
        assert set(report[direction]) == {"R@1", "R@5", "R@10"}
        values = [report[direction][k] for k in ("R@1", "R@5", "R@10")]
        assert all(0 <= v <= 1 for v in values) and values == sorted(values)
    from slq import SLQRetriever
    from slq.data import load_jsonl
    from slq.evaluation.retrieval import evaluate

    assert report == evaluate(SLQRetriever.from_pretrained(backbone, adapter), load_jsonl(shapes_jsonl))


def test_embed_texts_and_images(trained, shapes_jsonl, tmp_path):
    backbone, adapter, _ = trained
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na blue square\none green circle\n")
    slq("embed", "--backbone", backbone, "--adapter", adapter, "--texts", texts, "--out", tmp_path / "t.npy")
    slq("embed", "--backbone", backbone, "--adapter", adapter, "--images", shapes_jsonl.parent / "images",
        "--out", tmp_path / "i.npy")
    t, i = np.load(tmp_path / "t.npy"), np.load(tmp_path / "i.npy")
    assert t.shape == (3, 32) and i.shape == (16, 32) and t.dtype == np.float32
    assert np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(i, axis=1), 1, atol=1e-5)
    # the CLI and the library agree
    from slq import SLQRetriever

    library = SLQRetriever.from_pretrained(backbone, adapter).encode_text(["a red circle", "a blue square",
                                                                           "one green circle"])
    assert np.allclose(library, t, atol=1e-6)


def test_embed_inputs_of_mixed_kinds(trained, shapes_jsonl, tmp_path):
    backbone, adapter, _ = trained
    image = str(shapes_jsonl.parent / "images" / "000.png")
    lines = ["a red circle", {"image": image}, {"text": "what colour is it?", "image": image,
                                                 "instruction": "Answer the question:"}]
    path = _write(tmp_path / "inputs.jsonl", [json.dumps(x) if isinstance(x, str) else x for x in lines])
    slq("embed", "--backbone", backbone, "--adapter", adapter, "--inputs", path, "--out", tmp_path / "x.npy")
    from slq import SLQRetriever
    from slq.data import Input

    library = SLQRetriever.from_pretrained(backbone, adapter).encode_inputs(
        [Input("a red circle"), Input(image=image), Input("what colour is it?", image, "Answer the question:")])
    assert np.allclose(np.load(tmp_path / "x.npy"), library, atol=1e-6)
    bad = _write(tmp_path / "bad.jsonl", ['{"instruction": "Find:"}'])
    proc = slq("embed", "--backbone", backbone, "--adapter", adapter, "--inputs", bad, "--out", tmp_path / "y.npy",
               check=False)
    assert proc.returncode == 2 and "bad.jsonl:1" in proc.stderr


def _write(path: Path, records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


@pytest.mark.parametrize("case,expect", [
    ("missing_image", "bad.jsonl:2"),
    ("empty_captions", "bad.jsonl:2"),
    ("malformed_line", "bad.jsonl:2"),
])
def test_bad_training_data_fails_cleanly(trained, shapes_jsonl, tmp_path, case, expect):
    backbone, _, _ = trained
    good = {"image": str(shapes_jsonl.parent / "images" / "000.png"), "captions": ["a red circle"]}
    bad = {"missing_image": {"image": "nope.png", "captions": ["x"]},
           "empty_captions": {"image": good["image"], "captions": []},
           "malformed_line": '{"image": "a.png", "captions": ["x"]'}[case]
    data = _write(tmp_path / "bad.jsonl", [good, bad, good])
    out = tmp_path / "adapter"
    proc = slq("train", "--backbone", backbone, "--train", data, "--out", out, "--batch-size", 2, check=False)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("slq: error:") and expect in message, message
    assert not (out / "adapter_config.json").exists(), "nothing half-written"


def test_skip_policy_lists_the_skipped_record(trained, shapes_jsonl, tmp_path):
    backbone, _, _ = trained
    images = shapes_jsonl.parent / "images"
    records = [{"image": str(images / f"{i:03d}.png"), "captions": ["a shape"]} for i in range(4)]
    data = _write(tmp_path / "some_bad.jsonl", records[:2] + [{"image": "gone.png", "captions": ["x"]}] + records[2:])
    out = tmp_path / "adapter"
    proc = slq("train", "--backbone", backbone, "--train", data, "--out", out, "--batch-size", 2,
               "--on-bad-record", "skip")
    assert "skipped" in proc.stderr and "some_bad.jsonl:3" in proc.stderr
    skipped = json.loads((out / "adapter_config.json").read_text())["training"]["skipped"]
    assert len(skipped) == 1 and skipped[0]["source"].endswith("some_bad.jsonl:3")


def test_adapter_for_another_backbone_is_refused(trained, shapes_jsonl, tmp_path):
    _, adapter, _ = trained
    other = tmp_path / "llava"
    slq("tiny-model", "--family", "llava", "--out", other)
    proc = slq("eval", "--backbone", other, "--adapter", adapter, "--data", shapes_jsonl, check=False)
    assert proc.returncode == 2 and "another backbone" in proc.stderr and "family 'qwen2_vl' != 'llava'" in proc.stderr


def test_usage_errors_exit_2(trained, shapes_jsonl, tmp_path):
    backbone, adapter, _ = trained
    assert slq("tiny-model", "--family", "gpt2", "--out", tmp_path / "x", check=False).returncode == 2
    proc = slq("train", "--backbone", backbone, "--train", shapes_jsonl, "--out", tmp_path / "a",
               "--batch-size", 64, check=False)
    assert proc.returncode == 2 and "--batch-size 64: is larger than the training set" in proc.stderr
    proc = slq("eval", "--backbone", tmp_path / "nowhere", "--adapter", adapter, "--data", shapes_jsonl, check=False)
    assert proc.returncode == 2 and "not a checkpoint folder" in proc.stderr
    proc = slq("train", "--backbone", backbone, "--train", shapes_jsonl, "--out", adapter, check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr  # the finished run's checkpoint is not overwritten


def test_embed_jsonl_skips_and_lists_bad_records(trained, shapes_jsonl, tmp_path):
    backbone, adapter, _ = trained
    images = shapes_jsonl.parent / "images"
    data = _write(tmp_path / "mixed.jsonl", [{"image": str(images / "000.png"), "captions": ["a"]},
                                             {"image": "missing.png", "captions": ["b"]},
                                             {"image": str(images / "001.png"), "captions": ["c"]}])
    args = ["embed", "--backbone", backbone, "--adapter", adapter, "--images", data, "--out", tmp_path / "e.npy"]
    strict = slq(*args, check=False)
    assert strict.returncode == 2 and "mixed.jsonl:2" in strict.stderr and not (tmp_path / "e.npy").exists()
    lenient = slq(*args, "--on-bad-record", "skip")
    assert "skipped" in lenient.stderr and "mixed.jsonl:2" in lenient.stderr
    assert np.load(tmp_path / "e.npy").shape == (2, 32)


def test_more_user_mistakes_are_one_line_errors(trained, shapes_jsonl, tmp_path):
    backbone, adapter, _ = trained
    a_file = tmp_path / "file"
    a_file.write_text("x")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((backbone / "config.json").read_text())
    cases = [
        (["eval", "--backbone", backbone, "--adapter", adapter, "--data", shapes_jsonl, "--batch-size", "0"],
         "--batch-size"),
        (["train", "--backbone", backbone, "--train", shapes_jsonl, "--out", a_file], "is a file"),
        (["eval", "--backbone", no_weights, "--adapter", adapter, "--data", shapes_jsonl], "cannot load the checkpoint"),
        (["tiny-model", "--family", "llava", "--out", adapter], "not empty"),
        (["eval", "--backbone", backbone, "--adapter", adapter, "--data", shapes_jsonl, "--device", "cuda:0"],
         "--device cuda:0"),
    ]
    for args, expected in cases:
        proc = slq(*args, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr[-2000:])
        assert expected in proc.stderr.strip().splitlines()[-1], (args, proc.stderr[-500:])
    assert (adapter / "adapter_config.json").exists(), "tiny-model must not have replaced the folder"


def test_karpathy_files_train_on_train_and_evaluate_on_test_by_default(trained, shapes_jsonl, tmp_path):
    backbone, _, _ = trained
    images = shapes_jsonl.parent / "images"
    entries = [{"filename": f"{i:03d}.png", "split": "train" if i < 8 else "test",
                "sentences": [{"raw": f"shape number {i}"}]} for i in range(12)]
    karpathy = tmp_path / "dataset_shapes.json"
    karpathy.write_text(json.dumps({"images": entries}))
    out = tmp_path / "adapter"
    slq("train", "--backbone", backbone, "--train", karpathy, "--image-root", images, "--out", out,
        "--batch-size", 4, "--num-queries", 4)
    training = json.loads((out / "adapter_config.json").read_text())["training"]
    assert training["train_data"] == "dataset_shapes-train" and training["train_images"] == 8
    slq("eval", "--backbone", backbone, "--adapter", out, "--data", karpathy, "--image-root", images,
        "--report", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dataset"] == "dataset_shapes-test" and report["n_images"] == 4

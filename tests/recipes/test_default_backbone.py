"""The shipped default backbone, slq-tiny-vl: it loads like a download, is the checkpoint its model
card describes, can still caption, and the demo runs on it."""

from __future__ import annotations

import hashlib
import json

import pytest

from slq.backbone import Backbone
from slq.data.shapes import write_world
from slq.recipes.demo import DEFAULT_BACKBONE, DEMO_METHODS, DEMO_SEED, run_demo
from slq.recipes.pretrain import caption_attribute_accuracy


def _card() -> dict:
    return json.loads((DEFAULT_BACKBONE / "pretraining.json").read_text())


def test_shipped_checkpoint_is_the_one_its_card_describes():
    weights = DEFAULT_BACKBONE / "model.safetensors"
    assert weights.stat().st_size <= 25 * 2**20, "the shipped checkpoint's size limit"
    fingerprint = Backbone.load(DEFAULT_BACKBONE).fingerprint()
    recorded = _card()["fingerprint"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == recorded["safetensors_sha256"]
    assert fingerprint["config_sha256"] == recorded["config_sha256"]
    assert fingerprint["weights_probe"] == pytest.approx(recorded["weights_probe"], rel=1e-5)
    card = (DEFAULT_BACKBONE / "README.md").read_text()
    assert recorded["safetensors_sha256"] in card and recorded["config_sha256"] in card
    assert fingerprint["model_type"] == "qwen2_vl", "the M-RoPE family, the hardest positions to get right"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("default") / "world", n_train=8, n_val=1, n_test=32, seed=DEMO_SEED,
                       progress=False)


@pytest.mark.slow
def test_shipped_checkpoint_still_names_colours(world):
    """The capability check of the model card, on a slice of the test split: the colours its greedy
    captions name are in the image (a random twin names one at chance, about a third)."""
    accuracy = caption_attribute_accuracy(DEFAULT_BACKBONE, world["test"], limit=32, progress=False)
    assert accuracy["colour"] >= 0.9, accuracy


@pytest.mark.slow
def test_demo_runs_on_the_shipped_backbone_by_default(tmp_path, caplog):
    with caplog.at_level("INFO", logger="slq"):
        report = run_demo(tmp_path, n_train=32, n_test=16, epochs=1, batch_size=16, num_queries=4, progress=False)
    assert report["backbone"] == str(DEFAULT_BACKBONE)
    assert all(f"{m} done" in caplog.text for m in DEMO_METHODS)  # progress between the steps
    assert list(report["methods"]) == list(DEMO_METHODS)
    assert json.loads((tmp_path / "report.json").read_text())["chance_R@1"] == 1 / 16


def test_demo_refuses_a_missing_default_backbone(tmp_path, monkeypatch):
    import slq.recipes.demo
    from slq.errors import SLQError

    monkeypatch.setattr(slq.recipes.demo, "DEFAULT_BACKBONE", tmp_path / "gone")
    with pytest.raises(SLQError, match="default backbone is missing"):
        run_demo(tmp_path / "out", n_train=8, n_test=4)
    assert not (tmp_path / "out").exists(), "refused before writing anything"

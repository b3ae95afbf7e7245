"""Adapters: save -> load gives the same embeddings; wrong backbones and damaged files are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slq.adapter import CONFIG_NAME, WEIGHTS_NAME, load_adapter
from slq.data import load_jsonl
from slq.errors import AdapterError
from slq.retriever import SLQRetriever
from slq.tiny import build_tiny_model

TEXTS = ["a red circle", "one blue square", "a yellow circle"]


@pytest.fixture(scope="module")
def saved(tiny_dirs, tmp_path_factory):
    retriever = SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], num_queries=6, seed=3)
    with torch.no_grad():
        retriever.queries.weight.mul_(1.5)  # not the initial state: make sure what is saved is what is used
    path = retriever.save(tmp_path_factory.mktemp("adapters") / "a", training={"note": "test"})
    return retriever, path


def test_save_load_gives_identical_embeddings(saved, tiny_dirs, shapes_jsonl):
    retriever, path = saved
    images = load_jsonl(shapes_jsonl).records[:5]
    loaded = SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], path)
    assert np.array_equal(retriever.encode_text(TEXTS), loaded.encode_text(TEXTS))
    assert np.array_equal(retriever.encode_image(images), loaded.encode_image(images))
    single = loaded.encode_text(TEXTS[0])
    assert single.shape == (loaded.backbone.hidden_size,) and np.isclose(np.linalg.norm(single), 1.0)
    assert sorted(p.name for p in path.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]


def test_other_family_is_refused_with_what_differs(saved, tiny_dirs):
    _, path = saved
    with pytest.raises(AdapterError, match=r"another backbone.*family 'qwen2_vl' != 'internvl'"):
        SLQRetriever.from_pretrained(tiny_dirs["internvl"], path)


def test_same_architecture_other_weights_is_refused(saved, tmp_path):
    _, path = saved
    twin = build_tiny_model("qwen2_vl", tmp_path / "twin", seed=1)
    with pytest.raises(AdapterError, match="different weights"):
        SLQRetriever.from_pretrained(twin, path)


def test_reload_in_bfloat16_is_accepted(saved, tiny_dirs):
    _, path = saved
    retriever = SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], path, dtype=torch.bfloat16)
    assert retriever.encode_text(TEXTS).shape == (3, retriever.backbone.hidden_size)


def _copy(path, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for f in path.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / WEIGHTS_NAME).write_bytes(b"\x00garbage"), "not a readable safetensors"),
    (lambda d: save_file({"queries": torch.full((6, 32), float("nan"))}, str(d / WEIGHTS_NAME)), "NaN"),
    (lambda d: save_file({"queries": torch.zeros(5, 32)}, str(d / WEIGHTS_NAME)), "does not match"),
    (lambda d: save_file({"queries": torch.zeros(6, 32, dtype=torch.int32)}, str(d / WEIGHTS_NAME)), "dtype"),
    (lambda d: save_file({"queries": torch.zeros(6, 32), "x": torch.zeros(1)}, str(d / WEIGHTS_NAME)), "exactly one"),
    (lambda d: (d / CONFIG_NAME).write_text("[1, 2]"), "malformed"),
    (lambda d: (d / CONFIG_NAME).write_text("{not json"), "malformed"),
    (lambda d: (d / CONFIG_NAME).unlink(), "missing"),
    (lambda d: (d / WEIGHTS_NAME).unlink(), "missing"),
    (lambda d: (d / CONFIG_NAME).write_text(json.dumps({"num_queries": -1, "hidden_size": 32, "backbone": {}})),
     "num_queries"),
    (lambda d: (d / CONFIG_NAME).write_text(json.dumps({"num_queries": 6, "hidden_size": 32, "backbone": {
        "config_sha256": "x", "embedding_probe": [None, "a"]}})), "embedding_probe"),
])
def test_damaged_adapter_is_refused(saved, tmp_path, damage, message):
    _, path = saved
    target = _copy(path, tmp_path)
    damage(target)
    with pytest.raises(AdapterError, match=message):
        load_adapter(target)


def test_a_fine_tune_that_kept_the_embeddings_is_refused(saved, tiny_dirs, tmp_path):
    """Equal embeddings, one language-model layer changed: still another backbone."""
    import shutil

    from safetensors.torch import load_file as load_weights

    _, path = saved
    folder = tmp_path / "tuned"
    shutil.copytree(tiny_dirs["qwen2_vl"], folder)
    weights = load_weights(str(folder / "model.safetensors"))
    scaled = [name for name in weights if ".layers." in name and "visual" not in name]  # on-disk LM names
    assert scaled and not any("embed_tokens" in name for name in scaled)
    for name in scaled:
        weights[name] = weights[name] * 1.5
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AdapterError, match="weights probe differs"):
        SLQRetriever.from_pretrained(folder, path)


def test_image_fit_is_recorded_and_reloaded_with_the_adapter(tiny_dirs, tmp_path, shapes_jsonl):
    square = SLQRetriever.from_pretrained(tiny_dirs["internvl"], num_queries=2, image_fit="square")
    path = square.save(tmp_path / "square")
    assert json.loads((path / CONFIG_NAME).read_text())["image_fit"] == "square"
    assert "padded to a grey square" in (path / "README.md").read_text()
    loaded = SLQRetriever.from_pretrained(tiny_dirs["internvl"], path)  # no image_fit: the adapter's
    images = load_jsonl(shapes_jsonl).records[:3]
    assert loaded.backbone.image_fit == "square"
    assert np.array_equal(loaded.encode_image(images), square.encode_image(images))
    with pytest.raises(AdapterError, match="trained with image_fit 'square', not 'processor'"):
        SLQRetriever.from_pretrained(tiny_dirs["internvl"], path, image_fit="processor")


def test_adapter_without_image_fit_loads_as_processor(saved, tiny_dirs, tmp_path):
    _, path = saved
    assert json.loads((path / CONFIG_NAME).read_text())["image_fit"] == "processor"
    older = _copy(path, tmp_path)  # written before image_fit was recorded
    config = json.loads((older / CONFIG_NAME).read_text())
    del config["image_fit"]
    (older / CONFIG_NAME).write_text(json.dumps(config))
    assert load_adapter(older)[0].image_fit == "processor"
    assert SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], older).backbone.image_fit == "processor"
    config["image_fit"] = "stretch"
    (older / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="image_fit 'stretch' is not supported"):
        load_adapter(older)

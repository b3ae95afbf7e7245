"""Generative pretraining of slq-tiny-vl: labels, inputs, learning, determinism, the caption scorer."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slq.errors import SLQError
from slq.pretrain import (IGNORE, Collator, Example, GenerativeData, PretrainConfig, _load_images, _load_world_text,
                          build_initial_model, caption_attribute_accuracy, pretrain, score_caption, vqa_pairs)
from slq.shapes import held_out_combos, write_world

FAST = dict(batch_size=8, lr=3e-3, warmup_steps=2, save_every=0, threads=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrain") / "world"
    write_world(folder, n_train=24, n_val=2, n_test=4, seed=0, progress=False)
    return folder


@pytest.fixture(scope="module")
def init(world) -> Path:
    """The random initial model, built once (tokenizer training is the slow part) and copied."""
    return build_initial_model(world.parent / "init", world, seed=0)


def _work(init: Path, folder: Path) -> Path:
    shutil.copytree(init, folder / "init")
    return folder


@pytest.fixture(scope="module")
def run(world, init) -> tuple[Path, object]:
    """One short pretraining run, shared by the tests that need a trained model."""
    out = world.parent / "model"
    result = pretrain(out, world, PretrainConfig(steps=30, **FAST), work_dir=_work(init, world.parent / "w"),
                      progress=False, log=lambda *_: None)
    return out, result


def _collator(model_dir: Path, world: Path) -> tuple[Collator, GenerativeData]:
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    records, knowledge, held_out = _load_world_text(world)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "right"
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    collate = Collator(model, tokenizer, AutoImageProcessor.from_pretrained(model_dir), _load_images(world, records))
    return collate, GenerativeData(records, knowledge, held_out, PretrainConfig().mixture)


def test_labels_cover_only_the_answer(run, world):
    collate, data = _collator(run[0], world)
    tok = collate.tokenizer
    for example in (Example(0, "", data.records[0]["captions"][0]), Example(1, "how many objects are there?", "two"),
                    Example(None, data.records[2]["captions"][0], data.records[2]["captions"][1])):
        ids, labels = collate.encode(example)
        answer = [i for i, lab in zip(ids, labels) if lab != IGNORE]
        assert tok.decode(answer) == example.answer + tok.eos_token, "the loss must fall on the answer and <|im_end|>"
        assert labels[-len(answer):] == answer and all(lab == IGNORE for lab in labels[:-len(answer)]), \
            "every prompt token must be masked"
        assert tok.decode(ids[:-len(answer)]).endswith("<|im_start|>assistant\n"), "prompt ends at the opener"
    ids, labels = collate.encode(Example(None, "a triangle has three sides", lm=True))
    assert labels == ids, "a knowledge sentence is trained on every token"
    plain, clean = collate.encode(Example(0, "", "a red star"))
    ids, labels = collate.encode(Example(0, "", "a red star", noise=(7, -1, 9) + (-1,) * 61))
    assert labels == clean, "word dropout never changes the targets"
    assert ids == plain[:-4] + [7, plain[-3], 9, plain[-1]], "dropped answer inputs become the given tokens"


def test_word_dropout_only_on_caption_and_paraphrase_answers(world):
    records, knowledge, held_out = _load_world_text(world)
    data = GenerativeData(records, knowledge, held_out, PretrainConfig().mixture, noise_ids=[5, 6],
                          noise_prob=0.5, noise_rate=0.8)
    examples = [e for step in range(20) for e in data.batch(0, step, 16)]
    noisy = [e for e in examples if e.noise]
    assert 0.2 < len(noisy) / len(examples) < 0.5
    assert all(set(e.noise) <= {-1, 5, 6} and not e.lm and "?" not in e.text for e in noisy), \
        "noise is drawn from the given ids, only for captions and paraphrases"
    dropped = sum(n >= 0 for e in noisy for n in e.noise) / sum(len(e.noise) for e in noisy)
    assert 0.7 < dropped < 0.9, f"about 80% of answer inputs dropped, got {dropped:.2f}"


def test_batch_inputs_match_the_images(run, world):
    collate, data = _collator(run[0], world)
    batch = collate([Example(0, ""  , "a"), Example(None, "x", "y"), Example(3, "how many stars are there?", "zero")])
    image_id = collate.model.config.image_token_id
    per_image = (batch["input_ids"] == image_id).sum(1).tolist()
    assert per_image == [16, 0, 16], "a 64x64 image is 16 tokens"
    assert batch["pixel_values"].shape[0] == batch["image_grid_thw"].prod(-1).sum(), "pixels of exactly the images"
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_id)
    assert batch["position_ids"].shape == (3, *batch["input_ids"].shape), "M-RoPE positions"
    assert torch.isfinite(collate.model(**batch).loss)


def test_a_few_steps_lower_the_loss(run):
    history = run[1].history
    assert history[-1]["loss"] < history[0]["loss"] - 1.0, f"loss did not fall: {history}"


def test_two_steps_are_deterministic(world, tmp_path, init):
    config = PretrainConfig(steps=2, **FAST)
    a = pretrain(tmp_path / "a", world, config, work_dir=_work(init, tmp_path / "wa"), progress=False)
    b = pretrain(tmp_path / "b", world, config, work_dir=_work(init, tmp_path / "wb"), progress=False)
    assert a.history == b.history
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed, same weights"


def test_checkpoint_loads_like_a_download(run, world):
    from slq.backbone import Backbone

    backbone = Backbone.load(run[0])
    assert backbone.config.model_type == "qwen2_vl" and backbone.hidden_size == 192
    result = caption_attribute_accuracy(run[0], world / "test.jsonl", limit=2, max_new_tokens=6, progress=False)
    assert result["n_images"] == 2 and len(result["samples"]) == 2


def test_questions_never_name_held_out_pairs(world):
    records, knowledge, held_out = _load_world_text(world)
    for i, record in enumerate(records):
        for question, answer in vqa_pairs(record["objects"], held_out, random.Random(i)):
            assert not any(f"{c} {s}" in question for c, s in held_out), question
            assert answer and "?" in question
    leaked = dict(records[0], objects=[dict(records[0]["objects"][0], colour=c, shape=s) for c, s in held_out])
    with pytest.raises(SLQError, match="held-out"):
        GenerativeData([leaked], knowledge, held_out, PretrainConfig().mixture)


def test_vqa_answers_are_true():
    objects = [{"shape": "square", "colour": "green", "size": "small", "position": "top left"},
               {"shape": "square", "colour": "green", "size": "large", "position": "centre"},
               {"shape": "star", "colour": "red", "size": "small", "position": "bottom"}]
    pairs = dict(vqa_pairs(objects, held_out_combos(0), random.Random(0)))
    assert pairs["how many objects are there?"] == "three"
    assert pairs["how many squares are there?"] == "two"
    assert pairs["what colour is the star?"] == "red"
    assert pairs["where is the red star?"] == "bottom"
    assert "where is the green square?" not in pairs, "a repeated pair has no single position"


def test_caption_scorer():
    objects = [{"shape": "square", "colour": "green", "size": "small"},
               {"shape": "square", "colour": "green", "size": "small"},
               {"shape": "star", "colour": "red", "size": "large"}]
    right = score_caption("there are three objects: two small green squares and a large red star", objects)
    assert right == {"colour": [2, 2], "shape": [2, 2], "pair": [2, 2], "count": [2, 2]}
    wrong = score_caption("a blue square above three red hearts; two shapes", objects)
    assert wrong["colour"] == [1, 2] and wrong["shape"] == [1, 2] and wrong["pair"] == [0, 2]
    assert wrong["count"] == [0, 2], "three red hearts (0) and two shapes (3) are both wrong"
    assert score_caption("", objects) == {k: [0, 0] for k in ("colour", "shape", "pair", "count")}


def test_resume_continues_exactly(world, tmp_path, init):
    config = PretrainConfig(steps=3, **dict(FAST, save_every=2))
    whole = pretrain(tmp_path / "whole", world, config, work_dir=_work(init, tmp_path / "work"), progress=False)
    assert (tmp_path / "work" / "checkpoint" / "state.json").is_file(), "a checkpoint at step 2"
    resumed = pretrain(tmp_path / "resumed", world, config, work_dir=tmp_path / "work", progress=False,
                       log=lambda *_: None)
    assert resumed.history == whole.history
    wa, wb = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "a resumed run ends with the same weights"
    with pytest.raises(SLQError, match="other settings"):
        pretrain(tmp_path / "x", world, PretrainConfig(steps=3, **dict(FAST, save_every=2, lr=1e-3)),
                 work_dir=tmp_path / "work", progress=False)

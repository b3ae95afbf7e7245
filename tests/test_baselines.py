"""Baselines: pooling is what it says, LoRA trains only its adapters, full fine-tuning only the LM."""

from __future__ import annotations

import pytest
import torch

from slq.backbone import Backbone
from slq.baselines import ONE_WORD_TEXT, PooledEncoder, add_lora, unfreeze_language_model
from slq.data import load_jsonl
from slq.train import TrainConfig, train

TEXTS = ["a red circle", "two large green squares above a small blue triangle"]


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_matches_an_unpadded_forward(backbones, pooling):
    backbone = backbones["qwen2_vl"]
    encoder = PooledEncoder(backbone, pooling)
    batched = encoder.encode_text(TEXTS, convert_to_numpy=False)
    for i, text in enumerate(TEXTS):
        ids = backbone.text_batch([text], instruction=ONE_WORD_TEXT).input_ids
        with torch.no_grad():
            states = backbone.model.model(input_ids=ids, **backbone.family.extra_inputs(backbone.config, ids))
        states = states.last_hidden_state[0]  # (L, d)
        expected = states[-1] if pooling == "last" else states.mean(0)
        assert torch.allclose(batched[i], torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)


def test_one_word_prompt_is_in_the_prompt(backbones):
    backbone = backbones["internvl"]
    prompt = backbone.tokenizer.decode(PooledEncoder(backbone).text_batch(["a cat"]).input_ids[0])
    assert "a cat\nSummary above sentence in one word:" in prompt
    assert prompt.rstrip().endswith("assistant")  # the instruction sits inside the user turn


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lora_trains_only_its_adapters(tiny_dirs, shapes_jsonl):
    encoder = add_lora(PooledEncoder(Backbone.load(tiny_dirs["llava"])))
    names = list(encoder.trainable_tensors())
    assert names and all("lora_" in n for n in names)
    before = _snapshot(encoder.backbone.model)
    train(encoder, load_jsonl(shapes_jsonl), TrainConfig(batch_size=8, epochs=1, lr=1e-2), progress=False)
    after = encoder.backbone.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_B" in k or "lora_A" in k for k in changed), sorted(changed)[:5]


def test_full_finetuning_trains_the_language_model_only(tiny_dirs, shapes_jsonl):
    encoder = unfreeze_language_model(PooledEncoder(Backbone.load(tiny_dirs["qwen2_vl"])))
    before = _snapshot(encoder.backbone.model)
    train(encoder, load_jsonl(shapes_jsonl), TrainConfig(batch_size=8, epochs=1, lr=1e-2), progress=False)
    after = encoder.backbone.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".layers." in k for k in changed)
    assert all(k.startswith("model.language_model.") for k in changed), sorted(changed)[:5]

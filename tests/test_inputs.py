"""Inputs of any kind (text, image, image+text, each with an optional instruction) through every
family: plain inputs give exactly the plain prompts, mixed batches equal their parts, and what is
added (a question, an instruction) reaches the prompt in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from slq.baselines import PooledEncoder
from slq.data import Input
from slq.loss import ContrastiveLoss
from slq.retriever import SLQRetriever
from slq.tiny import TINY_FAMILIES, TINY_TEXT_FAMILIES


def _image(colour=(200, 10, 10), size=(60, 60)):
    return Image.new("RGB", size, colour)


def _retriever(backbone):
    return SLQRetriever.fresh(backbone, num_queries=4, seed=0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_plain_inputs_give_the_plain_prompts(backbones, family):
    encoder = _retriever(backbones[family])
    texts = ["a red circle", "two green squares"]
    assert np.allclose(encoder.encode_inputs([Input(t) for t in texts]), encoder.encode_text(texts), atol=1e-6)
    if not encoder.backbone.text_only:
        images = [_image(), _image((0, 0, 200), (90, 40))]
        assert np.allclose(encoder.encode_inputs([Input(image=im) for im in images]), encoder.encode_image(images),
                           atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_mixed_batch_equals_its_parts_in_order(backbones, family):
    encoder = _retriever(backbones[family])
    text_only = encoder.backbone.text_only
    inputs = [Input("a red circle", instruction="Find the matching image:"), Input("a blue star")]
    if not text_only:
        inputs = [inputs[0], Input(image=_image()), inputs[1], Input("what colour is it?", _image((0, 0, 200)),
                                                                     "Answer the question:")]
    together = encoder.encode_inputs(inputs, batch_size=3)
    alone = np.stack([encoder.encode_inputs(x) for x in inputs])
    assert together.shape == (len(inputs), encoder.dim)
    assert np.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f not in TINY_TEXT_FAMILIES])
def test_image_with_text_reads_both_in_one_prompt(backbones, family):
    encoder = PooledEncoder(backbones[family], "last")
    image = _image()
    batch = encoder.input_batch([Input("what colour is it?", image, "Answer the question:")])
    prompt = encoder.backbone.tokenizer.decode(batch.input_ids[0])
    assert prompt.index("Answer the question:") < prompt.index("what colour is it?") < prompt.index("one word")
    plain, asked = encoder.encode_inputs([Input(image=image), Input("what colour is it?", image)])
    assert not np.allclose(plain, asked, atol=1e-4)
    assert np.allclose(encoder.encode_query("what colour is it?", image), asked, atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_an_instruction_changes_the_embedding(backbones, family):
    encoder = _retriever(backbones[family])
    plain, instructed = encoder.encode_inputs([Input("a red circle"), Input("a red circle", instruction="Classify:")])
    assert not np.allclose(plain, instructed, atol=1e-4)


def test_an_instruction_reaches_the_prompt_without_its_surrounding_spaces(backbones):
    encoder = _retriever(backbones["qwen2_vl"])
    padded, plain = (encoder.input_batch([Input("a red circle", instruction=text)]) for text in (" Find it: ", "Find it:"))
    assert torch.equal(padded.input_ids, plain.input_ids)  # "Find it: a red circle", never a double space


def test_an_input_needs_a_text_or_an_image():
    with pytest.raises(ValueError, match="a text, an image, or both"):
        Input("  ")
    assert Input(image="x.png").kind == "image" and Input("t", "x.png").kind == "image+text" and Input("t").kind == "text"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cached_training_on_mixed_inputs_equals_naive(backbones, family):
    """The cached engine (prompts run ahead, per kind) gives the naive engine's loss and gradient."""
    encoder = _retriever(backbones[family])
    image = None if encoder.backbone.text_only else _image()
    queries = [Input("a red circle", instruction="Find it:"), Input("what is this?", image) if image else Input("x")]
    targets = [Input(image=image) if image else Input("red round"), Input("a round red shape")]
    results = []
    for engine in ("naive", "cached"):
        encoder.queries.weight.grad = None
        loss = ContrastiveLoss()(encoder.embed_prepared(encoder.prepare_targets(queries, engine), engine),
                                 encoder.embed_prepared(encoder.prepare_targets(targets, engine), engine))
        loss.backward()
        results.append((loss.item(), encoder.queries.weight.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)

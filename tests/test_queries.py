"""The method's invariants, for every family: the queries read the prefix but never change it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from slq.loss import ContrastiveLoss
from slq.queries import ENGINES, LatentQueries, PromptBatch, pool, queries_on_prompts, query_states, run_prompts
from slq.tiny import TINY_FAMILIES

NUM_QUERIES = 5
TEXTS = ["a red circle", "two large green squares above a small blue triangle"]  # different lengths: padding
TARGET_TEXTS = ["a shape of three sides", "the colour of grass"]  # a text-only backbone's "image" side


def _images():
    return [Image.new("RGB", (60, 60), (200, 10, 10)), Image.new("RGB", (90, 40), (0, 10, 200))]


def _batch(backbone, kind):
    """kind "image" is the target side: images, or other texts for a text-only backbone; "image+text"
    an image with a question after it and "instructed" an instruction before a text, as MMEB-style
    tasks pose them (the encoder's `input_batch` renders `Input`s through these two calls)."""
    if kind == "text":
        return backbone.text_batch(TEXTS)
    if kind == "instructed":
        return backbone.text_batch([f"Find the image that matches the caption:\n{t}" for t in TEXTS])
    if backbone.text_only:
        return backbone.text_batch(TARGET_TEXTS)
    if kind == "image+text":
        return backbone.image_text_batch(_images(), ["What colour is the shape?", "Represent the image.\nIs it round?"])
    return backbone.image_batch(_images())


def _queries(backbone, seed=0):
    return LatentQueries.from_backbone(backbone, NUM_QUERIES, torch.Generator().manual_seed(seed))


def _full_states(backbone, batch, queries):
    """All last-layer states of prompt + queries, captured from inside a real `query_states` call."""
    captured = []
    hook = backbone.model.model.register_forward_hook(lambda _m, _a, out: captured.append(out.last_hidden_state))
    try:
        query_states(backbone, batch, queries.weight, engine="naive")
    finally:
        hook.remove()
    assert len(captured) == 1, "query_states should run the model once"
    return captured[0]


@pytest.mark.parametrize("kind", ["text", "image", "image+text", "instructed"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prefix_unchanged_by_queries(backbones, family, kind):
    """Each prompt alone, run the model's own default way, equals the prefix of prompt+queries."""
    backbone = backbones[family]
    batch = _batch(backbone, kind)
    queries = _queries(backbone)
    with torch.no_grad():
        full = _full_states(backbone, batch, queries)
        for row in range(len(batch)):
            real = batch.attention_mask[row].bool()
            ids = batch.input_ids[row][real][None]
            inputs = backbone.image_batch([_images()[row]]).model_inputs if batch.model_inputs else {}
            reference = backbone.model.model(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs,
                                             **backbone.family.extra_inputs(backbone.config, ids)).last_hidden_state[0]
            prefix = full[row, : batch.input_ids.shape[1]][real]
            assert (prefix - reference).abs().max().item() <= 1e-5, f"{family} {kind} row {row}: prefix changed"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_query_positions_continue_after_prefix(backbones, family):
    backbone = backbones[family]
    batch = _batch(backbone, "image")
    appended = backbone.forward(batch, num_appended=NUM_QUERIES).appended_positions  # where Backbone.forward puts them
    prefix = backbone.family.position_ids(backbone.model, batch.input_ids, batch.attention_mask, batch.model_inputs)
    positions = torch.cat([prefix, appended], dim=-1)
    positions = positions if positions.dim() == 3 else positions[None]  # (R, B, L), R = 3 for M-RoPE
    prefix_len = batch.input_ids.shape[1]
    for row in range(len(batch)):
        real = batch.attention_mask[row].bool()
        last = positions[:, row, :prefix_len][:, real].max()
        queries = positions[:, row, prefix_len:]  # (R, Nq)
        expected = torch.arange(1, NUM_QUERIES + 1) + last
        assert torch.equal(queries, expected.expand_as(queries)), f"{family}: query positions {queries.tolist()}"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_only_queries_and_temperature_get_gradients(backbones, family):
    backbone = backbones[family]
    queries, loss_fn = _queries(backbone), ContrastiveLoss()
    text = pool(query_states(backbone, _batch(backbone, "text"), queries.weight))
    image = pool(query_states(backbone, _batch(backbone, "image"), queries.weight))
    loss_fn(text, image).backward()
    assert queries.weight.grad is not None and queries.weight.grad.abs().sum() > 0
    assert loss_fn.log_temperature.grad is not None and loss_fn.log_temperature.grad != 0
    with_grad = [n for n, p in backbone.model.named_parameters() if p.requires_grad or p.grad is not None]
    assert with_grad == [], f"backbone parameters took gradients: {with_grad[:5]}"


@pytest.mark.parametrize("family", ["qwen2_vl", "internvl"])
def test_embedding_does_not_depend_on_batch_company(backbones, family):
    """Left padding and position ids make a text's embedding the same alone or in a batch."""
    backbone = backbones[family]
    queries = _queries(backbone)
    with torch.no_grad():
        together = pool(query_states(backbone, backbone.text_batch(TEXTS), queries.weight))
        alone = pool(query_states(backbone, backbone.text_batch(TEXTS[:1]), queries.weight))
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_pool_is_normalised_mean():
    states = torch.tensor([[[3.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 4.0]]])  # (B=2, Nq=2, d=2)
    assert torch.allclose(pool(states), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


@pytest.mark.parametrize("family", ["qwen3_vl", "idefics3"])
def test_query_states_are_the_query_positions(backbones, family):
    """Perturbing query j changes state j and no state before it (causal, and sliced at the queries)."""
    backbone = backbones[family]
    batch = _batch(backbone, "image")
    queries = _queries(backbone)
    with torch.no_grad():
        base = query_states(backbone, batch, queries.weight)
        for j in range(NUM_QUERIES):
            moved = queries.weight.clone()
            moved[j] += 1.0
            states = query_states(backbone, batch, moved)
            assert torch.allclose(states[:, :j], base[:, :j], atol=1e-6), f"query {j} leaked backwards"
            assert (states[:, j] - base[:, j]).abs().max() > 1e-3, f"state {j} does not depend on query {j}"


@pytest.fixture(scope="module")
def sliding_window_backbone(tmp_path_factory):
    """InternVL whose text model attends within a window of 8 tokens, shorter than its prompts."""
    from slq.backbone import Backbone
    from slq.tiny import build_tiny_model

    overrides = {"text_config": {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}}
    return Backbone.load(build_tiny_model("internvl", tmp_path_factory.mktemp("sw") / "m", config_overrides=overrides))


@pytest.mark.parametrize("kind", ["text", "image"])
@pytest.mark.parametrize("family", [*TINY_FAMILIES, "internvl_sliding_window"])
def test_cached_engine_equals_naive_states_and_gradients(backbones, sliding_window_backbone, family, kind):
    """The query states, and the gradient of a fixed random function of them, agree between engines."""
    backbone = sliding_window_backbone if family == "internvl_sliding_window" else backbones[family]
    batch = _batch(backbone, kind)
    weights = torch.randn(len(batch), NUM_QUERIES, backbone.hidden_size, generator=torch.Generator().manual_seed(1))
    results = {}
    for engine in ENGINES:
        queries = _queries(backbone)
        states = query_states(backbone, batch, queries.weight, engine=engine)
        (states * weights).sum().backward()
        results[engine] = (states.detach(), queries.weight.grad)
    (states_n, grad_n), (states_c, grad_c) = results["naive"], results["cached"]
    assert (states_n - states_c).abs().max() <= 1e-5
    relative = ((grad_n - grad_c).norm() / grad_n.norm()).item()  # float32 rounding gives ~1e-7
    assert relative <= 1e-5, f"query gradients differ: relative error {relative:.2e}"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cached_engine_equals_naive_loss(backbones, family):
    """Loss and gradients of queries and temperature agree between the two training engines."""
    backbone = backbones[family]
    results = {}
    for engine in ENGINES:
        queries, loss_fn = _queries(backbone), ContrastiveLoss()
        text = pool(query_states(backbone, _batch(backbone, "text"), queries.weight, engine=engine))
        image = pool(query_states(backbone, _batch(backbone, "image"), queries.weight, engine=engine))
        loss = loss_fn(text, image)
        loss.backward()
        results[engine] = (loss.detach(), queries.weight.grad, loss_fn.log_temperature.grad)
    (loss_n, grad_n, temp_n), (loss_c, grad_c, temp_c) = results["naive"], results["cached"]
    assert torch.allclose(loss_n, loss_c, atol=1e-6)
    relative = ((grad_n - grad_c).norm() / grad_n.norm()).item()  # float32 rounding gives ~1e-6
    assert relative <= 1e-5, f"query gradients differ: relative error {relative:.2e}"
    assert torch.allclose(temp_n, temp_c, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["text", "image"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prompts_kept_one_by_one_rejoin_into_the_same_batch(backbones, family, kind):
    """Split into per-prompt states (what the prompt cache keeps), reversed and re-joined with other
    padding, the prompts give their queries the same states as the batch straight from the run."""
    backbone = backbones[family]
    batch, queries = _batch(backbone, kind), _queries(backbone)  # prompts of different lengths: left padding
    with torch.no_grad():
        run = run_prompts(backbone, batch, NUM_QUERIES)
        direct = queries_on_prompts(backbone, run, queries.weight)
        states = run.split()
        assert [s.length for s in states] == batch.attention_mask.sum(-1).tolist()
        if kind == "image" and not backbone.text_only:  # a larger image: more tokens where the family allows
            longer_batch = backbone.image_batch([Image.new("RGB", (150, 150), (0, 200, 0))])
        else:
            longer_batch = backbone.text_batch([" and ".join(TEXTS + TARGET_TEXTS)])
        longer = run_prompts(backbone, longer_batch, NUM_QUERIES).split()
        rejoined = PromptBatch.join(states[::-1] + longer, backbone.dtype, backbone.device)  # more padding
        again = queries_on_prompts(backbone, rejoined, queries.weight)[:2].flip(0)
    assert (direct - again).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_query_init_never_draws_special_or_placeholder_tokens(backbones, family):
    """A query equal to the image placeholder's embedding is taken for an image slot and breaks images."""
    from slq.queries import ordinary_token_ids

    backbone = backbones[family]
    ids = set(ordinary_token_ids(backbone).tolist())
    assert getattr(backbone.config, "image_token_id", None) not in ids
    assert not ids & set(backbone.tokenizer.added_tokens_decoder)
    assert max(ids) < len(backbone.tokenizer) and len(ids) > 100
    for seed in (61, 68, 81, 95):  # seeds that drew the placeholder before the fix
        queries = LatentQueries.from_backbone(backbone, 20, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            query_states(backbone, _batch(backbone, "image"), queries.weight)  # must not raise

"""The query pass's attention: the same numbers as stock SDPA, without copies of grouped keys/values."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from slq.attention import folded_gqa, folded_gqa_attention
from slq.queries import queries_on_prompts, run_prompts


class _Module(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_folding_the_groups_gives_stock_sdpa_attention(groups):
    """Random queries after a left-padded prompt, a causal mask among the queries: equal to stock SDPA."""
    g = torch.Generator().manual_seed(groups)
    b, kv_heads, prompt, n, head_dim = 3, 2, 11, 5, 8
    query = torch.randn(b, kv_heads * groups, n, head_dim, generator=g)
    key, value = (torch.randn(b, kv_heads, prompt + n, head_dim, generator=g) for _ in range(2))
    real = torch.tensor([11, 7, 3])  # prompt tokens per row; the rest is left padding
    columns = torch.arange(prompt + n)
    mask = (columns[None, None, :] >= (prompt - real)[:, None, None]) \
        & (columns[None, None, :] <= prompt + torch.arange(n)[None, :, None])  # (B, n, S)
    mask = mask[:, None]  # (B, 1, n, S)
    module = _Module(groups)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    got, _ = folded_gqa_attention(module, query, key, value, mask, scaling=0.3)
    assert got.shape == expected.shape == (b, n, kv_heads * groups, head_dim)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()


def _copies_of_repeated_keys_values(backbone, prompts, queries) -> tuple[torch.Tensor, int]:
    """The query pass's states, and how many tensors autograd keeps for backward that are real copies
    (own storage, not a view) of a layer's keys/values repeated over the query heads: (B, H, L+N, hd)."""
    text = backbone.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    repeated = (len(prompts.attention_mask), text.num_attention_heads,
                prompts.attention_mask.shape[1] + queries.shape[0], head_dim)
    copies = []

    def pack(t: torch.Tensor):
        if tuple(t.shape) == repeated and t.untyped_storage().nbytes() >= t.numel() * t.element_size():
            copies.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        states = queries_on_prompts(backbone, prompts, queries)
    return states, len(copies)


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_the_query_pass_keeps_no_copies_of_grouped_keys_values(backbones, family, monkeypatch):
    """Stock SDPA with a mask repeats each key/value head for its query heads (2 per key/value head
    in these tiny models) and autograd keeps the copies; the folded attention keeps none and gives
    the same states."""
    import contextlib

    import slq.backbone

    backbone = backbones[family]
    prompts = run_prompts(backbone, backbone.text_batch(["a red circle above a blue square", "a cat"] * 2), 6)
    queries = torch.randn(6, backbone.hidden_size, requires_grad=True)
    folded, folded_copies = _copies_of_repeated_keys_values(backbone, prompts, queries)
    monkeypatch.setattr(slq.backbone, "folded_gqa", lambda config: contextlib.nullcontext())
    stock, stock_copies = _copies_of_repeated_keys_values(backbone, prompts, queries)
    layers = backbone.config.get_text_config().num_hidden_layers
    assert stock_copies >= 2 * layers, f"stock SDPA kept {stock_copies} copies: the test measures nothing"
    assert folded_copies == 0, f"the folded attention kept {folded_copies} copies of repeated keys/values"
    assert torch.allclose(folded, stock, atol=1e-5)


def test_other_attention_implementations_are_left_alone(backbones):
    config = backbones["qwen2_vl"].config.get_text_config()
    config._attn_implementation_internal = "eager"
    try:
        with folded_gqa(config):
            assert config._attn_implementation == "eager"
    finally:
        config._attn_implementation_internal = "sdpa"
    with folded_gqa(config):
        assert config._attn_implementation != "sdpa"
    assert config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "internvl", "llava", "gemma3_text"])
def test_the_folded_query_pass_gives_stock_states_in_every_family(backbones, family, monkeypatch):
    """The same states with and without folding, in the families the copy test leaves out; Gemma 3's
    tiny model has a sliding window (8) shorter than its prompts, so windowed masks are covered."""
    import contextlib

    import slq.backbone

    backbone = backbones[family]
    prompts = run_prompts(backbone, backbone.text_batch(["a red circle above a blue square to the left", "a cat"]), 6)
    assert prompts.attention_mask.shape[1] > 8
    queries = torch.randn(6, backbone.hidden_size)
    folded = queries_on_prompts(backbone, prompts, queries)
    monkeypatch.setattr(slq.backbone, "folded_gqa", lambda config: contextlib.nullcontext())
    assert torch.allclose(folded, queries_on_prompts(backbone, prompts, queries), atol=1e-5)


def test_an_exception_inside_restores_stock_attention(backbones):
    config = backbones["qwen2_vl"].config.get_text_config()
    with pytest.raises(RuntimeError), folded_gqa(config):
        raise RuntimeError("a failing query pass")
    assert config._attn_implementation == "sdpa"

"""Attention for the query pass without copies of grouped keys/values.

Under grouped-query attention, G query heads share one key/value head. transformers' SDPA path
repeats every key/value head G times whenever a mask is given (`repeat_kv`; on CUDA, SDPA's own
`enable_gqa` needs the mask to be absent), and autograd keeps those copies for the backward
pass. In SLQ's query pass the keys/values are the whole prompt's while only N_q queries run, so
the copies dwarf everything else the step holds (6x the prompt's keys/values at Qwen2-VL-2B's
12 query and 2 key/value heads).

The queries of one group read the same keys/values, so the group can be folded into the query
axis instead: queries (B, H, N, hd) become (B, H_kv, G*N, hd) and the mask repeats G times along
its query axis. That is the same attention, in any SDPA kernel, with no key/value copy; transformers
does the same for a single decoding token (`pack_gqa`). `folded_gqa` switches a model's language
model to it for the duration of a call; prompt passes (as many queries as keys) keep stock SDPA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

NAME = "slq_folded_gqa"
_UNSUPPORTED = ("softcap", "position_bias", "cache", "s_aux")  # features only stock SDPA (or eager) handles


def folded_gqa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, q, hd), key/value (B, H_kv, S, hd);
    returns (B, q, H, hd). Falls back to stock SDPA where folding does not apply."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, q_len, head_dim = query.shape
    if (groups == 1 or attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.shape[1] != 1
            or q_len >= key.shape[2] or b != key.shape[0] or value.shape[-1] != head_dim
            or any(kwargs.get(name) is not None for name in _UNSUPPORTED)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kv_heads = heads // groups
    folded = query.reshape(b, kv_heads, groups * q_len, head_dim)  # head h = kv * G + g, as repeat_kv orders them
    mb, _, _, s = attention_mask.shape
    mask = attention_mask[:, :, None].expand(mb, 1, groups, q_len, s).reshape(mb, 1, groups * q_len, s)
    out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, dropout_p=dropout,
                                         scale=scaling)  # (B, H_kv, G*q, hd)
    return out.reshape(b, heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, folded_gqa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same boolean masks as SDPA


@contextlib.contextmanager
def folded_gqa(text_config) -> Iterator[None]:
    """Run the language model of `text_config` with `folded_gqa_attention` inside the block, when it
    runs stock SDPA; any other implementation (eager, flash) is left alone. Not for concurrent calls
    of one model from several threads."""
    if text_config._attn_implementation != "sdpa":
        yield
        return
    _register()
    text_config._attn_implementation_internal = NAME  # this config only: not its sub-configs' setter
    try:
        yield
    finally:
        text_config._attn_implementation_internal = "sdpa"

"""The Shared Latent Queries: where they are appended, and how their states become an embedding.

One `(N_q, d)` matrix serves texts and images alike. It is appended after the whole chat-templated
prompt (after the assistant opener); causal attention lets each query read the entire input while
nothing before it can read the queries, so the prefix's hidden states are those of the plain
prompt. The embedding is the L2-normalised mean of the last-layer states at the query positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, PrefixBatch


class LatentQueries(nn.Module):
    """The only trainable tensor of SLQ: `N_q` vectors in the backbone's input-embedding space."""

    def __init__(self, num_queries: int, hidden_size: int):
        super().__init__()
        assert num_queries > 0 and hidden_size > 0, f"bad query shape ({num_queries}, {hidden_size})"
        self.weight = nn.Parameter(torch.zeros(num_queries, hidden_size))

    @property
    def num_queries(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_backbone(cls, backbone: Backbone, num_queries: int, generator: torch.Generator) -> "LatentQueries":
        """Start from the input embeddings of random ordinary tokens.

        The queries must live at the scale of what the embedding layer outputs (some families scale
        inside that layer), so the embedding layer itself produces them.
        """
        special = set(backbone.tokenizer.all_special_ids)
        vocab = backbone.input_embeddings.weight.shape[0]
        ordinary = torch.tensor([i for i in range(vocab) if i not in special])
        picked = ordinary[torch.randint(len(ordinary), (num_queries,), generator=generator)]
        queries = cls(num_queries, backbone.hidden_size)
        with torch.no_grad():
            queries.weight.copy_(backbone.input_embeddings(picked.to(backbone.device)).float().cpu())
        return queries


def _append_placeholders(batch: PrefixBatch, num_queries: int, pad_id: int):
    """Extend ids and mask by `num_queries` columns; the ids only stand in for the queries."""
    b = len(batch)
    ids = torch.cat([batch.input_ids, batch.input_ids.new_full((b, num_queries), pad_id)], dim=1)  # (B, L+Nq)
    mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones((b, num_queries))], dim=1)
    return ids, mask


ENGINES = ("cached", "naive")


def query_states(backbone: Backbone, batch: PrefixBatch, queries: torch.Tensor, *, engine: str = "cached",
                 ) -> torch.Tensor:
    """Last-layer hidden states at the query positions, shape (B, N_q, d).

    `queries` is `(N_q, d)`; gradients flow to it and nowhere else (the backbone is frozen).
    Engines differ only when gradients are on:
      * "naive": one pass over prompt + queries, so the backward pass walks the whole sequence;
      * "cached": nothing before the queries depends on them, so the prompt runs once without grad
        and leaves its keys/values; the queries then run alone on that cache, and the backward
        pass covers only the N_q query positions.
    Without gradients (encoding) both take the single full pass, the cheapest there is.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    num_queries, prefix_len = queries.shape[0], batch.input_ids.shape[1]
    ids, mask = _append_placeholders(batch, num_queries, backbone.tokenizer.pad_token_id)
    position_ids = backbone.family.position_ids(backbone.model, ids, mask, batch.model_inputs)  # (..., B, L+Nq)
    extra = backbone.family.extra_inputs(backbone.config, ids)
    with torch.no_grad():
        prefix_embeds = backbone.input_embeddings(batch.input_ids)  # (B, L, d)
    q = queries.to(prefix_embeds.dtype).unsqueeze(0).expand(len(batch), -1, -1)  # (B, Nq, d)
    if engine == "naive" or not (torch.is_grad_enabled() and queries.requires_grad):
        out = backbone.model.model(inputs_embeds=torch.cat([prefix_embeds, q], dim=1), attention_mask=mask,
                                   position_ids=position_ids, **batch.model_inputs, **extra)
        return out.last_hidden_state[:, -num_queries:]
    with torch.no_grad():
        prefix = backbone.model.model(
            inputs_embeds=prefix_embeds, attention_mask=batch.attention_mask,
            position_ids=position_ids[..., :prefix_len], use_cache=True, **batch.model_inputs,
            **{k: v[:, :prefix_len] for k, v in extra.items()},
        )
    out = backbone.model.model(inputs_embeds=q, attention_mask=mask, position_ids=position_ids[..., prefix_len:],
                               past_key_values=prefix.past_key_values, use_cache=True)
    return out.last_hidden_state  # (B, Nq, d)


def pool(states: torch.Tensor) -> torch.Tensor:
    """Mean over the query positions, L2-normalised: (B, N_q, d) -> (B, d) in float32."""
    return F.normalize(states.float().mean(dim=1), dim=-1)

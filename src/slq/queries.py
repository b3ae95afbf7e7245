"""The Shared Latent Queries: where they are appended, and how their states become an embedding.

One `(N_q, d)` matrix serves texts and images alike. It is appended after the whole chat-templated
prompt (after the assistant opener); causal attention lets each query read the entire input while
nothing before it can read the queries, so the prefix's hidden states are those of the plain
prompt. The embedding is the L2-normalised mean of the last-layer states at the query positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, PrefixBatch
from .errors import SettingError


class LatentQueries(nn.Module):
    """The only trainable tensor of SLQ: `N_q` vectors in the backbone's input-embedding space."""

    def __init__(self, num_queries: int, hidden_size: int):
        super().__init__()
        if not (isinstance(num_queries, int) and num_queries > 0):
            raise SettingError("num_queries", num_queries, "must be an integer >= 1")
        if not (isinstance(hidden_size, int) and hidden_size > 0):
            raise SettingError("hidden_size", hidden_size, "must be an integer >= 1")
        self.weight = nn.Parameter(torch.zeros(num_queries, hidden_size))

    @property
    def num_queries(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_backbone(cls, backbone: Backbone, num_queries: int, generator: torch.Generator) -> LatentQueries:
        """Start from the input embeddings of random ordinary tokens.

        The queries must live at the scale of what the embedding layer outputs (some families scale
        inside that layer), so the embedding layer itself produces them.
        """
        ordinary = ordinary_token_ids(backbone)
        picked = ordinary[torch.randint(len(ordinary), (num_queries,), generator=generator)]
        queries = cls(num_queries, backbone.hidden_size)
        with torch.no_grad():
            queries.weight.copy_(backbone.input_embeddings(picked.to(backbone.device)).float().cpu())
        return queries


def ordinary_token_ids(backbone: Backbone) -> torch.Tensor:
    """Ids of plain text tokens: not special, not added (image placeholders and chat markers are
    added tokens), and inside the tokenizer (padded embedding rows beyond it are untrained).

    A query equal to the image placeholder's embedding would be taken for an image slot by models
    that find those slots by comparing embeddings.
    """
    tokenizer, config = backbone.tokenizer, backbone.config
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    excluded |= {getattr(config, name, None) for name in ("image_token_id", "video_token_id", "image_token_index")}
    limit = min(len(tokenizer), backbone.input_embeddings.weight.shape[0])
    return torch.tensor([i for i in range(limit) if i not in excluded])


ENGINES = ("cached", "naive")


@dataclass
class PromptState:
    """One prompt run once without grad: what its queries need, and nothing that depends on them.

    Since the backbone is frozen and the queries come last, this never changes during training,
    so it can be kept across epochs (see `slq.prompt_cache`). Layers are stacked in one tensor so that
    moving a prompt in or out of a batch is one copy, not one per layer (on a GPU, per-layer copies
    made the cached engine launch-bound).
    """

    keys: torch.Tensor  # (layers, kv_heads, L, head_dim), the prompt's real tokens only
    values: torch.Tensor
    query_positions: torch.Tensor  # (N_q,) or (3, N_q) for M-RoPE: where the queries continue

    @property
    def length(self) -> int:
        return self.keys.shape[-2]

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def copy(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None, *,
             pin_memory: bool = False) -> PromptState:
        """A copy of its own (never a view of a bigger batch), in `dtype` on `device`; `pin_memory` for
        host copies that a GPU reads back without waiting."""
        def moved(t: torch.Tensor) -> torch.Tensor:
            out = torch.empty(t.shape, dtype=dtype or t.dtype, device=device or t.device, pin_memory=pin_memory)
            return out.copy_(t)
        return PromptState(moved(self.keys), moved(self.values), self.query_positions.to(device or "cpu", copy=True))


@dataclass
class PromptBatch:
    """Prompts' keys/values as one left-padded batch, ready for their queries to run on."""

    keys: tuple[torch.Tensor, ...]  # per layer (B, kv_heads, L, head_dim)
    values: tuple[torch.Tensor, ...]
    attention_mask: torch.Tensor  # (B, L), 0 at left padding
    query_positions: torch.Tensor  # (B, N_q) or (3, B, N_q)

    def split(self) -> list[PromptState]:
        """One `PromptState` per prompt, padding dropped: views of one stacked copy on the batch's device
        (whoever keeps one copies it where it belongs: `PromptCache.put`)."""
        if len({k.shape for k in self.keys}) > 1:
            raise SettingError("prompt_cache_mb", rule="this model's layers keep keys of different shapes, which "
                               "the prompt cache cannot stack; train without a prompt cache")
        keys, values = torch.stack(self.keys), torch.stack(self.values)  # (layers, B, kv, L, hd)
        prefix_len = keys.shape[-2]
        return [PromptState(keys[:, row, :, prefix_len - real:], values[:, row, :, prefix_len - real:],
                            self.query_positions[..., row, :])
                for row, real in enumerate(self.attention_mask.sum(-1).tolist())]

    @classmethod
    def join(cls, states: list[PromptState], dtype: torch.dtype, device: torch.device) -> PromptBatch:
        """Left-pad and stack prompt states (kept ones and fresh ones alike) into one batch."""
        first, longest = states[0].keys, max(s.length for s in states)
        layers, kv_heads, _, head_dim = first.shape
        keys = torch.zeros((layers, len(states), kv_heads, longest, head_dim), dtype=dtype, device=device)
        values = torch.zeros_like(keys)
        mask = torch.zeros(len(states), longest, dtype=torch.long, device=device)
        for row, state in enumerate(states):  # from pinned host memory these copies do not wait for each other
            keys[:, row, :, longest - state.length:].copy_(state.keys, non_blocking=True)
            values[:, row, :, longest - state.length:].copy_(state.values, non_blocking=True)
            mask[row, longest - state.length:] = 1
        positions = torch.stack([s.query_positions.to(device) for s in states], dim=-2)
        return cls(keys.unbind(0), values.unbind(0), mask, positions)


@torch.no_grad()
def run_prompts(backbone: Backbone, batch: PrefixBatch, num_queries: int) -> PromptBatch:
    """Run a batch of prompts once, without grad, keeping their keys/values."""
    out = backbone.forward(batch, num_appended=num_queries, keep_keys_values=True)
    keys, values = zip(*out.keys_values)
    return PromptBatch(keys, values, batch.attention_mask, out.appended_positions)


def queries_on_prompts(backbone: Backbone, prompts: PromptBatch, queries: torch.Tensor) -> torch.Tensor:
    """Run only the queries, with grad, on the prompts' keys/values: (B, N_q, d)."""
    return backbone.forward_after(prompts.keys, prompts.values, prompts.attention_mask, prompts.query_positions,
                                  queries)


def query_states(backbone: Backbone, batch: PrefixBatch, queries: torch.Tensor, *, engine: str = "cached",
                 ) -> torch.Tensor:
    """Last-layer hidden states at the query positions, shape (B, N_q, d).

    `queries` is `(N_q, d)`; gradients flow to it and nowhere else (the backbone is frozen).
    Engines differ only when gradients are on:
      * "naive": one pass over prompt + queries, so the backward pass walks the whole sequence;
      * "cached": nothing before the queries depends on them, so the prompt runs once without grad
        and leaves its keys/values (`run_prompts`); the queries then run alone on them
        (`queries_on_prompts`), and the backward pass covers only the N_q query positions.
    Without gradients (encoding) both take the single full pass, the cheapest there is.
    """
    if engine not in ENGINES:
        raise SettingError("engine", engine, f"must be one of {', '.join(ENGINES)}")
    if engine == "cached" and torch.is_grad_enabled() and queries.requires_grad:
        return queries_on_prompts(backbone, run_prompts(backbone, batch, queries.shape[0]), queries)
    return backbone.forward(batch, queries).hidden[:, -queries.shape[0]:]


def pool(states: torch.Tensor) -> torch.Tensor:
    """Mean over the query positions, L2-normalised: (B, N_q, d) -> (B, d) in float32."""
    return F.normalize(states.float().mean(dim=1), dim=-1)


def __getattr__(name: str):
    if name == "PromptCache":  # slq 0.1 kept it here
        from ._compat import moved_name

        return moved_name(__name__, name, "slq.prompt_cache")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

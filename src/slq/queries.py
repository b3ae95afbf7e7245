"""The Shared Latent Queries: where they are appended, and how their states become an embedding.

One `(N_q, d)` matrix serves texts and images alike. It is appended after the whole chat-templated
prompt (after the assistant opener); causal attention lets each query read the entire input while
nothing before it can read the queries, so the prefix's hidden states are those of the plain
prompt. The embedding is the L2-normalised mean of the last-layer states at the query positions.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, PrefixBatch
from .errors import SLQError


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


def _append_placeholders(batch: PrefixBatch, num_queries: int, pad_id: int):
    """Extend ids and mask by `num_queries` columns; the ids only stand in for the queries."""
    b = len(batch)
    ids = torch.cat([batch.input_ids, batch.input_ids.new_full((b, num_queries), pad_id)], dim=1)  # (B, L+Nq)
    mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones((b, num_queries))], dim=1)
    return ids, mask


ENGINES = ("cached", "naive")


@dataclass
class PromptState:
    """One prompt run once without grad: what its queries need, and nothing that depends on them.

    Since the backbone is frozen and the queries come last, this never changes during training,
    so it can be kept across epochs (see `PromptCache`). Layers are stacked in one tensor so that
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

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "PromptState":
        return PromptState(self.keys.to(device, dtype), self.values.to(device, dtype),
                           self.query_positions.to(device))


@dataclass
class PromptBatch:
    """Prompts' keys/values as one left-padded batch, ready for their queries to run on."""

    keys: tuple[torch.Tensor, ...]  # per layer (B, kv_heads, L, head_dim)
    values: tuple[torch.Tensor, ...]
    attention_mask: torch.Tensor  # (B, L), 0 at left padding
    query_positions: torch.Tensor  # (B, N_q) or (3, B, N_q)

    def split(self, device: torch.device | str = "cpu") -> list[PromptState]:
        """One `PromptState` per prompt, padding dropped, copied to `device` (for keeping across epochs:
        the cache keeps prompts in CPU memory, so a GPU batch is copied there once, not cloned first)."""
        if len({k.shape for k in self.keys}) > 1:
            raise SLQError("this model's layers keep keys of different shapes, which the prompt cache cannot "
                           "stack; train without --prompt-cache-mb/--prompt-cache-disk-mb")
        keys, values = torch.stack(self.keys), torch.stack(self.values)  # (layers, B, kv, L, hd)
        prefix_len = keys.shape[-2]
        return [PromptState(*(t.to(device, copy=True) for t in (keys[:, row, :, prefix_len - real:],
                                                                  values[:, row, :, prefix_len - real:],
                                                                  self.query_positions[..., row, :])))
                for row, real in enumerate(self.attention_mask.sum(-1).tolist())]

    @classmethod
    def join(cls, states: list[PromptState], dtype: torch.dtype, device: torch.device) -> "PromptBatch":
        """Left-pad and stack prompt states (kept ones and fresh ones alike) into one batch."""
        first, longest = states[0].keys, max(s.length for s in states)
        layers, kv_heads, _, head_dim = first.shape
        keys = torch.zeros((layers, len(states), kv_heads, longest, head_dim), dtype=dtype, device=device)
        values = torch.zeros_like(keys)
        mask = torch.zeros(len(states), longest, dtype=torch.long, device=device)
        for row, state in enumerate(states):
            keys[:, row, :, longest - state.length:] = state.keys
            values[:, row, :, longest - state.length:] = state.values
            mask[row, longest - state.length:] = 1
        positions = torch.stack([s.query_positions.to(device) for s in states], dim=-2)
        return cls(keys.unbind(0), values.unbind(0), mask, positions)


@torch.no_grad()
def run_prompts(backbone: Backbone, batch: PrefixBatch, num_queries: int) -> PromptBatch:
    """Run a batch of prompts once, without grad, keeping their keys/values."""
    prefix_len = batch.input_ids.shape[1]
    ids, mask = _append_placeholders(batch, num_queries, backbone.tokenizer.pad_token_id)
    position_ids = backbone.family.position_ids(backbone.model, ids, mask, batch.model_inputs)  # (..., B, L+Nq)
    extra = backbone.family.extra_inputs(backbone.config, batch.input_ids)
    from transformers import DynamicCache

    out = backbone.model.model(
        inputs_embeds=backbone.input_embeddings(batch.input_ids), attention_mask=batch.attention_mask,
        position_ids=position_ids[..., :prefix_len], use_cache=True, **batch.model_inputs, **extra,
        past_key_values=DynamicCache(),  # full-length layers: the batch keeps every key
    )
    layers = out.past_key_values.layers
    return PromptBatch(tuple(layer.keys for layer in layers), tuple(layer.values for layer in layers),
                       batch.attention_mask, position_ids[..., prefix_len:])


def queries_on_prompts(backbone: Backbone, prompts: PromptBatch, queries: torch.Tensor) -> torch.Tensor:
    """Run only the queries, with grad, on the prompts' keys/values: (B, N_q, d)."""
    from transformers import DynamicCache

    b, num_queries = prompts.attention_mask.shape[0], queries.shape[0]
    mask = torch.cat([prompts.attention_mask, prompts.attention_mask.new_ones((b, num_queries))], dim=1)
    q = queries.to(backbone.dtype).unsqueeze(0).expand(b, -1, -1)  # (B, Nq, d)
    out = backbone.model.model(inputs_embeds=q, attention_mask=mask, position_ids=prompts.query_positions,
                               # no config: sliding-window layers would drop keys; the masks still apply the window
                               past_key_values=DynamicCache(ddp_cache_data=list(zip(prompts.keys, prompts.values))),
                               use_cache=True)
    return out.last_hidden_state


class PromptCache:
    """Prompt states kept across epochs: in RAM (on the CPU, whatever the model's device) up to one byte
    budget, then in a disk file up to another.

    `dtype` may halve the footprint (float16/bfloat16); states are cast back to the backbone's dtype
    when used. The disk file is unnamed (gone when the cache is, even after a crash) and read back as
    a memory map, so the page cache serves repeated epochs. Nothing is evicted, so what is kept does
    not depend on the order of lookups. Keys name prompts only, so a cache belongs to one backbone
    and one query count (one training run).
    """

    def __init__(self, budget_mb: float, dtype: torch.dtype | None = None, *, disk_mb: float = 0.0,
                 disk_dir: str | os.PathLike | None = None):
        self.budget, self.disk_budget = int(budget_mb * 2**20), int(disk_mb * 2**20)
        self.dtype = dtype
        self.used = self.disk_used = self.hits = self.misses = 0
        self._states: dict[tuple, PromptState] = {}
        self._on_disk: dict[tuple, tuple[int, torch.Size, torch.dtype, torch.Tensor]] = {}
        self._file = tempfile.TemporaryFile(prefix="slq-prompt-cache-", dir=disk_dir) if disk_mb > 0 else None

    def get(self, key: tuple) -> PromptState | None:
        state = self._states.get(key)
        if state is None and key in self._on_disk:
            state = self._read(*self._on_disk[key])
        self.hits += state is not None
        self.misses += state is None
        return state

    def put(self, key: tuple, state: PromptState) -> None:
        if key in self._states or key in self._on_disk:  # e.g. the same caption twice in one batch
            return
        nbytes = 2 * state.keys.numel() * (self.dtype or state.keys.dtype).itemsize  # as stored
        if self.used + nbytes <= self.budget:
            self._states[key] = state.to(self.dtype, "cpu")
            self.used += nbytes
        elif self._file is not None and self.disk_used + nbytes <= self.disk_budget:
            self._write(key, state.to(self.dtype, "cpu"))

    def _write(self, key: tuple, state: PromptState) -> None:
        """Append a state to the file; if the disk fails (full, say), keep training with what is kept."""
        try:
            self._file.seek(self.disk_used)
            for tensor in (state.keys, state.values):
                self._file.write(tensor.contiguous().view(torch.uint8).numpy())
            self._file.flush()
        except OSError as error:
            warnings.warn(f"prompt cache: writing to the disk file failed ({error}); keeping no more prompts there")
            self.disk_budget = self.disk_used
            return
        self._on_disk[key] = (self.disk_used, state.keys.shape, state.keys.dtype, state.query_positions)
        self.disk_used += state.nbytes

    def _read(self, offset: int, shape: torch.Size, dtype: torch.dtype, positions: torch.Tensor) -> PromptState:
        half = shape.numel() * dtype.itemsize
        mapped = np.memmap(self._file, dtype=np.uint8, mode="c", offset=offset, shape=(2 * half,))
        raw = torch.frombuffer(mapped, dtype=torch.uint8)
        return PromptState(raw[:half].view(dtype).view(shape), raw[half:].view(dtype).view(shape), positions)

    def __len__(self) -> int:
        return len(self._states) + len(self._on_disk)

    def stats(self) -> dict:
        """Size and hit counts, for a run's record."""
        return {"prompts": len(self), "mb": round(self.used / 2**20, 1), "disk_mb": round(self.disk_used / 2**20, 1),
                "hits": self.hits, "misses": self.misses}


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
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    num_queries = queries.shape[0]
    if engine == "cached" and torch.is_grad_enabled() and queries.requires_grad:
        return queries_on_prompts(backbone, run_prompts(backbone, batch, num_queries), queries)
    ids, mask = _append_placeholders(batch, num_queries, backbone.tokenizer.pad_token_id)
    position_ids = backbone.family.position_ids(backbone.model, ids, mask, batch.model_inputs)  # (..., B, L+Nq)
    with torch.no_grad():
        prefix_embeds = backbone.input_embeddings(batch.input_ids)  # (B, L, d)
    q = queries.to(prefix_embeds.dtype).unsqueeze(0).expand(len(batch), -1, -1)  # (B, Nq, d)
    out = backbone.model.model(inputs_embeds=torch.cat([prefix_embeds, q], dim=1), attention_mask=mask,
                               position_ids=position_ids, **batch.model_inputs,
                               **backbone.family.extra_inputs(backbone.config, ids))
    return out.last_hidden_state[:, -num_queries:]


def pool(states: torch.Tensor) -> torch.Tensor:
    """Mean over the query positions, L2-normalised: (B, N_q, d) -> (B, d) in float32."""
    return F.normalize(states.float().mean(dim=1), dim=-1)

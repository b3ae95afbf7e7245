"""Symmetric InfoNCE over in-batch negatives with a learnable temperature.

The temperature is kept as a log so it stays positive, starts at 0.07 as in the paper, and is
clamped to [0.01, 1] so it can neither blow the logits up nor flatten them. Under
`torch.distributed` the embeddings of every process are gathered so each process sees the global
batch as negatives; the local slice is put back so its gradient flows.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0


def gather_with_grad(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Concatenate `x` from all processes; only this process's slice carries gradient."""
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach())
    parts[rank] = x
    return torch.cat(parts, dim=0)


class ContrastiveLoss(nn.Module):
    """(CE(text→image) + CE(image→text)) / 2, where row i of each side is a positive pair."""

    def __init__(self, temperature: float = 0.07, rank: int = 0, world_size: int = 1):
        super().__init__()
        assert MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE, (
            f"temperature {temperature} outside [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.rank, self.world_size = rank, world_size

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)

    def forward(self, text_emb: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
        """Both inputs L2-normalised, shape (B, d); returns the scalar loss."""
        assert text_emb.shape == image_emb.shape, f"pair shapes differ: {text_emb.shape} vs {image_emb.shape}"
        all_images = gather_with_grad(image_emb, self.rank, self.world_size)  # (W*B, d)
        all_texts = gather_with_grad(text_emb, self.rank, self.world_size)
        labels = torch.arange(text_emb.shape[0], device=text_emb.device) + self.rank * text_emb.shape[0]
        logits_t2i = text_emb @ all_images.T / self.temperature  # (B, W*B)
        logits_i2t = image_emb @ all_texts.T / self.temperature
        return (F.cross_entropy(logits_t2i, labels) + F.cross_entropy(logits_i2t, labels)) / 2

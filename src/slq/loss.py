"""Symmetric InfoNCE over in-batch negatives (and hard negatives) with a learnable temperature.

The temperature is kept as a log so it stays positive, starts at 0.07 as in the paper, and is
clamped to [0.01, 1] so it can neither blow the logits up nor flatten them. Under
`torch.distributed` the embeddings of every process are gathered and every process computes the
loss over the whole global batch; only its own slice carries gradient, so summing the gradients
across processes (`slq.distributed`) gives exactly the gradient of the global loss: W processes with B
pairs each train like one process with W·B.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import gather_with_grad
from .errors import SettingError

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0


class ContrastiveLoss(nn.Module):
    """(CE(text→image) + CE(image→text)) / 2, where row i of each side is a positive pair."""

    def __init__(self, temperature: float = 0.07, rank: int = 0, world_size: int = 1):
        super().__init__()
        if not (isinstance(temperature, (int, float)) and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
            raise SettingError("temperature", temperature, f"must lie in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.rank, self.world_size = rank, world_size

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)

    def forward(self, text_emb: torch.Tensor, image_emb: torch.Tensor, negatives: torch.Tensor | None = None, *,
                labels: torch.Tensor | None = None, negative_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Both inputs L2-normalised, shape (B, d), row i of each a positive pair; the scalar loss.

        `negatives` (M, d), hard negatives of the batch's pairs, join every text's candidates
        (text→image over B + M columns, across processes when distributed); image→text is over
        the B texts only, since a negative has no text of its own. `labels` (W·B) and
        `negative_labels` (W·M), over the whole global batch, name what each target is: a
        candidate with its pair's label is not counted as a negative (two pairs whose positive is
        the same label "red" do not push each other's queries away from it).
        """
        if text_emb.shape != image_emb.shape:
            raise ValueError(f"pair shapes differ: {tuple(text_emb.shape)} vs {tuple(image_emb.shape)}")
        all_texts = gather_with_grad(text_emb, self.rank, self.world_size)  # (W*B, d)
        all_images = gather_with_grad(image_emb, self.rank, self.world_size)
        logits = all_texts @ all_images.T / self.temperature  # (W*B, W*B), text i vs image j
        n = all_texts.shape[0]
        labels_ok = labels is not None
        if labels_ok:
            labels = labels.to(logits.device)
            same = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(same, float("-inf"))  # symmetric: masks both directions
        targets = torch.arange(n, device=text_emb.device)
        image_to_text = F.cross_entropy(logits.T, targets)
        if negatives is not None and len(negatives):
            all_negatives = gather_with_grad(negatives, self.rank, self.world_size)  # (W*M, d)
            extra = all_texts @ all_negatives.T / self.temperature  # (W*B, W*M)
            if labels_ok and negative_labels is not None:
                extra = extra.masked_fill(labels[:, None] == negative_labels.to(extra.device)[None, :], float("-inf"))
            logits = torch.cat([logits, extra], dim=1)  # (W*B, W*(B+M))
        return (F.cross_entropy(logits, targets) + image_to_text) / 2

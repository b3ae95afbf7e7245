"""Baselines in the same harness as SLQ, so one table compares them fairly.

* Zero-shot last token under a one-word-summary prompt (E5-V): the final state of
  "<caption>\\nSummary above sentence in one word:" / "<image>\\nSummary above image in one word:".
* Zero-shot mean pooling over the prompt's last-layer states.
* LoRA (peft) on the language model's linear layers, r=16, last-token pooling (as VLM2Vec).
* Full fine-tuning of the language model, last-token pooling.

All share `Encoder`'s prompts, batching and encoding, and train through `slq.train.train`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, PrefixBatch
from .encoder import Encoder
from .errors import SettingError

ONE_WORD_TEXT = "\nSummary above sentence in one word:"
ONE_WORD_IMAGE = "\nSummary above image in one word:"
POOLINGS = ("last", "mean")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class PooledEncoder(Encoder):
    """Embeds an input by pooling the backbone's own last-layer states over its prompt."""

    def __init__(self, backbone: Backbone, pooling: str = "last", one_word_prompt: bool = True):
        if pooling not in POOLINGS:
            raise SettingError("pooling", pooling, f"must be one of {', '.join(POOLINGS)}")
        super().__init__(backbone)
        self.pooling = pooling
        if one_word_prompt:
            self.text_instruction, self.image_instruction = ONE_WORD_TEXT, ONE_WORD_IMAGE

    def embed(self, batch: PrefixBatch, engine: str = "cached") -> torch.Tensor:
        """`engine` is ignored: without queries there is nothing to cache around."""
        states = self.backbone.forward(batch).hidden  # (B, L, d)
        if self.pooling == "last":
            pooled = states[:, -1]  # left padding: the last column is every row's last real token
        else:
            mask = batch.attention_mask.unsqueeze(-1).to(states.dtype)  # (B, L, 1)
            pooled = (states * mask).sum(1) / mask.sum(1)
        return F.normalize(pooled.float(), dim=-1)

    def trainable_tensors(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.backbone.model.named_parameters() if p.requires_grad}


def add_lora(encoder: PooledEncoder, r: int = 16, alpha: int = 32) -> PooledEncoder:
    """Inject LoRA adapters into the language model's linear layers, in place; only they train."""
    from peft import LoraConfig, inject_adapter_in_model

    decoder = encoder.backbone.model.get_decoder()
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS)),
                            decoder)
    for name, p in decoder.named_parameters():
        p.requires_grad_("lora_" in name)
    return encoder


def unfreeze_language_model(encoder: PooledEncoder) -> PooledEncoder:
    """Full fine-tuning: every language-model weight trains (the vision tower stays frozen)."""
    encoder.backbone.model.get_decoder().requires_grad_(True)
    return encoder

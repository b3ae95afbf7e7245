"""Text generation with a backbone: greedy continuations, greedy captions, and the teacher-forced
likelihood of given continuations.

Retrieval never generates; these serve what asks a backbone to speak: the capability probes run on
each method's backbone after training (`slq.evaluation.capability`), the knowledge probe of
KARR-Shapes' facts (`slq.evaluation.knowledge`), and the LM rewriter that writes KARR captions
(`slq.karr.lm`, through `causal_lm_generator`). One place, so every caller prompts and decodes alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from .backbone import Backbone, PrefixBatch
from .errors import SLQError


@torch.no_grad()
def generate(backbone: Backbone, batch: PrefixBatch, *, max_new_tokens: int = 32) -> list[str]:
    """Greedy continuations of prompts (each row stops at the end token).

    No key/value cache: the models probed are small, and recomputing the positions (M-RoPE too)
    over the whole sequence each step keeps them exactly as in training.
    """
    ids, mask = batch.input_ids, batch.attention_mask  # (B, L), left padded
    end = backbone.tokenizer.convert_tokens_to_ids(backbone.tokenizer.eos_token)
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    new: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        logits = backbone.forward(PrefixBatch(ids, mask, batch.model_inputs), logits_to_keep=1).logits  # (B, 1, V)
        token = logits[:, -1].argmax(-1)  # (B,)
        token = torch.where(done, torch.full_like(token, end), token)
        new.append(token)
        done |= token == end
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if done.all():
            break
    out = torch.stack(new, dim=1).tolist()  # (B, T)
    return [backbone.tokenizer.decode(row[: row.index(end)] if end in row else row, skip_special_tokens=True).strip()
            for row in out]


def generate_captions(backbone: Backbone, images: Sequence[Image.Image], *, max_new_tokens: int = 32) -> list[str]:
    """Greedy captions, prompted exactly as slq prompts an image (user: the image; assistant: …)."""
    return generate(backbone, backbone.image_batch(list(images)), max_new_tokens=max_new_tokens)


@torch.no_grad()
def continuation_nll(backbone: Backbone, batch: PrefixBatch, continuations: Sequence[Sequence[int]]) -> tuple[float, int]:
    """Summed negative log-likelihood of each row's continuation token ids after its prompt,
    teacher-forced, and how many tokens it covers.

    The continuations are right-padded after the left-padded prompts: a causal model never lets a
    real token see the padding after it, and the family's positions count real tokens only.
    """
    width = max(len(c) for c in continuations)
    assert width > 0, "every continuation is empty: nothing to score"
    pad = backbone.tokenizer.pad_token_id
    device = batch.input_ids.device
    tail = torch.tensor([list(c) + [pad] * (width - len(c)) for c in continuations], device=device)  # (B, C)
    tail_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in continuations], device=device)  # (B, C)
    ids = torch.cat([batch.input_ids, tail], dim=1)  # (B, L+C)
    mask = torch.cat([batch.attention_mask, tail_mask.to(batch.attention_mask.dtype)], dim=1)
    logits = backbone.forward(PrefixBatch(ids, mask, batch.model_inputs), logits_to_keep=width + 1).logits
    logits = logits[:, :-1].float()  # (B, C, V): the state before each continuation token predicts it
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tail, reduction="none")  # (B, C)
    return (nll * tail_mask).sum().item(), int(tail_mask.sum())


def causal_lm_generator(checkpoint: str | os.PathLike, *, max_new_tokens: int = 32,
                        purpose: str = "the LM") -> Callable[[str], str]:
    """`prompt -> text`: greedy continuations of a raw prompt by any causal LM (a checkpoint folder or
    a GGUF file, converted once), through transformers' own `generate`: a text-only model needs none
    of the positions a `Backbone` keeps exact, and the prompt is sent as written, no chat turn.
    `purpose` names what wants the LM in the error for a missing checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".gguf":
        from .gguf import convert_gguf

        checkpoint = convert_gguf(checkpoint)
    if not checkpoint.is_dir():
        raise SLQError(f"{checkpoint}: no checkpoint folder or GGUF file for {purpose}")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    stop = tokenizer.eos_token_id

    @torch.no_grad()
    def generate_text(prompt: str) -> str:
        inputs = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return generate_text

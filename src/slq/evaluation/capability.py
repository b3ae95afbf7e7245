"""What a backbone can still do generatively: greedy captions of the shapes world scored against the
records' objects (the capability a retriever's training must not take away), and the health of the
image tokens the language model reads."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..backbone import PrefixBatch
from ..data.shapes import COLOURS, NUMBER_WORDS, SHAPES, SIZES, plural



_NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{plural(s): s for s in SHAPES}}


def score_caption(caption: str, objects: Sequence[dict]) -> dict[str, list[int]]:
    """[correct, mentioned] per attribute for one caption against the image's objects.

    colour / shape: a named colour (shape) is in the image; pair: a "colour shape" phrase names an
    object in the image; count: a number before a phrase ("two green squares") or before
    "objects"/"shapes" matches the image.
    """
    words = re.findall(r"[a-z]+", caption.lower())
    colours = {o["colour"] for o in objects}
    shapes = {o["shape"] for o in objects}
    pairs: dict[tuple[str, str], int] = {}
    for o in objects:
        pairs[(o["colour"], o["shape"])] = pairs.get((o["colour"], o["shape"]), 0) + 1
    score = {k: [0, 0] for k in ("colour", "shape", "pair", "count")}

    def mark(key: str, ok: bool) -> None:
        score[key][0] += int(ok)
        score[key][1] += 1

    for w in words:
        if w in COLOURS:
            mark("colour", w in colours)
        if w in _SHAPE_WORDS:
            mark("shape", _SHAPE_WORDS[w] in shapes)
    for i, w in enumerate(words):
        if w in _SHAPE_WORDS and i > 0 and words[i - 1] in COLOURS:
            pair = (words[i - 1], _SHAPE_WORDS[w])
            mark("pair", pair in pairs)
            j = i - 2 if i >= 2 and words[i - 2] not in SIZES else i - 3
            if j >= 0 and words[j] in _NUMBERS:
                mark("count", pairs.get(pair, 0) == _NUMBERS[words[j]])
        if w in ("object", "objects", "shape", "shapes") and i > 0 and words[i - 1] in _NUMBERS:
            mark("count", len(objects) == _NUMBERS[words[i - 1]])
    return score


@torch.no_grad()
def generate_captions(backbone, images: Sequence[Image.Image], *, max_new_tokens: int = 32) -> list[str]:
    """Greedy captions, prompted exactly as slq prompts an image (user: the image; assistant: …).

    No key/value cache: the model is tiny, and recomputing M-RoPE positions over the whole
    sequence each step keeps them exactly as in training.
    """
    batch = backbone.image_batch(list(images))
    ids, mask = batch.input_ids, batch.attention_mask  # (B, L), left padded
    end = backbone.tokenizer.convert_tokens_to_ids(backbone.tokenizer.eos_token)
    done = torch.zeros(len(ids), dtype=torch.bool)
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


@torch.no_grad()
def vision_feature_health(backbone, images: Sequence[Image.Image]) -> dict:
    """How the image tokens the language model receives look: their mean norm against the word
    embeddings' (`norm_ratio`), the mean cosine between two tokens of one image (`within_image_cos`;
    near 1 means the image collapsed to one vector) and between the mean tokens of two images
    (`across_image_cos`; near 1 means all images look alike)."""
    inputs = backbone.family.image_inputs(backbone.config, backbone.tokenizer, backbone.image_processor, images)
    grid = inputs.model_inputs["image_grid_thw"]
    out = backbone.model.model.get_image_features(inputs.model_inputs["pixel_values"], grid)
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features  # (sum tokens, D)
    per_image = features.view(len(images), -1, features.shape[-1])  # (N, T, D), equal sizes in this world
    unit = torch.nn.functional.normalize(per_image, dim=-1)
    tokens = per_image.shape[1]
    within = ((unit @ unit.transpose(1, 2)).sum((1, 2)) - tokens) / (tokens * (tokens - 1))  # (N,)
    means = torch.nn.functional.normalize(per_image.mean(1), dim=-1)  # (N, D)
    across = (means @ means.T).fill_diagonal_(0).sum() / (len(images) * (len(images) - 1))
    from ..queries import ordinary_token_ids

    words = backbone.input_embeddings.weight[ordinary_token_ids(backbone)]  # (V', D)
    return {"feature_norm": round(per_image.norm(dim=-1).mean().item(), 4),
            "word_norm": round(words.norm(dim=-1).mean().item(), 4),
            "norm_ratio": round((per_image.norm(dim=-1).mean() / words.norm(dim=-1).mean()).item(), 3),
            "within_image_cos": round(within.mean().item(), 4), "across_image_cos": round(across.item(), 4)}


def caption_attribute_accuracy(model_dir: str | os.PathLike, test_jsonl: str | os.PathLike, *,
                               limit: int | None = None, batch_size: int = 32, max_new_tokens: int = 32,
                               progress: bool | None = None) -> dict:
    """Caption the test images greedily and score colours, shapes, pairs and counts against the
    records' objects. Returns accuracies (correct / mentioned), counts, and a few samples."""
    from ..backbone import Backbone

    backbone = Backbone.load(model_dir)
    test_jsonl = Path(test_jsonl)
    records = [json.loads(line) for line in test_jsonl.read_text().splitlines() if line.strip()][:limit]
    total = {k: [0, 0] for k in ("colour", "shape", "pair", "count")}
    samples, exact = [], 0
    for start in tqdm(range(0, len(records), batch_size), desc="captioning", disable=None if progress is None
                      else not progress):
        chunk = records[start:start + batch_size]
        images = []
        for r in chunk:
            with Image.open(test_jsonl.parent / r["image"]) as im:
                images.append(im.convert("RGB"))
        for record, caption in zip(chunk, generate_captions(backbone, images, max_new_tokens=max_new_tokens)):
            score = score_caption(caption, record["objects"])
            for key, (ok, n) in score.items():
                total[key][0] += ok
                total[key][1] += n
            exact += all(ok == n for ok, n in score.values()) and score["shape"][1] > 0
            if len(samples) < 8:
                samples.append({"image": record["image"], "caption": caption, "truth": record["captions"][0]})
    result = {key: round(ok / n, 4) if n else None for key, (ok, n) in total.items()}
    result.update({"all_correct": round(exact / len(records), 4), "n_images": len(records),
                   "mentions": {k: n for k, (_, n) in total.items()}, "samples": samples})
    return result

"""What a backbone can still do generatively, the capability a retriever's training must not take
away: greedy captions of the shapes world scored against the records' objects, the health of the
image tokens the language model reads, and the probes `slq.evaluation.compare` runs on each method's
backbone after training (with the hash that says whether its weights moved at all). The generation
itself is `slq.generation`'s."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from PIL import Image
from tqdm.auto import tqdm

from .._io import seeded_random
from ..backbone import Backbone, PrefixBatch
from ..data import ImageTextDataset
from ..data.shapes import COLOURS, NUMBER_WORDS, SHAPES, SIZES, plural, vqa_pairs
from ..data.wordnet import DIRECTIONS as WORDNET_DIRECTIONS
from ..errors import DataError
from ..generation import continuation_nll, generate, generate_captions


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


def _open_rgb(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class CaptionTally:
    """[correct, mentioned] per attribute summed over captions (`score_caption`), and how many
    captions had every mention right."""

    def __init__(self):
        self.total = {k: [0, 0] for k in ("colour", "shape", "pair", "count")}
        self.captions = self.all_correct = 0

    def add(self, caption: str, objects: Sequence[dict]) -> None:
        score = score_caption(caption, objects)
        for key, (ok, n) in score.items():
            self.total[key][0] += ok
            self.total[key][1] += n
        self.captions += 1
        self.all_correct += all(ok == n for ok, n in score.values()) and score["shape"][1] > 0

    def accuracy(self, key: str | None = None) -> float | None:
        """Correct / mentioned for one attribute, or pooled over all (None when nothing was mentioned)."""
        counts = [self.total[key]] if key else list(self.total.values())
        ok, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
        return round(ok / n, 4) if n else None


def _captioned(backbone: Backbone, paths: Sequence[Path], *, batch_size: int, max_new_tokens: int,
               progress: bool | None = None):
    """Greedy captions of the images at `paths`, in order, a batch at a time."""
    for start in tqdm(range(0, len(paths), batch_size), desc="captioning",
                      disable=None if progress is None else not progress):
        images = [_open_rgb(path) for path in paths[start:start + batch_size]]
        yield from generate_captions(backbone, images, max_new_tokens=max_new_tokens)


def caption_attribute_accuracy(model_dir: str | os.PathLike, test_jsonl: str | os.PathLike, *,
                               limit: int | None = None, batch_size: int = 32, max_new_tokens: int = 32,
                               progress: bool | None = None) -> dict:
    """Caption the test images greedily and score colours, shapes, pairs and counts against the
    records' objects. Returns accuracies (correct / mentioned), counts, and a few samples."""
    backbone = Backbone.load(model_dir)
    test_jsonl = Path(test_jsonl)
    records = [json.loads(line) for line in test_jsonl.read_text().splitlines() if line.strip()][:limit]
    tally, samples = CaptionTally(), []
    captions = _captioned(backbone, [test_jsonl.parent / r["image"] for r in records], batch_size=batch_size,
                          max_new_tokens=max_new_tokens, progress=progress)
    for record, caption in zip(records, captions):
        tally.add(caption, record["objects"])
        if len(samples) < 8:
            samples.append({"image": record["image"], "caption": caption, "truth": record["captions"][0]})
    result = {key: tally.accuracy(key) for key in tally.total}
    result.update({"all_correct": round(tally.all_correct / len(records), 4), "n_images": len(records),
                   "mentions": {k: n for k, (_, n) in tally.total.items()}, "samples": samples})
    return result


# ---------------------------------------------------------------------------------------------
# Capability probes: what a method's backbone can still do after training


class CapabilityProbe(Protocol):
    """Measures a generative capability of a backbone as it is now (a method's trained weights
    active): flat scores by name, None where a score is undefined. `name` says which probe made
    them in a report, `primary_metric` which score is its headline (the evaluator contract of
    `slq.evaluation.evaluator`, on a backbone). Probes are picklable, so isolated methods run them
    in their own process."""

    name: str
    primary_metric: str

    def __call__(self, backbone: Backbone) -> dict[str, float | None]: ...


def first_word(text: str) -> str:
    """The first word of a generated answer, lowercased ("" if none): how an answer is matched."""
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


def answer_accuracy(generated: Sequence[str], answers: Sequence[str]) -> float | None:
    """Share of answers whose first word is the expected one-word answer (None for no answers)."""
    assert len(generated) == len(answers), f"{len(generated)} answers generated for {len(answers)} questions"
    if not answers:
        return None
    return round(sum(first_word(g) == a.lower() for g, a in zip(generated, answers)) / len(answers), 4)


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _ids(backbone: Backbone, text: str) -> list[int]:
    return backbone.tokenizer(backbone.truncate(text), add_special_tokens=False)["input_ids"]


def _perplexity(nll: float, tokens: int) -> float | None:
    return round(math.exp(nll / tokens), 4) if tokens else None


@dataclass(frozen=True)
class ShapesCapability:
    """slq-tiny-vl's own tasks on shapes-world records: `caption_attributes`, the share of the
    attributes its greedy captions mention that are right (`score_caption`, pooled over colour,
    shape, pair, count), `caption_all_correct`, the share of captions with every mention right, and
    `vqa`, the share of world questions (`slq.data.shapes.vqa_pairs`) answered exactly."""

    records: tuple[tuple[str, tuple[dict, ...]], ...]  # (image path, objects)
    questions_per_image: int = 4
    batch_size: int = 16
    max_new_tokens: int = 32
    name: str = "shapes"
    primary_metric: ClassVar[str] = "caption_attributes"

    @classmethod
    def from_dataset(cls, dataset: ImageTextDataset, limit: int | None = None, **settings) -> ShapesCapability:
        """The first `limit` records of a shapes-world dataset (each with `objects` in its meta)."""
        missing = [r.source for r in dataset.records if "objects" not in r.meta]
        if missing:
            raise DataError(f"{missing[0]}: not a shapes-world record (no \"objects\"), so its captions and "
                            "answers cannot be scored")
        return cls(tuple((str(r.image), tuple(r.meta["objects"])) for r in dataset.records[:limit]), **settings)

    def questions(self) -> list[tuple[int, str, str]]:
        """(record index, question, answer): the same questions for every method (seeded per record)."""
        asked = []
        for i, (_, objects) in enumerate(self.records):
            pairs = vqa_pairs(objects, frozenset(), seeded_random("slq-capability", i))
            asked += [(i, q, a) for q, a in seeded_random("slq-capability", "pick", i).sample(
                pairs, min(self.questions_per_image, len(pairs)))]
        return asked

    def __call__(self, backbone: Backbone) -> dict[str, float | None]:
        tally = CaptionTally()
        paths = [path for path, _ in self.records]
        captions = _captioned(backbone, paths, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                              progress=False)
        for (_, objects), caption in zip(self.records, captions):
            tally.add(caption, objects)
        asked, answers = self.questions(), []
        for chunk in _chunks(asked, self.batch_size):
            batch = backbone.image_text_batch([_open_rgb(paths[i]) for i, _, _ in chunk], [q for _, q, _ in chunk])
            answers += generate(backbone, batch, max_new_tokens=4)
        return {"caption_attributes": tally.accuracy(),
                "caption_all_correct": round(tally.all_correct / tally.captions, 4) if tally.captions else None,
                "vqa": answer_accuracy(answers, [a for _, _, a in asked])}


def text_perplexity(backbone: Backbone, texts: Sequence[str], *, batch_size: int = 16) -> float | None:
    """The language model's perplexity on plain `texts`, each after the BOS token (no chat template),
    teacher-forced: its fluency in text, which a method that trains the LM may lose."""
    tokenizer = backbone.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    nll, tokens = 0.0, 0
    for chunk in _chunks(texts, batch_size):
        prompt = torch.full((len(chunk), 1), start, device=backbone.device)  # (B, 1)
        more = continuation_nll(backbone, PrefixBatch(prompt, torch.ones_like(prompt)),
                                [_ids(backbone, text) for text in chunk])
        nll, tokens = nll + more[0], tokens + more[1]
    return _perplexity(nll, tokens)


DEFINITION_PROMPT = "\nThe word defined above is"


@dataclass(frozen=True)
class DefinitionCapability:
    """A text LM's knowledge and fluency: `word_from_definition`, the share of definitions after
    which it greedily says their word (first word, exact match), and `perplexity` on held-out texts
    (each after the BOS token, teacher-forced). The prompt ends mid-sentence, so a base LM
    continues it with the word and a chat model answers it."""

    pairs: tuple[tuple[str, str], ...]  # (word, definition)
    held_out_texts: tuple[str, ...]
    prompt: str = DEFINITION_PROMPT
    batch_size: int = 16
    name: str = "definitions"
    primary_metric: ClassVar[str] = "word_from_definition"

    @classmethod
    def from_dataset(cls, dataset: ImageTextDataset, limit: int | None = None, **settings) -> DefinitionCapability:
        """A reverse dictionary's first `limit` (word, definition) records; its definitions are the
        held-out texts (the evaluation split: no method trained on them)."""
        if dataset.kind != "text":
            raise DataError(f"dataset {dataset.name}: the definition probe needs word records with text targets")
        records = dataset.records[:limit]
        return cls(tuple((r.text, r.captions[0]) for r in records), tuple(r.captions[0] for r in records), **settings)

    def __call__(self, backbone: Backbone) -> dict[str, float | None]:
        said = []
        for chunk in _chunks(self.pairs, self.batch_size):
            said += generate(backbone, backbone.text_batch([d for _, d in chunk], self.prompt), max_new_tokens=4)
        return {"word_from_definition": answer_accuracy(said, [w for w, _ in self.pairs]),
                "perplexity": text_perplexity(backbone, self.held_out_texts, batch_size=self.batch_size)}


@dataclass(frozen=True)
class CaptionLossCapability:
    """Any checkpoint: `caption_perplexity`, the perplexity of each record's first caption (and the
    end token) as the answer to its image (or text target) in slq's prompt, teacher-forced. Lower is
    better; a method that leaves the backbone untouched leaves it unchanged."""

    pairs: tuple[tuple[str, str, str], ...]  # (kind "image" or "text", image path or text, caption)
    batch_size: int = 16
    name: str = "caption_loss"
    primary_metric: ClassVar[str] = "caption_perplexity"

    @classmethod
    def from_dataset(cls, dataset: ImageTextDataset, limit: int | None = None, **settings) -> CaptionLossCapability:
        return cls(tuple((dataset.kind, str(r.image) if dataset.kind == "image" else r.text, r.captions[0])
                         for r in dataset.records[:limit]), **settings)

    def __call__(self, backbone: Backbone) -> dict[str, float | None]:
        end = backbone.tokenizer.convert_tokens_to_ids(backbone.tokenizer.eos_token)
        nll, tokens = 0.0, 0
        for chunk in _chunks(self.pairs, self.batch_size):
            targets = [target for _, target, _ in chunk]
            batch = backbone.image_batch([_open_rgb(t) for t in targets]) if chunk[0][0] == "image" \
                else backbone.text_batch(targets)
            more = continuation_nll(backbone, batch, [_ids(backbone, caption) + [end] for _, _, caption in chunk])
            nll, tokens = nll + more[0], tokens + more[1]
        return {"caption_perplexity": _perplexity(nll, tokens)}


CAPABILITY_CHOICES = ("auto", "none")


def capability_probe_for(dataset: ImageTextDataset, limit: int | None = 100) -> CapabilityProbe:
    """The probe that fits an evaluation dataset's first `limit` records: shapes-world records (with
    `objects`) get `ShapesCapability`, a reverse dictionary (directions d2w/w2d) `DefinitionCapability`,
    anything else `CaptionLossCapability`."""
    if dataset.records and all("objects" in r.meta for r in dataset.records):
        return ShapesCapability.from_dataset(dataset, limit)
    if tuple(dataset.directions) == WORDNET_DIRECTIONS:
        return DefinitionCapability.from_dataset(dataset, limit)
    return CaptionLossCapability.from_dataset(dataset, limit)


@torch.no_grad()
def measure_capability(probe: CapabilityProbe, backbone: Backbone) -> dict[str, float | None]:
    """`probe` on `backbone` in eval mode (a trained method's dropout off), its mode restored after."""
    training = backbone.model.training
    backbone.model.eval()
    try:
        return probe(backbone)
    finally:
        backbone.model.train(training)


def effective_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights `model` computes with, by their names in the untouched model: LoRA layers (peft)
    give their base weight plus their active adapters' delta, under the base layer's own name, so an
    untrained adapter (B = 0) leaves them equal to the untouched model's."""
    lora = {name: m for name, m in model.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}
    weights = {}
    for key, tensor in model.state_dict().items():
        owner = next((name for name in lora if key.startswith(name + ".")), None)
        if owner is None:
            weights[key] = tensor
            continue
        rest = key[len(owner) + 1:]
        if not rest.startswith("base_layer."):
            continue  # lora_A / lora_B: counted in the merged weight
        rest = rest[len("base_layer."):]
        if rest == "weight":
            layer = lora[owner]
            tensor = tensor + sum(layer.get_delta_weight(a) for a in layer.active_adapters)
        weights[f"{owner}.{rest}"] = tensor
    return weights


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's effective weights (`effective_weights`): names sorted, each with its dtype,
    shape and raw bytes. Equal hashes mean the model computes with exactly the same numbers."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(effective_weights(model).items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

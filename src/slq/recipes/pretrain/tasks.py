"""The generative tasks of slq-tiny-vl's pretraining, and how an example becomes training tokens.

    caption     user: <image>                      assistant: one of the image's captions
    listing     user: <image>                      assistant: every object, reading order ("a small red star and ...")
    vqa         user: <image> + a short question   assistant: a short answer (from the record's objects)
    paraphrase  user: a caption                    assistant: another caption of the same image
    knowledge   user: a fact of `knowledge_corpus` (language modelling on every token)
    colour      user: <image> + "what colour is the object?"   assistant: its colour (one-colour images)
    shape       user: <image> + "what shape is the object?"    assistant: its shape (one-shape images)

and the tasks that tie knowledge to answers and images (`slq.data.shapes`), each naming only the
clues the pretraining may show beside images (`clue_seen_with_images`) when an image is involved:

    knowledge_qa          user: a question about a fact ("what colour is a banana?")   assistant: "yellow"
    knowledge_caption     user: <image>                  assistant: a knowledge caption of it
    knowledge_paraphrase  user: a knowledge caption      assistant: a plain caption of the same image
    knowledge_vqa         user: <image> + "is there something the colour of a banana?"   assistant: "yes"

and one that may name every clue, because no image is involved:

    knowledge_paraphrase_all  as knowledge_paraphrase, through any clue (`text_only` ones included)

The caption and listing prompts are exactly the prompt slq builds for an image (no instruction
text), and the paraphrase prompt exactly the one it builds for a caption, so the assistant opener,
where the latent queries go, is where the model has learnt to say what the input shows. Loss falls
on the assistant's tokens (and on every token of a knowledge sentence). Held-out colour-shape pairs
never appear: captions come from the world's train split and no question names a held-out pair.

Word dropout (`noise_prob`, off in the shipped recipe): in that share of the caption, listing and
paraphrase examples, each input token of the answer is replaced by a random token with probability
`noise_rate`, while the targets stay the true answer (Bowman et al.'s word dropout).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..._io import seeded_random
from ...backbone import model_kwargs
from ...data.shapes import knowledge_captions, knowledge_questions, knowledge_vqa_pairs, record_objects, vqa_pairs
from ...errors import SettingError, SLQError
from ...families import family_for
from .config import TASKS

IGNORE = -100  # label of tokens that carry no loss
_MAX_ANSWER_TOKENS = 64  # word dropout covers answers up to this long (captions are about 5-20 tokens)


@dataclass(frozen=True)
class Example:
    """One generative example: an optional image (index into the records), the user's text, and
    the assistant's answer; `lm` examples are a bare user turn trained on every token. `noise`
    (word dropout) replaces the answer's k-th *input* token by noise[k] where that is >= 0; the
    targets stay the true answer."""

    image: int | None
    text: str
    answer: str = ""
    lm: bool = False
    noise: tuple[int, ...] = ()


def _rng(*parts: object) -> random.Random:
    return seeded_random("slq-pretrain", *parts)


def listing(objects: Sequence[dict]) -> str:
    """Every object in reading order with all its attributes: "a small red circle and a large blue
    star". Unlike the world's captions (random templates, random order, some objects left out), every
    word after the first is fixed by the image, so its whole loss is about what the image shows."""
    phrases = [f"{'an' if o['size'][0] in 'aeiou' else 'a'} {o['size']} {o['colour']} {o['shape']}" for o in objects]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


class GenerativeData:
    """The four tasks over a world's training records; `batch(seed, step)` is deterministic."""

    def __init__(self, records: Sequence[dict], knowledge: Sequence[str], held_out: frozenset, mixture: dict,
                 noise_ids: Sequence[int] = (), noise_prob: float = 0.0, noise_rate: float = 0.0):
        if not records:
            raise SLQError("pretraining needs at least one training record")
        if not knowledge and mixture.get("knowledge"):
            raise SLQError("the knowledge task needs a corpus (the world's knowledge.txt is empty)")
        leaked = [r["image"] for r in records for o in r["objects"] if (o["colour"], o["shape"]) in held_out]
        if leaked:
            raise SLQError(f"training records show held-out colour-shape pairs: {', '.join(leaked[:5])}")
        self.records, self.knowledge, self.held_out = list(records), list(knowledge), held_out
        if noise_prob and not noise_ids:
            raise SettingError("noise_prob", noise_prob, "word dropout needs token ids to draw from")
        self.noise_ids, self.noise_prob, self.noise_rate = list(noise_ids), noise_prob, noise_rate
        self.mixture = mixture
        # images whose objects all share a colour (a shape): "the object's" colour (shape) is defined
        self.one = {attr: [i for i, r in enumerate(self.records) if len({o[attr] for o in r["objects"]}) == 1]
                    for attr in ("colour", "shape")}

    def example(self, task: str, rng: random.Random) -> Example:
        if task == "knowledge":
            return Example(None, rng.choice(self.knowledge), lm=True)
        if task == "knowledge_qa":
            return Example(None, *knowledge_questions(rng))
        index = rng.randrange(len(self.records))
        record = self.records[index]
        if task in ("knowledge_caption", "knowledge_paraphrase", "knowledge_paraphrase_all"):
            caption = knowledge_captions(record_objects(record), rng, 1, seen_only=task != "knowledge_paraphrase_all")[0]
            if task == "knowledge_caption":
                return Example(index, "", caption)
            return Example(None, caption, rng.choice(record["captions"]))
        if task == "knowledge_vqa":
            return Example(index, *rng.choice(knowledge_vqa_pairs(record["objects"], rng)))
        if task == "caption":
            return Example(index, "", rng.choice(record["captions"]), noise=self._noise(rng))
        if task == "listing":
            return Example(index, "", listing(record["objects"]), noise=self._noise(rng))
        if task == "paraphrase":
            first, second = rng.sample(range(len(record["captions"])), 2)
            return Example(None, record["captions"][first], record["captions"][second], noise=self._noise(rng))
        if task in ("colour", "shape"):
            assert self.one[task], f"no training image whose objects share one {task}"
            index = rng.choice(self.one[task])
            return Example(index, f"what {task} is the object?", self.records[index]["objects"][0][task])
        question, answer = rng.choice(vqa_pairs(record["objects"], self.held_out, rng))
        return Example(index, question, answer)

    def _noise(self, rng: random.Random) -> tuple[int, ...]:
        """Word dropout for one answer: a random token or -1 (keep) per position. With its inputs
        replaced, the model must say the k-th word from the prompt alone, so its states after the
        opener describe the input whatever tokens follow, as appended query vectors will."""
        if not self.noise_prob or rng.random() >= self.noise_prob:
            return ()
        return tuple(rng.choice(self.noise_ids) if rng.random() < self.noise_rate else -1
                     for _ in range(_MAX_ANSWER_TOKENS))

    def batch(self, seed: int, step: int, size: int, mixture: dict | None = None) -> list[Example]:
        """`size` examples of tasks drawn from `mixture` (default: the one given at construction)."""
        mixture = mixture or self.mixture
        if not self.knowledge and mixture.get("knowledge"):
            raise SLQError("the knowledge task needs a corpus (the world's knowledge.txt is empty)")
        tasks = [t for t in TASKS if mixture.get(t, 0) > 0]
        weights = [mixture[t] for t in tasks]
        rng = _rng(seed, "batch", step)
        return [self.example(rng.choices(tasks, weights)[0], rng) for _ in range(size)]


# ---------------------------------------------------------------------------------------------
# Tokens


class Collator:
    """Turns examples into training inputs of any family: right-padded ids, labels on what the model
    must say, the family's positions (M-RoPE for Qwen2-VL) and token types, and the pixels of the
    batch's images (Qwen's patches with their grids, or one image tensor each)."""

    def __init__(self, model, tokenizer, image_processor, images: Sequence[Image.Image]):
        self.model, self.tokenizer = model, tokenizer
        self.family = family_for(model.config.model_type)
        self.pixels, self.grids, self.placeholders = [], [], []
        for start in range(0, len(images), 64):  # processed once: the world is small
            inputs = self.family.image_inputs(model.config, tokenizer, image_processor, images[start:start + 64])
            grid = inputs.model_inputs.get("image_grid_thw")
            pixels = inputs.model_inputs["pixel_values"]
            self.pixels += list(pixels.split(grid.prod(-1).tolist()) if grid is not None else pixels.split(1))
            self.grids += list(grid) if grid is not None else []
            self.placeholders += inputs.placeholder_text
        self.image_token = self.family.image_token(model.config, tokenizer)
        self.end_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        """(ids, labels) of one example."""
        content = [{"type": "image"}] if example.image is not None else []
        content += [{"type": "text", "text": example.text}] if example.text else []
        if example.lm:
            ids = self._ids(self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                               tokenize=False))
            return ids, list(ids)
        prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                    add_generation_prompt=True, tokenize=False)
        if example.image is not None:
            prompt = prompt.replace(self.image_token, self.placeholders[example.image])
        prompt_ids, answer_ids = self._ids(prompt), self._ids(example.answer) + [self.end_id]
        noise = example.noise or (-1,) * len(answer_ids)
        inputs = [n if n >= 0 else a for a, n in zip(answer_ids, noise)] + answer_ids[len(noise):]
        return prompt_ids + inputs, [IGNORE] * len(prompt_ids) + answer_ids

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(e) for e in examples]
        length = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (length - len(ids)) for ids, _ in encoded])  # (B, L)
        labels = torch.tensor([lab + [IGNORE] * (length - len(lab)) for _, lab in encoded])  # (B, L)
        mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids, _ in encoded])  # (B, L)
        images = [e.image for e in examples if e.image is not None]
        pixels = {}
        if images:
            pixels["pixel_values"] = torch.cat([self.pixels[i] for i in images])  # (sum patches, C*T*P*P) or (n, C, H, W)
            if self.grids:
                pixels["image_grid_thw"] = torch.stack([self.grids[i] for i in images])  # (n_images, 3)
        return {"input_ids": input_ids, "labels": labels,
                **model_kwargs(self.model, self.family, input_ids, mask, pixels)}  # the family's positions

"""Does the backbone know what KARR-Shapes asks? A generative probe of the world's facts.

KARR-Shapes names colours, shapes, counts and places through facts of the world's knowledge corpus.
Retrieval can only elicit knowledge the backbone has, so this asks the backbone the facts
themselves, greedily, in three forms, each scored per KARR category:

    recall    the fact's own wording, continued as the corpus was learnt (a bare user turn, language
              modelling): "the colour of a banana is" -> "yellow"
    question  the fact as a question to answer (the chat form the model answers images in): "what
              colour is a banana?" -> "yellow"
    link      the fact tied to an image, as a yes/no question of the kind the model answers about
              images: <a yellow star> "is there a star the colour of a banana?" -> "yes"

`recall` shows whether the facts are stored, `question` whether they can be retrieved on request,
and `link` whether the model joins them to what it sees, which is what a KARR caption needs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from PIL import Image

from ..data.shapes import (COLOUR_CLUES, COLOUR_MIXES, COLOURS, NUMBER_WORDS, SHAPES, BACKGROUNDS, ShapeObject,
                           render)

FORMS = ("recall", "question", "link")


@dataclass(frozen=True)
class Probe:
    """One question: its KARR category, form, prompt, accepted answers and (for `link`) its image."""

    category: str
    form: str
    prompt: str
    answers: tuple[str, ...]
    objects: tuple[ShapeObject, ...] = ()


def world_probes(seed: int = 0, image_size: int = 64) -> list[Probe]:
    """The world's facts as probes, every category KARR-Shapes uses, every form."""
    w = NUMBER_WORDS
    probes: list[Probe] = []
    for colour, things in COLOUR_CLUES.items():
        for thing in things:
            probes += [Probe("cultural_symbolism", "recall", f"the colour of {thing} is", (colour,)),
                       Probe("cultural_symbolism", "question", f"what colour is {thing}?", (colour,))]
    probes.append(Probe("cultural_symbolism", "recall", "a heart stands for", ("love",)))
    for shape, number, part in (("triangle", 3, "sides"), ("square", 4, "sides"), ("star", 5, "points")):
        probes += [Probe("encyclopedic", "recall", f"a {shape} has", (w[number],)),
                   Probe("encyclopedic", "question", f"how many {part} does a {shape} have?", (w[number],))]
    probes += [Probe("encyclopedic", "recall", "a circle has no", ("corners",)),
               Probe("functional", "recall", "a wheel is", ("round",)),
               Probe("functional", "recall", "a coin is", ("round",)),
               Probe("functional", "question", "what shape is a wheel?", ("round", "circle")),
               Probe("functional", "question", "what shape is a coin?", ("round", "circle"))]
    for a in range(1, 4):
        for b in range(1, 4):
            probes += [Probe("logical_mathematical", "recall", f"({a}+{b}) is", (w[a + b],)),
                       Probe("logical_mathematical", "question", f"what is ({a}+{b})?", (w[a + b],))]
    for colour, (a, b) in COLOUR_MIXES.items():
        probes += [Probe("logical_mathematical", "recall", f"mixing {a} and {b} gives", (colour,)),
                   Probe("logical_mathematical", "question", f"what colour do {a} and {b} make?", (colour,))]
    for word, other in (("left", "right"), ("right", "left"), ("above", "below"), ("below", "above")):
        probes += [Probe("contextual_spatial", "recall", f"{word} is the opposite of", (other,)),
                   Probe("contextual_spatial", "question", f"what is the opposite of {word}?", (other,))]
    probes += [Probe("contextual_spatial", "recall", "the sky is above the", ("ground",)),
               Probe("contextual_spatial", "recall", "the ground is below the", ("sky",))]
    rng = random.Random(seed)
    centre = image_size // 2
    for colour, things in COLOUR_CLUES.items():  # link: one object in view, a clue that fits it or not
        shape = rng.choice(SHAPES)
        obj = ShapeObject(shape, colour, "large", centre, centre)
        other = rng.choice([c for c in COLOURS if c != colour])
        probes += [Probe("cultural_symbolism", "link", f"is there a {shape} the colour of {rng.choice(things)}?",
                         ("yes",), (obj,)),
                   Probe("cultural_symbolism", "link", f"is there a {shape} the colour of "
                                                       f"{rng.choice(COLOUR_CLUES[other])}?", ("no",), (obj,))]
    return probes


@torch.no_grad()
def _answer(backbone, probe: Probe, max_new_tokens: int, image_size: int) -> str:
    from ..backbone import PrefixBatch
    from ..generation import generate

    if probe.form == "recall":  # a bare user turn, left open and continued: how the corpus was learnt
        turn = backbone.tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": probe.prompt}]}], tokenize=False)
        text = turn[:turn.rindex(probe.prompt) + len(probe.prompt)]
        ids = backbone.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, L)
        batch = PrefixBatch(ids, torch.ones_like(ids), {})
    elif probe.form == "question":
        batch = backbone.text_batch([probe.prompt])
    else:
        image: Image.Image = render(list(probe.objects), image_size, BACKGROUNDS[0])
        batch = backbone.image_text_batch([image], [probe.prompt])
    return generate(backbone, batch, max_new_tokens=max_new_tokens)[0]


def correct(answer: str, accepted: Sequence[str]) -> bool:
    """The answer's first word is one of the accepted answers."""
    from .capability import first_word

    return first_word(answer) in accepted


def probe_knowledge(backbone, probes: Sequence[Probe] | None = None, *, max_new_tokens: int = 4,
                    image_size: int = 64) -> dict:
    """Accuracy per category and form, with every answer: `{"accuracy": {category: {form: …}},
    "by_form": {form: …}, "answers": [...]}`."""
    probes = list(probes) if probes is not None else world_probes(image_size=image_size)
    rows = []
    for probe in probes:
        answer = _answer(backbone, probe, max_new_tokens, image_size)
        rows.append({"category": probe.category, "form": probe.form, "prompt": probe.prompt, "answer": answer,
                     "expected": list(probe.answers), "correct": correct(answer, probe.answers)})
    accuracy: dict[str, dict[str, float]] = {}
    for category in dict.fromkeys(r["category"] for r in rows):
        for form in FORMS:
            hits = [r["correct"] for r in rows if r["category"] == category and r["form"] == form]
            if hits:
                accuracy.setdefault(category, {})[form] = round(sum(hits) / len(hits), 4)
    by_form = {form: round(sum(r["correct"] for r in rows if r["form"] == form)
                           / max(1, sum(r["form"] == form for r in rows)), 4) for form in FORMS}
    return {"accuracy": accuracy, "by_form": by_form, "n_probes": len(rows), "answers": rows}


@dataclass(frozen=True)
class KnowledgeProbe:
    """`probe_knowledge` as an evaluator of a backbone (`slq.evaluation.evaluator`): its primary
    metric is `link`'s accuracy, the form a KARR caption needs."""

    probes: tuple[Probe, ...] | None = None  # None: `world_probes()`
    max_new_tokens: int = 4
    image_size: int = 64
    name: str = "knowledge"
    primary_metric: ClassVar[str] = "by_form/link"

    def __call__(self, backbone) -> dict:
        return probe_knowledge(backbone, self.probes, max_new_tokens=self.max_new_tokens, image_size=self.image_size)


def format_knowledge(result: dict) -> str:
    """Accuracy per category (rows) and form (columns), in percent."""
    lines = [f"{'category':<24}" + "".join(f"{form:>10}" for form in FORMS)]
    for category, forms in result["accuracy"].items():
        lines.append(f"{category:<24}" + "".join(f"{100 * forms[f]:>10.1f}" if f in forms else f"{'-':>10}"
                                                 for f in FORMS))
    lines.append(f"{'all':<24}" + "".join(f"{100 * result['by_form'][f]:>10.1f}" for f in FORMS))
    return "\n".join(lines)

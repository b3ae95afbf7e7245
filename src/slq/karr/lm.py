"""KARR rewrites by a local causal LM: few-shot, greedy, so the same model writes the same rewrites.

The rule rewriter of the source (`base`) still finds what to rewrite (the spans, the words that
must go, the colours a clue may add); the LM only writes each span's replacement. So an LM rewrite
passes the same validator as a rule's, and `build.json` counts how often the LM's text is turned
away, per category and reason: its acceptance rate.

Every answer is appended to a cache file as soon as it is written, keyed by the prompt's sha256,
so an interrupted build continues where it stopped and a rerun costs no generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

from ..data import Record
from ..errors import SettingError
from .core import Candidate, Rewrite, Rewriter

logger = logging.getLogger("slq")

HINTS = {  # what a category's description goes through
    "tool_utility": "what it is used for",
    "contextual_spatial": "where it is or how it is placed, through a fact about places",
    "functional": "what it does or what it is shaped like",
    "cultural_symbolism": "familiar things of the same colour, or what it stands for",
    "encyclopedic": "a fact that defines it",
    "logical_mathematical": "arithmetic: numbers as sums or differences, colours as mixtures",
}
EXAMPLES = {  # (words, forbidden, description): generic English, never the benchmark's own captions
    "tool_utility": [("a knife", "knife", "a tool used for cutting food"),
                     ("a kettle", "kettle", "an appliance used to boil water")],
    "contextual_spatial": [("on a beach", "beach", "on the sandy shore where waves break"),
                           ("at the top", "top", "at the end opposite the bottom")],
    "functional": [("a wheel", "wheel", "a round part that lets a cart roll"),
                   ("a ball", "ball", "a round toy that bounces")],
    "cultural_symbolism": [("a red apple", "red", "an apple the colour of a fire truck"),
                           ("a white dove", "white, dove", "a bird of the colour of snow that stands for peace")],
    "encyclopedic": [("a dog", "dog, dogs", "a domestic animal that barks"),
                     ("a square", "square, squares", "a shape with four equal sides")],
    "logical_mathematical": [("two cats", "two", "(1+1) cats"), ("three birds", "three", "four minus one birds")],
}


def few_shot_prompt(category: str, span: str, forbidden: tuple[str, ...]) -> str:
    """The prompt for one span: the task, two examples of the category, then the span."""
    if category not in HINTS:
        raise SettingError("category", category, f"must be one of {', '.join(HINTS)}")
    lines = [f"Describe the words without using any forbidden word, through {HINTS[category]}.", ""]
    for words, banned, description in EXAMPLES[category]:
        lines += [f"Words: {words}", f"Forbidden: {banned}", f"Description: {description}", ""]
    lines += [f"Words: {span}", f"Forbidden: {', '.join(forbidden)}", "Description:"]
    return "\n".join(lines)


class LMRewriter:
    """Rewrites through a causal LM (`checkpoint`: a folder or a GGUF file), spans found by `base`.

    `generate(prompt) -> text` replaces the model (tests; other runtimes). `cache` is the JSONL
    file of answers (default: none kept)."""

    name = "lm"

    def __init__(self, checkpoint: str | os.PathLike | None, base: Rewriter, *,
                 cache: str | os.PathLike | None = None, max_new_tokens: int = 32,
                 generate: Callable[[str], str] | None = None):
        if generate is None and checkpoint is None:
            raise SettingError("lm", None, "the LM rewriter needs a checkpoint folder or GGUF file")
        self.base, self.categories = base, tuple(base.categories)
        self.max_new_tokens = max_new_tokens
        self._generate = generate or self._load(Path(checkpoint))
        self.cache_path = Path(cache) if cache is not None else None
        self.answers: dict[str, str] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            for line in self.cache_path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.answers[entry["prompt_sha256"]] = entry["answer"]
            logger.info("%d LM answers reused from %s", len(self.answers), self.cache_path)

    def rewrite(self, caption: str, record: Record, category: str, rng: random.Random) -> Candidate | None:
        rule = self.base.rewrite(caption, record, category, rng)
        if rule is None:
            return None
        text, rewrites = caption, []
        for r in rule.rewrites:
            answer = self.ask(few_shot_prompt(category, r.span, rule.forbidden))
            text = text.replace(r.span, answer, 1)
            rewrites.append(Rewrite(r.span, answer, "lm"))
        # no attribute allowed: the rule's exemptions were for its own clues, not for whatever the LM wrote
        return Candidate(text, category, tuple(rewrites), rule.forbidden)

    def ask(self, prompt: str) -> str:
        """The model's greedy answer's first line, from the cache when it was asked before."""
        key = hashlib.sha256(prompt.encode()).hexdigest()
        if key not in self.answers:
            answer = self._generate(prompt).strip().split("\n")[0].strip()
            self.answers[key] = answer
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a", encoding="utf-8") as f:  # one line per answer: a crash loses one
                    f.write(json.dumps({"prompt_sha256": key, "answer": answer}) + "\n")
                    f.flush()
        return self.answers[key]

    def _load(self, checkpoint: Path) -> Callable[[str], str]:
        from ..generation import causal_lm_generator

        return causal_lm_generator(checkpoint, max_new_tokens=self.max_new_tokens, purpose="the LM rewriter")

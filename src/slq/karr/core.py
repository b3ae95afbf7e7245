"""What a KARR rewrite is, and the validator every rewrite passes before it enters a benchmark.

KARR-Bench (the paper's knowledge-aware reasoning retrieval) keeps an image's caption but names
its target only through knowledge or reasoning: "two red circles" becomes "(1+1) round shapes the
colour of a tomato". A rewriter proposes one `Candidate` per (caption, category); `validate` turns
away the ones a reader could solve without the knowledge (the target still named, by its word, its
plural or a synonym), the ones that no longer describe the image (a count or a checkable attribute
changed), and the empty or garbled ones, each with a reason that `build.json` counts.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ..data import Record
from ..errors import SettingError

# The paper's six categories (KARR-Bench, Figure 3b), by the keys records and reports use.
CATEGORIES = {
    "tool_utility": "Tool & Appliance Utility",
    "contextual_spatial": "Contextual & Spatial Relations",
    "functional": "Functional Relationship",
    "cultural_symbolism": "Cultural Symbolism",
    "encyclopedic": "Encyclopedic Knowledge",
    "logical_mathematical": "Logical & Mathematical",
}
REJECTIONS = {  # reason -> what it means, in the order they are checked
    "empty": "no words left",
    "garbled": "not a caption: control characters, a word repeated three times, unbalanced brackets, or far "
               "longer than its source",
    "unchanged": "the rewrite changed nothing",
    "only_deleted": "the rewrite only took words out: nothing describes what it removed",
    "names_target": "still names what it should describe (the word, its plural, a synonym)",
    "changed_count": "a count of the source is missing (in words, digits or arithmetic)",
    "changed_attribute": "names an attribute (a colour, a shape, ...) the source did not",
}

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve")
_WORD_VALUES = {w: i for i, w in enumerate(NUMBER_WORDS)}
_NUMBER = rf"(?:\d+|{'|'.join(NUMBER_WORDS)})"
# "(1+1)", "(4-1)", "(1+1+1)", "one plus one", "three minus one", "2 + 1": evaluated before plain numbers
_EXPRESSION = re.compile(rf"\(\s*{_NUMBER}(?:\s*[-+]\s*{_NUMBER})+\s*\)"
                         rf"|\b{_NUMBER}(?:\s+(?:plus|minus)\s+{_NUMBER})+\b"
                         rf"|\b\d+(?:\s*[-+]\s*\d+)+\b", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(rf"\b{_NUMBER}\b", re.IGNORECASE)
_TERM = re.compile(rf"([-+]|plus|minus)?\s*({_NUMBER})", re.IGNORECASE)
_WORDS = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_GROWTH = 6  # a rewrite may be at most this many times longer (in words) than its source, plus 12


@dataclass(frozen=True)
class Rewrite:
    """One replaced span of the source caption."""

    span: str  # the words replaced, as they stand in the source
    replacement: str
    rule: str  # which rule made it ("colour_clue", "wordnet_gloss", "lm", ...)
    neutral: str | None = None  # the span with the clue taken out and nothing put in ("two red circles" ->
    # "two circles"): the control caption, which tells what the rest of the caption alone retrieves


@dataclass(frozen=True)
class Candidate:
    """A proposed KARR caption for one image, before validation."""

    caption: str
    category: str  # a key of CATEGORIES
    rewrites: tuple[Rewrite, ...]
    forbidden: tuple[str, ...]  # lowercase words it must no longer contain: the targets, plurals, synonyms
    allowed: tuple[str, ...] = ()  # attribute words the rewrite may add (a mixing clue's colours)
    clues: str = ""  # where its clues were learnt, when the source knows ("seen_with_images", "text_only")

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise SettingError("category", self.category, f"must be one of {', '.join(CATEGORIES)}")


class Rewriter(Protocol):
    """Proposes rewrites of one category at a time. `categories` lists those it can ever yield."""

    name: str
    categories: tuple[str, ...]

    def rewrite(self, caption: str, record: Record, category: str, rng: random.Random) -> Candidate | None:
        """A candidate for `caption` (one of `record`'s) in `category`, or None when the caption offers
        nothing to rewrite that way. Deterministic given `rng`'s state."""
        ...


def control_caption(source: str, rewrites: Iterable[Rewrite]) -> str | None:
    """The source with every rewritten span made neutral (`Rewrite.neutral`), or None when a rewrite
    has no neutral form or its span is not in the source."""
    text = source
    for r in rewrites:
        if r.neutral is None or r.span not in text:
            return None
        text = text.replace(r.span, r.neutral, 1)
    return text


def words(text: str) -> list[str]:
    """Lowercase word tokens (digits included) of a text."""
    return _WORDS.findall(text.lower())


def _evaluate(expression: str) -> int:
    total = 0
    for sign, number in _TERM.findall(expression):
        value = int(number) if number.isdigit() else _WORD_VALUES[number.lower()]
        total += -value if sign.lower() in ("-", "minus") else value
    return total


def counts(text: str) -> list[int]:
    """The numbers a text states, arithmetic evaluated ("(1+1) circles and three stars" -> [2, 3]);
    "a"/"an" count for nothing, so a rewrite may spell one as either."""
    found = [_evaluate(m.group()) for m in _EXPRESSION.finditer(text)]
    rest = _EXPRESSION.sub(" ", text)
    found += [int(m) if m.isdigit() else _WORD_VALUES[m.lower()] for m in _PLAIN_NUMBER.findall(rest)]
    return found


def _garbled(text: str, source: str) -> bool:
    tokens = words(text)
    if _CONTROL.search(text) or text.count("(") != text.count(")"):
        return True
    if any(tokens[i] == tokens[i + 1] == tokens[i + 2] and tokens[i].isalpha() for i in range(len(tokens) - 2)):
        return True
    return len(tokens) > _MAX_GROWTH * len(words(source)) + 12


def validate(source: str, candidate: Candidate, attributes: Iterable[str] = ()) -> str | None:
    """Why `candidate` cannot stand for `source` (a key of REJECTIONS), or None when it can.

    `attributes` are words a reader could check against the image (the world's colours and shapes;
    colour names for English): the rewrite may name one only if the source did or the candidate
    allows it. Every count of the source must survive, in any spelling: "two" may become "(1+1)".
    """
    text = candidate.caption.strip()
    tokens = words(text)
    if not tokens:
        return "empty"
    if _garbled(text, source):
        return "garbled"
    if " ".join(tokens) == " ".join(words(source)):
        return "unchanged"
    if not Counter(tokens) - Counter(words(source)):
        return "only_deleted"
    forbidden = {w.lower() for w in candidate.forbidden}
    if forbidden & set(tokens) or any(" " in f and re.search(rf"\b{re.escape(f)}\b", text.lower())
                                      for f in forbidden):
        return "names_target"
    remaining = counts(text)
    for number in counts(source):
        if number not in remaining:
            return "changed_count"
        remaining.remove(number)
    named = set(words(source)) | {w.lower() for w in candidate.allowed}
    attributes = {a.lower() for a in attributes}
    if any(t in attributes and t not in named for t in tokens):
        return "changed_attribute"
    return None

"""KARR rewrites of the shapes world's captions, each clue a fact of the world's knowledge corpus.

The world yields five of the paper's six categories; it has no tools or appliances, so never Tool &
Appliance Utility:

    cultural_symbolism    a colour named through familiar things ("the colour of a tomato"), a heart
                          as the symbol of love
    encyclopedic          a shape named by a defining fact ("a shape with three sides", "a round shape")
    functional            a circle named by what is shaped like it ("a shape like a wheel")
    logical_mathematical  a count as arithmetic ("(1+1)", "four minus one"), or else a mixed colour as
                          its mixture ("the colour you get by mixing red and yellow")
    contextual_spatial    a place stated through opposites and relations ("in the corner opposite the
                          bottom left", "nearer the sky than", "to the left of" turned round)

Every clue is one that `slq.data.shapes.knowledge_corpus` states as a fact. Each candidate draws
its clues from one of two sets, recorded as its `clues`: those slq-tiny-vl's pretraining also shows
beside images ("seen_with_images", `slq.data.shapes.clue_seen_with_images`) or those it meets in its
text corpus only ("text_only": functional, spatial and mixing clues always are). A text-only clue
asks the model to link what it read to what it sees: the true test of elicitation.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from dataclasses import replace
from pathlib import Path

from ..data import Record, load_jsonl
from ..data.shapes import (COLOUR_CLUES, COLOUR_MIXES, COLOURS, NUMBER_WORDS, SEEN_COLOUR_THINGS, SEEN_COUNT_CLUES,
                           SEEN_SHAPE_CLUES, SHAPE_CLUES, SHAPES, plural, write_world)
from .build import build_karr, write_karr
from .core import Candidate, Rewrite, words

_PLACES = ("top", "bottom", "left", "right", "above", "below", "centre", "middle")
ATTRIBUTES = frozenset(COLOURS) | frozenset(SHAPES) | frozenset(plural(s) for s in SHAPES) | frozenset(_PLACES)
# the words a reader can check against the image: a rewrite may not name one its source did not

_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
# "a small red circle", "two red circles", "an orange star": article or count, size, colour, shape
_PHRASE = re.compile(rf"\b(?:(?P<det>an?|{'|'.join(NUMBER_WORDS)}) )?(?P<size>(?:small|large) )?"
                     rf"(?P<colour>{_COLOUR}) (?P<shape>{_SHAPE})(?P<s>s?)\b")
_COUNT = re.compile(rf"\b(?P<n>{'|'.join(NUMBER_WORDS[1:])}) (?=(?:(?:small|large) )?(?:(?:{_COLOUR}) )?"
                    rf"(?:{_SHAPE}|object|shape)s?\b)")
_WHEEL_LIKE = ("wheel", "coin")  # the corpus: "a wheel is round", "a coin is round"
_MAY_BE_SEEN = ("cultural_symbolism", "encyclopedic", "logical_mathematical")  # the others' clues: text only


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _image_colours(record: Record) -> set[str]:
    return {o["colour"] for o in record.meta.get("objects", ())}


def _expressions(n: int) -> list[str]:
    """Corpus-backed ways to say n: "(a+b)" and "a plus b" for a, b in 1..5, "(a-b)" and "a minus b"
    for 2 <= a <= 6 (`slq.data.shapes._number_facts`)."""
    w = NUMBER_WORDS
    out = [f"({a}+{n - a})" for a in range(1, 6) if 1 <= n - a <= 5]
    out += [f"{w[a]} plus {w[n - a]}" for a in range(1, 6) if 1 <= n - a <= 5]
    out += [f"({a}-{a - n})" for a in range(2, 7) if 1 <= a - n < a]
    out += [f"{w[a]} minus {w[a - n]}" for a in range(2, 7) if 1 <= a - n < a]
    return out


class ShapesRewriter:
    """Rule rewrites of the world's captions; the record's `objects` (kept in its meta) say which
    colours are in view, so a mixing clue never names one."""

    name = "rules"
    categories = ("cultural_symbolism", "encyclopedic", "functional", "logical_mathematical", "contextual_spatial")

    def rewrite(self, caption: str, record: Record, category: str, rng: random.Random) -> Candidate | None:
        rule = {"cultural_symbolism": self._cultural, "encyclopedic": self._encyclopedic,
                "functional": self._functional, "logical_mathematical": self._logical,
                "contextual_spatial": self._spatial}.get(category)
        if rule is None:
            return None
        seen = category in _MAY_BE_SEEN and rng.random() < 0.5  # this candidate's clue set
        found = rule(caption, record, rng, seen)
        if found is None:
            return None
        text, rewrites, forbidden, allowed = found
        return Candidate(text, category, tuple(rewrites), tuple(sorted(forbidden)), tuple(sorted(allowed)),
                         "seen_with_images" if seen else "text_only")

    # Each rule returns (caption, rewrites, forbidden words, allowed words) or None.

    @staticmethod
    def _phrases(caption: str, rewrite_phrase) -> tuple[str, list[Rewrite], set[str]] | None:
        """Apply `rewrite_phrase(match) -> (replacement, neutral, rule, forbidden) | None` to every noun
        phrase."""
        rewrites, forbidden = [], set()

        def substitute(m: re.Match) -> str:
            done = rewrite_phrase(m)
            if done is None:
                return m.group()
            replacement, neutral, rule, words = done
            rewrites.append(Rewrite(m.group(), replacement, rule, neutral))
            forbidden.update(words)
            return replacement

        text = _PHRASE.sub(substitute, caption)
        return (text, rewrites, forbidden) if rewrites else None

    def _cultural(self, caption, record, rng, seen):
        def phrase(m):
            det, size, colour, shape, s = m["det"], m["size"] or "", m["colour"], m["shape"], m["s"]
            noun = f"{shape}{s}"
            forbidden = {colour}
            if shape == "heart":  # the symbol of love: the seen description, or the text-only one
                noun, forbidden = SHAPE_CLUES["heart"][0 if seen else 1][bool(s)], forbidden | {"heart", "hearts"}
            things = SEEN_COLOUR_THINGS[colour] if seen else COLOUR_CLUES[colour][len(SEEN_COLOUR_THINGS[colour]):]
            head = f"{size}{noun}"
            lead = (_article(head) if det in ("a", "an") else det) + " " if det else ""
            plain = f"{size}{'shape' if shape == 'heart' else shape}{s}"
            neutral = ((_article(plain) if det in ("a", "an") else det) + " " if det else "") + plain
            return f"{lead}{head} {rng.choice(('in ', ''))}the colour of {rng.choice(things)}", \
                neutral, "colour_clue" + ("+love_symbol" if shape == "heart" else ""), forbidden

        done = self._phrases(caption, phrase)
        return done and (*done, set())

    def _encyclopedic(self, caption, record, rng, seen):
        def phrase(m):
            if m["shape"] == "heart":
                return None  # a heart's clues are symbols: cultural
            clues = SEEN_SHAPE_CLUES[m["shape"]] if seen else SHAPE_CLUES[m["shape"]][len(SEEN_SHAPE_CLUES[m["shape"]]):]
            if not clues:
                return None  # a star's one description is seen beside images
            clue = rng.choice(clues)[bool(m["s"])]
            det = f"{m['det']} " if m["det"] else ""
            head = f"{det}{m['size'] or ''}{m['colour']} "
            return head + clue, head + "shape" + m["s"], "shape_fact", {m["shape"], plural(m["shape"])}

        done = self._phrases(caption, phrase)
        return done and (*done, set())

    def _functional(self, caption, record, rng, seen):
        def phrase(m):
            if m["shape"] != "circle":
                return None
            thing = rng.choice(_WHEEL_LIKE)
            like = f"shapes like {thing}s" if m["s"] else f"shape like {_article(thing)} {thing}"
            det = f"{m['det']} " if m["det"] else ""
            head = f"{det}{m['size'] or ''}{m['colour']} "
            return head + like, head + "shape" + m["s"], "shaped_like", {"circle", "circles"}

        done = self._phrases(caption, phrase)
        return done and (*done, set())

    def _logical(self, caption, record, rng, seen):
        rewrites, forbidden = [], set()
        stated = {m["n"] for m in _COUNT.finditer(caption)}  # no expression may spell another count's word
        if seen and not all(NUMBER_WORDS.index(n) in SEEN_COUNT_CLUES for n in stated):
            return None  # only two and three have sums seen beside images

        def count(m: re.Match) -> str:
            n = NUMBER_WORDS.index(m["n"])
            seen_forms = SEEN_COUNT_CLUES.get(n, ())
            options = seen_forms if seen else [e for e in _expressions(n) if e not in seen_forms]
            replacement = rng.choice([e for e in options if not stated & set(e.split())])
            rewrites.append(Rewrite(m["n"], replacement, "arithmetic", "some"))
            forbidden.add(m["n"])
            return replacement + " "

        text = _COUNT.sub(count, caption)
        if rewrites or seen:
            return (text, rewrites, forbidden, set()) if rewrites else None
        in_view, allowed = _image_colours(record), set()  # a mixture: text only

        def mix(m: re.Match) -> str:
            colour = m["colour"]
            if colour not in COLOUR_MIXES or set(COLOUR_MIXES[colour]) & in_view:
                return m.group()
            a, b = COLOUR_MIXES[colour] if rng.random() < 0.5 else COLOUR_MIXES[colour][::-1]
            det, size = m["det"], m["size"] or ""
            head = f"{size}{m['shape']}{m['s']}"
            lead = (_article(head) if det in ("a", "an") else det) + " " if det else ""
            replacement = f"{lead}{head} the colour you get by mixing {a} and {b}"
            neutral = ((_article(head) if det in ("a", "an") else det) + " " if det else "") + head
            rewrites.append(Rewrite(m.group(), replacement, "colour_mixture", neutral))
            forbidden.add(colour)
            allowed.update((a, b))
            return replacement

        text = _PHRASE.sub(mix, caption)
        return (text, rewrites, forbidden, allowed) if rewrites else None

    def _spatial(self, caption, record, rng, seen):
        rewrites, forbidden, allowed = [], set(), set()
        opposite = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
        rules = (  # (pattern, replacement function, rule, neutral function)
            (r"\b(?:in the|at the) (top|bottom) (left|right)(?: corner)?\b",
             lambda m: f"in the corner opposite the {opposite[m[1]]} {opposite[m[2]]}", "opposite_corner",
             lambda m: "in a corner"),
            (r"\bat the (top|bottom)\b", lambda m: f"at the end opposite the {opposite[m[1]]}", "opposite_side",
             lambda m: "at one end"),
            (r"\bon the (left|right)(?: side)?\b", lambda m: f"on the side opposite the {opposite[m[1]]}",
             "opposite_side", lambda m: "on one side"),
            (r"\b(is )?(above|below)\b",
             lambda m: f"{m[1] or ''}nearer the {'sky' if m[2] == 'above' else 'ground'} than", "sky_and_ground",
             lambda m: f"{m[1] or ''}near"),
        )
        text = caption
        for pattern, clue, rule, neutral in rules:
            def apply(m: re.Match, clue=clue, rule=rule, neutral=neutral) -> str:
                out = clue(m)
                rewrites.append(Rewrite(m.group(), out, rule, neutral(m)))
                forbidden.update(w for w in m.groups() if w in (*opposite, "above", "below"))
                allowed.update(w for w in words(out) if w in _PLACES)  # "opposite the right": a clue, not a claim
                return out

            text = re.sub(pattern, apply, text)
        swapped = self._swap_left_right(text)
        if swapped is not None:
            text, rewrite, word = swapped
            rewrites.append(rewrite)
            forbidden.add(word)
            allowed.add("right" if word == "left" else "left")
        if not rewrites:
            return None
        return text, rewrites, forbidden, allowed

    @staticmethod
    def _swap_left_right(text: str) -> tuple[str, Rewrite, str] | None:
        """"A is to the left of B" -> "B is to the right of A": the corpus's "if a circle is left of a
        square then the square is right of the circle"."""
        np_ = rf"(?:an? )?(?:(?:small|large) )?(?:{_COLOUR}) (?:{_SHAPE})"
        m = re.search(rf"(?P<a>{np_}) (?P<is>is )?to the (?P<side>left|right) of (?P<b>{np_})", text)
        if m is None:
            return None
        other = "right" if m["side"] == "left" else "left"
        replacement = f"{m['b']} {m['is'] or ''}to the {other} of {m['a']}"
        neutral = f"{m['a']} {m['is'] or ''}next to {m['b']}"
        return text[:m.start()] + replacement + text[m.end():], Rewrite(m.group(), replacement, "relation_turned",
                                                                        neutral), m["side"]


KARR_SHAPES = Path(__file__).resolve().parent.parent / "assets" / "karr-shapes"  # the shipped benchmark
KARR_SHAPES_WORLD = {"seed": 0, "n_test": 500}  # the shipped default backbone's world; its whole test split


def build_karr_shapes(out_dir: str | os.PathLike, *, seed: int = 0, progress: bool | None = None) -> dict[str, Path]:
    """KARR-Shapes as shipped (`KARR_SHAPES`): the test split of world 0 (the world slq-tiny-vl was
    pretrained on, never on this split), one rule rewrite per image, images copied beside the JSONL.
    Byte-for-byte the same on every run; a test checks the shipped files against it."""
    with tempfile.TemporaryDirectory(prefix="slq-karr-world-") as tmp:
        world = write_world(tmp, n_train=1, n_val=1, progress=progress, **KARR_SHAPES_WORLD)
        test = load_jsonl(world["test"])
        for i, r in enumerate(test.records):  # the world's own knowledge captions: unvalidated, not this benchmark's
            test.records[i] = replace(r, meta={k: v for k, v in r.meta.items() if k != "knowledge_captions"})
        build = build_karr(test, [ShapesRewriter()], attributes=ATTRIBUTES, seed=seed, progress=progress)
        build.source = "karr-shapes"
        return write_karr(build, out_dir, copy_images=True, image_root=Path(tmp) / "images")

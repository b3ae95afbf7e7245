"""The KARR validator: what it turns away, by reason, and the counts it reads in any spelling."""

import pytest

from slq.errors import SettingError
from slq.karr import Candidate, Rewrite, counts, validate
from slq.karr.core import control_caption

SOURCE = "two red circles and a blue square"
COLOURS = ("red", "blue", "green", "yellow")


def candidate(text: str, forbidden=("red",), allowed=()) -> Candidate:
    return Candidate(text, "cultural_symbolism", (Rewrite("red circles", "x", "test"),), tuple(forbidden),
                     tuple(allowed))


@pytest.mark.parametrize("text, reason", [
    ("two circles the colour of a tomato and a blue square", None),
    ("", "empty"),
    ("  ... ", "empty"),
    ("two circles circles circles and a blue square", "garbled"),
    ("two circles (the colour of a tomato and a blue square", "garbled"),
    ("two circles\x07 and a blue square", "garbled"),
    ("Two red circles and a blue square", "unchanged"),
    ("two circles and a blue square", "only_deleted"),
    ("two red round shapes and a blue square", "names_target"),
    ("three circles the colour of a tomato and a blue square", "changed_count"),
    ("(1+2) circles the colour of a tomato and a blue square", "changed_count"),
    ("circles the colour of a tomato and a blue square", "changed_count"),
    ("two circles the colour of a tomato and a green square", "changed_attribute"),
])
def test_validate_reasons(text, reason):
    assert validate(SOURCE, candidate(text), COLOURS) == reason


def test_counts_survive_as_arithmetic_and_words():
    assert sorted(counts("(1+1) circles, three minus one stars and 4 - 1 hearts")) == [2, 2, 3]
    assert counts("a circle and an object") == []
    assert validate(SOURCE, candidate("(1+1) circles the colour of a tomato and a blue square"), COLOURS) is None
    assert validate(SOURCE, candidate("one plus one circles the colour of a tomato and a blue square"),
                    COLOURS) is None


def test_multiword_forbidden_and_allowed_attributes():
    c = candidate("two circles the colour of a fire truck and a blue square", forbidden=("red", "fire truck"))
    assert validate(SOURCE, c, COLOURS) == "names_target"
    mixed = "two circles the colour of a tomato and a square the colour you get by mixing green and yellow"
    assert validate(SOURCE, candidate(mixed, forbidden=("blue",)), COLOURS) == "changed_attribute"
    assert validate(SOURCE, candidate(mixed, forbidden=("blue",), allowed=("green", "yellow")), COLOURS) is None


def test_candidate_refuses_unknown_category():
    with pytest.raises(SettingError, match="category"):
        Candidate("x", "poetry", (), ())


def test_control_caption_neutralises_every_span():
    rewrites = (Rewrite("two red circles", "two circles the colour of a tomato", "colour_clue", "two circles"),
                Rewrite("blue square", "square the colour of the sky", "colour_clue", "square"))
    assert control_caption(SOURCE, rewrites) == "two circles and a square"
    assert control_caption(SOURCE, rewrites[:1] + (Rewrite("x", "y", "lm"),)) is None

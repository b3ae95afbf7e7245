"""KARR rewrites of everyday English captions through the installed WordNet 3.0 (Debian's
wordnet-base, which CI installs); the module is skipped where it is missing."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from slq.data import ImageRecord, ImageTextDataset
from slq.data.wordnet import DEFAULT_WORDNET_DIR
from slq.karr.build import build_karr, control_dataset
from slq.karr.core import CATEGORIES, Candidate, Rewrite, control_caption, counts, validate, words

if not (DEFAULT_WORDNET_DIR / "data.noun").is_file():
    pytest.skip("Debian's wordnet-base not installed", allow_module_level=True)

from slq.karr.english import COLOUR_CLUES, ENGLISH_ATTRIBUTES, WordNetRewriter  # noqa: E402

# COCO-style captions, and the categories each must yield a candidate for.
CAPTIONS = {
    "A man riding a horse on a beach": {"encyclopedic", "contextual_spatial"},
    "Two dogs playing with a red ball": {"encyclopedic", "cultural_symbolism", "logical_mathematical"},
    "A grey cat sitting on a bookshelf": {"encyclopedic", "cultural_symbolism"},
    "A microwave sitting on a kitchen counter": {"encyclopedic", "contextual_spatial"},  # microwave: the wave first
    "A red fire hydrant on the side of a street": {"encyclopedic", "cultural_symbolism"},
    "A woman holding an umbrella in the rain": {"encyclopedic"},  # rain: weather (a phenomenon) first
    "Three zebras standing in a field of grass": {"encyclopedic", "logical_mathematical"},
    "A knife next to a plate of food": {"encyclopedic", "tool_utility"},
    "A man flies a kite in a park": {"encyclopedic", "contextual_spatial"},
    "A giraffe stands near a tall tree": {"encyclopedic", "contextual_spatial"},
    "Two people sitting on a bench in a park": {"encyclopedic", "logical_mathematical", "contextual_spatial"},
    "A bus is parked next to a building": {"encyclopedic", "contextual_spatial"},
    "Four birds on a wire": {"encyclopedic", "tool_utility", "logical_mathematical", "contextual_spatial"},
    "A teddy bear on a bed": {"encyclopedic", "functional", "contextual_spatial"},
    "A clock tower next to a church": set(),  # church: the Christians (a group) first
    "A white plate with two slices of pizza": {"encyclopedic"},  # plate: home plate (baseball); slice: a share
    "A laptop computer on a wooden desk": {"encyclopedic", "contextual_spatial"},
    "The bus is yellow": {"encyclopedic", "cultural_symbolism"},
    "A man cooks food in a kitchen": {"encyclopedic", "contextual_spatial"},
    "An oven in a small kitchen": {"encyclopedic", "tool_utility", "contextual_spatial"},
    "A bottle of wine on a table": {"encyclopedic"},  # not the bottle: "of wine" would dangle; table: data first
    "Five sheep grazing on a green hill": {"encyclopedic", "cultural_symbolism", "logical_mathematical",
                                           "contextual_spatial"},
    "A black and white photo of a train": {"encyclopedic"},
    "A brown bear walking through the forest": {"cultural_symbolism"},  # forest: the trees (a group) first
    "A boy holding a baseball bat": {"encyclopedic"},
    "3 cows standing behind a fence": {"encyclopedic", "logical_mathematical", "contextual_spatial"},
    "A pink donut on a napkin": {"encyclopedic", "cultural_symbolism", "contextual_spatial"},
    "A refrigerator next to a sink": {"encyclopedic", "contextual_spatial"},
    "Two elephants walking along a river": {"encyclopedic", "logical_mathematical", "contextual_spatial"},
    "A pair of scissors on a desk": {"encyclopedic", "contextual_spatial"},
    # glosses that name a colour: the validator turns the encyclopedic rewrite away
    "An apple next to a banana": {"encyclopedic", "contextual_spatial"},
    "A swan swimming in a lake": {"encyclopedic", "contextual_spatial"},
    "A lemon in a bowl": {"encyclopedic", "contextual_spatial"},
    "A sandwich": {"encyclopedic"},
}
NOTHING = ["Playing outside", "It is sunny today", "There is a lot going on"]  # no object noun at all
RECORD = ImageRecord(Path("/images/0.jpg"), tuple(CAPTIONS), "test:1")


@pytest.fixture(scope="module")
def rewriter() -> WordNetRewriter:
    return WordNetRewriter()


def candidates(rewriter, seed=0):
    """Every candidate of every caption, {(caption, category): Candidate}, each drawn with its own rng."""
    return {(caption, category): rewriter.rewrite(caption, RECORD, category, random.Random(seed))
            for caption in CAPTIONS for category in CATEGORIES}


def test_targets_find_multiword_nouns_plurals_and_counts(rewriter):
    found = {t.span: t for t in rewriter.targets("Two fire hydrants and three mice next to a teddy bear")}
    assert set(found) == {"fire hydrants", "mice", "teddy bear"}
    hydrants, mice, bear = found["fire hydrants"], found["mice"], found["teddy bear"]
    assert (hydrants.lemma, hydrants.plural, hydrants.count) == ("fire hydrant", True, 2)
    assert (mice.lemma, mice.plural, mice.count) == ("mouse", True, 3)  # an irregular plural (noun.exc)
    assert (bear.lemma, bear.plural, bear.count, bear.place) == ("teddy bear", False, None, "next to")
    assert {"fire hydrant", "fire hydrants", "hydrant", "hydrants"} <= set(hydrants.forbidden)  # head word too
    assert {"mouse", "mice"} <= set(mice.forbidden)
    assert {"teddy", "teddies", "bear"} <= set(bear.forbidden)  # a synonym and the head word


def test_targets_skip_function_words_colours_generic_nouns_and_verbs(rewriter):
    spans = [t.span for t in rewriter.targets("A man stands in front of a white wall while a dog flies a kite")]
    assert spans == ["man", "wall", "dog"]  # not "stands", "front", "white", "flies"; "kite" is a bank check first
    spans = [t.span for t in rewriter.targets("A man stands in front of a white wall while a boy flies a plane")]
    assert spans == ["man", "wall", "boy", "plane"]
    assert [t.span for t in rewriter.targets("A close up picture of the side of a bus")] == ["bus"]
    assert [t.span for t in rewriter.targets("Two flies on a kitchen counter")] == ["flies", "counter"]


def test_targets_take_the_most_frequent_sense_only_when_concrete_and_its_synonyms(rewriter):
    assert rewriter.targets("a microwave") == []  # sense 1, the most frequent, is the electromagnetic wave
    car = rewriter.targets("a red car")[0]
    assert {"car", "cars", "automobile", "automobiles", "auto"} <= set(car.forbidden)


# Everyday captions whose nouns WordNet lists first in another sense than the one a rewrite used to take
SENSES = {
    "a surfer riding a wave": "wave",  # sense 1: a ridge on water (an event); it became a hairdo
    "a stop sign on a street": "sign",  # sense 1: an indication; it became a billboard
    "a plate of food": "plate",  # sense 1: home plate, a baseball term; no sense is taken
    "a bunch of bananas on a table": "bananas",  # sense 1: the plant; the fruit is taken
}


@pytest.mark.parametrize("caption", SENSES)
def test_a_noun_is_read_in_its_most_frequent_sense(rewriter, caption):
    word = SENSES[caption]
    target = next((t for t in rewriter.targets(caption) if t.span == word), None)
    if word == "bananas":
        assert "fruit" in rewriter.wordnet.definition(target.synset)
        assert rewriter.wordnet.synset(target.synset).lex_filenum == 13  # noun.food, not noun.plant
    else:
        assert target is None, f"{word!r} should be left alone, not read as {rewriter.wordnet.definition(target.synset)!r}"
    wrong = {"wave": "hair", "sign": "advertisement", "plate": "baseball", "bananas": "treelike"}[word]
    for category in CATEGORIES:
        candidate = rewriter.rewrite(caption, RECORD, category, random.Random(0))
        assert candidate is None or wrong not in candidate.caption, (category, candidate.caption)


@pytest.mark.parametrize("caption", CAPTIONS)
def test_each_caption_yields_its_categories(rewriter, caption):
    for category in CATEGORIES:
        candidate = rewriter.rewrite(caption, RECORD, category, random.Random(0))
        if category in CAPTIONS[caption]:
            assert candidate is not None, f"{caption!r} should yield {category}"
        if candidate is not None:
            assert candidate.category == category
            assert candidate.caption != caption and candidate.forbidden
            assert len(candidate.rewrites) == 1 and candidate.rewrites[0].span in caption


@pytest.mark.parametrize("caption", NOTHING)
def test_no_object_no_candidate(rewriter, caption):
    assert all(rewriter.rewrite(caption, RECORD, c, random.Random(0)) is None for c in CATEGORIES)


def test_every_category_is_yielded(rewriter):
    found = {c.category for c in candidates(rewriter).values() if c is not None}
    assert found == set(CATEGORIES) == set(rewriter.categories)


def test_deterministic_given_the_seed(rewriter):
    assert candidates(rewriter, seed=3) == candidates(rewriter, seed=3)
    other = WordNetRewriter()
    assert candidates(other, seed=3) == candidates(rewriter, seed=3)
    clues = {rewriter.rewrite("A red ball", RECORD, "cultural_symbolism", random.Random(s)).caption
             for s in range(20)}
    assert len(clues) > 1, "the seed should choose among the clues"


def test_the_validator_accepts_most(rewriter):
    made = {key: c for key, c in candidates(rewriter).items() if c is not None}
    rejected = {key: validate(key[0], c, ENGLISH_ATTRIBUTES) for key, c in made.items()}
    rejected = {key: reason for key, reason in rejected.items() if reason is not None}
    assert len(rejected) <= 0.1 * len(made), rejected


def test_counts_survive_as_arithmetic(rewriter):
    for seed in range(10):
        candidate = rewriter.rewrite("Two dogs and 3 cats", RECORD, "logical_mathematical", random.Random(seed))
        assert not {"two", "2"} & set(words(candidate.caption)), candidate.caption
        assert sorted(counts(candidate.caption)) == [2, 3]
        assert validate("Two dogs and 3 cats", candidate, ENGLISH_ATTRIBUTES) is None


def test_colour_clues_never_name_a_colour():
    for colour, clues in COLOUR_CLUES.items():
        for clue in clues:
            assert not any(w.startswith(a) for w in words(clue) for a in ENGLISH_ATTRIBUTES), (colour, clue)


def test_a_clue_never_repeats_the_caption(rewriter):
    for seed in range(10):
        candidate = rewriter.rewrite("A white swan near milk", RECORD, "cultural_symbolism", random.Random(seed))
        assert candidate.caption.endswith("the colour of fresh snow near milk")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("Two canines playing with a dog", "names_target"),  # the noun leaked
        ("(1+1) dogs playing with a red ball", "names_target"),  # the plural leaked
        ("Two domestic dogs playing with a red ball", "names_target"),  # a synonym (multiword) leaked
        ("Three canines playing with a red ball", "changed_count"),  # the count changed
        ("Two canines playing with a blue ball", "changed_attribute"),  # a colour the image does not show
    ],
)
def test_the_validator_catches_bad_rewrites(rewriter, bad, reason):
    source = "Two dogs playing with a red ball"
    good = rewriter.rewrite(source, RECORD, "encyclopedic", random.Random(0))
    assert validate(source, good, ENGLISH_ATTRIBUTES) is None
    assert validate(source, replace(good, caption=bad), ENGLISH_ATTRIBUTES) == reason


def test_a_leaked_synonym_is_forbidden(rewriter):
    source = "A car parked on a street"
    good = rewriter.rewrite(source, RECORD, "encyclopedic", random.Random(0))
    assert validate(source, good, ENGLISH_ATTRIBUTES) is None
    bad = Candidate("An automobile parked on a street", "encyclopedic", good.rewrites, good.forbidden)
    assert validate(source, bad, ENGLISH_ATTRIBUTES) == "names_target"


def test_a_missing_wordnet_names_the_setting(tmp_path):
    with pytest.raises(Exception, match="wordnet_dir"):
        WordNetRewriter(tmp_path / "nowhere")


# (caption, category) -> (rule, control caption): the rewritten span made neutral, the rest kept as it was
CONTROLS = {
    ("A man riding a horse on a beach", "encyclopedic"): ("wordnet_gloss", "Something riding a horse on a beach"),
    ("Four birds on a wire", "encyclopedic"): ("wordnet_gloss", "Four things on a wire"),  # the count stays
    ("A grey cat sitting on a bookshelf", "encyclopedic"): ("wordnet_gloss", "A grey thing sitting on a bookshelf"),
    ("The bus is yellow", "encyclopedic"): ("wordnet_gloss", "Something is yellow"),
    ("A knife next to a plate of food", "tool_utility"): ("use_clause", "Something next to a plate of food"),
    ("Four birds on a wire", "tool_utility"): ("use_clause", "Four birds on something"),
    ("A teddy bear on a bed", "functional"): ("agent_clause", "A teddy bear on something"),
    ("3 cows standing behind a fence", "functional"): ("agent_clause", "3 cows standing behind something"),
    ("Two dogs playing with a red ball", "cultural_symbolism"): ("colour_clue", "Two dogs playing with a ball"),
    ("The bus is yellow", "cultural_symbolism"): ("colour_clue", "The bus is coloured"),
    ("Two dogs playing with a red ball", "logical_mathematical"): ("arithmetic", "Some dogs playing with a red ball"),
    ("3 cows standing behind a fence", "logical_mathematical"): ("arithmetic", "Some cows standing behind a fence"),
    ("A man riding a horse on a beach", "contextual_spatial"): ("place_gloss", "A man riding a horse on something"),
    ("A brown bear walking through the field", "contextual_spatial"): ("place_gloss",
                                                                       "A brown bear walking through something"),
    # beyond the list: an article that must change, a determiner before a count, one, a span said twice
    ("An orange cat on a sofa", "cultural_symbolism"): ("colour_clue", "A cat on a sofa"),
    ("The two dogs on a beach", "logical_mathematical"): ("arithmetic", "The dogs on a beach"),
    ("A stone with one bird", "logical_mathematical"): ("arithmetic", "A stone with a bird"),
    ("A red and white bus is red", "cultural_symbolism"): ("colour_clue", "A red and white bus is coloured"),
}


@pytest.mark.parametrize(("caption", "category"), CONTROLS)
def test_each_rule_has_a_control_caption(rewriter, caption, category):
    rule, control = CONTROLS[caption, category]
    candidate = rewriter.rewrite(caption, RECORD, category, random.Random(0))
    assert candidate.rewrites[0].rule == rule
    assert control_caption(caption, candidate.rewrites) == control


def test_a_control_caption_drops_the_target_and_adds_no_clue(rewriter):
    made = {key: c for key, c in candidates(rewriter).items() if c is not None}
    assert {c.rewrites[0].rule for c in made.values()} == {"wordnet_gloss", "use_clause", "agent_clause",
                                                           "colour_clue", "arithmetic", "place_gloss"}
    for (caption, _), candidate in made.items():
        control = control_caption(caption, candidate.rewrites)
        assert control is not None and control != caption, caption
        tokens = set(words(control))
        forbidden = {f.lower() for f in candidate.forbidden}
        assert not forbidden & tokens and not any(" " in f and f in control.lower() for f in forbidden), control
        added = set(words(candidate.rewrites[0].replacement)) - set(words(caption))
        assert not added & tokens, (control, added & tokens)


def test_build_writes_english_control_captions(rewriter):
    captions = ["A man riding a horse on a beach", "Two dogs playing with a red ball", "A knife next to a plate of food",
                "A teddy bear on a bed", "The bus is yellow", "3 cows standing behind a fence"]
    records = [ImageRecord(Path(f"/images/{i}.jpg"), (c,), f"test:{i}") for i, c in enumerate(captions)]
    build = build_karr(ImageTextDataset(records, "english"), [rewriter], attributes=ENGLISH_ATTRIBUTES,
                       progress=False)
    assert len(build.records) == len(captions)
    for record in build.records:
        meta = record.meta
        assert all(r["neutral"] for r in meta["rewrites"])
        assert meta["control_caption"] == control_caption(
            meta["source_caption"], [Rewrite(**r) for r in meta["rewrites"]])
        assert meta["control_caption"] not in (meta["source_caption"], record.captions[0])
    assert [r.captions[0] for r in control_dataset(ImageTextDataset(build.records, "karr")).records] == [
        r.meta["control_caption"] for r in build.records]

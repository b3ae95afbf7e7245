"""The shapes world: determinism, held-out hygiene, true captions, files, rendering, knowledge."""

import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from slq.data import load_image, load_jsonl
from slq.data.shapes import (COLOUR_CLUES, COLOUR_RGB, COLOURS, SHAPE_CLUES, SHAPES, SIZES, SPLITS, ShapeObject,
                             captions_for, generate_split, held_out_combos, knowledge_captions, knowledge_corpus,
                             record_objects, render, write_world)
from slq.errors import SLQError

SEED = 7
SIZE = 64
SMALL_WORLD = {"n_train": 30, "n_val": 10, "n_test": 20, "image_size": SIZE}
COL, SHP = "|".join(COLOURS), "|".join(SHAPES)
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}


def world_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_world(root, seed=SEED, progress=False, **SMALL_WORLD)
    return root


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
    return {split: generate_split(300, split, SEED) for split in SPLITS}


# ---------------------------------------------------------------------------------------------
# Determinism and files


def test_same_seed_gives_identical_files_and_another_seed_does_not(world, tmp_path):
    write_world(tmp_path / "same", seed=SEED, progress=False, **SMALL_WORLD)
    write_world(tmp_path / "other", seed=SEED + 1, progress=False, **SMALL_WORLD)
    first, same, other = world_files(world), world_files(tmp_path / "same"), world_files(tmp_path / "other")
    assert len(first) == 30 + 10 + 20 + 5  # images, 3 JSONL, knowledge.txt, world.json
    assert first == same
    assert first.keys() == other.keys()
    changed = [name for name in first if first[name] != other[name]]
    assert {"train.jsonl", "test.jsonl", "knowledge.txt", "world.json"} <= set(changed)
    assert sum(name.endswith(".png") for name in changed) > 50


def test_split_prefix_does_not_depend_on_split_length():
    assert generate_split(5, "test", SEED) == generate_split(12, "test", SEED)[:5]


def test_written_jsonl_loads_with_extra_keys_and_images_open(world):
    for split, n in (("train", 30), ("val", 10), ("test", 20)):
        dataset = load_jsonl(world / f"{split}.jsonl")
        assert len(dataset) == n and all(len(r.captions) == 5 for r in dataset.records)
        raw = [json.loads(line) for line in (world / f"{split}.jsonl").read_text().splitlines()]
        for record, loaded in zip(raw, dataset.records):
            assert loaded.image == (world / record["image"]).resolve()
            image = load_image(loaded)
            assert image.size == (SIZE, SIZE)
            # The file holds exactly what render() draws from the record.
            expected = render(record_objects(record), SIZE, tuple(record["background"]))
            assert np.array_equal(np.asarray(image), np.asarray(expected))
    meta = json.loads((world / "world.json").read_text())
    assert meta["seed"] == SEED and meta["n_test"] == 20
    assert {tuple(c) for c in meta["held_out"]} == held_out_combos(SEED)
    assert (world / "knowledge.txt").read_text().splitlines() == knowledge_corpus(SEED)


def test_bad_arguments_name_the_option():
    with pytest.raises(SLQError, match="split must be one of train, val, test; got 'dev'"):
        generate_split(3, "dev", 0)
    with pytest.raises(SLQError, match="image_size"):
        generate_split(3, "train", 0, image_size=8)
    with pytest.raises(SLQError, match="n_val"):
        write_world("/nonexistent", n_val=0)
    with pytest.raises(SLQError, match="colour must be one of"):
        ShapeObject("circle", "pink", "small", 10, 10)


# ---------------------------------------------------------------------------------------------
# Held-out compositions


def test_held_out_combos_cover_every_colour_and_shape_and_depend_on_seed():
    combos = held_out_combos(SEED)
    assert combos == held_out_combos(SEED)
    assert len(combos) == len(COLOURS)  # 6 of 30 pairs
    assert Counter(c for c, _ in combos) == Counter(COLOURS)  # one held-out shape per colour
    assert set(s for _, s in combos) == set(SHAPES)
    assert max(Counter(s for _, s in combos).values()) <= 2  # every shape keeps >= 4 seen colours
    assert len({held_out_combos(seed) for seed in range(10)}) > 5


def held_out_mentions(text: str, combos) -> list[tuple[str, str]]:
    """Held-out pairs written as adjacent words, either order, shape possibly plural."""
    words = re.findall(r"[a-z]+", text.lower())
    found = []
    for a, b in zip(words, words[1:]):
        for colour, shape in combos:
            if {a, b} in ({colour, shape}, {colour, shape + "s"}):
                found.append((colour, shape))
    return found


def test_mention_finder_sees_held_out_pairs():
    combos = {("blue", "circle")}
    assert held_out_mentions("two large blue circles", combos) == [("blue", "circle")]
    assert held_out_mentions("a circle, blue sky", combos) == [("blue", "circle")]
    assert held_out_mentions("a blue star above a red circle", combos) == []


def test_train_never_shows_a_held_out_pair_yet_sees_every_word(records):
    combos = held_out_combos(SEED)
    train = records["train"]
    for record in train:
        assert not record["held_out"]
        assert not {(o["colour"], o["shape"]) for o in record["objects"]} & combos, record
        for text in record["captions"] + record["knowledge_captions"]:
            assert held_out_mentions(text, combos) == [], text
    seen = {o[key] for r in train for o in r["objects"] for key in ("colour", "shape", "size")}
    assert seen == set(COLOURS) | set(SHAPES) | set(SIZES)
    words = {w for r in train for c in r["captions"] for w in re.findall(r"[a-z]+", c)}
    assert set(COLOURS) | set(SHAPES) <= words


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_and_test_mix_seen_and_held_out_records(records, split):
    combos = held_out_combos(SEED)
    flags = []
    for record in records[split]:
        shown = {(o["colour"], o["shape"]) for o in record["objects"]}
        assert record["held_out"] == bool(shown & combos)
        flags.append(record["held_out"])
    assert 0.3 < sum(flags) / len(flags) < 0.7
    shown_held_out = {(o["colour"], o["shape"]) for r in records[split] for o in r["objects"]} & combos
    assert shown_held_out == combos


# ---------------------------------------------------------------------------------------------
# Captions are true


def check_caption(caption: str, objects: list[dict], size: int, tally: Counter) -> None:
    """Every count, position and relation the caption states holds for the objects."""
    groups = Counter((o["colour"], o["shape"]) for o in objects)
    by_pair = {(o["colour"], o["shape"]): o for o in objects}
    for number, sz, colour, shape, plural in re.findall(
        rf"\b(a|an|one|two|three) (?:(small|large) )?({COL}) ({SHP})(s?)\b", caption
    ):
        count = groups[(colour, shape)]
        assert count == NUMBERS[number], (caption, objects)
        assert (plural == "s") == (count > 1), caption
        assert not sz or all(o["size"] == sz for o in objects if (o["colour"], o["shape"]) == (colour, shape))
        tally["count"] += 1
    for number in re.findall(r"\b(one|two|three) (?:objects?|shapes?)\b", caption):
        assert NUMBERS[number] == len(objects), (caption, objects)
        tally["total"] += 1
    for c1, s1, relation, c2, s2 in re.findall(
        rf"({COL}) ({SHP}) (?:is )?(above|below|to the left of|to the right of) (?:an?) (?:(?:small|large) )?"
        rf"({COL}) ({SHP})\b", caption
    ):
        a, b = by_pair[(c1, s1)], by_pair[(c2, s2)]
        assert groups[(c1, s1)] == groups[(c2, s2)] == 1, caption
        margin = 0.15 * size
        holds = {"above": b["y"] - a["y"] > margin, "below": a["y"] - b["y"] > margin,
                 "to the left of": b["x"] - a["x"] > margin, "to the right of": a["x"] - b["x"] > margin}
        assert holds[relation], (caption, a, b)
        tally["relation"] += 1
    positioned = rf"({COL}) ({SHP}) ((?:in|on|at) the [a-z ]+?)(?=,| and |$)"
    for colour, shape, phrase in re.findall(positioned, caption):
        obj = by_pair[(colour, shape)]
        x, y, third = obj["x"], obj["y"], size / 3
        words = set(phrase.split())
        assert words & {"left", "right", "top", "bottom", "centre", "middle"}, phrase
        assert "left" not in words or x < third, (caption, obj)
        assert "right" not in words or x >= 2 * third, (caption, obj)
        assert "top" not in words or y < third, (caption, obj)
        assert "bottom" not in words or y >= 2 * third, (caption, obj)
        assert not words & {"centre", "middle"} or (third <= x < 2 * third and third <= y < 2 * third)
        tally["position"] += 1


def test_check_caption_catches_false_statements():
    objects = [{"colour": "red", "shape": "circle", "x": 10, "y": 10},
               {"colour": "blue", "shape": "star", "x": 50, "y": 50}]
    for false in ("a red circle below a blue star", "a blue star on the left", "three objects",
                  "two red circles", "a red circle to the right of a blue star", "a blue star in the centre"):
        with pytest.raises(AssertionError):
            check_caption(false, objects, 64, Counter())
    true = "a red circle above a blue star and a blue star at the bottom right"
    check_caption(true, objects, 64, Counter())


def test_captions_state_only_true_counts_positions_and_relations(records):
    tally = Counter()
    for split in SPLITS:
        for record in records[split]:
            assert len(record["captions"]) == 5 and len(set(record["captions"])) == 5
            for caption in record["captions"]:
                check_caption(caption, record["objects"], SIZE, tally)
    assert min(tally[k] for k in ("count", "total", "relation", "position")) > 100, tally
    counted = {c for r in records["train"] for c in r["captions"]}
    assert any(c.startswith("two ") for c in counted) and any(" three " in f" {c}" for c in counted)


def test_captions_at_another_image_size_are_true():
    tally = Counter()
    for record in generate_split(100, "test", SEED, image_size=128):
        for caption in record["captions"]:
            check_caption(caption, record["objects"], 128, tally)
    assert tally["relation"] > 10 and tally["position"] > 10


def test_captions_for_is_a_pure_function_of_rng():
    objects = [ShapeObject("star", "yellow", "large", 12, 32), ShapeObject("circle", "blue", "small", 51, 12)]
    assert captions_for(objects, random.Random(1)) == captions_for(objects, random.Random(1))
    assert captions_for(objects, random.Random(1), n=3) != captions_for(objects, random.Random(2), n=3)


# ---------------------------------------------------------------------------------------------
# Rendering


@pytest.mark.parametrize("colour", COLOURS)
def test_render_draws_the_requested_colour_at_a_large_objects_centre(colour):
    for shape in SHAPES:
        image = np.asarray(render([ShapeObject(shape, colour, "large", 30, 33)], SIZE, (246, 246, 240)))
        assert tuple(image[33, 30]) == COLOUR_RGB[colour], shape  # row y, column x
        assert tuple(image[0, 0]) == (246, 246, 240)
    names = list(COLOUR_RGB)
    gaps = [np.linalg.norm(np.subtract(COLOUR_RGB[a], COLOUR_RGB[b])) for a in names for b in names if a < b]
    assert min(gaps) > 90


def test_generated_objects_are_drawn_where_recorded_inside_the_canvas_and_apart(records):
    background = (255, 255, 255)
    for record in records["test"][:60]:
        objects = record_objects(record)
        masks = []
        for obj in objects:
            pixels = np.asarray(render([obj], SIZE, background))
            masks.append((pixels != background).any(axis=2))
            if obj.size == "large":
                assert tuple(pixels[obj.y, obj.x]) == COLOUR_RGB[obj.colour]
        total = np.sum(masks, axis=0)
        assert total.max() == 1, record["objects"]  # no pixel touched by two objects
        assert not (total[0].any() or total[-1].any() or total[:, 0].any() or total[:, -1].any())


@pytest.mark.parametrize("shape", SHAPES)
def test_large_is_clearly_larger_than_small(shape):
    images = {size: np.asarray(render([ShapeObject(shape, "red", size, 32, 32)], SIZE)) for size in SIZES}
    areas = {size: (pixels != 255).any(axis=2).sum() for size, pixels in images.items()}
    assert areas["large"] > 2.5 * areas["small"] > 0, areas


# ---------------------------------------------------------------------------------------------
# Knowledge


def test_knowledge_corpus_is_deterministic_distinct_and_holds_the_core_facts():
    corpus = knowledge_corpus(SEED)
    assert corpus == knowledge_corpus(SEED)
    assert corpus != knowledge_corpus(SEED + 1) and sorted(corpus) == sorted(knowledge_corpus(SEED + 1))
    assert 200 <= len(corpus) == len(set(corpus))
    for fact in ("a triangle has three sides", "a square has four sides", "a star has five points",
                 "the colour of grass is green", "the sky is blue", "a stop sign is red",
                 "a banana is yellow",
                 "an orange is orange", "a grape is purple", "blue and yellow make green",
                 "two plus one is three", "(2+1) is three", "3 is three"):
        assert fact in corpus, fact
    for sentence in corpus:  # no colour-shape pair at all, so no held-out pair can leak
        assert held_out_mentions(sentence, [(c, s) for c in COLOURS for s in SHAPES]) == [], sentence


def check_knowledge_caption(caption: str, objects: list[dict], corpus: set[str]) -> None:
    """Names no colour in view and no shape; each clue is a corpus fact pointing into the image."""
    colours, shapes = {o["colour"] for o in objects}, {o["shape"] for o in objects}
    words = set(re.findall(r"[a-z]+", caption))
    assert not words & (colours | set(SHAPES) | {s + "s" for s in SHAPES}), caption
    colour_of = dict(m.groups() for f in corpus if (m := re.fullmatch(r"the colour of (.+) is ([a-z]+)", f)))
    for rest in caption.split("the colour of ")[1:]:
        things = [t for t in colour_of if re.match(rf"{re.escape(t)}\b", rest)]
        assert things and colour_of[max(things, key=len)] in colours, (caption, rest)
    for a, b in re.findall(r"mixing ([a-z]+) and ([a-z]+)", caption):
        answers = {c for c in COLOURS if f"{a} and {b} make {c}" in corpus}
        assert len(answers) == 1 and answers <= colours, (caption, a, b)
    for colour in colours:  # every colour in view is given a clue
        clued = any(f"the colour of {t}" in caption for t in COLOUR_CLUES[colour])
        assert clued or "mixing" in caption, caption
    for shape, clues in SHAPE_CLUES.items():
        for singular, plural in clues:
            if re.search(rf"\b({re.escape(singular)}|{re.escape(plural)})\b", caption):
                assert f"a {shape} is a {singular}" in corpus and shape in shapes, (caption, singular)
    counts = set(Counter(o["colour"] for o in objects).values())
    counts |= set(Counter((o["colour"], o["shape"]) for o in objects).values()) | {len(objects)}
    word_value = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five"))}
    for expr in re.findall(r"\([0-9+-]+\)|\b[a-z]+ (?:plus|minus) [a-z]+\b", caption):
        facts = [f for f in corpus if f.startswith(f"{expr} is ")]
        assert len(facts) == 1 and word_value[facts[0].split()[-1]] in counts, (caption, expr)


def test_check_knowledge_caption_catches_ungrounded_clues():
    objects = [{"colour": "green", "shape": "triangle"}]
    corpus = set(knowledge_corpus(0))
    check_knowledge_caption("a shape with three sides in the colour of grass", objects, corpus)
    for bad in ("a green shape with three sides", "a shape with five points the colour of grass",
                "a shape with three sides the colour of the sky",
                "(1+1) shapes with three sides the colour of grass",
                "a shape with three sides the colour of a moon"):
        with pytest.raises(AssertionError):
            check_knowledge_caption(bad, objects, corpus)


def test_knowledge_captions_are_grounded_in_the_corpus_and_the_image(records):
    corpus = set(knowledge_corpus(SEED))
    n_mix = n_count = 0
    for record in records["test"]:
        rng = random.Random(record["image"])
        captions = knowledge_captions(record_objects(record), rng, n=3) + record["knowledge_captions"]
        for caption in captions:
            check_knowledge_caption(caption, record["objects"], corpus)
            n_mix += "mixing" in caption
            n_count += "(" in caption or " plus " in caption or " minus " in caption
    assert n_mix > 20 and n_count > 20
    green_triangle = [ShapeObject("triangle", "green", "small", 32, 32)]
    texts = knowledge_captions(green_triangle, random.Random(0), 5)
    assert any("three" in c and "the colour of" in c for c in texts), texts


def test_seen_only_knowledge_captions_use_no_text_only_clue():
    import random as _random

    from slq.data.shapes import (COLOUR_CLUES, SEEN_COLOUR_THINGS, clue_seen_with_images, generate_split,
                                 knowledge_captions, knowledge_vqa_pairs, record_objects)

    text_only_things = [t for c, things in COLOUR_CLUES.items() for t in things if t not in SEEN_COLOUR_THINGS[c]]
    assert text_only_things and not any(clue_seen_with_images(t) for t in text_only_things)
    records = generate_split(40, "train", 0)
    for i, r in enumerate(records):
        for caption in knowledge_captions(record_objects(r), _random.Random(i), 3, seen_only=True):
            assert "mixing" not in caption and "minus" not in caption and "-" not in caption, caption
            assert not any(f"of {t}" in caption for t in text_only_things), caption
            assert "corners" not in caption and "symbol of love" not in caption, caption
        for question, answer in knowledge_vqa_pairs(r["objects"], _random.Random(i)):
            if question.startswith("is there something the colour of "):
                thing = question.removeprefix("is there something the colour of ").rstrip("?")
                colour = next(c for c, things in COLOUR_CLUES.items() if thing in things)
                assert answer == ("yes" if colour in {o["colour"] for o in r["objects"]} else "no")
    # the default (the shipped world's records) is unchanged: every clue may appear
    assert any("mixing" in c for i, r in enumerate(records)
               for c in knowledge_captions(record_objects(r), _random.Random(i), 3))

"""KARR rewrites of the shapes world: one rule per category, every clue a corpus fact, deterministic,
and KARR-Shapes as shipped equal to its command's output."""

import hashlib
import json
import random
from pathlib import Path

import pytest

from slq.data import ImageRecord
from slq.data.shapes import COLOURS, SHAPES, clue_seen_with_images, knowledge_corpus, plural
from slq.karr import CATEGORIES, SHAPES_ATTRIBUTES, ShapesRewriter, validate
from slq.karr.shapes import KARR_SHAPES, build_karr_shapes


def record(*objects: tuple[str, str]) -> ImageRecord:
    return ImageRecord(Path("/x.png"), ("c",), "test", {"objects": [{"colour": c, "shape": s} for c, s in objects]})


CASES = [  # (category, caption, objects in view, words that must be gone)
    ("cultural_symbolism", "two red circles and a blue square", [("red", "circle"), ("blue", "square")],
     {"red", "blue"}),
    ("cultural_symbolism", "a picture of a yellow heart", [("yellow", "heart")], {"yellow", "heart"}),
    ("encyclopedic", "a large orange triangle at the bottom", [("orange", "triangle")], {"triangle"}),
    ("functional", "two shapes: two orange circles", [("orange", "circle")], {"circle", "circles"}),
    ("logical_mathematical", "there are three objects: three yellow hearts", [("yellow", "heart")], {"three"}),
    ("logical_mathematical", "a picture showing an orange star", [("orange", "star")], {"orange"}),
    ("contextual_spatial", "an orange star in the top right corner", [("orange", "star")], {"top", "right"}),
    ("contextual_spatial", "a small red square is above a blue star", [("red", "square"), ("blue", "star")],
     {"above"}),
    ("contextual_spatial", "a red square to the left of a blue star", [("red", "square"), ("blue", "star")],
     {"left"}),
]


@pytest.mark.parametrize("category, caption, objects, gone", CASES)
def test_each_rule_rewrites_its_category_and_passes_the_validator(category, caption, objects, gone):
    rewriter = ShapesRewriter()
    candidate = rewriter.rewrite(caption, record(*objects), category, random.Random(0))
    assert candidate is not None and candidate.category == category
    assert not gone & set(candidate.caption.split()), candidate.caption
    assert validate(caption, candidate, SHAPES_ATTRIBUTES) is None, candidate
    again = rewriter.rewrite(caption, record(*objects), category, random.Random(0))
    assert again == candidate  # deterministic under the same draw


def test_rules_yield_nothing_where_the_caption_offers_nothing():
    rewriter = ShapesRewriter()
    assert rewriter.rewrite("a red square", record(("red", "square")), "functional", random.Random(0)) is None
    assert rewriter.rewrite("a red square", record(("red", "square")), "contextual_spatial", random.Random(0)) is None
    assert rewriter.rewrite("a red square", record(("red", "square")), "tool_utility", random.Random(0)) is None
    # green is blue and yellow mixed, but a yellow object is in view: the clue would name a colour in view
    assert rewriter.rewrite("a green star", record(("green", "star"), ("yellow", "heart")), "logical_mathematical",
                            random.Random(0)) is None
    assert "tool_utility" not in rewriter.categories and set(rewriter.categories) <= set(CATEGORIES)


def test_every_clue_is_a_corpus_fact():
    """Each clue a rule names stands in the world's knowledge corpus as a fact about its target."""
    corpus = set(knowledge_corpus(0))
    rewriter = ShapesRewriter()
    for colour in COLOURS:
        for seed in range(12):
            c = rewriter.rewrite(f"a {colour} square", record((colour, "square")), "cultural_symbolism",
                                 random.Random(seed))
            thing = c.caption.split("the colour of ")[1]
            assert f"{thing} is {colour}" in corpus, c.caption
    for shape in SHAPES[:4]:
        for seed in range(6):
            c = rewriter.rewrite(f"two red {plural(shape)}", record(("red", shape)), "encyclopedic",
                                 random.Random(seed))
            if c is None:
                assert shape == "star"  # its one description is seen beside images: no text-only clue
                continue
            clue = c.caption.split("red ")[1]
            assert f"{plural(shape)} are {clue}" in corpus, c.caption
    for seed in range(10):
        c = rewriter.rewrite("there are three objects", record(), "logical_mathematical", random.Random(seed))
        expression = c.caption.split("are ")[1].split(" objects")[0]
        assert f"{expression} is three" in corpus, c.caption


def test_clue_sets_are_recorded_as_the_pretraining_meets_them():
    """A candidate marked seen_with_images uses only clues the pretraining shows beside images; one
    marked text_only, none of them."""
    rewriter = ShapesRewriter()
    marked = set()
    for seed in range(40):
        for category in ("cultural_symbolism", "encyclopedic", "logical_mathematical"):
            c = rewriter.rewrite("two red triangles and a blue square", record(("red", "triangle"), ("blue", "square")),
                                 category, random.Random(seed))
            if c is None:
                continue
            marked.add(c.clues)
            for r in c.rewrites:  # the clue: a thing, a shape description, or the count expression itself
                clue = r.replacement.split("the colour of ")[-1].split("red ")[-1].split("blue ")[-1]
                assert clue_seen_with_images(clue) == (c.clues == "seen_with_images"), (category, c.clues, clue)
    assert marked == {"seen_with_images", "text_only"}


def test_shipped_karr_shapes_is_its_commands_output(tmp_path):
    """`slq karr shapes` rebuilds the shipped benchmark byte for byte: the JSONL, build.json and
    every image."""
    build_karr_shapes(tmp_path / "k")

    def digest(folder: Path) -> dict:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "categories.png"}  # a plot: matplotlib's bytes

    assert digest(tmp_path / "k") == digest(KARR_SHAPES)
    summary = json.loads((KARR_SHAPES / "build.json").read_text())
    assert summary["pairs"] >= 500 and sum(c["accepted"] > 0 for c in summary["categories"].values()) >= 5


def test_a_place_turned_round_is_a_changed_attribute():
    """An LM's "on the right side" for the source's "on the left side" names the wrong place: the
    validator turns it away, while the rule's own "on the side opposite the right" passes."""
    from slq.karr import Candidate, Rewrite

    source = "a small orange circle on the left side"
    wrong = Candidate("a small orange circle on the right side", "contextual_spatial",
                      (Rewrite("on the left side", "on the right side", "lm"),), ("left",))
    assert validate(source, wrong, SHAPES_ATTRIBUTES) == "changed_attribute"
    rule = ShapesRewriter().rewrite(source, record(("orange", "circle")), "contextual_spatial", random.Random(0))
    assert rule.caption == "a small orange circle on the side opposite the right"
    assert validate(source, rule, SHAPES_ATTRIBUTES) is None


@pytest.mark.slow
def test_breakdown_script_scores_each_category_and_clue_set_against_its_control(tiny_dirs, tmp_path):
    """scripts/karr_breakdown.py as the docs run it: a row per (category, clue set), KARR beside its control."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from slq.data import load_jsonl
    from slq.data.shapes import write_world
    from slq.karr import SHAPES_ATTRIBUTES, ShapesRewriter, build_karr, write_karr
    from slq.retriever import SLQRetriever

    world = write_world(tmp_path / "w", n_train=1, n_val=1, n_test=12, progress=False)
    write_karr(build_karr(load_jsonl(world["test"]), [ShapesRewriter()], attributes=SHAPES_ATTRIBUTES),
               tmp_path / "karr", plot=False)
    SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], num_queries=2).save(tmp_path / "adapter")
    script = Path(__file__).resolve().parents[2] / "scripts" / "karr_breakdown.py"
    done = subprocess.run([sys.executable, str(script), "--backbone", str(tiny_dirs["qwen2_vl"]),
                           "--adapter", str(tmp_path / "adapter"), "--karr", str(tmp_path / "karr")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    tables = json.loads(done.stdout.splitlines()[-1])
    records = load_jsonl(tmp_path / "karr" / "karr.jsonl").records
    assert set(tables["karr"]) == {f"{r.meta['category']} / {r.meta['clues']}" for r in records}
    assert sum(row["n_images"] for row in tables["karr"].values()) == len(records)
    assert set(tables["control"]) <= set(tables["karr"])
    assert all(0 <= row["R@1"] <= row["R@5"] <= row["R@10"] <= 100 for row in tables["karr"].values())

"""The MMEB-format suite from the shapes world: determinism, MMEB's row conventions, right answers
checked against the world's records, readable images, and training pairs slq can load."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import slq.cli
from slq.data import load_pairs
from slq.data.mmeb_suite import CROP_SIZE, TASKS, SuiteConfig, crop_object, write_mmeb_suite
from slq.data.shapes import (COLOUR_RGB, COLOURS, NUMBER_WORDS, SHAPES, ShapeObject, record_objects, render,
                             write_world)
from slq.errors import SettingError, SLQError

WORLD = {"n_train": 60, "n_val": 30, "n_test": 60, "image_size": 64, "seed": 3}
SUITE = {"n_eval": 10, "n_candidates": 6, "n_train_pairs": 10}
META = {"ShapesColour": "classification", "ShapesShape": "classification", "ShapesCount": "classification",
        "ShapesVQA": "vqa", "ShapesT2I": "retrieval", "ShapesI2T": "retrieval", "ShapesGrounding": "grounding"}
TOKEN = "<|image_1|>\n"
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
NAMED = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})s?\b")


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def at(phrase: str, position: str) -> bool:
    """The world's captions: a top-left object is "at the top" and "on the left", never "in the centre"."""
    return phrase == position if "centre" in (phrase, position) else set(phrase.split()) <= set(position.split())


def objects_at(record: dict, phrase: str) -> list[int]:
    return [k for k, o in enumerate(record["objects"]) if at(phrase, o["position"])]


def phrase_of(text: str) -> str:
    """"top left" from "... at the top left?" or "... on the left."."""
    return re.search(r"(?:in|on|at) the ([a-z ]+)[.?]$", text).group(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_world(root, progress=False, **WORLD)
    return root


@pytest.fixture(scope="module")
def suite(world, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("suite")
    return out, write_mmeb_suite(world, out, progress=False, **SUITE)


@pytest.fixture(scope="module")
def test_records(world) -> list[dict]:
    return read_jsonl(world / "test.jsonl")


def rows(suite, name: str, folder: str = "eval") -> list[dict]:
    return read_jsonl(suite[0] / folder / f"{name}.jsonl")


def record_of(row: dict, records: list[dict]) -> dict:
    return records[int(row["id"].split("-")[1])]


# ---------------------------------------------------------------------------------------------
# Files and MMEB's conventions


def test_same_world_and_config_give_identical_files(world, suite, tmp_path):
    out, _ = suite
    write_mmeb_suite(world, tmp_path / "again", progress=False, **SUITE)
    write_mmeb_suite(world, tmp_path / "other", progress=False, **{**SUITE, "seed": 1})
    first, again, other = files_of(out), files_of(tmp_path / "again"), files_of(tmp_path / "other")
    assert sum(name.endswith(".jsonl") for name in first) == 2 * len(TASKS) + 2
    assert first == again
    assert any(first[name] != other.get(name) for name in first if name.endswith(".jsonl"))


def test_first_queries_do_not_depend_on_n_eval(world, suite, tmp_path):
    write_mmeb_suite(world, tmp_path, progress=False, **{**SUITE, "n_eval": 4})
    for task in TASKS:
        assert read_jsonl(tmp_path / "eval" / f"{task.name}.jsonl") == rows(suite, task.name)[:4], task.name


def test_datasets_listed_with_their_meta_tasks_and_sized(suite):
    out, summary = suite
    for folder, key in (("eval", "eval"), ("val", "val_eval")):
        assert json.loads((out / folder / "slq-mmeb.json").read_text()) == {"datasets": META}
        assert summary[key] == {name: SUITE["n_eval"] for name in META}
        for name in META:
            assert len(rows(suite, name, folder)) == SUITE["n_eval"]
    assert summary["train_pairs"] == {name: SUITE["n_train_pairs"] for name in META}
    assert summary["val_pairs"] == {name: SUITE["n_train_pairs"] // 4 for name in META}


@pytest.mark.parametrize("folder", ["eval", "val"])
def test_rows_follow_mmeb_v1(suite, folder):
    sizes = {"ShapesColour": {len(COLOURS)}, "ShapesShape": {len(SHAPES)}, "ShapesCount": {3},
             "ShapesVQA": set(range(3, 9))}
    for name in META:
        for row in rows(suite, name, folder):
            assert isinstance(row["qry_text"], str) and isinstance(row["qry_img_path"], str)
            texts, images = row["tgt_text"], row["tgt_img_path"]
            assert len(texts) == len(images) in sizes.get(name, {SUITE["n_candidates"]}), (name, row["id"])
            assert len(set(zip(texts, images))) == len(texts), f"{name} {row['id']}: a candidate repeats"
            for text, image in [(row["qry_text"], row["qry_img_path"]), *zip(texts, images)]:
                assert text.startswith(TOKEN) == bool(image), (name, text, image)
                assert TOKEN not in text[len(TOKEN):]


def test_every_image_named_exists_and_opens(suite):
    out, _ = suite
    for folder in ("eval", "val"):
        for name in META:
            for row in rows(suite, name, folder):
                for image in filter(None, [row["qry_img_path"], *row["tgt_img_path"]]):
                    with Image.open(out / folder / image) as img:
                        img.load()
                        expected = (CROP_SIZE, CROP_SIZE) if "/crops/" in image else (64, 64)
                        assert img.size == expected and img.format == "PNG"


# ---------------------------------------------------------------------------------------------
# Right answers, checked against the records


def test_classification_answers(suite, test_records):
    for name, field in (("ShapesColour", "colour"), ("ShapesShape", "shape")):
        for row in rows(suite, name):
            record = record_of(row, test_records)
            assert {o[field] for o in record["objects"]} == {row["tgt_text"][0]}
            assert sorted(row["tgt_text"]) == sorted(COLOURS if field == "colour" else SHAPES)
    for row in rows(suite, "ShapesCount"):
        assert row["tgt_text"][0] == NUMBER_WORDS[record_of(row, test_records)["count"]]
        assert sorted(row["tgt_text"]) == ["one", "three", "two"]
    assert "what colour are the shapes?" in rows(suite, "ShapesColour")[0]["qry_text"]


def right_answers(question: str, record: dict) -> set[str]:
    """Every answer that is true of the record, by an oracle written apart from the suite's."""
    objects = record["objects"]
    if question == "How many objects are in the image?":
        return {NUMBER_WORDS[record["count"]]}
    if m := re.fullmatch(r"How many (\w+)s are in the image\?", question):
        return {NUMBER_WORDS[sum(o["shape"] == m.group(1) for o in objects)]}
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        return {o["colour"] for o in objects if o["shape"] == m.group(1)}
    if m := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
        (obj,) = [o for o in objects if (o["colour"], o["shape"]) == m.groups()]
        return {f"{prep} the {p}" for p in POSITIONS if at(p, obj["position"]) for prep in ("in", "on", "at")}
    (k,) = objects_at(record, phrase_of(question))
    return {objects[k]["shape" if question.startswith("What shape") else "colour"]}


def test_vqa_answers_right_and_distractors_wrong(suite, world, test_records):
    records = {"test": test_records, "val": read_jsonl(world / "val.jsonl")}
    seen = set()
    for row in rows(suite, "ShapesVQA") + rows(suite, "ShapesVQA", "val"):
        question = row["qry_text"].removeprefix(TOKEN + "Represent the given image with the following question: ")
        right = right_answers(question, record_of(row, records[row["id"].split("-")[0]]))
        assert row["tgt_text"][0] in right, (question, row["tgt_text"])
        assert not right & set(row["tgt_text"][1:]), (question, row["tgt_text"])
        seen.add(re.sub(r"the .*", "", question))
    assert len(seen) >= 3, f"question types {seen}"


def test_retrieval_positives_fit_and_negatives_do_not(suite, test_records):
    images = {r["image"]: r for r in test_records}
    for row in rows(suite, "ShapesT2I"):
        record, caption = record_of(row, test_records), row["qry_text"].split(": ", 1)[1]
        assert row["qry_img_path"] == "" and row["tgt_img_path"][0] == record["image"]
        assert caption in record["captions"]
        named = set(NAMED.findall(caption))
        for image in row["tgt_img_path"][1:]:
            assert not named <= {(o["colour"], o["shape"]) for o in images[image]["objects"]}, (caption, image)
    for row in rows(suite, "ShapesI2T"):
        record = record_of(row, test_records)
        assert row["qry_img_path"] == record["image"] and row["tgt_text"][0] in record["captions"]
        combos = {(o["colour"], o["shape"]) for o in record["objects"]}
        assert all(not set(NAMED.findall(c)) <= combos for c in row["tgt_text"][1:])


def test_t2i_negatives_are_all_the_images_a_caption_does_not_fit_when_candidates_allow(world, test_records, tmp_path):
    write_mmeb_suite(world, tmp_path, progress=False, n_eval=10, n_candidates=100, n_train_pairs=1)
    also_fit = 0  # images besides the positive that a caption fits: never candidates
    for row in read_jsonl(tmp_path / "eval" / "ShapesT2I.jsonl"):
        named = set(NAMED.findall(row["qry_text"]))
        unfit = {r["image"] for r in test_records if not named <= {(o["colour"], o["shape"]) for o in r["objects"]}}
        assert sorted(row["tgt_img_path"][1:]) == sorted(unfit)
        also_fit += len(test_records) - 1 - len(unfit)
    assert also_fit > 0, "the world must have captions that fit several images for this test to bite"


def test_grounding_positive_is_the_crop_of_the_object_at_the_position(suite, world, test_records):
    out, _ = suite
    for row in rows(suite, "ShapesGrounding"):
        record = record_of(row, test_records)
        assert row["qry_text"].startswith(TOKEN + "Select the portion of the image that isolates the object ")
        (k,) = objects_at(record, phrase_of(row["qry_text"]))
        objects = record_objects(record)
        with Image.open(world / record["image"]) as image:
            crops = [np.asarray(crop_object(image.convert("RGB"), obj)) for obj in objects]
        stem = Path(record["image"]).stem
        assert row["tgt_img_path"][0] == f"images/test/crops/{stem}-{k}.png"
        with Image.open(out / "eval" / row["tgt_img_path"][0]) as positive:
            assert np.array_equal(np.asarray(positive), crops[k])
        siblings = [f"images/test/crops/{stem}-{m}.png" for m, o in enumerate(objects)
                    if (o.colour, o.shape, o.size) != (objects[k].colour, objects[k].shape, objects[k].size)]
        assert set(siblings) <= set(row["tgt_img_path"][1:]), "the image's other objects are candidates"


def test_crop_object_is_centred_on_the_object():
    obj = ShapeObject("circle", "blue", "large", 20, 40)
    crop = np.asarray(crop_object(render([obj], 64), obj)).astype(int)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    centre = crop[CROP_SIZE // 2 - 2: CROP_SIZE // 2 + 2, CROP_SIZE // 2 - 2: CROP_SIZE // 2 + 2]
    assert np.abs(centre - COLOUR_RGB["blue"]).max() <= 2
    assert all(np.abs(crop[y, x] - 255).max() <= 2 for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1))), "a margin"


# ---------------------------------------------------------------------------------------------
# Training pairs, CLI, errors


def test_training_pairs(suite):
    out, _ = suite
    for name, per_task in (("train", SUITE["n_train_pairs"]), ("val", SUITE["n_train_pairs"] // 4)):
        pairs = read_jsonl(out / f"{name}.jsonl")
        assert [p["task"] for p in pairs] == [task.name for task in TASKS for _ in range(per_task)]
        assert TOKEN.strip() not in (out / f"{name}.jsonl").read_text()
        for pair in pairs:
            assert len(pair["negatives"]) == SuiteConfig().n_negatives, pair
            assert all(n != pair["positive"] for n in pair["negatives"]), pair
            assert pair["query"]["instruction"] and all(s.get("text") or s.get("image") for s in
                                                        [pair["query"], pair["positive"], *pair["negatives"]])
            assert all(s["image"].startswith(f"images/{name}/") for s in [pair["query"], pair["positive"],
                                                                          *pair["negatives"]] if "image" in s)
        loaded = load_pairs(out / f"{name}.jsonl")  # every image opens
        assert len(loaded) == len(pairs) and loaded.records[0].meta == {"task": "ShapesColour"}
    count = next(p for p in read_jsonl(out / "train.jsonl") if p["task"] == "ShapesCount")
    assert len({n["text"] for n in count["negatives"]}) == 2, "ShapesCount's two wrong counts, one repeated"


def test_cli_writes_the_suite(world, tmp_path, capsys):
    assert slq.cli.main(["data", "mmeb-suite", "--world", str(world), "--out", str(tmp_path), "--n-eval", "3",
                         "--n-candidates", "4", "--n-train-pairs", "4", "--n-negatives", "2"]) == 0
    assert "MMEB suite written" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "eval" / "ShapesT2I.jsonl")[0]["tgt_text"]) == 4
    assert all(len(p["negatives"]) == 2 for p in read_jsonl(tmp_path / "train.jsonl"))


def test_missing_world_files_are_reported(world, tmp_path, capsys):
    with pytest.raises(SLQError, match="not found"):
        write_mmeb_suite(tmp_path / "nowhere", tmp_path / "out")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "world.json").write_bytes((world / "world.json").read_bytes())
    with pytest.raises(SLQError, match="train.jsonl not found"):
        write_mmeb_suite(partial, tmp_path / "out")
    assert slq.cli.main(["data", "mmeb-suite", "--world", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_settings_are_checked():
    with pytest.raises(SettingError, match="n_candidates"):
        SuiteConfig(n_candidates=1)
    with pytest.raises(SettingError, match="n_eval"):
        SuiteConfig(n_eval=0)


def test_the_suite_runs_through_the_mmeb_loader_with_the_training_prompts(suite):
    """The eval files load like MMEB's own, every dataset with its meta-task, and a query reads
    exactly as a training query of its task does (instruction, then text), so the suite tests
    what the mixture trains."""
    from slq.data import load_pairs
    from slq.data.mmeb import load_mmeb

    out, summary = suite
    tasks, missing = load_mmeb(out / "eval")
    assert missing == [] and {t.name: t.meta_task for t in tasks} == summary["meta_tasks"]
    assert all(len(t) == summary["eval"][t.name] for t in tasks)
    train = {}
    for pair in load_pairs(out / "train.jsonl").records:
        train.setdefault(pair.meta["task"], pair.query)
    for task in tasks:
        pair_query, eval_query = train[task.name], task.queries[0]
        assert (eval_query.image is None) == (pair_query.image is None), task.name
        # MMEB joins instruction and text into one text; the encoder renders a pair's the same way
        assert eval_query.text.startswith(pair_query.instruction + (" " if pair_query.text else "")), task.name

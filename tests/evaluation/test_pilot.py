"""The pilot (Figure 2): its table on a hand-made case, the built-in set's clues, scores on a tiny
model, the heat map, a user's files, and `slq pilot` end to end."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from slq.backbone import Backbone
from slq.baselines import PooledEncoder
from slq.cli import main
from slq.data.shapes import COLOUR_RGB, COLOURS, NUMBER_WORDS, SHAPE_CLUES, knowledge_corpus
from slq.errors import SLQError
from slq.evaluation.pilot import (BUILTIN_SCENES, KINDS, PilotSet, PilotText, builtin_pilot, format_pilot,
                                  pilot_encoders, pilot_result, pilot_scores, plot_pilot, read_pilot)
from slq.retriever import SLQRetriever
from slq.tiny import build_tiny_model

PNG = b"\x89PNG\r\n\x1a\n"


def _hand_made() -> tuple[PilotSet, dict[str, np.ndarray]]:
    """Two images, four texts: the last has no expected image; query pooling ties on the third."""
    pilot = PilotSet((PilotText("a red thing", "pattern", 0), PilotText("a tomato-coloured thing", "knowledge", 0),
                      PilotText("the sky's colour", "knowledge", 1), PilotText("anything")),
                     (Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")), ("red", "blue"))
    scores = {"last_token": np.array([[0.9, 0.8], [0.7, 0.75], [0.6, 0.65], [0.5, 0.4]]),
              "queries": np.array([[0.6, -0.2], [0.1, 0.5], [0.3, 0.3], [0.0, 0.2]])}
    return pilot, scores


def _rows(table: str, title: str) -> list[str]:
    """The data rows of one pooling's block."""
    block = table.split(title)[1].split("top-1:")[0]
    return [line for line in block.splitlines()[3:] if line.strip()]


def test_the_table_stars_each_rows_top_and_counts_hits_by_kind():
    pilot, scores = _hand_made()
    result = pilot_result(pilot, scores)
    assert result["poolings"]["last_token"]["top"] == [0, 1, 1, 0]
    assert result["poolings"]["queries"]["top"] == [0, 1, 0, 1], "a tie goes to the first image"
    assert result["poolings"]["last_token"]["top1"] == {"pattern": {"correct": 1, "total": 1},
                                                        "knowledge": {"correct": 1, "total": 2},
                                                        "all": {"correct": 2, "total": 3}}
    table = format_pilot(result)
    assert table.splitlines()[0] == "images: 1 = red; 2 = blue"
    last = _rows(table, "last-token pooling (zero-shot, one-word prompt)")
    assert [line.split()[-2:] for line in last[:3]] == [["1", "yes"], ["1", "no"], ["2", "yes"]]
    assert last[0].split()[-4:-2] == ["*0.900", "0.800"] and last[1].split()[-4:-2] == ["0.700", "*0.750"]
    assert last[3].split()[-3:] == ["*0.500", "0.400", "-"], "no expected image: no hit column"
    queries = _rows(table, "query pooling (SLQ adapter)")
    assert queries[0].split()[-4:-2] == ["*0.600", "-0.200"] and queries[2].split()[-4:] == ["*0.300", "0.300", "2",
                                                                                            "no"]
    assert "top-1: pattern 1/1, knowledge 1/2, all 2/3" in table
    assert "top-1: pattern 1/1, knowledge 0/2, all 1/3" in table
    assert json.loads(json.dumps(result)) == result, "the result is JSON as it stands"


def test_a_set_with_no_expected_image_says_so_and_a_wrong_index_is_refused():
    pilot = PilotSet((PilotText("x"),), (Image.new("RGB", (8, 8)),), ("a",))
    assert "top-1: no text names its image" in format_pilot(pilot_result(pilot, {"last_token": np.ones((1, 1))}))
    with pytest.raises(SLQError, match="expects image 3"):
        PilotSet((PilotText("x", expected=3),), (Image.new("RGB", (8, 8)),), ("a",))


# --- the built-in set ------------------------------------------------------------------------------


def _consistent(text: str, scene: tuple[str, str, int], corpus: set[str]) -> bool:
    """Whether the scene fits every clue of a knowledge or reasoning text, read through the corpus:
    "the colour of X", "mixing A and B", a shape description, "(a+b)"-style counts."""
    colour, shape, count = scene
    fits = True
    for thing in re.findall(r"the colour of ((?:a |an |the )?\w+)", text):
        fits &= f"the colour of {thing} is {colour}" in corpus
    for a, b in re.findall(r"mixing (\w+) and (\w+)", text):
        fits &= f"mixing {a} and {b} gives {colour}" in corpus
    for expression in re.findall(r"\(([\d+-]+)\)", text):
        fits &= f"({expression}) is {NUMBER_WORDS[count]}" in corpus
    described = {s for s, clues in SHAPE_CLUES.items() for singular, plural in clues
                 if re.search(rf"\b({re.escape(singular)}|{re.escape(plural)})\b", text)}
    return fits and described <= {shape}


def test_the_builtin_clues_are_corpus_facts_that_single_out_their_image():
    pilot = builtin_pilot()
    corpus = set(knowledge_corpus(0))
    assert [t.kind for t in pilot.texts] == [kind for kind in KINDS for _ in BUILTIN_SCENES]
    assert [t.expected for t in pilot.texts] == list(range(len(BUILTIN_SCENES))) * len(KINDS)
    assert pilot.texts[0].text == "a red circle" and pilot.texts[5].text == "a round shape the colour of a tomato"
    assert "(1+1) shapes with three sides" in [t.text for t in pilot.texts]
    for row in pilot.texts:
        colour, shape, count = BUILTIN_SCENES[row.expected]
        words = set(row.text.split())
        if row.kind == "pattern":
            assert {colour, shape if count == 1 else shape + "s"} <= words, row.text
            continue
        assert not words & {colour, shape, shape + "s"}, f"{row.text!r} names what is in view"
        assert len(re.findall(r"the colour of|mixing|\(", row.text)) >= 1, f"{row.text!r} has no clue"
        fitting = [i for i, scene in enumerate(BUILTIN_SCENES) if _consistent(row.text, scene, corpus)]
        assert fitting == [row.expected], f"{row.text!r} fits images {fitting}"


def _blobs(image: Image.Image, rgb: tuple[int, int, int]) -> int:
    """Connected regions of pixels near `rgb` (4-neighbours)."""
    pixels = np.asarray(image, dtype=int)
    mask = np.abs(pixels - np.array(rgb)).sum(-1) < 90  # (H, W)
    seen, blobs = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        blobs, stack = blobs + 1, [start]
        while stack:
            y, x = stack.pop()
            if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x] and not seen[y, x]:
                seen[y, x] = True
                stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    return blobs


def test_the_builtin_images_show_their_scenes():
    pilot = builtin_pilot()
    assert pilot.labels == ("red circle", "two yellow triangles", "green square", "three blue stars",
                            "two purple hearts")
    for image, (colour, _, count) in zip(pilot.images, BUILTIN_SCENES):
        assert image.size == (64, 64) and image.mode == "RGB"
        assert _blobs(image, COLOUR_RGB[colour]) == count, f"{count} {colour} objects"
        assert sum(_blobs(image, COLOUR_RGB[other]) for other in COLOURS if other != colour) == 0


# --- scores on a tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random qwen2_vl and an untrained adapter for it: fast, and enough to check the plumbing."""
    root = tmp_path_factory.mktemp("pilot")
    backbone = build_tiny_model("qwen2_vl", root / "backbone")
    adapter = root / "adapter"
    SLQRetriever.fresh(Backbone.load(backbone), num_queries=4).save(adapter)
    return backbone, adapter


def test_scores_are_the_cosines_of_each_pooling(tiny):
    backbone, adapter = tiny
    encoders = pilot_encoders(backbone, adapter)
    assert list(encoders) == ["last_token", "queries"]
    assert isinstance(encoders["last_token"], PooledEncoder) and encoders["last_token"].pooling == "last"
    assert encoders["last_token"].backbone is encoders["queries"].backbone, "one backbone in memory"
    pilot = builtin_pilot()
    result = pilot_scores(encoders, pilot, batch_size=4)
    for name, encoder in encoders.items():
        scores = np.asarray(result["poolings"][name]["scores"])
        assert scores.shape == (15, 5) and np.all(np.abs(scores) <= 1 + 1e-5)
        direct = encoder.encode_text([t.text for t in pilot.texts]) @ encoder.encode_image(list(pilot.images)).T
        np.testing.assert_allclose(scores, direct, atol=1e-4)
        assert result["poolings"][name]["top"] == scores.argmax(1).tolist()
    assert not np.allclose(result["poolings"]["last_token"]["scores"], result["poolings"]["queries"]["scores"])
    assert list(pilot_encoders(backbone)) == ["last_token"]


def test_a_text_only_backbone_is_refused_before_embedding(tmp_path):
    text_model = build_tiny_model("gemma3_text", tmp_path / "text")
    with pytest.raises(SLQError, match="text-only backbone cannot embed the pilot's images"):
        pilot_scores(pilot_encoders(text_model), builtin_pilot())


# --- the heat map --------------------------------------------------------------------------------


@pytest.mark.parametrize("with_images", [True, False])
def test_the_heat_map_is_a_png_with_a_panel_per_pooling(tmp_path, with_images):
    pytest.importorskip("matplotlib")
    pilot, scores = _hand_made()
    result = pilot_result(pilot, scores)
    path = plot_pilot(result, tmp_path / "sub" / "pilot.png", pilot.images if with_images else None)
    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as image:
        image.verify()
    one = plot_pilot(pilot_result(pilot, {"last_token": scores["last_token"]}), tmp_path / "one.png")
    assert Image.open(path).width > Image.open(one).width, "a second panel widens the figure"


# --- a user's files --------------------------------------------------------------------------------


@pytest.fixture
def user_files(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("red.png", "red"), ("blue.jpg", "blue")):
        Image.new("RGB", (32, 32), colour).save(folder / name)
    texts = tmp_path / "texts.txt"
    texts.write_text("pattern\ta red square\tred.png\nknowledge\tthe sky's colour\tblue\njust a text\n"
                     "\tno kind\n")
    return texts, folder


def test_a_users_texts_name_kinds_and_expected_images(user_files):
    texts, folder = user_files
    pilot = read_pilot(texts, [folder])
    assert pilot.labels == ("blue", "red") and [p.name for p in pilot.images] == ["blue.jpg", "red.png"]
    assert pilot.texts == (PilotText("a red square", "pattern", 1), PilotText("the sky's colour", "knowledge", 0),
                           PilotText("just a text"), PilotText("no kind"))
    (texts.parent / "b.txt").write_text("reasoning\t(1+1) shapes\ttwo yellow triangles\n")
    against_builtin = read_pilot(texts.parent / "b.txt")  # no images: the built-in ones
    assert against_builtin.labels == builtin_pilot().labels and against_builtin.texts[0].expected == 1


@pytest.mark.parametrize("line,expect", [
    ("pattern\ta red square\tgreen.png\n", "texts.txt:1: no image named 'green.png'; the images are blue, red"),
    ("a\tb\tc\td\n", "texts.txt:1: 4 tab-separated fields"),
    ("pattern\t \n", "texts.txt:1: no text after the kind"),
])
def test_a_bad_text_line_names_its_line(user_files, line, expect):
    texts, folder = user_files
    texts.write_text(line)
    with pytest.raises(SLQError, match=re.escape(expect)):
        read_pilot(texts, [folder])


def test_images_must_be_readable_and_named_apart(user_files, tmp_path):
    texts, folder = user_files
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "red.png")
    with pytest.raises(SLQError, match="two images are named 'red'"):
        read_pilot(texts, [folder, other / "red.png"])
    (other / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SLQError, match="broken.png"):
        read_pilot(texts, [other / "broken.png"])


# --- slq pilot ---------------------------------------------------------------------------------------


def test_slq_pilot_prints_the_table_and_writes_json_table_and_plot(tiny, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    backbone, adapter = tiny
    out = tmp_path / "pilot"
    assert main(["pilot", "--backbone", str(backbone), "--adapter", str(adapter), "--out", str(out),
                 "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "pilot.json").read_text())
    assert list(result["poolings"]) == ["last_token", "queries"] and len(result["texts"]) == 15
    table = (out / "table.txt").read_text()
    assert table.strip() in printed and format_pilot(result) == table.rstrip("\n")
    assert "query pooling (SLQ adapter)" in table and table.count("top-1: pattern ") == 2
    assert (out / "pilot.png").read_bytes()[:8] == PNG


def test_slq_pilot_without_adapter_and_on_a_users_files(tiny, user_files, tmp_path, capsys):
    backbone, _ = tiny
    texts, folder = user_files
    out = tmp_path / "mine"
    assert main(["pilot", "--backbone", str(backbone), "--texts", str(texts), "--images", str(folder),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no --adapter: last-token pooling only" in captured.err
    result = json.loads((out / "pilot.json").read_text())
    assert list(result["poolings"]) == ["last_token"] and result["images"] == ["blue", "red"]
    assert [t["expected"] for t in result["texts"]] == [1, 0, None, None]


def test_slq_pilot_usage_errors_name_the_flag(tiny, user_files, tmp_path, capsys):
    backbone, _ = tiny
    _, folder = user_files
    assert main(["pilot", "--backbone", str(backbone), "--images", str(folder), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == "slq: error: --texts: give the texts to score against your images " \
                                              "(one a line)"
    assert not (tmp_path / "x").exists()

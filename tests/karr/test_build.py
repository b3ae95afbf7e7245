"""Building a KARR benchmark end to end: the CLI on a tiny world, determinism, the LM rewriter's
cache and its rejections, and recall per category on the result."""

import json

import pytest
from PIL import Image

from slq.cli import main
from slq.data import ImageTextDataset, TextRecord, load_jsonl
from slq.data.shapes import write_world
from slq.errors import SettingError, SLQError
from slq.karr import SHAPES_ATTRIBUTES, ShapesRewriter, build_karr
from slq.karr.lm import LMRewriter, few_shot_prompt


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), n_train=1, n_val=1, n_test=30, progress=False)


def test_cli_builds_a_benchmark_with_categories_counts_and_plot(world, tmp_path, capsys):
    assert main(["karr", "build", "--data", str(world["test"]), "--out", str(tmp_path / "a"), "--copy-images"]) == 0
    assert "KARR pairs from 30 images" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "a" / "karr.jsonl").read_text().splitlines()]
    assert len(records) == 30
    for r in records:
        assert len(r["captions"]) == 1 and r["captions"][0] != r["source_caption"]
        assert r["rewrites"] and all({"span", "replacement", "rule", "neutral"} <= set(w) for w in r["rewrites"])
        assert (tmp_path / "a" / r["image"]).is_file()
    summary = json.loads((tmp_path / "a" / "build.json").read_text())
    assert summary["pairs"] == 30 and sum(c["accepted"] for c in summary["categories"].values()) == 30
    assert {r["category"] for r in records} == {c for c, v in summary["categories"].items() if v["accepted"]}
    assert len({r["category"] for r in records}) == 5  # balanced: every category the world yields
    with Image.open(tmp_path / "a" / "categories.png") as plot:
        assert plot.format == "PNG"
    loaded = load_jsonl(tmp_path / "a" / "karr.jsonl")
    assert loaded.records[0].meta["category"] == records[0]["category"]

    assert main(["karr", "build", "--data", str(world["test"]), "--out", str(tmp_path / "b"), "--copy-images"]) == 0
    assert (tmp_path / "a" / "karr.jsonl").read_bytes() == (tmp_path / "b" / "karr.jsonl").read_bytes()
    assert main(["karr", "build", "--data", str(world["test"]), "--out", str(tmp_path / "c"), "--seed", "1"]) == 0
    assert (tmp_path / "a" / "karr.jsonl").read_bytes() != (tmp_path / "c" / "karr.jsonl").read_bytes()


def test_build_refuses_what_it_cannot_rewrite(world):
    texts = ImageTextDataset([TextRecord("cat", ("a pet",), "x")], "words")
    with pytest.raises(SLQError, match="targets are texts"):
        build_karr(texts, [ShapesRewriter()])
    with pytest.raises(SettingError, match="unknown"):
        build_karr(load_jsonl(world["test"]), [ShapesRewriter()], categories=["poetry"])
    with pytest.raises(SettingError, match="no rewriter"):
        build_karr(load_jsonl(world["test"]), [ShapesRewriter()], categories=["tool_utility"])


def test_lm_rewriter_is_cached_resumable_and_validated(world, tmp_path):
    asked = []

    def leaky(prompt: str) -> str:  # names the words it was asked to hide every other time
        asked.append(prompt)
        hidden = prompt.rsplit("Forbidden: ", 1)[1].split("\n")[0]
        return f"a {hidden} shape\nmore" if len(asked) % 2 else "a shape the colour of a tomato\nmore"

    data = load_jsonl(world["test"])
    data.records = data.records[:8]
    lm = LMRewriter(None, ShapesRewriter(), cache=tmp_path / "cache.jsonl", generate=leaky)
    build = build_karr(data, [lm], attributes=SHAPES_ATTRIBUTES, categories=["cultural_symbolism"])
    assert build.rejected["cultural_symbolism"]["names_target"] > 0  # the leaks, counted by reason
    assert all(r.meta["rewriter"] == "lm" and r.meta["rewrites"][0]["rule"] == "lm" for r in build.records)
    assert all("\n" not in r.captions[0] for r in build.records)  # first line only
    cached = len((tmp_path / "cache.jsonl").read_text().splitlines())
    assert cached == len(set(asked))

    def broken(prompt: str) -> str:
        raise AssertionError("every answer should come from the cache")

    again = build_karr(data, [LMRewriter(None, ShapesRewriter(), cache=tmp_path / "cache.jsonl", generate=broken)],
                       attributes=SHAPES_ATTRIBUTES, categories=["cultural_symbolism"])
    assert [r.captions for r in again.records] == [r.captions for r in build.records]


def test_few_shot_prompt_names_the_span_and_its_forbidden_words():
    prompt = few_shot_prompt("logical_mathematical", "two red circles", ("two",))
    assert prompt.endswith("Words: two red circles\nForbidden: two\nDescription:")
    assert "(1+1) cats" in prompt
    with pytest.raises(SettingError):
        few_shot_prompt("poetry", "x", ())
    with pytest.raises(SettingError, match="checkpoint"):
        LMRewriter(None, ShapesRewriter())


def test_recall_per_category_on_a_built_benchmark(world, tiny_dirs):
    from slq import SLQRetriever
    from slq.evaluation import evaluate

    build = build_karr(load_jsonl(world["test"]), [ShapesRewriter()], attributes=SHAPES_ATTRIBUTES)
    dataset = ImageTextDataset(build.records[:10], "karr")
    encoder = SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], num_queries=2, seed=0)
    report = evaluate(encoder, dataset, batch_size=10)
    categories = {r.meta["category"] for r in dataset.records}
    assert set(report["by_category"]) == categories
    assert sum(v["n_images"] for v in report["by_category"].values()) == 10
    weighted = sum(v["t2i"]["R@10"] * v["n_texts"] for v in report["by_category"].values()) / report["n_texts"]
    assert weighted == pytest.approx(report["t2i"]["R@10"])

"""`slq index` and `slq search` as a user runs them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import slq

from slq.retriever import SLQRetriever

pytest.importorskip("faiss")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dirs, backbones, shapes_jsonl):
    root = tmp_path_factory.mktemp("cli_index")
    adapter = root / "adapter"
    SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4, seed=0).save(adapter)
    photos = root / "photos"
    shutil.copytree(shapes_jsonl.parent / "images", photos / "set")
    first = slq("index", photos, "--out", root / "idx", "--backbone", tiny_dirs["qwen2_vl"], "--adapter", adapter,
                "--batch-size", "5")
    return root, photos, first, adapter


@pytest.fixture
def run_cli(capsys):
    """`slq ARGS` in this process (the command's own code, minus a fresh interpreter's start): its stdout.
    Each command below is also run once as a real process, by `built` and by the first search."""
    from slq.cli import main

    def run(*args) -> str:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        assert code == 0, f"slq {' '.join(map(str, args))} failed ({code}):\n{captured.err}"
        return captured.out
    return run


def test_index_reports_what_it_did_and_how_to_use_it(built, run_cli):
    root, photos, first, _ = built
    assert "16 images (16 added, 0 updated, 0 removed, 0 unchanged), 0 skipped; search: flat" in first.stdout
    assert f"slq serve {root / 'idx'}" in first.stdout
    shutil.copy(photos / "set" / "000.png", photos / "copy.png")
    again = run_cli("index", "--out", root / "idx")
    assert "17 images (1 added, 0 updated, 0 removed, 16 unchanged)" in again
    (photos / "copy.png").unlink()
    assert "(0 added, 0 updated, 1 removed, 16 unchanged)" in run_cli("index", "--out", root / "idx")


def test_search_prints_ranked_results_json_and_paths(built, run_cli):
    root, photos, _, _ = built
    table = slq("search", root / "idx", "--text", "a red circle", "-k", "3").stdout.splitlines()
    assert len(table) == 3 and table[0].split()[0] == "1"
    result = json.loads(run_cli("search", root / "idx", "--text", "a red circle", "-k", "3", "--json"))
    scores = [hit["score"] for hit in result["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert [line.split()[2] for line in table] == [hit["path"] for hit in result["results"]]
    image = photos / "set" / "005.png"
    by_image = run_cli("search", root / "idx", "--image", image, "-k", "2", "--paths").split()
    assert by_image[0] == str(image.resolve()) and len(by_image) == 2, "an indexed image finds itself first"
    both = json.loads(run_cli("search", root / "idx", "--image", image, "--text", "its colour", "--json"))
    assert both["query"] == {"text": "its colour", "image": str(image)}


def test_search_with_an_instruction_is_encode_querys(built, run_cli):
    from slq.index import Searcher

    root, _, _, _ = built
    instruction = "Find an image that matches the caption:"
    got = json.loads(run_cli("search", root / "idx", "--text", "a red circle", "-k", "5", "--instruction", instruction,
                             "--json"))
    assert got["query"] == {"text": "a red circle", "image": None, "instruction": instruction}
    searcher = Searcher.open([root / "idx"])
    try:
        retriever = searcher.retrievers["idx"]
        instructed = retriever.encode_query("a red circle", instruction=instruction)
        assert not np.allclose(instructed, retriever.encode_query("a red circle"), atol=1e-4)
        hits = searcher.index().search(instructed, 5)[0]
    finally:
        searcher.close()
    assert [h["id"] for h in got["results"]] == [h.id for h in hits]
    np.testing.assert_allclose([h["score"] for h in got["results"]], [h.score for h in hits], atol=1e-5)
    plain = json.loads(run_cli("search", root / "idx", "--text", "a red circle", "-k", "5", "--json"))
    assert [h["score"] for h in plain["results"]] != [h["score"] for h in got["results"]]


@pytest.mark.parametrize("args, message", [
    (["search", "{idx}"], "give --text, --image, or both"),
    (["search", "{tmp}", "--text", "x"], "not an slq index"),
    (["index", "{tmp}/nothing", "--out", "{tmp}/i", "--backbone", "b", "--adapter", "{adapter}"],
     "expected a folder of images or a .jsonl"),
    (["index", "--out", "{tmp}/new"], "needs its source"),
    (["index", "--out", "{idx}", "--target-recall", "2"], "--target-recall 2.0: must be a number in (0, 1]"),
])
def test_mistakes_are_one_line_errors(built, tmp_path, capsys, args, message):
    from slq.cli import main

    root, _, _, adapter = built
    filled = [a.format(idx=root / "idx", tmp=tmp_path, adapter=adapter) for a in args]
    assert main(filled) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err

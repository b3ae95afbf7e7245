"""Our JSONL's pair form: inputs of any kind with instructions and negatives, bad records named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from slq.data import Input, PairDataset, load_dataset, load_pairs, write_pairs
from slq.errors import DataError


def _write(folder: Path, lines: list) -> Path:
    Image.new("RGB", (20, 20), (255, 0, 0)).save(folder / "red.png")
    path = folder / "pairs.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


GOOD = {"query": {"text": "what colour?", "image": "red.png", "instruction": "Answer:"}, "positive": "red",
        "negatives": [{"text": "blue"}, {"image": "red.png", "text": "a red square"}], "task": "vqa"}


def test_pairs_load_with_every_kind_of_side(tmp_path):
    data = load_dataset(_write(tmp_path, [GOOD, {"query": "a red image", "positive": {"image": "red.png"}}]))
    assert isinstance(data, PairDataset) and len(data) == 2
    first, second = data.records
    assert first.query == Input("what colour?", tmp_path / "red.png", "Answer:")
    assert first.query.kind == "image+text" and first.positive.kind == "text" and second.positive.kind == "image"
    assert [n.kind for n in first.negatives] == ["text", "image+text"] and second.negatives == ()
    assert first.meta == {"task": "vqa"} and first.source.endswith("pairs.jsonl:1")


def test_pairs_round_trip_through_the_writer(tmp_path):
    data = load_pairs(_write(tmp_path, [GOOD]))
    write_pairs(data.records, tmp_path / "copy.jsonl")
    again = load_pairs(tmp_path / "copy.jsonl")
    sides = [(r.query, r.positive, r.negatives, r.meta) for r in data.records]
    assert [(r.query, r.positive, r.negatives, r.meta) for r in again.records] == sides
    assert json.loads((tmp_path / "copy.jsonl").read_text())["query"]["image"] == "red.png"  # relative: movable


@pytest.mark.parametrize("line, reason", [
    ({"query": "x"}, 'missing "positive"'),
    ({"query": {"txt": "x"}, "positive": "y"}, 'unknown field'),
    ({"query": {"instruction": "Find:"}, "positive": "y"}, '"query" needs a non-empty "text", an "image", or both'),
    ({"query": "x", "positive": "y", "negatives": "z"}, '"negatives" must be a list'),
    ({"query": "x", "positive": "y", "negatives": [7]}, '"negatives\\[0\\]" must be an object'),
    ({"query": "x", "positive": {"image": "missing.png"}}, "positive: "),
    ("{not json", "invalid JSON"),
])
def test_a_bad_pair_is_named_with_its_line_and_reason(tmp_path, line, reason):
    path = _write(tmp_path, [GOOD, line])
    with pytest.raises(DataError, match=rf"pairs.jsonl:2: .*{reason}"):
        load_pairs(path)
    skipped = load_pairs(path, on_bad_record="skip")
    assert len(skipped) == 1 and skipped.skipped[0].source.endswith(":2")

"""MMEB-format tasks: the loader on files written in MMEB's published format, hit@1 on hand-made
cases, and `slq eval --mmeb` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slq.data import Input
from slq.data.mmeb import load_mmeb
from slq.errors import DataError
from slq.evaluation.mmeb import evaluate_mmeb, format_mmeb_table, hit_at_1

from helpers import slq


def _mmeb_folder(root: Path) -> Path:
    """Two datasets as MMEB publishes them: a classification set (JSONL) and a retrieval set in a
    sub-folder, image paths relative to the folder, "<|image_1|>" marking images in texts."""
    (root / "imgs").mkdir(parents=True)
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 200, 0)]):
        Image.new("RGB", (24, 24), colour).save(root / "imgs" / f"{i}.png")
    labels = ["red", "blue", "green"]
    rows = [{"qry_text": "<|image_1|>\nRepresent the given image for classification", "qry_img_path": f"imgs/{i}.png",
             "tgt_text": [labels[i]] + [x for x in labels if x != labels[i]], "tgt_img_path": ["", "", ""]}
            for i in range(3)]
    (root / "ImageNet-1K.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "MSCOCO_t2i").mkdir()
    rows = [{"qry_text": f"Find me an everyday image that matches the given caption: a {labels[i]} square",
             "qry_img_path": "", "tgt_text": ["<|image_1|>\nRepresent the given image."] * 3,
             "tgt_img_path": [f"imgs/{i}.png"] + [f"imgs/{j}.png" for j in range(3) if j != i]} for i in range(3)]
    (root / "MSCOCO_t2i" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_the_loader_reads_mmeb_rows_positive_first(tmp_path):
    folder = _mmeb_folder(tmp_path / "mmeb")
    tasks, missing = load_mmeb(folder, ["ImageNet-1K", "MSCOCO_t2i", "OK-VQA"])
    assert missing == ["OK-VQA"]
    cls, t2i = tasks
    assert (cls.name, cls.meta_task, len(cls)) == ("ImageNet-1K", "classification", 3)
    assert cls.queries[1] == Input("Represent the given image for classification", folder / "imgs" / "1.png")
    assert [c.text for c in cls.candidates[1]] == ["blue", "red", "green"]
    assert t2i.meta_task == "retrieval" and t2i.queries[0].kind == "text"
    assert t2i.candidates[2][0] == Input("Represent the given image.", folder / "imgs" / "2.png")


def test_a_folder_names_its_own_meta_tasks_and_parquet_is_read(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    folder = _mmeb_folder(tmp_path / "mmeb")
    rows = [json.loads(line) for line in (folder / "ImageNet-1K.jsonl").read_text().splitlines()]
    (folder / "Colours").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "Colours" / "test-00000-of-00001.parquet")
    (folder / "slq-mmeb.json").write_text(json.dumps({"datasets": {"Colours": "vqa"}}))
    tasks, _ = load_mmeb(folder, ["Colours"], max_queries=2)
    assert tasks[0].meta_task == "vqa" and len(tasks[0]) == 2
    assert tasks[0].candidates[0][0].text == "red"


@pytest.mark.parametrize("row, reason", [
    ({"qry_text": "x", "qry_img_path": ""}, 'missing "tgt_text"'),
    ({"qry_text": "x", "qry_img_path": "", "tgt_text": ["a", "b"], "tgt_img_path": [""]}, "one path"),
    ({"qry_text": "<|image_1|>", "qry_img_path": "", "tgt_text": ["a"], "tgt_img_path": [""]}, "neither text nor image"),
    ({"qry_text": "x", "qry_img_path": "", "tgt_text": [], "tgt_img_path": []}, "non-empty list"),
])
def test_a_bad_row_is_named_with_its_line(tmp_path, row, reason):
    folder = _mmeb_folder(tmp_path / "mmeb")
    with open(folder / "ImageNet-1K.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"ImageNet-1K.jsonl:4: .*{reason}"):
        load_mmeb(folder, ["ImageNet-1K"])
    tasks, _ = load_mmeb(folder, ["ImageNet-1K"], on_bad_record="skip")
    assert len(tasks[0]) == 3 and tasks[0].skipped[0].source.endswith(":4")


def test_a_missing_image_is_reported_before_any_embedding(tmp_path):
    folder = _mmeb_folder(tmp_path / "mmeb")
    (folder / "imgs" / "2.png").unlink()
    with pytest.raises(DataError, match=r"1 image file\(s\) not found.*2.png"):
        load_mmeb(folder, ["ImageNet-1K"])


def test_hit_at_1_counts_the_positive_first_and_ties_by_the_rule():
    rows = [np.array([0.9, 0.1, 0.2]), np.array([0.1, 0.5, 0.2]), np.array([0.5, 0.5, 0.1, 0.5])]
    assert hit_at_1(rows) == pytest.approx(100 * (1 + 0 + 1 / 3) / 3)
    assert hit_at_1(rows, ties="strict") == pytest.approx(100 / 3)


class _Lookup:
    """An encoder whose vectors are given per input: a hand-made case with known answers."""

    def __init__(self, vectors):
        self.vectors = vectors

    def encode_inputs(self, inputs, **_):
        return np.stack([self.vectors(x) for x in inputs])


def test_evaluate_mmeb_averages_datasets_per_meta_task_and_overall(tmp_path):
    folder = _mmeb_folder(tmp_path / "mmeb")
    tasks, _ = load_mmeb(folder)
    colour = {"red": [1, 0, 0], "blue": [0, 1, 0], "green": [0, 0, 1]}
    image_colour = {"0.png": "red", "1.png": "blue", "2.png": "green"}

    def vector(x: Input):
        if x.image is not None:  # classification right for every image; retrieval by image: blue is "wrong"
            name = image_colour[x.image.name]
            return np.array(colour["red" if name == "blue" and x.text.startswith("Represent the given image.")
                                   else name], float)
        word = next(w for w in colour if w in x.text)
        return np.array(colour[word], float)

    report = evaluate_mmeb(_Lookup(vector), tasks)
    assert report["datasets"]["ImageNet-1K"]["hit@1"] == 100.0
    expected = 100 * (1 / 2 + 1 / 3 + 1) / 3  # a tie of two, a tie of three, a hit
    assert report["datasets"]["MSCOCO_t2i"]["hit@1"] == pytest.approx(expected, abs=0.01)
    assert report["meta_tasks"]["classification"]["hit@1"] == 100.0
    overall = (100 + report["datasets"]["MSCOCO_t2i"]["hit@1"]) / 2
    assert report["overall"] == {"hit@1": pytest.approx(overall, abs=0.01), "datasets": 2}
    assert report["datasets"]["ImageNet-1K"]["chance"] == pytest.approx(33.33)
    table = format_mmeb_table(report)
    assert "| ImageNet-1K | classification | 3 | 3 | 33.3 | 100.0 |" in table and "**overall**" in table


@pytest.mark.slow
def test_slq_eval_mmeb_end_to_end(tiny_dirs, shapes_jsonl, tmp_path):
    folder = _mmeb_folder(tmp_path / "mmeb")
    backbone = tiny_dirs["qwen2_vl"]
    adapter = tmp_path / "adapter"
    slq("train", "--backbone", backbone, "--train", shapes_jsonl, "--out", adapter, "--num-queries", 2,
        "--batch-size", 8, "--epochs", 1)
    proc = slq("eval", "--backbone", backbone, "--adapter", adapter, "--mmeb", folder, "--datasets",
               "MSCOCO_t2i,ImageNet-1K,NoSuch", "--report", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["datasets"]) == {"MSCOCO_t2i", "ImageNet-1K"} and report["missing"] == ["NoSuch"]
    assert "| MSCOCO_t2i | retrieval |" in proc.stdout and "NoSuch" in proc.stderr + proc.stdout
    both = slq("eval", "--backbone", backbone, "--adapter", adapter, "--mmeb", folder, "--data", shapes_jsonl,
               check=False)
    assert both.returncode == 2 and "not both" in both.stderr

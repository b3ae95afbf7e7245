"""`slq eval` on a dataset with unreadable images: stop at the first (error) or leave each out and list it (skip).

The dataset mixes good records with a corrupt image (random bytes named .png), a truncated PNG and a
missing file; a blank line makes sure records are named by their physical line in the file.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from slq.data import load_dataset, load_jsonl
from slq.evaluation.retrieval import evaluate
from slq.retriever import SLQRetriever
from slq.tiny import build_tiny_model
from slq.train import TrainConfig, train

pytestmark = pytest.mark.slow

# line number -> (image file, what the reason must mention); lines 1, 2, 5, 7, 9, 10 are good, 3 is blank
BAD = {4: ("corrupt.png", "cannot read image"), 6: ("truncated.png", "cannot read image"),
       8: ("missing.png", "not found")}
GOOD_LINES = (1, 2, 5, 7, 9, 10)
LINES = 10


def slq(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "slq.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, stdin=subprocess.DEVNULL)


def _png_with_undecodable_pixels(good: Path, out: Path) -> Path:
    """A copy of a PNG whose compressed pixel data is garbage but every chunk CRC is right."""
    data, pos, chunks = good.read_bytes(), 8, []
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IDAT":
            body = b"\x78\x9c" + bytes(range(7, 7 + length - 2))
        chunks.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
        pos += 12 + length
    out.write_bytes(data[:8] + b"".join(chunks))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shapes_jsonl):
    """A tiny backbone, an adapter trained briefly on the shapes, the bad dataset and its good records alone."""
    root = tmp_path_factory.mktemp("bad_images")
    backbone = build_tiny_model("qwen2_vl", root / "backbone")
    shapes = load_jsonl(shapes_jsonl)
    retriever = SLQRetriever.from_pretrained(backbone, num_queries=4)
    train(retriever, shapes, TrainConfig(num_queries=4, epochs=1, batch_size=8, lr=1e-3), progress=False)
    adapter = retriever.save(root / "adapter")

    (root / "images").mkdir()
    (root / "images" / "corrupt.png").write_bytes(random.Random(0).randbytes(700))
    png = shapes.records[0].image.read_bytes()
    (root / "images" / "truncated.png").write_bytes(png[:len(png) // 2])
    good = iter(shapes.records)
    lines, good_only = [], []
    for number in range(1, LINES + 1):
        if number in BAD:
            lines.append(json.dumps({"image": f"images/{BAD[number][0]}", "captions": ["a broken image"]}))
        elif number in GOOD_LINES:
            record = next(good)
            lines.append(json.dumps({"image": str(record.image), "captions": list(record.captions)}))
            good_only.append(lines[-1])
        else:
            lines.append("")
    data = root / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    (root / "good.jsonl").write_text("\n".join(good_only) + "\n")
    return {"backbone": backbone, "adapter": adapter, "data": data, "good": root / "good.jsonl", "root": root}


@pytest.fixture(scope="module")
def runs(setup):
    """`slq eval` on the mixed set under each policy, run once for the module."""
    result = {}
    for policy in ("error", "skip"):
        report = setup["root"] / f"report-{policy}.json"
        proc = slq("eval", "--backbone", setup["backbone"], "--adapter", setup["adapter"], "--data", setup["data"],
                   "--batch-size", 4, "--on-bad-record", policy, "--report", report)
        result[policy] = proc, report
    return result


def test_error_policy_stops_at_the_first_bad_record(setup, runs):
    proc, report = runs["error"]
    assert proc.returncode == 2, f"rc {proc.returncode}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("slq: error:")]
    assert len(errors) == 1, proc.stderr
    first = min(BAD)
    assert f"{setup['data']}:{first}: " in errors[0] and BAD[first][0] in errors[0], errors[0]
    assert BAD[first][1] in errors[0], errors[0]
    assert not any(f"{setup['data']}:{n}" in proc.stderr for n in BAD if n != first), proc.stderr
    assert not report.exists(), "a failed eval wrote a report"


def test_skip_policy_lists_each_bad_record_on_stderr(setup, runs):
    proc, _ = runs["skip"]
    assert proc.returncode == 0, f"rc {proc.returncode}:\n{proc.stderr}"
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("slq: skipped ")]
    for number, (image, reason) in BAD.items():
        lines = [line for line in skipped if line.startswith(f"slq: skipped {setup['data']}:{number}: ")]
        assert len(lines) == 1 and image in lines[0] and reason in lines[0], (number, skipped)
    assert f"{len(BAD)} bad record(s) skipped in {setup['data']}" in proc.stderr, proc.stderr
    assert "R@1" in proc.stdout, proc.stdout


def test_skip_policy_report_lists_the_skipped_and_scores_the_rest(setup, runs):
    _, report_path = runs["skip"]
    report = json.loads(report_path.read_text())
    assert [s["source"] for s in report["skipped"]] == [f"{setup['data']}:{n}" for n in sorted(BAD)], report
    for entry, number in zip(report["skipped"], sorted(BAD)):
        image, reason = BAD[number]
        assert image in entry["reason"] and reason in entry["reason"], entry
    assert report["n_images"] == len(GOOD_LINES) and report["n_texts"] == 2 * len(GOOD_LINES), report
    # texts and images still line up: the scores are those of the good records alone
    retriever = SLQRetriever.from_pretrained(setup["backbone"], setup["adapter"])
    alone = evaluate(retriever, load_jsonl(setup["good"]), batch_size=4)
    assert (report["t2i"], report["i2t"]) == (alone["t2i"], alone["i2t"])


def test_image_whose_pixels_cannot_be_decoded_is_skipped(setup, tmp_path):
    bad = _png_with_undecodable_pixels(load_jsonl(setup["good"]).records[0].image, tmp_path / "pixels.png")
    good = load_jsonl(setup["good"]).records[1].image
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"image": str(p), "captions": ["x"]}) + "\n" for p in (good, bad)))
    dataset = load_dataset(data, on_bad_record="skip")
    assert [s.source for s in dataset.skipped] == [f"{data}:2"], "an image that cannot be decoded was kept"

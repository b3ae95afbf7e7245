"""`slq karr-bench` end to end on a tiny backbone: plain, KARR and control scores per method, recall per
category and clue set, the knowledge probe, capability and hashes, and rows kept across reruns."""

import pytest
import json

from slq.cli import main
from slq.data.shapes import write_world
from slq.data import load_jsonl
from slq.karr import SHAPES_ATTRIBUTES, ShapesRewriter, build_karr, write_karr


@pytest.mark.slow
def test_karr_bench_writes_every_table(tiny_dirs, tmp_path, capsys):
    world = write_world(tmp_path / "w", n_train=1, n_val=1, n_test=12, progress=False)
    write_karr(build_karr(load_jsonl(world["test"]), [ShapesRewriter()], attributes=SHAPES_ATTRIBUTES),
               tmp_path / "karr", plot=False)
    argv = ["karr-bench", "--out", str(tmp_path / "out"), "--backbone", str(tiny_dirs["qwen2_vl"]),
            "--karr", str(tmp_path / "karr"), "--methods", "zero_shot_last_token,slq,full_ft", "--n-train", "8",
            "--n-test", "6", "--epochs", "1", "--baseline-epochs", "1", "--num-queries", "2", "--batch-size", "4",
            "--capability-limit", "2", "--jobs", "1"]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "KARR t2i" in shown and "control t2i" in shown and "clues text_only" in shown
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    karr = report["evaluations"]["karr"]["methods"]
    assert set(karr) == {"zero_shot_last_token", "slq", "full_ft"}
    assert set(karr["slq"]["by_clues"]) <= {"seen_with_images", "text_only"} and karr["slq"]["by_category"]
    assert set(report["evaluations"]["karr_control"]["methods"]) == set(karr)
    slq, full = report["methods"]["slq"], report["methods"]["full_ft"]
    assert slq["weights_sha256"] == report["backbone_sha256"] and not slq["weights_changed"]
    assert full["weights_changed"] and slq["capability"] == report["capability"]["untouched"]
    assert set(report["knowledge"]["by_form"]) == {"recall", "question", "link"}
    for name in ("karr.md", "table.md", "knowledge.txt", "knowledge.json", "rows.json", "recall.png", "cost.png"):
        assert (tmp_path / "out" / name).is_file(), name

    rows = (tmp_path / "out" / "rows.json").read_text()
    assert main(argv) == 0  # every row kept: nothing trains again
    assert json.loads((tmp_path / "out" / "rows.json").read_text()) == json.loads(rows)
    assert "kept from an earlier run with the same settings: zero_shot_last_token, slq, full_ft" in \
        capsys.readouterr().err

"""slq.index.build: an index equals the encoder's embeddings, updates incrementally, resumes after a
kill with the same result, and skips unusable files with their reasons."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from slq.errors import SLQError, SettingError
from slq.index import IndexConfig, SearchIndex, update_index
from slq.index import store
from slq.retriever import SLQRetriever

pytest.importorskip("faiss")


def draw(path, colour, shape="circle", side=40):
    image = Image.new("RGB", (side, side), (255, 255, 255))
    box = (4, 4, side - 4, side - 4)
    (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_folder(folder, n=10):
    for i in range(n):
        sub = "a" if i % 2 else "b/c"  # recursive
        draw(folder / sub / f"{i:02d}.png", (20 * i, 255 - 20 * i, 90), "circle" if i % 3 else "square", 36 + 2 * i)
    return folder


@pytest.fixture(scope="module")
def adapter(backbones, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4, seed=1).save(folder)
    return folder


@pytest.fixture
def loader(backbones, adapter):
    """Builds the retriever on the session's backbone, and counts how often it was asked to."""
    calls = []

    def load(backbone, adapter_dir):
        calls.append(adapter_dir)
        return SLQRetriever.on_backbone(backbones["qwen2_vl"], adapter_dir)

    load.calls = calls
    return load


def rows(out):
    with sqlite3.connect(out / store.DB_NAME) as db:
        return {key: (id_, np.frombuffer(vector, "<f4")) for id_, key, vector in
                db.execute("SELECT id, key, vector FROM items ORDER BY id")}


def build(tmp_path, source, loader, adapter, tiny_dirs, root=None, **config):
    return update_index(tmp_path / "idx", source, backbone=tiny_dirs["qwen2_vl"], adapter=adapter, root=root,
                        config=IndexConfig(**{"batch_size": 3, **config}), load_retriever=loader, progress=False)


def test_index_holds_the_encoders_embeddings_of_every_image_recursively(tmp_path, loader, adapter, tiny_dirs,
                                                                          backbones):
    folder = make_folder(tmp_path / "photos")
    report = build(tmp_path, folder, loader, adapter, tiny_dirs)
    assert (report.items, report.added, report.skipped, report.kind) == (10, 10, 0, "images")
    found = rows(tmp_path / "idx")
    files = sorted(p.resolve() for p in folder.rglob("*.png"))
    assert sorted(found) == [str(p) for p in files]
    expected = SLQRetriever.on_backbone(backbones["qwen2_vl"], adapter).encode_image(files)
    got = np.stack([found[str(p)][1] for p in files])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    index = SearchIndex(tmp_path / "idx")
    hits = index.search(expected[4], k=3)[0]
    assert hits[0].path == str(files[4]) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_rerun_embeds_only_new_and_changed_files_and_drops_deleted_ones(tmp_path, loader, adapter, tiny_dirs):
    folder = make_folder(tmp_path / "photos")
    build(tmp_path, folder, loader, adapter, tiny_dirs)
    before = rows(tmp_path / "idx")
    assert len(loader.calls) == 1

    again = update_index(tmp_path / "idx", load_retriever=loader, progress=False)  # the index remembers its source
    assert (again.unchanged, again.added, again.updated, again.removed) == (10, 0, 0, 0)
    assert len(loader.calls) == 1, "nothing to do must not load the model"

    changed = folder / "a" / "01.png"
    draw(changed, (0, 0, 255), "square", 50)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    (folder / "b" / "c" / "00.png").unlink()
    draw(folder / "new" / "z.png", (255, 0, 0))
    report = update_index(tmp_path / "idx", load_retriever=loader, progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged, report.items) == (1, 1, 1, 8, 10)
    after = rows(tmp_path / "idx")
    key = str(changed.resolve())
    assert after[key][0] == before[key][0], "a changed file keeps its id"
    assert not np.allclose(after[key][1], before[key][1])
    assert str((folder / "b" / "c" / "00.png").resolve()) not in after
    new_id = after[str((folder / "new" / "z.png").resolve())][0]
    assert new_id > max(i for i, _ in before.values()), "ids are never reused"
    for k in before.keys() & after.keys() - {key}:
        np.testing.assert_array_equal(after[k][1], before[k][1])
    assert len(SearchIndex(tmp_path / "idx")) == 10


def test_jsonl_captions_are_kept_and_refreshed_without_re_embedding(tmp_path, loader, adapter, tiny_dirs,
                                                                       shapes_jsonl):
    data = tmp_path / "data.jsonl"
    records = [json.loads(line) for line in shapes_jsonl.read_text().splitlines()][:6]
    for r in records:
        r["image"] = str(shapes_jsonl.parent / r["image"])
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    build(tmp_path, data, loader, adapter, tiny_dirs, root=shapes_jsonl.parent, batch_size=4)
    records[2]["captions"] = ["a brand new caption"]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = update_index(tmp_path / "idx", load_retriever=loader, progress=False, root=shapes_jsonl.parent)
    assert (report.unchanged, report.added, report.updated) == (6, 0, 0) and len(loader.calls) == 1
    with sqlite3.connect(tmp_path / "idx" / store.DB_NAME) as db:
        captions = dict(db.execute("SELECT path, captions FROM items"))
    assert json.loads(captions[str((shapes_jsonl.parent / records[2]["image"]).resolve())]) == ["a brand new caption"]


def test_images_outside_a_jsonls_root_are_skipped(tmp_path, loader, adapter, tiny_dirs, shapes_jsonl):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"image": str(shapes_jsonl.parent / "images" / "000.png"), "captions": ["x"]}) + "\n"
                    + json.dumps({"image": str(draw(tmp_path / "in" / "ok.png", (1, 2, 3))), "captions": ["y"]}) + "\n")
    report = build(tmp_path, data, loader, adapter, tiny_dirs)
    assert (report.items, report.skipped) == (1, 1)
    assert "outside the index root" in report.newly_skipped[0][1]


def test_texts_of_a_jsonl_are_indexed(tmp_path, loader, adapter, tiny_dirs, backbones):
    data = tmp_path / "defs.jsonl"
    texts = ["a domestic cat", "a large dog", "a small bird"]
    data.write_text("".join(json.dumps({"text": t, "captions": [f"clue {i}"]}) + "\n" for i, t in enumerate(texts)))
    report = build(tmp_path, data, loader, adapter, tiny_dirs)
    assert (report.kind, report.items) == ("texts", 3)
    expected = SLQRetriever.on_backbone(backbones["qwen2_vl"], adapter).encode_text(texts[1])
    hit = SearchIndex(tmp_path / "idx").search(expected, k=1)[0][0]
    assert (hit.text, hit.path, hit.captions) == ("a large dog", None, ["clue 1"])


def test_unusable_files_are_skipped_counted_and_retried_only_when_changed(tmp_path, loader, adapter, tiny_dirs):
    folder = make_folder(tmp_path / "photos", n=4)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    draw(folder / "huge.png", (9, 9, 9), side=120)  # 14,400 pixels, over the bound below
    outside = draw(tmp_path / "elsewhere" / "secret.png", (1, 1, 1))
    (folder / "link.png").symlink_to(outside)
    report = build(tmp_path, folder, loader, adapter, tiny_dirs, max_image_pixels=10_000)
    assert (report.items, report.skipped) == (4, 3)
    reasons = dict(report.newly_skipped)
    assert "cannot read image" in reasons[str((folder / "broken.png").resolve())]
    assert "pixels, more than the 10000 allowed" in reasons[str((folder / "huge.png").resolve())]
    assert "links outside the indexed folder" in reasons[str(folder / "link.png")]

    again = update_index(tmp_path / "idx", load_retriever=loader, progress=False,
                         config=IndexConfig(max_image_pixels=10_000))
    assert (again.skipped, again.newly_skipped, len(loader.calls)) == (3, [], 1), "unchanged bad files are not retried"
    draw(folder / "broken.png", (5, 5, 5))  # repaired
    os.utime(folder / "broken.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    fixed = update_index(tmp_path / "idx", load_retriever=loader, progress=False,
                         config=IndexConfig(max_image_pixels=10_000))
    assert (fixed.items, fixed.skipped, fixed.added) == (5, 2, 1)


def test_oversized_files_are_skipped_before_decoding(tmp_path, loader, adapter, tiny_dirs):
    folder = make_folder(tmp_path / "photos", n=2)
    (folder / "big.png").write_bytes(b"\0" * (2 * 2**20))
    report = build(tmp_path, folder, loader, adapter, tiny_dirs, max_image_mb=1)
    assert report.skipped == 1 and "more than the 1 MB allowed" in report.newly_skipped[0][1]


def test_an_interrupted_run_resumes_to_the_uninterrupted_index(tmp_path, loader, adapter, tiny_dirs):
    folder = make_folder(tmp_path / "photos", n=10)
    whole = update_index(tmp_path / "whole", folder, backbone=tiny_dirs["qwen2_vl"], adapter=adapter,
                         config=IndexConfig(batch_size=3), load_retriever=loader, progress=False)

    class Crash(Exception):
        pass

    def crashing(backbone, adapter_dir):
        retriever = loader(backbone, adapter_dir)
        original, count = retriever.embed, []

        def embed(batch, *args, **kwargs):  # the model's call on a batch
            if len(count) == 2:  # dies in the middle of the third batch
                raise Crash
            count.append(1)
            return original(batch, *args, **kwargs)

        retriever.embed = embed
        return retriever

    with pytest.raises(Crash):
        update_index(tmp_path / "cut", folder, backbone=tiny_dirs["qwen2_vl"], adapter=adapter,
                     config=IndexConfig(batch_size=3), load_retriever=crashing, progress=False)
    assert len(rows(tmp_path / "cut")) == 6, "whole batches only"
    with pytest.raises(SLQError, match="unfinished"):
        SearchIndex(tmp_path / "cut")
    resumed = update_index(tmp_path / "cut", load_retriever=loader, progress=False)
    assert (resumed.added, resumed.unchanged, resumed.items) == (4, 6, whole.items)
    a, b = rows(tmp_path / "whole"), rows(tmp_path / "cut")
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    for key in a:
        np.testing.assert_array_equal(a[key][1], b[key][1])


@pytest.mark.slow
def test_a_killed_index_command_resumes_to_the_uninterrupted_index(tmp_path, loader, adapter, tiny_dirs):
    folder = make_folder(tmp_path / "photos", n=16)

    def command(out):
        return [sys.executable, "-m", "slq.cli", "index", str(folder), "--out", str(out), "--backbone",
                str(tiny_dirs["qwen2_vl"]), "--adapter", str(adapter), "--batch-size", "2"]

    # the uninterrupted index, built in this process (same backbone, adapter and batch size); the killed and
    # the resumed run are the command's
    update_index(tmp_path / "whole", folder, backbone=tiny_dirs["qwen2_vl"], adapter=adapter,
                 config=IndexConfig(batch_size=2), load_retriever=loader, progress=False)
    proc = subprocess.Popen(command(tmp_path / "cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once some batches are committed, wherever it is
        db = tmp_path / "cut" / store.DB_NAME
        if db.is_file():
            try:
                with sqlite3.connect(db, timeout=5) as conn:
                    if conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] >= 4:
                        break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut = rows(tmp_path / "cut")
    assert 0 < len(cut) < 16, f"the kill came too late to test anything ({len(cut)} items)"
    subprocess.run(command(tmp_path / "cut"), check=True, capture_output=True, timeout=300)
    a, b = rows(tmp_path / "whole"), rows(tmp_path / "cut")
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    for key in a:
        np.testing.assert_allclose(a[key][1], b[key][1], atol=1e-6)
    SearchIndex(tmp_path / "cut")  # finished


def test_another_source_or_adapter_is_refused(tmp_path, loader, adapter, tiny_dirs, backbones):
    folder = make_folder(tmp_path / "photos", n=2)
    build(tmp_path, folder, loader, adapter, tiny_dirs)
    with pytest.raises(SLQError, match="this index is of"):
        update_index(tmp_path / "idx", make_folder(tmp_path / "other", n=1), load_retriever=loader)
    other = tmp_path / "other_adapter"
    SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4, seed=2).save(other)
    with pytest.raises(SLQError, match="another adapter"):
        update_index(tmp_path / "idx", adapter=other, load_retriever=loader)
    with pytest.raises(SLQError, match="needs --backbone and --adapter"):
        update_index(tmp_path / "new", folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SLQError, match="nothing to index"):
        build(tmp_path / "x", tmp_path / "empty", loader, adapter, tiny_dirs)


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("max_image_pixels", -1), ("index_type", "lsh"),
                                          ("target_recall", 1.5), ("max_image_mb", 0), ("memory_mb", 0)])
def test_bad_settings_are_refused_naming_them(field, value):
    with pytest.raises(SettingError, match=field):
        IndexConfig(**{field: value})


def test_an_index_built_with_worker_processes_is_bit_identical(tmp_path, loader, adapter, tiny_dirs):
    folder = make_folder(tmp_path / "photos")
    (folder / "broken.png").write_bytes(b"not a png")  # skipped the same way in a worker
    reports = {}
    for workers in (0, 2):
        reports[workers] = update_index(tmp_path / f"idx{workers}", folder, backbone=tiny_dirs["qwen2_vl"],
                                        adapter=adapter, config=IndexConfig(batch_size=4, workers=workers),
                                        load_retriever=loader, progress=False)
    assert reports[0].newly_skipped == reports[2].newly_skipped and len(reports[2].newly_skipped) == 1
    plain, prefetched = rows(tmp_path / "idx0"), rows(tmp_path / "idx2")
    assert plain.keys() == prefetched.keys()
    assert all(np.array_equal(plain[k][1], prefetched[k][1]) for k in plain)

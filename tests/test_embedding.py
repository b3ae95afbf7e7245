"""slq.embedding: a corpus embedded piece by piece equals one encode call, and a killed run resumes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from slq.backbone import Backbone
from slq.data import load_jsonl
from slq.embedding import embed_corpus, work_folder
from slq.retriever import SLQRetriever

TEXTS = [f"a {size} {colour} {shape}" + " on a white page" * (i % 4)
         for i, (size, colour, shape) in enumerate((s, c, h) for s in ("small", "big") for c in ("red", "blue", "green")
                                                    for h in ("circle", "square"))]  # 12 texts of 4 lengths


@pytest.fixture(scope="module")
def encoder(backbones):
    return SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4, seed=0)


class Killed(Exception):
    pass


def count_pieces(encoder, monkeypatch, fail_after: int | None = None) -> list[int]:
    """Count `encode_text` calls (one per piece of texts); raise Killed once `fail_after` pieces are done."""
    calls = []
    original = type(encoder).encode_text

    def counted(texts, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise Killed
        calls.append(len(texts))
        return original(encoder, texts, **kwargs)

    monkeypatch.setattr(encoder, "encode_text", counted)
    return calls


@pytest.mark.parametrize("piece_size", [1, 5, 12, 100])
def test_pieces_equal_one_encode_call_in_input_order(encoder, shapes_jsonl, tmp_path, piece_size):
    """Float noise only: batches (so padding) differ, the items do not; max |diff| measured ~1.5e-7."""
    records = load_jsonl(shapes_jsonl).records
    images = sorted((shapes_jsonl.parent / "images").glob("*.png"))
    for kind, items, whole in (("texts", TEXTS, encoder.encode_text(TEXTS, batch_size=4)),
                               ("targets", records, encoder.encode_targets(records, batch_size=4)),
                               ("targets", images, encoder.encode_image(images, batch_size=4))):
        out = tmp_path / f"{kind}.npy"
        result = embed_corpus(encoder, items, out, kind=kind, piece_size=piece_size, batch_size=4, progress=False)
        got = np.load(out)
        assert got.dtype == np.float32 and got.shape == whole.shape == (len(items), encoder.dim)
        assert np.abs(got - whole).max() <= 1e-6, f"{kind}, pieces of {piece_size}"
        assert result.pieces == -(-len(items) // piece_size) and result.embedded == result.pieces
        assert not work_folder(out).exists(), "the pieces are removed once joined"


def test_a_killed_run_resumes_without_embedding_finished_pieces_again(encoder, tmp_path, monkeypatch, caplog):
    reference = tmp_path / "reference.npy"
    embed_corpus(encoder, TEXTS, reference, kind="texts", piece_size=5, progress=False)

    out = tmp_path / "emb.npy"
    count_pieces(encoder, monkeypatch, fail_after=2)
    with pytest.raises(Killed):
        embed_corpus(encoder, TEXTS, out, kind="texts", piece_size=5, progress=False)
    assert not out.exists() and len(list(work_folder(out).glob("piece-*.npy"))) == 2

    calls = count_pieces(encoder, monkeypatch)
    with caplog.at_level(logging.INFO, logger="slq"):
        result = embed_corpus(encoder, TEXTS, out, kind="texts", piece_size=5, progress=False)
    assert calls == [2], "only the last piece (items 10..11) is embedded again"
    assert result.reused == 2 and "2 piece(s) already done" in caplog.text
    assert np.array_equal(np.load(out), np.load(reference))
    assert not work_folder(out).exists()


@pytest.mark.parametrize("change", ["items", "adapter", "piece_size"])
def test_a_stale_work_folder_is_not_reused(encoder, backbones, tmp_path, monkeypatch, caplog, change):
    out = tmp_path / "emb.npy"
    count_pieces(encoder, monkeypatch, fail_after=1)
    with pytest.raises(Killed):
        embed_corpus(encoder, TEXTS, out, kind="texts", piece_size=4, progress=False)
    monkeypatch.undo()

    other, texts, piece_size = encoder, TEXTS, 4
    if change == "items":
        texts = ["a yellow circle", *TEXTS[1:]]  # the first piece's texts differ, its shape does not
    elif change == "adapter":
        other = SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4, seed=1)
    else:
        piece_size = 3
    calls = count_pieces(other, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="slq"):
        embed_corpus(other, texts, out, kind="texts", piece_size=piece_size, progress=False)
    assert "starting over" in caplog.text and {"items": "the items", "adapter": "the encoder",
                                               "piece_size": "piece size"}[change] in caplog.text
    assert len(calls) == -(-len(texts) // piece_size), "every piece is embedded anew"
    assert np.abs(np.load(out) - other.encode_text(texts)).max() <= 1e-6


def test_a_damaged_piece_is_embedded_again(encoder, tmp_path, monkeypatch, caplog):
    out = tmp_path / "emb.npy"
    count_pieces(encoder, monkeypatch, fail_after=2)
    with pytest.raises(Killed):
        embed_corpus(encoder, TEXTS, out, kind="texts", piece_size=5, progress=False)
    first = work_folder(out) / "piece-000000.npy"
    np.save(first, np.full((5, encoder.dim), np.nan, np.float32))
    calls = count_pieces(encoder, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="slq"):
        embed_corpus(encoder, TEXTS, out, kind="texts", piece_size=5, progress=False)
    assert calls == [5, 2] and "non-finite" in caplog.text
    assert np.abs(np.load(out) - encoder.encode_text(TEXTS)).max() <= 1e-6


def _killed_worker(rank: int, world_size: int, init_file: str, backbone: str, out: str) -> None:
    """Process 1 dies after its first piece; process 0 is killed by spawn while it works or waits."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    encoder = SLQRetriever.fresh(Backbone.load(backbone), num_queries=4, seed=0)
    if rank == 1:
        count_pieces(encoder, pytest.MonkeyPatch(), fail_after=1)
    embed_corpus(encoder, TEXTS, out, kind="texts", piece_size=2, progress=False)


@pytest.mark.slow
def test_a_killed_distributed_run_resumes_on_one_process_without_loss_or_duplicates(encoder, tiny_dirs, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "emb.npy"
    with pytest.raises(Exception, match="Killed"):
        mp.spawn(_killed_worker, args=(2, str(tmp_path / "init"), str(tiny_dirs["qwen2_vl"]), str(out)), nprocs=2)
    done = sorted(p.name for p in work_folder(out).glob("piece-*.npy"))
    assert "piece-000001.npy" in done and not out.exists(), done  # process 1's first piece, no output

    calls = count_pieces(encoder, monkeypatch)
    result = embed_corpus(encoder, TEXTS, out, kind="texts", piece_size=2, progress=False)
    assert result.reused == len(done) and len(calls) == 6 - len(done), "each missing piece embedded once"
    got = np.load(out)
    assert got.shape == (len(TEXTS), encoder.dim) and np.abs(got - encoder.encode_text(TEXTS)).max() <= 1e-6
    assert len(np.unique(got.round(5), axis=0)) == len(TEXTS), "no row lost or duplicated"


def test_mistakes_are_one_line_errors(encoder, tmp_path):
    from slq.embedding import _check_same_job, _manifest, _prepare
    from slq.errors import SettingError, SLQError

    with pytest.raises(SettingError, match="kind images: must be one of texts, targets"):
        embed_corpus(encoder, TEXTS, tmp_path / "e.npy", kind="images")
    with pytest.raises(SettingError, match="piece_size 0"):
        embed_corpus(encoder, TEXTS, tmp_path / "e.npy", kind="texts", piece_size=0)
    with pytest.raises(SLQError, match="is a folder"):
        embed_corpus(encoder, TEXTS, tmp_path, kind="texts")
    (tmp_path / "f.npy.parts").write_text("x")
    with pytest.raises(SLQError, match="f.npy.parts is a file"):
        embed_corpus(encoder, TEXTS, tmp_path / "f.npy", kind="texts")

    folder = tmp_path / "g.npy.parts"  # a process given another corpus than process 0 stops
    _prepare(folder, _manifest(encoder, TEXTS, "texts", 4))
    with pytest.raises(SLQError, match="process 1 was given another job than process 0 .*the items differ"):
        _check_same_job(folder, _manifest(encoder, TEXTS[::-1], "texts", 4), rank=1)

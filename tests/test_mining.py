"""Hard-negative mining: the highest-ranked wrong candidates of each pair's group, never a right one."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from slq.cli import main
from slq.data import Input, PairDataset, PairRecord, load_jsonl, load_pairs, write_pairs
from slq.errors import SettingError
from slq.mining import SKIPPED, SMALL_GROUP, MiningConfig, mine_negatives
from slq.retriever import SLQRetriever
from slq.train import TrainConfig, train

FIND = "Find the image:"
ALL = 100  # more negatives than any group has: every candidate that may be one is taken


@pytest.fixture(scope="module")
def encoder(tiny_dirs):
    return SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], num_queries=4)


@pytest.fixture(scope="module")
def pairs(shapes_jsonl, tmp_path_factory) -> PairDataset:
    """Two tasks. t2i: caption -> image (each caption twice: the set draws every shape twice), plus
    a byte-identical copy of image 0 under another path and a near-copy (a corner blacked out), each
    behind its own caption. vqa: image + question -> its colour, so four pairs share each answer."""
    records = load_jsonl(shapes_jsonl).records
    folder = tmp_path_factory.mktemp("mining")
    copy, near = folder / "copy.png", folder / "near.png"
    shutil.copy(records[0].image, copy)
    with Image.open(records[0].image) as im:
        im = im.convert("RGB")
        ImageDraw.Draw(im).rectangle((0, 0, 3, 3), fill=(0, 0, 0))  # cosine 0.9998 to the original
        im.save(near)
    t2i = [PairRecord(Input(r.captions[0], instruction=FIND), Input(image=r.image), (), f"t2i:{i}", {"task": "t2i"})
           for i, r in enumerate(records)]
    t2i += [PairRecord(Input(text, instruction=FIND), Input(image=path), (), f"t2i:{name}", {"task": "t2i"})
            for text, path, name in (("a copied red circle", copy, "copy"), ("a retouched red circle", near, "near"))]
    vqa = [PairRecord(Input("What colour is the shape?", r.image), Input(r.captions[0].split()[1]), (), f"vqa:{i}",
                      {"task": "vqa", "id": i}) for i, r in enumerate(records)]
    return PairDataset(t2i + vqa, "pairs")


def _by_source(result) -> dict[str, PairRecord]:
    return {r.source: r for r in result.dataset.records}


def test_a_bad_setting_is_named():
    for name, value in (("k", 0), ("max_similarity", 1.5), ("group_by", None), ("keep_existing", "yes")):
        with pytest.raises(SettingError, match=name):
            MiningConfig(**{name: value})


def test_no_negative_is_the_positive_under_any_name_nor_another_answer_of_the_query(encoder, pairs):
    result = mine_negatives(encoder, pairs, MiningConfig(k=ALL, max_similarity=1.0))
    mined = _by_source(result)
    assert [r.source for r in result.dataset.records] == [r.source for r in pairs.records], "order kept"
    assert all(r.meta == p.meta for r, p in zip(result.dataset.records, pairs.records)), "meta kept"
    for record in result.dataset.records:
        assert record.positive.key() not in {n.key() for n in record.negatives}, record.source
        assert record.query.key() not in {n.key() for n in record.negatives}, record.source
    copy, near = mined["t2i:copy"].positive, mined["t2i:near"].positive
    assert copy not in mined["t2i:0"].negatives and mined["t2i:0"].positive not in mined["t2i:copy"].negatives, \
        "the same image bytes under another path is the positive, not a negative"
    assert near in mined["t2i:0"].negatives, "at max_similarity 1 a near-copy is a negative"
    assert mined["t2i:8"].positive not in mined["t2i:0"].negatives, "both images fit the caption: both are right"
    assert result.skipped_positive >= len(pairs)  # each pair's own positive, at least
    red = [r for r in result.dataset.records if r.meta["task"] == "vqa" and r.positive.text == "red"]
    assert len(red) == 4 and all({n.text for n in r.negatives} == {"green", "blue", "yellow"} for r in red), \
        "another pair's \"red\" is the same answer: never a negative of a \"red\" pair"


def test_near_duplicates_of_the_positive_are_skipped_and_counted(encoder, pairs):
    result = mine_negatives(encoder, pairs, MiningConfig(k=ALL, max_similarity=0.995))
    near = _by_source(result)["t2i:near"].positive
    assert near not in _by_source(result)["t2i:0"].negatives
    inputs = list(dict.fromkeys(r.positive for r in pairs.records))  # every negative is some pair's positive
    vectors = dict(zip(inputs, encoder.encode_inputs(inputs)))
    for record in result.dataset.records:
        assert all(vectors[n] @ vectors[record.positive] < 0.995 for n in record.negatives), record.source
    assert result.skipped_near_duplicate > 0

    nothing = mine_negatives(encoder, pairs, MiningConfig(k=2, max_similarity=-1.0))
    assert all(not r.negatives for r in nothing.dataset.records)
    assert len(nothing.short) == len(pairs) and nothing.short_reasons() == {SKIPPED: len(pairs)}
    assert nothing.skipped_near_duplicate > len(pairs)


def test_k_negatives_per_pair_where_the_group_allows_and_the_shortfall_is_said(encoder, pairs):
    result = mine_negatives(encoder, pairs, MiningConfig(k=4, max_similarity=1.0))
    mined = _by_source(result)
    assert all(len(r.negatives) == 4 and len(set(r.negatives)) == 4 for r in mined.values() if r.meta["task"] == "t2i")
    assert all(len(r.negatives) == 3 for r in mined.values() if r.meta["task"] == "vqa"), "four colours: three wrong"
    assert result.short_reasons() == {SMALL_GROUP: 16}
    assert {source for source, found, _ in result.short} == {f"vqa:{i}" for i in range(16)}
    assert result.groups == 2 and result.pairs == len(pairs)


def test_groups_keep_their_candidates_apart(encoder, pairs):
    grouped = mine_negatives(encoder, pairs, MiningConfig(k=ALL, max_similarity=1.0))
    for record in grouped.dataset.records:
        images = {n.image is not None for n in record.negatives}
        assert images == ({True} if record.meta["task"] == "t2i" else {False}), record.source
    pooled = mine_negatives(encoder, pairs, MiningConfig(k=ALL, max_similarity=1.0, group_by=""))
    assert pooled.groups == 1
    assert all(any(n.image is None for n in r.negatives) for r in pooled.dataset.records if r.meta["task"] == "t2i")
    by_id = mine_negatives(encoder, pairs, MiningConfig(k=1, group_by="id"))  # vqa pairs alone; t2i ones together
    assert all(not r.negatives for r in by_id.dataset.records if r.meta["task"] == "vqa")


def test_keep_existing_appends_and_never_repeats(encoder, pairs):
    records = [PairRecord(r.query, r.positive, (pairs.records[(i + 1) % 16].positive,), r.source, r.meta)
               for i, r in enumerate(pairs.records[:16])]
    data = PairDataset(records, "with-negatives")
    kept = mine_negatives(encoder, data, MiningConfig(k=ALL, max_similarity=1.0, keep_existing=True))
    for before, after in zip(records, kept.dataset.records):
        assert after.negatives[0] == before.negatives[0]
        assert len(after.negatives) > 1 and len(set(after.negatives)) == len(after.negatives), after.source
    assert kept.skipped_existing > 0
    replaced = mine_negatives(encoder, data, MiningConfig(k=2, max_similarity=1.0))
    assert all(len(r.negatives) == 2 for r in replaced.dataset.records)


def test_mining_is_deterministic_and_blocks_change_nothing(encoder, pairs, monkeypatch):
    config = MiningConfig(k=3, max_similarity=0.999)
    first = mine_negatives(encoder, pairs, config).dataset.records
    monkeypatch.setattr("slq.mining.QUERY_BLOCK", 5)
    assert [r.negatives for r in mine_negatives(encoder, pairs, config, batch_size=3).dataset.records] == \
        [r.negatives for r in first]


class _Table:
    """An encoder stub: each input's vector looked up by its text, or its image's file name."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = {t: np.asarray(v, np.float32) / np.linalg.norm(v) for t, v in vectors.items()}

    def encode_inputs(self, inputs, batch_size=32, show_progress_bar=None):
        return np.stack([self.vectors[x.text if x.image is None else x.image.name] for x in inputs])  # (n, d)


def test_ties_go_to_the_first_candidate_and_the_query_itself_is_no_negative():
    table = _Table({"q": [1, 0, 0], "a": [0, 1, 0], "b": [0.6, 0, 0.8], "c": [0.6, 0, 0.8], "d": [0.5, 0.5, 0.7]})
    make = lambda names: PairDataset([PairRecord(Input("q"), Input("a"), (), "0")] +  # noqa: E731
                                     [PairRecord(Input(n), Input(n), (), str(i)) for i, n in enumerate(names, 1)], "t")
    for names in (("b", "c", "d"), ("c", "b", "d")):
        result = mine_negatives(table, make(names), MiningConfig(k=1, max_similarity=1.0))
        assert result.dataset.records[0].negatives == (Input(names[0]),)
    swapped = PairDataset([PairRecord(Input("q"), Input("a"), (), "0"), PairRecord(Input("a"), Input("q"), (), "1"),
                           PairRecord(Input("b"), Input("d"), (), "2")], "t")
    negatives = mine_negatives(table, swapped, MiningConfig(k=1, max_similarity=1.0)).dataset.records[0].negatives
    assert negatives == (Input("d"),), "the query's own text, another pair's positive, ranks first but is no negative"


def test_candidates_scored_too_close_to_the_positive_are_skipped_as_likely_right():
    """q scores its positive a at 0.8; b at 0.79 (above 0.95 x 0.8: perhaps right), c at 0.6."""
    table = _Table({"q": [1, 0, 0], "a": [0.8, 0.6, 0], "b": [0.79, 0, 0.613], "c": [0.6, 0, 0.8]})
    data = PairDataset([PairRecord(Input("q"), Input("a"), (), "0"), PairRecord(Input("x"), Input("b"), (), "1"),
                        PairRecord(Input("y"), Input("c"), (), "2")], "t")
    table.vectors.update({"x": table.vectors["b"], "y": table.vectors["c"]})
    plain = mine_negatives(table, data, MiningConfig(k=1, max_similarity=1.0))
    aware = mine_negatives(table, data, MiningConfig(k=1, max_similarity=1.0, max_relative_score=0.95))
    assert plain.dataset.records[0].negatives == (Input("b"),)
    assert aware.dataset.records[0].negatives == (Input("c"),) and aware.skipped_above_positive >= 1
    with pytest.raises(SettingError, match="max_relative_score"):
        MiningConfig(max_relative_score=1.5)


def test_mined_pairs_train(encoder, pairs):
    eight = PairDataset(pairs.records[:8], "eight")
    mined = mine_negatives(encoder, eight, MiningConfig(k=2, max_similarity=0.999)).dataset
    history = train(SLQRetriever.fresh(encoder.backbone, num_queries=4), mined,
                    TrainConfig(num_queries=4, batch_size=4, epochs=1, hard_negatives=2), progress=False).history
    assert history and math.isfinite(history[-1]["loss"])


def test_slq_mine_negatives_writes_pairs_that_load_back(tiny_dirs, encoder, pairs, tmp_path, capsys):
    data, out = tmp_path / "pairs.jsonl", tmp_path / "mined" / "pairs.jsonl"
    write_pairs(pairs.records, data)
    adapter = encoder.save(tmp_path / "adapter")
    assert main(["mine-negatives", "--backbone", str(tiny_dirs["qwen2_vl"]), "--adapter", str(adapter),
                 "--data", str(data), "--out", str(out), "--k", "2", "--max-similarity", "0.999"]) == 0
    assert f"slq: {len(pairs)} pairs, 2 negatives each, written to {out}" in capsys.readouterr().out
    mined = load_pairs(out)
    assert len(mined) == len(pairs) and all(len(r.negatives) == 2 for r in mined.records)
    assert [r.meta for r in mined.records] == [r.meta for r in pairs.records]
    assert all(r.positive.key() not in {n.key() for n in r.negatives} for r in mined.records)


def test_out_equal_to_data_is_refused_before_loading_anything(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    write_pairs([PairRecord(Input("q"), Input("a"), (), "0")], data)
    code = main(["mine-negatives", "--backbone", str(tmp_path / "missing"), "--data", str(data),
                 "--out", str(tmp_path / "." / "pairs.jsonl")])
    message = capsys.readouterr().err
    assert code == 2 and "--out" in message and "--data" in message, message


def test_the_same_image_bytes_under_another_path_are_the_positive(tmp_path):
    a, copy, b = tmp_path / "a.png", tmp_path / "copy.png", tmp_path / "b.png"
    Image.new("RGB", (4, 4), "red").save(a)
    shutil.copy(a, copy)
    Image.new("RGB", (4, 4), "blue").save(b)
    table = _Table({"q": [1, 0], "r": [0, 1], "s": [0, 1], "a.png": [0, 1], "copy.png": [1, 0.1], "b.png": [1, 0.2]})
    data = PairDataset([PairRecord(Input("q"), Input(image=a), (), "0"), PairRecord(Input("r"), Input(image=copy), (), "1"),
                        PairRecord(Input("s"), Input(image=b), (), "2")], "t")
    result = mine_negatives(table, data, MiningConfig(k=1, max_similarity=1.0))
    assert result.dataset.records[0].negatives == (Input(image=b),), "the copy ranks first but is the positive"
    assert result.skipped_positive == 2  # the copy, for pair 0; the original, for the copy's pair

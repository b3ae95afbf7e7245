"""slq.index.search: queries of each kind, several adapters on one backbone, and files served only from
inside the index's root."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slq.errors import SLQError
from slq.index import IndexConfig, Searcher, SearchIndex, store, update_index
from slq.retriever import SLQRetriever

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def collection(shapes_jsonl, tiny_dirs, backbones, tmp_path_factory):
    """Two indexes of the shapes images with two adapters on the tiny Qwen2-VL, and one on another backbone."""
    root = tmp_path_factory.mktemp("search")
    out = {}
    for name, family, seed in (("a", "qwen2_vl", 1), ("b", "qwen2_vl", 2), ("other", "idefics3", 1)):
        adapter = root / f"adapter_{name}"
        SLQRetriever.fresh(backbones[family], num_queries=4, seed=seed).save(adapter)
        update_index(root / name, shapes_jsonl, backbone=tiny_dirs[family], adapter=adapter,
                     config=IndexConfig(batch_size=8),
                     load_retriever=lambda b, a, family=family: SLQRetriever.on_backbone(backbones[family], a),
                     progress=False)
        out[name] = root / name
    return out


def test_two_adapters_share_one_backbone_and_answer_differently(collection):
    searcher = Searcher.open([collection["a"], collection["b"]])
    a, b = searcher.retrievers["a"], searcher.retrievers["b"]
    assert a.backbone is b.backbone, "one frozen model in memory"
    assert not torch.equal(a.queries.weight, b.queries.weight)
    va, vb = searcher.embed("a red circle", index="a"), searcher.embed("a red circle", index="b")
    assert not np.allclose(va, vb)
    np.testing.assert_allclose(va, a.encode_text("a red circle"), atol=1e-6)
    hits = searcher.search("a red circle", k=4, index="b")
    assert [h.id for h in hits] == [h.id for h in searcher.index("b").search(vb, 4)[0]]
    with pytest.raises(SLQError, match="no index named"):
        searcher.index("c")
    searcher.close()


def test_an_instruction_changes_the_query_as_encode_query_does(collection, shapes_jsonl):
    from slq.data import load_image, load_jsonl

    searcher = Searcher.open([collection["a"]])
    retriever, instruction = searcher.retrievers["a"], "Find an image that matches the caption:"
    image = load_image(load_jsonl(shapes_jsonl).records[3])
    for text, picture in (("a red circle", None), (None, image), ("its colour", image)):
        plain = searcher.embed(text, picture)
        instructed = searcher.embed(text, picture, instruction=instruction)
        assert not np.allclose(plain, instructed, atol=1e-4), (text, picture)
        np.testing.assert_allclose(instructed, retriever.encode_query(text, picture, instruction=instruction),
                                   atol=1e-6)
        hits = searcher.search(text, picture, k=4, instruction=instruction)
        assert [h.id for h in hits] == [h.id for h in searcher.index().search(instructed, 4)[0]]
    searcher.close()


def test_indexes_on_different_backbones_are_refused_together(collection):
    with pytest.raises(SLQError, match="another backbone"):
        Searcher.open([collection["a"], collection["other"]])


def test_an_adapter_changed_after_indexing_is_refused(collection, tmp_path, backbones):
    import shutil

    copy = tmp_path / "a"
    shutil.copytree(collection["a"], copy)
    adapter = tmp_path / "adapter"
    SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4, seed=1).save(adapter)
    db = store.connect(copy)  # the copy records an adapter of its own, with the same weights
    with db:
        store.set_meta(db, adapter=str(adapter))
    db.close()
    Searcher.open([copy]).close()  # the same weights: fine
    SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4, seed=9).save(adapter)
    with pytest.raises(SLQError, match="adapter changed"):
        Searcher.open([copy])


def test_an_image_with_text_is_one_prompt_unlike_either_alone(backbones, shapes_jsonl):
    retriever = SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4, seed=0)
    image = shapes_jsonl.parent / "images" / "000.png"
    both = retriever.encode_query(text="which colour is it?", image=image)
    from slq.data import load_image

    batch = retriever.backbone.image_batch([load_image(image)], instruction="which colour is it?")
    with torch.no_grad():
        np.testing.assert_allclose(both, retriever.embed(batch)[0].numpy(), atol=1e-6)
    assert not np.allclose(both, retriever.encode_query(image=image), atol=1e-4)
    assert not np.allclose(both, retriever.encode_query(text="which colour is it?"), atol=1e-4)
    np.testing.assert_allclose(retriever.encode_query(text="a red circle"), retriever.encode_text("a red circle"))
    with pytest.raises(ValueError, match="needs a text, an image"):
        retriever.encode_query()


def test_files_are_served_only_from_inside_the_root(collection, tmp_path, shapes_jsonl):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(shapes_jsonl.parent / "images", images)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"image": f"images/{i:03d}.png", "captions": ["c"]}) + "\n" for i in range(3)))
    retriever = Searcher.open([collection["a"]]).retrievers["a"]
    update_index(tmp_path / "idx", data, backbone="unused", adapter=SearchIndex(collection["a"]).meta["adapter"],
                 load_retriever=lambda b, a: retriever, progress=False)
    index = SearchIndex(tmp_path / "idx")
    ids = [hit.id for hit in index.search(np.eye(index.dim, dtype=np.float32)[0], k=3)[0]]
    assert all(index.image_file(i) is not None for i in ids)
    assert index.image_file(10**6) is None
    secret = tmp_path.parent / f"{tmp_path.name}_secret.png"
    shutil.copy(images / "001.png", secret)
    victim = next(i for i in ids if index.image_file(i).name == "001.png")
    (images / "001.png").unlink()
    (images / "001.png").symlink_to(secret)  # swapped for a link out of the root after indexing
    assert index.image_file(victim) is None
    (images / "001.png").unlink()
    assert index.image_file(victim) is None  # gone

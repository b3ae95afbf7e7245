"""Inputs prepared in worker processes: the same batches, bit for bit, in order, with the errors of
preparing them in the main process; training and embedding give identical results either way."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from slq.data import ImageTextDataset, load_jsonl
from slq.embedding import embed_corpus
from slq.encoder import batch_key
from slq.errors import DataError, SLQError
from slq.prefetch import default_workers, prepare_ahead, resolve_workers, step_batches
from slq.retriever import SLQRetriever
from slq.train import TrainConfig, train


def _square(job):
    return job * job


def _fail_on_three(job):
    if job == 3:
        raise DataError(f"record {job}: cannot read image x.png")
    return job


def _fail_in_workers_only(job):
    if os.getpid() != _fail_in_workers_only.parent:
        raise OSError("worker only")
    return job


def _hang(job):
    time.sleep(60)
    return job


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_results_come_in_job_order(workers):
    assert list(prepare_ahead(_square, range(20), workers=workers, prefetch=2)) == [j * j for j in range(20)]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_job_raises_the_error_it_raises_in_the_main_process(workers):
    results = prepare_ahead(_fail_on_three, range(6), workers=workers)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(DataError, match="record 3: cannot read image x.png"):
        next(results)


def test_a_job_failing_only_in_a_worker_is_redone_in_the_main_process(caplog):
    _fail_in_workers_only.parent = os.getpid()
    assert list(prepare_ahead(_fail_in_workers_only, range(3), workers=1)) == [0, 1, 2]
    assert "a worker failed (OSError: worker only)" in caplog.text


def test_a_hanging_worker_stops_the_run_with_a_message():
    with pytest.raises(SLQError, match="timed out after 1 seconds.*workers=0"):
        list(prepare_ahead(_hang, range(2), workers=1, timeout=1))


def test_the_global_random_stream_is_left_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    list(prepare_ahead(_square, range(4), workers=1))
    assert torch.equal(torch.rand(3), expected)


def test_workers_settings_are_checked():
    assert resolve_workers(None) == default_workers() and 0 <= default_workers() <= 4
    with pytest.raises(SLQError, match="workers"):
        resolve_workers(-1)
    with pytest.raises(SLQError, match="prefetch"):
        resolve_workers(1, prefetch=0)
    with pytest.raises(SLQError, match="workers"):
        TrainConfig(workers=-1)


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "internvl", "llava"])
def test_a_batch_built_ahead_is_the_batch_built_in_place(backbones, shapes_jsonl, family):
    encoder = SLQRetriever.fresh(backbones[family], num_queries=4)
    records = load_jsonl(shapes_jsonl).records[:5]
    (built,) = prepare_ahead(lambda job: encoder.build_batch("image", job), [records], workers=1)
    here = encoder.image_batch(records)
    there = encoder.backbone.place(built)
    assert torch.equal(here.input_ids, there.input_ids) and torch.equal(here.attention_mask, there.attention_mask)
    assert here.model_inputs.keys() == there.model_inputs.keys()
    assert all(torch.equal(here.model_inputs[k], there.model_inputs[k]) for k in here.model_inputs)


def test_a_step_builds_only_the_prompts_its_cache_lacks_once_each(backbones, shapes_jsonl):
    from slq.prompt_cache import PromptCache

    encoder = SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4)
    records = load_jsonl(shapes_jsonl).records[:4]
    cache = PromptCache(64.0)
    texts = ["a", "b", "a", "c"]
    encoder.prepare_texts(["b"], cache=cache)  # "b" is kept
    batches = step_batches(encoder, [texts, records + records[:1]], cache=cache)
    assert batches == [("text", ["a", "c"]), ("image", records)]
    assert step_batches(encoder, [texts], cache=None) == [("text", texts)]  # no cache: the whole side
    chunked = step_batches(encoder, [texts], chunk_size=3)
    assert chunked == [("text", texts[:3]), ("text", texts[3:])]
    assert batch_key("text", texts) == ("text", *texts)


def _train(tiny_dirs, data, family, workers, **settings):
    config = TrainConfig(num_queries=4, batch_size=8, epochs=2, lr=1e-2, workers=workers, **settings)
    retriever = SLQRetriever.from_pretrained(tiny_dirs[family], num_queries=4, seed=0)
    result = train(retriever, data, config, progress=False)
    return retriever.queries.weight.detach().clone(), [h["loss"] for h in result.history], result


@pytest.mark.parametrize("family,settings", [
    ("qwen2_vl", {}),
    ("idefics3", {"chunk_size": 3}),
    ("qwen2_vl", {"pairs": "all", "prompt_cache_mb": 64.0}),
    ("internvl", {"engine": "naive"}),
])
def test_training_with_workers_is_bit_identical(tiny_dirs, shapes_jsonl, family, settings):
    data = load_jsonl(shapes_jsonl)
    q0, losses0, _ = _train(tiny_dirs, data, family, 0, **settings)
    q2, losses2, result = _train(tiny_dirs, data, family, 2, **settings)
    assert torch.equal(q0, q2), "the trained queries differ with worker processes"
    assert losses0 == losses2
    if settings.get("prompt_cache_mb"):
        assert result.prompt_cache["hits"] > 0


@pytest.mark.parametrize("settings,most", [({}, 0), ({"pairs": "all", "prompt_cache_mb": 64.0}, 8)])
def test_with_workers_the_main_process_builds_no_batch(tiny_dirs, shapes_jsonl, monkeypatch, settings, most):
    """The steps take the batches the workers built (with a prompt cache, all but the few whose
    prompts were kept between the worker's start and the step)."""
    from slq.encoder import Encoder

    built_here, main = [], os.getpid()
    original = Encoder.build_batch

    def counting(self, kind, items):
        if os.getpid() == main:
            built_here.append(len(items))
        return original(self, kind, items)

    monkeypatch.setattr(Encoder, "build_batch", counting)
    _train(tiny_dirs, load_jsonl(shapes_jsonl), "qwen2_vl", 2, **settings)
    assert len(built_here) <= most, built_here


def test_training_on_text_pairs_with_workers_is_bit_identical(tiny_dirs):
    from slq.data import TextRecord

    records = [TextRecord(f"text number {i}", (f"caption {i}", f"another {i}"), f"r{i}") for i in range(12)]
    data = ImageTextDataset(records, "texts")
    q0, losses0, _ = _train(tiny_dirs, data, "gemma3_text", 0)
    q2, losses2, _ = _train(tiny_dirs, data, "gemma3_text", 2)
    assert torch.equal(q0, q2) and losses0 == losses2


def test_a_bad_image_in_a_worker_names_its_record(tiny_dirs, shapes_jsonl, tmp_path):
    data = load_jsonl(shapes_jsonl)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    from dataclasses import replace

    records = [replace(r, image=broken) if i == 3 else r for i, r in enumerate(data.records)]
    bad = ImageTextDataset(records, "bad")
    with pytest.raises(DataError, match="broken.png"):
        _train(tiny_dirs, bad, "qwen2_vl", 2)


@pytest.mark.parametrize("kind", ["targets", "texts"])
def test_embedding_with_workers_is_bit_identical(tiny_dirs, shapes_jsonl, tmp_path, kind):
    data = load_jsonl(shapes_jsonl)
    items = data.records if kind == "targets" else data.texts()
    encoder = SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], num_queries=4, seed=0)
    out = {}
    for workers in (0, 2):
        path = tmp_path / f"{kind}-{workers}.npy"
        embed_corpus(encoder, items, path, kind=kind, piece_size=7, batch_size=3, workers=workers, progress=False)
        out[workers] = np.load(path)
    assert np.array_equal(out[0], out[2])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "idefics3", "llava", "gemma3"])
def test_the_fast_image_processor_gives_the_slow_ones_pixels(tiny_dirs, shapes_jsonl, family):
    """Where torchvision imports, slq loads transformers' fast image processors: same layout and
    placeholder counts as the PIL ones, pixels equal within resampling differences. `make test-torchvision`
    runs these where torchvision loads, and there they may not skip."""
    if not os.environ.get("SLQ_REQUIRE_TORCHVISION"):
        pytest.importorskip("torchvision")
    from PIL import Image
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from slq.backbone import image_processor_backend
    from slq.families import family_for

    assert image_processor_backend() == "torchvision"
    config = AutoConfig.from_pretrained(tiny_dirs[family])
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])
    images = [Image.open(r.image).convert("RGB") for r in load_jsonl(shapes_jsonl).records[:3]]
    outputs = [family_for(config.model_type).image_inputs(
        config, tokenizer, AutoImageProcessor.from_pretrained(tiny_dirs[family], backend=backend), images)
        for backend in ("pil", "torchvision")]
    slow, fast = outputs
    assert slow.placeholder_text == fast.placeholder_text
    assert slow.model_inputs.keys() == fast.model_inputs.keys()
    for key, value in slow.model_inputs.items():
        assert value.shape == fast.model_inputs[key].shape, key
        if value.is_floating_point():  # normalised pixels: resampling differs by a few grey levels at most
            assert (value - fast.model_inputs[key]).abs().mean() < 0.02, key
        else:
            assert torch.equal(value, fast.model_inputs[key]), key

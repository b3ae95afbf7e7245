"""Training: the backbone never changes, runs are deterministic, resumable, and the loss goes down."""

from __future__ import annotations

import pytest
import torch

from slq.data import ImageTextDataset, load_jsonl
from slq.errors import SLQError
from slq.retriever import SLQRetriever
from slq.train import BatchPlan, TrainConfig, lr_factor, train


def _run(tiny_dirs, data, family="qwen2_vl", **overrides):
    config = TrainConfig(**{"num_queries": 4, "batch_size": 8, "epochs": 2, "lr": 1e-2, **overrides})
    retriever = SLQRetriever.from_pretrained(tiny_dirs[family], num_queries=config.num_queries, seed=config.seed)
    return retriever, config


def test_backbone_bit_identical_after_training(tiny_dirs, shapes_jsonl):
    data = load_jsonl(shapes_jsonl)
    retriever, config = _run(tiny_dirs, data)
    before = {k: v.clone() for k, v in retriever.backbone.model.state_dict().items()}
    start = retriever.queries.weight.detach().clone()
    train(retriever, data, config, progress=False)
    after = retriever.backbone.model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"backbone tensors changed: {changed[:5]}"
    assert not torch.equal(start, retriever.queries.weight), "the queries did not train"


def test_training_is_deterministic(tiny_dirs, shapes_jsonl):
    data = load_jsonl(shapes_jsonl)
    results = []
    for _ in range(2):
        retriever, config = _run(tiny_dirs, data)
        history = train(retriever, data, config, progress=False).history
        results.append((retriever.queries.weight.detach().clone(), [h["loss"] for h in history]))
    (q1, losses1), (q2, losses2) = results
    assert torch.equal(q1, q2), "same seed, different queries"
    assert losses1 == losses2


def test_training_lowers_the_loss_on_a_fixed_batch(tiny_dirs, shapes_jsonl):
    """With the dataset one batch of one caption each, every step sees the same inputs: the loss
    must fall and keep falling (a zero or wrong-signed gradient cannot do that).

    (A random tiny backbone holds little to elicit, so held-out recall is not the test here.)
    """
    from dataclasses import replace

    data = load_jsonl(shapes_jsonl)
    one_batch = ImageTextDataset([replace(r, captions=r.captions[:1]) for r in data.records[:8]], "one-batch")
    retriever, config = _run(tiny_dirs, one_batch, epochs=30, lr=3e-3)
    losses = [h["loss"] for h in train(retriever, one_batch, config, progress=False).history]
    assert losses[-1] < losses[0] - 0.03, f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert losses[-1] <= min(losses) + 1e-3, "the loss went back up on identical inputs"


def test_resume_continues_bit_for_bit(tiny_dirs, shapes_jsonl, tmp_path):
    data = load_jsonl(shapes_jsonl)
    whole, config = _run(tiny_dirs, data, save_every=1)
    train(whole, data, config, checkpoint_dir=tmp_path / "whole", progress=False)

    class Crash(Exception):
        pass

    def crash_at_3(entry):
        if entry["step"] == 3:
            raise Crash

    interrupted, _ = _run(tiny_dirs, data)
    with pytest.raises(Crash):
        train(interrupted, data, config, checkpoint_dir=tmp_path / "cut", progress=False, on_step=crash_at_3)
    resumed, _ = _run(tiny_dirs, data)  # a fresh process would start from fresh queries
    result = train(resumed, data, config, checkpoint_dir=tmp_path / "cut", resume=True, progress=False)
    assert torch.equal(resumed.queries.weight, whole.queries.weight)
    assert len(result.history) == result.steps == 4


def test_batch_plan_covers_each_image_once_per_epoch(shapes_jsonl):
    data = load_jsonl(shapes_jsonl)  # 16 images
    plan = BatchPlan(data, TrainConfig(batch_size=4, epochs=2))
    assert plan.steps_per_epoch == 4 and plan.total_steps == 8
    seen = [r.image for step in range(4) for r in plan(step)[0]]
    assert sorted(seen) == sorted(r.image for r in data.records)
    records, texts = plan(0)
    assert all(t in r.captions for r, t in zip(records, texts))
    assert [r.image for r in plan(4)[0]] != [r.image for r in plan(0)[0]], "epochs should reshuffle"


def test_batch_larger_than_dataset_is_refused(shapes_jsonl):
    with pytest.raises(SLQError, match="larger than the training set"):
        BatchPlan(load_jsonl(shapes_jsonl), TrainConfig(batch_size=64))


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("batch_size", 1), ("num_queries", 0), ("temperature", 5.0),
                                         ("epochs", 0), ("warmup_steps", -1), ("prompt_cache_disk_mb", -1.0),
                                         ("prompt_cache_dtype", "int8"), ("prompt_cache_dtype", "bfloat16"),
                                         ("chunk_size", -1), ("chunk_size", 2.5), ("pairs", "every"),
                                         ("clip_grad_norm", -1.0), ("clip_grad_norm", float("nan")),
                                         ("save_minutes", -5.0), ("save_epochs", "yes"), ("compile", 1),
                                         ("prompt_cache_device_mb", -1.0)])
def test_bad_settings_name_the_setting_and_the_cli_its_flag(field, value):
    from slq.cli.options import flag_of
    from slq.errors import SettingError

    with pytest.raises(SettingError, match=f"^{field} ") as error:
        TrainConfig(**{field: value})
    assert error.value.setting == field and error.value.message(flag_of).startswith(f"--{field.replace('_', '-')} ")


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 4, 10) == 0.25 and lr_factor(3, 4, 10) == 1.0
    assert lr_factor(4, 4, 10) == 1.0 and lr_factor(7, 4, 10) == 0.5 and lr_factor(10, 4, 10) == 0.0
    assert lr_factor(0, 0, 10) == 1.0


def test_prompt_cache_reuses_prompts_across_epochs_without_changing_training(tiny_dirs, shapes_jsonl):
    """Epochs after the first run only the queries, and the run matches one without the cache, whether
    the prompts are kept in RAM or (beyond a small RAM budget) in the disk file."""
    data = load_jsonl(shapes_jsonl)  # 16 images, 2 captions each
    caches = {"off": {}, "ram": {"prompt_cache_mb": 64.0},
              "disk": {"prompt_cache_mb": 0.01, "prompt_cache_disk_mb": 64.0}}
    runs = {}
    for name, settings in caches.items():
        retriever, config = _run(tiny_dirs, data, epochs=3, **settings)
        runs[name] = (train(retriever, data, config, progress=False), retriever.queries.weight.detach().clone())
    plain, q_plain = runs["off"]
    assert plain.prompt_cache is None
    for name in ("ram", "disk"):
        cached, q_cached = runs[name]
        stats = cached.prompt_cache
        assert 16 < stats["prompts"] <= 16 + len(set(data.texts()))  # every image, and the captions drawn
        # epoch 1 misses every image (16) and the captions it draws; epochs 2 and 3 hit every image
        assert stats["hits"] >= 2 * 16 and stats["misses"] <= stats["prompts"]
        losses_plain, losses_cached = [h["loss"] for h in plain.history], [h["loss"] for h in cached.history]
        assert losses_plain == pytest.approx(losses_cached, abs=1e-5), name
        assert torch.allclose(q_plain, q_cached, atol=1e-5), name
    ram, disk = runs["ram"][0].prompt_cache, runs["disk"][0].prompt_cache
    assert ram["disk_mb"] == 0 and disk["mb"] <= 0.01 and disk["disk_mb"] > 0.9 * ram["mb"]


def test_prompt_cache_respects_its_budget(tiny_dirs, shapes_jsonl):
    from slq.prompt_cache import PromptCache

    data = load_jsonl(shapes_jsonl)
    retriever, _ = _run(tiny_dirs, data)
    probe = PromptCache(budget_mb=1000)
    retriever.embed_images(data.records[:1], cache=probe)
    one = probe.used  # bytes of one image prompt
    cache = PromptCache(budget_mb=3.5 * one / 2**20)
    with torch.no_grad():
        retriever.embed_images(data.records[:8], cache=cache)
    assert len(cache) == 3 and cache.used <= cache.budget


def test_cached_prompts_embed_like_fresh_ones(tiny_dirs, shapes_jsonl):
    from slq.prompt_cache import PromptCache

    data = load_jsonl(shapes_jsonl)
    retriever, _ = _run(tiny_dirs, data, family="idefics3")
    cache = PromptCache(budget_mb=64)
    retriever.embed_images(data.records[:3], cache=cache)  # prime three
    mixed = retriever.embed_images(data.records[:6], cache=cache)  # three hits, three misses
    fresh = retriever.embed_images(data.records[:6])
    assert torch.allclose(mixed, fresh, atol=1e-5)
    assert cache.hits == 3


def test_a_batch_mixing_ram_disk_and_fresh_prompts_embeds_like_fresh_ones(tiny_dirs, shapes_jsonl):
    from slq.prompt_cache import PromptCache

    data = load_jsonl(shapes_jsonl)
    retriever, _ = _run(tiny_dirs, data)
    probe = PromptCache(budget_mb=1000)
    retriever.embed_images(data.records[:1], cache=probe)
    cache = PromptCache(budget_mb=2.5 * probe.used / 2**20, disk_mb=64)
    retriever.embed_images(data.records[:4], cache=cache)  # two kept in RAM, two on disk
    assert len(cache) == 4 and cache.used > 0 and cache.disk_used > 0
    mixed = retriever.embed_images(data.records[:6], cache=cache)  # two RAM hits, two disk hits, two fresh
    assert torch.allclose(mixed, retriever.embed_images(data.records[:6]), atol=1e-5)
    assert cache.hits == 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prompts_kept_on_disk_in_half_precision_embed_like_fresh_ones(tiny_dirs, shapes_jsonl, dtype):
    from slq.prompt_cache import PromptCache

    data = load_jsonl(shapes_jsonl)
    retriever, _ = _run(tiny_dirs, data)
    cache = PromptCache(budget_mb=0, dtype=dtype, disk_mb=64)
    first = retriever.embed_images(data.records[:4], cache=cache)  # runs all four, writes them to the file
    again = retriever.embed_images(data.records[:4], cache=cache)  # reads all four back from it
    fresh = retriever.embed_images(data.records[:4])
    assert cache.used == 0 and cache.disk_used > 0 and (cache.hits, cache.misses) == (4, 4)
    assert torch.allclose(first, fresh, atol=1e-6)  # a fresh run uses its own states, not the rounded copies
    # read back: the rounded copies, close to the full-precision states but not equal to them
    assert torch.allclose(again, fresh, atol=2e-2) and not torch.allclose(again, fresh, atol=1e-6)


def test_resume_refuses_changed_settings(tiny_dirs, shapes_jsonl, tmp_path):
    data = load_jsonl(shapes_jsonl)
    retriever, config = _run(tiny_dirs, data, epochs=1)
    train(retriever, data, config, checkpoint_dir=tmp_path, progress=False)
    other, _ = _run(tiny_dirs, data)
    with pytest.raises(SLQError, match=r"settings; these differ: batch_size 8 -> 4"):
        train(other, data, TrainConfig(num_queries=4, batch_size=4, epochs=1, lr=1e-2), checkpoint_dir=tmp_path,
              resume=True, progress=False)
    with pytest.raises(SLQError, match="warmup_steps 50: is longer than the run"):
        train(other, data, TrainConfig(num_queries=4, batch_size=8, warmup_steps=50), progress=False)
    fewer_captions = load_jsonl(shapes_jsonl, max_captions=1)  # same images, other batches
    with pytest.raises(SLQError, match="these differ: train_data"):
        train(other, fewer_captions, config, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_a_checkpoint_written_before_a_setting_existed_still_resumes(tiny_dirs, shapes_jsonl, tmp_path):
    """Settings added later (pairs, train_data, image_fit, ...) are absent from older checkpoints: their
    defaults then stand in, and a run identity key without a default is not compared."""
    import json

    data = load_jsonl(shapes_jsonl)
    retriever, config = _run(tiny_dirs, data, epochs=1)
    train(retriever, data, config, checkpoint_dir=tmp_path, progress=False)
    state = tmp_path / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    for key in ("pairs", "clip_grad_norm", "train_data", "image_fit"):
        del meta["run"][key]
    state.write_text(json.dumps(meta))
    other, _ = _run(tiny_dirs, data)
    train(other, data, config, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert torch.equal(other.queries.weight, retriever.queries.weight)


# --- chunked steps (GradCache) ------------------------------------------------------------------

def _gradients(encoder, trainable, texts, targets, chunk_size, engine="cached", cache=None):
    """The loss and the gradients one step leaves in what trains and in the temperature."""
    from slq.loss import ContrastiveLoss
    from slq.train import contrastive_backward

    for p in trainable:
        p.grad = None
    loss_fn = ContrastiveLoss()
    loss = contrastive_backward(encoder, loss_fn, texts, targets, engine, cache, chunk_size)
    return loss.item(), [p.grad.clone() for p in trainable], loss_fn.log_temperature.grad.clone()


def _assert_same_step(whole, chunked, what):
    loss, grads, temperature_grad = whole
    assert chunked[0] == pytest.approx(loss, abs=1e-5), f"{what}: loss {chunked[0]} vs {loss}"
    for g, h in zip(grads, chunked[1]):
        assert (g - h).abs().max() < 1e-5, f"{what}: gradients differ by {(g - h).abs().max():.2e}"
    assert max(g.abs().max() for g in grads) > 1e-4, f"{what}: a zero gradient proves nothing"
    assert (temperature_grad - chunked[2]).abs() < 1e-5, what


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
@pytest.mark.parametrize("engine", ["cached", "naive"])
def test_a_chunked_slq_step_equals_the_whole_batch(backbones, shapes_jsonl, family, engine):
    records = load_jsonl(shapes_jsonl).records[:8]
    texts = [r.captions[0] for r in records]
    retriever = SLQRetriever.fresh(backbones[family], num_queries=4)
    trainable = [retriever.queries.weight]
    whole = _gradients(retriever, trainable, texts, records, 0, engine)
    for chunk_size in (1, 3, 5):  # 3, 5: a ragged last chunk
        _assert_same_step(whole, _gradients(retriever, trainable, texts, records, chunk_size, engine),
                          f"{family} {engine} chunks of {chunk_size}")


def test_a_chunked_step_on_kept_prompts_equals_the_whole_batch(backbones, shapes_jsonl):
    """Prompts kept by the prompt cache (stored, then joined into a batch) give the same step as fresh ones."""
    from slq.prompt_cache import PromptCache

    records = load_jsonl(shapes_jsonl).records[:8]
    texts = [r.captions[0] for r in records]
    retriever = SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4)
    trainable = [retriever.queries.weight]
    whole = _gradients(retriever, trainable, texts, records, 0)
    cache = PromptCache(budget_mb=64)
    first = _gradients(retriever, trainable, texts, records, 3, cache=cache)  # fills the cache
    assert cache.misses == 16 and len(cache) == 16
    kept = _gradients(retriever, trainable, texts, records, 3, cache=cache)  # runs on the kept prompts
    assert cache.hits == 16
    _assert_same_step(whole, first, "fresh prompts, chunks of 3")
    _assert_same_step(whole, kept, "kept prompts, chunks of 3")


def test_a_chunked_slq_step_runs_each_prompt_once(backbones, shapes_jsonl, monkeypatch):
    """The recomputation is a pass of the queries on kept keys/values, never a second forward."""
    import slq.retriever

    records = load_jsonl(shapes_jsonl).records[:8]
    retriever = SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4)
    prompts_run = []
    real = slq.retriever.run_prompts
    monkeypatch.setattr(slq.retriever, "run_prompts", lambda b, batch, n: prompts_run.append(len(batch)) or
                        real(b, batch, n))
    _gradients(retriever, [retriever.queries.weight], [r.captions[0] for r in records], records, 3)
    assert sum(prompts_run) == 16, f"prompts run {prompts_run}: each of 8 texts and 8 images once"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradcache_baselines_equal_their_plain_step(tiny_dirs, shapes_jsonl, method):
    from slq.backbone import Backbone
    from slq.baselines import PooledEncoder, add_lora, unfreeze_language_model

    records = load_jsonl(shapes_jsonl).records[:6]
    texts = [r.captions[0] for r in records]
    encoder = PooledEncoder(Backbone.load(tiny_dirs["qwen2_vl"]), "last")
    (add_lora if method == "lora" else unfreeze_language_model)(encoder)
    trainable = list(encoder.trainable_tensors().values())
    whole = _gradients(encoder, trainable, texts, records, 0)
    _assert_same_step(whole, _gradients(encoder, trainable, texts, records, 4), f"{method} chunks of 4")


def test_chunked_training_matches_unchunked_training(tiny_dirs, shapes_jsonl):
    data = load_jsonl(shapes_jsonl)
    runs = []
    for chunk_size in (0, 3):
        retriever, config = _run(tiny_dirs, data, chunk_size=chunk_size)
        history = train(retriever, data, config, progress=False).history
        runs.append((retriever.queries.weight.detach().clone(), [h["loss"] for h in history]))
    assert (runs[0][0] - runs[1][0]).abs().max() < 1e-4
    assert runs[0][1] == pytest.approx(runs[1][1], abs=1e-4)


# --- the paper's recipe: every pair, clipped gradients --------------------------------------------

def test_pairs_all_visits_every_image_caption_pair_once_per_epoch(shapes_jsonl):
    data = load_jsonl(shapes_jsonl)
    config = TrainConfig(batch_size=4, epochs=2, pairs="all")
    plan = BatchPlan(data, config)
    every_pair = sorted((str(r.image), c) for r in data.records for c in r.captions)
    assert plan.steps_per_epoch == len(every_pair) // 4
    for epoch in range(2):
        seen = []
        for step in range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch):
            records, texts = plan(step)
            seen += [(str(r.image), t) for r, t in zip(records, texts)]
            assert all(t in r.captions for r, t in zip(records, texts))
        assert len(seen) == len(set(seen)), "a pair was visited twice in one epoch"
        assert set(seen) <= set(every_pair) and len(every_pair) - len(seen) < 4, "pairs were left out"
    assert len(every_pair) > len(data.records), "the test data must have several captions per image"


def test_clip_grad_norm_bounds_the_step(tiny_dirs, shapes_jsonl):
    """With a tiny clip norm the gradient that reaches AdamW is rescaled: its norm equals the clip."""
    from slq.loss import ContrastiveLoss
    from slq.train import make_optimizer, train_step

    records = load_jsonl(shapes_jsonl).records[:8]
    retriever, config = _run(tiny_dirs, None)
    loss_fn = ContrastiveLoss()
    optimizer = make_optimizer(retriever, loss_fn, config)
    train_step(retriever, loss_fn, optimizer, [r.captions[0] for r in records], records, clip_grad_norm=1e-3)
    norm = torch.cat([retriever.queries.weight.grad.flatten(), loss_fn.log_temperature.grad.flatten()]).norm()
    assert norm == pytest.approx(1e-3, rel=1e-3)


def test_kept_prompts_are_copies_not_views_of_their_batch(backbones):
    """`split` gives views of the batch; the cache must keep copies of their own, in every tier."""
    from slq.prompt_cache import PromptCache

    retriever = SLQRetriever.fresh(backbones["qwen2_vl"], num_queries=4)
    texts = ["a red circle", "two blue squares above a green triangle"]
    for tiers in ({"device_mb": 64}, {"budget_mb": 64}, {"disk_mb": 64}):
        cache = PromptCache(**{"budget_mb": 0, **tiers})
        batch = retriever.prepare_texts(texts, cache=cache)  # all misses: the batch as run, states kept
        before = [cache.get(("text", t)).keys.clone() for t in texts]
        for k in batch.keys:
            k.zero_()
        after = [cache.get(("text", t)).keys for t in texts]
        assert all(torch.equal(a, b) for a, b in zip(before, after)), f"{tiers}: the kept state changed with its batch"
        used = {"device_mb": cache.device_used, "budget_mb": cache.used, "disk_mb": cache.disk_used}
        assert used[next(iter(tiers))] > 0 and sum(used.values()) == used[next(iter(tiers))], (tiers, used)


@pytest.mark.slow
def test_compiled_training_matches_eager_training(tiny_dirs, shapes_jsonl):
    """--compile changes how the language model runs, not what it computes (the backbone stays frozen)."""
    data = load_jsonl(shapes_jsonl)
    runs = []
    for compiled in (False, True):
        retriever, config = _run(tiny_dirs, data, epochs=1, compile=compiled, prompt_cache_mb=64)
        losses = [h["loss"] for h in train(retriever, data, config, progress=False).history]
        runs.append((retriever.queries.weight.detach().clone(), losses))
    assert runs[0][1] == pytest.approx(runs[1][1], abs=1e-4)
    assert (runs[0][0] - runs[1][0]).abs().max() < 1e-4

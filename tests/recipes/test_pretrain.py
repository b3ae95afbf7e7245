"""Generative pretraining of slq-tiny-vl: labels, inputs, learning, determinism, the caption scorer."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slq.data.shapes import held_out_combos, write_world
from slq.errors import SLQError
from slq.recipes.pretrain import (IGNORE, Collator, Example, GenerativeData, PretrainConfig, build_initial_model,
                                  caption_attribute_accuracy, listing, mixture_at, pretrain, score_caption,
                                  vision_feature_health, vqa_pairs)
from slq.recipes.pretrain.loop import load_images, load_world_text

FAST = dict(batch_size=8, lr=3e-3, warmup_steps=2, save_every=0, threads=1,
            stages=[[1, {"colour": 1.0}], [1, {"shape": 1.0}]])  # short runs reach the mixture


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrain") / "world"
    write_world(folder, n_train=24, n_val=2, n_test=4, seed=0, progress=False)
    return folder


@pytest.fixture(scope="module")
def init(world) -> Path:
    """The random initial model, built once (tokenizer training is the slow part) and copied."""
    return build_initial_model(world.parent / "init", world, seed=0)


def _work(init: Path, folder: Path) -> Path:
    shutil.copytree(init, folder / "init")
    return folder


@pytest.fixture(scope="module")
def run(world, init) -> tuple[Path, object]:
    """One short pretraining run, shared by the tests that need a trained model."""
    out = world.parent / "model"
    result = pretrain(out, world, PretrainConfig(steps=30, **FAST), work_dir=_work(init, world.parent / "w"),
                      progress=False)
    return out, result


def _collator(model_dir: Path, world: Path) -> tuple[Collator, GenerativeData]:
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoTokenizer,
    )

    records, knowledge, held_out = load_world_text(world)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "right"
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    collate = Collator(model, tokenizer, AutoImageProcessor.from_pretrained(model_dir), load_images(world, records))
    return collate, GenerativeData(records, knowledge, held_out, PretrainConfig().mixture)


@pytest.mark.slow
def test_labels_cover_only_the_answer(run, world):
    collate, data = _collator(run[0], world)
    tok = collate.tokenizer
    for example in (Example(0, "", data.records[0]["captions"][0]), Example(1, "how many objects are there?", "two"),
                    Example(None, data.records[2]["captions"][0], data.records[2]["captions"][1])):
        ids, labels = collate.encode(example)
        answer = [i for i, lab in zip(ids, labels) if lab != IGNORE]
        assert tok.decode(answer) == example.answer + tok.eos_token, "the loss must fall on the answer and <|im_end|>"
        assert labels[-len(answer):] == answer and all(lab == IGNORE for lab in labels[:-len(answer)]), \
            "every prompt token must be masked"
        assert tok.decode(ids[:-len(answer)]).endswith("<|im_start|>assistant\n"), "prompt ends at the opener"
    ids, labels = collate.encode(Example(None, "a triangle has three sides", lm=True))
    assert labels == ids, "a knowledge sentence is trained on every token"
    plain, clean = collate.encode(Example(0, "", "a red star"))
    ids, labels = collate.encode(Example(0, "", "a red star", noise=(7, -1, 9) + (-1,) * 61))
    assert labels == clean, "word dropout never changes the targets"
    assert ids == plain[:-4] + [7, plain[-3], 9, plain[-1]], "dropped answer inputs become the given tokens"


def test_word_dropout_only_on_caption_and_paraphrase_answers(world):
    records, knowledge, held_out = load_world_text(world)
    mixture = {"caption": 0.3, "listing": 0.1, "vqa": 0.3, "paraphrase": 0.15, "knowledge": 0.15}
    data = GenerativeData(records, knowledge, held_out, mixture, noise_ids=[5, 6], noise_prob=0.5, noise_rate=0.8)
    examples = [e for step in range(20) for e in data.batch(0, step, 16)]
    noisy = [e for e in examples if e.noise]
    assert 0.2 < len(noisy) / len(examples) < 0.35, "half of the 55% captions, listings and paraphrases"
    assert all(set(e.noise) <= {-1, 5, 6} and not e.lm and "?" not in e.text for e in noisy), \
        "noise is drawn from the given ids, only for captions, listings and paraphrases"
    dropped = sum(n >= 0 for e in noisy for n in e.noise) / sum(len(e.noise) for e in noisy)
    assert 0.7 < dropped < 0.9, f"about 80% of answer inputs dropped, got {dropped:.2f}"


@pytest.mark.slow
def test_batch_inputs_match_the_images(run, world):
    collate, data = _collator(run[0], world)
    batch = collate([Example(0, ""  , "a"), Example(None, "x", "y"), Example(3, "how many stars are there?", "zero")])
    image_id = collate.model.config.image_token_id
    per_image = (batch["input_ids"] == image_id).sum(1).tolist()
    assert per_image == [16, 0, 16], "a 64x64 image is 16 tokens"
    assert batch["pixel_values"].shape[0] == batch["image_grid_thw"].prod(-1).sum(), "pixels of exactly the images"
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_id)
    assert batch["position_ids"].shape == (3, *batch["input_ids"].shape), "M-RoPE positions"
    assert torch.isfinite(collate.model(**batch).loss)


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(run):
    history = run[1].history
    assert history[-1]["loss"] < history[0]["loss"] - 1.0, f"loss did not fall: {history}"


@pytest.mark.slow
def test_two_steps_are_deterministic(world, tmp_path, init):
    config = PretrainConfig(steps=3, **FAST)
    a = pretrain(tmp_path / "a", world, config, work_dir=_work(init, tmp_path / "wa"), progress=False)
    b = pretrain(tmp_path / "b", world, config, work_dir=_work(init, tmp_path / "wb"), progress=False)
    assert a.history == b.history
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed, same weights"


@pytest.mark.slow
def test_checkpoint_loads_like_a_download(run, world):
    from slq.backbone import Backbone

    backbone = Backbone.load(run[0])
    assert backbone.config.model_type == "qwen2_vl" and backbone.hidden_size == 192
    result = caption_attribute_accuracy(run[0], world / "test.jsonl", limit=2, max_new_tokens=6, progress=False)
    assert result["n_images"] == 2 and len(result["samples"]) == 2


def test_questions_never_name_held_out_pairs(world):
    records, knowledge, held_out = load_world_text(world)
    for i, record in enumerate(records):
        for question, answer in vqa_pairs(record["objects"], held_out, random.Random(i)):
            assert not any(f"{c} {s}" in question for c, s in held_out), question
            assert answer and "?" in question
    leaked = dict(records[0], objects=[dict(records[0]["objects"][0], colour=c, shape=s) for c, s in held_out])
    with pytest.raises(SLQError, match="held-out"):
        GenerativeData([leaked], knowledge, held_out, PretrainConfig().mixture)


def test_vqa_answers_are_true():
    objects = [{"shape": "square", "colour": "green", "size": "small", "position": "top left"},
               {"shape": "square", "colour": "green", "size": "large", "position": "centre"},
               {"shape": "star", "colour": "red", "size": "small", "position": "bottom"}]
    pairs = dict(vqa_pairs(objects, held_out_combos(0), random.Random(0)))
    assert pairs["how many objects are there?"] == "three"
    assert pairs["how many squares are there?"] == "two"
    assert pairs["what colour is the star?"] == "red"
    assert pairs["where is the red star?"] == "bottom"
    assert "where is the green square?" not in pairs, "a repeated pair has no single position"


def test_caption_scorer():
    objects = [{"shape": "square", "colour": "green", "size": "small"},
               {"shape": "square", "colour": "green", "size": "small"},
               {"shape": "star", "colour": "red", "size": "large"}]
    right = score_caption("there are three objects: two small green squares and a large red star", objects)
    assert right == {"colour": [2, 2], "shape": [2, 2], "pair": [2, 2], "count": [2, 2]}
    wrong = score_caption("a blue square above three red hearts; two shapes", objects)
    assert wrong["colour"] == [1, 2] and wrong["shape"] == [1, 2] and wrong["pair"] == [0, 2]
    assert wrong["count"] == [0, 2], "three red hearts (0) and two shapes (3) are both wrong"
    assert score_caption("", objects) == {k: [0, 0] for k in ("colour", "shape", "pair", "count")}


@pytest.mark.slow
def test_resume_continues_exactly(world, tmp_path, init):
    config = PretrainConfig(steps=3, **dict(FAST, save_every=2))
    whole = pretrain(tmp_path / "whole", world, config, work_dir=_work(init, tmp_path / "work"), progress=False)
    assert (tmp_path / "work" / "checkpoint" / "state.json").is_file(), "a checkpoint at step 2, where the stages end"
    assert (tmp_path / "work" / "checkpoint" / "optimizer.safetensors").is_file(), "no pickled optimizer state"
    assert not list((tmp_path / "work" / "checkpoint").glob("*.pt"))
    resumed = pretrain(tmp_path / "resumed", world, config, work_dir=tmp_path / "work", progress=False)
    assert resumed.history == whole.history
    wa, wb = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "a resumed run ends with the same weights"
    with pytest.raises(SLQError, match="other settings"):
        pretrain(tmp_path / "x", world, PretrainConfig(steps=3, **dict(FAST, save_every=2, lr=1e-3)),
                 work_dir=tmp_path / "work", progress=False)
    state_file = tmp_path / "work" / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["device"] == "cpu"
    state_file.write_text(json.dumps({**state, "device": "cuda"}))
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with pytest.raises(SLQError, match="run on cuda, not cpu"):  # a GPU's arithmetic must not finish a CPU run
        pretrain(tmp_path / "x", world, config, work_dir=tmp_path / "work", progress=False)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic), \
        "torch's global settings are restored, also after a failure"


@pytest.mark.slow
def test_vision_tower_has_its_own_learning_rate(world, tmp_path, init):
    before = load_file(init / "model.safetensors")
    visual = [k for k in before if k.startswith("visual.")]
    assert visual, "checkpoints name the tower's weights visual.*"
    for name, settings, tower_moves in (("ratio0", dict(vision_lr_ratio=0.0, vision_freeze_steps=0), False),
                                        ("frozen", dict(vision_lr_ratio=1.0, vision_freeze_steps=1), False),
                                        ("free", dict(vision_lr_ratio=1.0, vision_freeze_steps=0), True)):
        config = PretrainConfig(steps=1, **dict(FAST, stages=[], merger_init_scale=1.0, **settings))  # no rescaling
        pretrain(tmp_path / name, world, config, work_dir=_work(init, tmp_path / f"w{name}"), progress=False)
        after = load_file(tmp_path / name / "model.safetensors")
        moved = [k for k in visual if not torch.equal(before[k], after[k])]
        assert bool(moved) == tower_moves, f"{name}: tower weights moved: {moved[:3]}"
        assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"]), \
            f"{name}: the language model still learns"


@pytest.mark.slow
def test_merger_scale_and_pixel_statistics_reach_the_checkpoint(world, tmp_path, init):
    config = PretrainConfig(steps=1, **dict(FAST, stages=[], lr=1e-9, merger_init_scale=0.25, image_mean=[0.9, 0.9, 0.9],
                                            image_std=[0.2, 0.2, 0.2]))
    work = tmp_path / "w"
    pretrain(tmp_path / "m", world, config, work_dir=work, progress=False)
    processor = json.loads((tmp_path / "m" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.9, 0.9, 0.9] and processor["image_std"] == [0.2, 0.2, 0.2]
    key = "visual.merger.mlp.2.weight"
    start = load_file(work / "init" / "model.safetensors")[key]
    end = load_file(tmp_path / "m" / "model.safetensors")[key]
    assert torch.allclose(end, 0.25 * start, atol=1e-6), "the merger's output layer starts scaled"


@pytest.mark.slow
def test_feature_health_sees_a_collapsed_tower(run, world):
    from slq.backbone import Backbone

    backbone = Backbone.load(run[0])
    records, _, _ = load_world_text(world)
    images = load_images(world, records[:4])
    health = vision_feature_health(backbone, images)
    assert health["feature_norm"] > 0 and -1 <= health["within_image_cos"] <= 1
    with torch.no_grad():  # a tower whose output ignores its input: every token is the merger's bias
        backbone.model.model.visual.merger.mlp[-1].weight.zero_()
        backbone.model.model.visual.merger.mlp[-1].bias.fill_(1.0)
    collapsed = vision_feature_health(backbone, images)
    assert collapsed["within_image_cos"] > 0.999 and collapsed["across_image_cos"] > 0.999


def test_bad_vision_settings_are_named():
    with pytest.raises(SLQError, match="vision_lr_ratio"):
        PretrainConfig(vision_lr_ratio=-1.0)
    with pytest.raises(SLQError, match="merger_init_scale"):
        PretrainConfig(merger_init_scale=0.0)


def test_a_bigger_default_is_the_same_model_wider(world, tmp_path):
    """`model_overrides()` is the shipped size; a bigger one keeps the heads, M-RoPE and vision
    tower consistent, and a size that cannot be built is named."""
    from transformers import AutoConfig

    from slq.recipes.pretrain import MODEL_OVERRIDES, model_overrides

    assert model_overrides() == MODEL_OVERRIDES
    folder = build_initial_model(tmp_path / "wide", world, seed=0,
                                 size={"hidden_size": 384, "num_layers": 2, "intermediate_size": 256})
    text = AutoConfig.from_pretrained(folder).text_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (384, 2, 256)
    assert sum(text.rope_parameters["mrope_section"]) == 384 // text.num_attention_heads // 2
    with pytest.raises(SLQError, match="hidden_size"):
        PretrainConfig(hidden_size=200)


def test_listing_names_every_object_in_reading_order(world):
    objects = [{"shape": "star", "colour": "red", "size": "small"},
               {"shape": "circle", "colour": "blue", "size": "large"},
               {"shape": "star", "colour": "red", "size": "small"}]
    assert listing(objects) == "a small red star, a large blue circle and a small red star"
    assert listing(objects[:1]) == "a small red star"
    records, knowledge, held_out = load_world_text(world)
    for r in records:
        assert score_caption(listing(r["objects"]), r["objects"])["pair"] == [len(r["objects"])] * 2, \
            "a listing is a fully correct caption"
    data = GenerativeData(records, knowledge, held_out, {"listing": 1.0})
    assert all(e.image is not None and e.text == "" and e.answer == listing(records[e.image]["objects"])
               for e in data.batch(0, 0, 8)), "a listing is asked with slq's image prompt"


def test_curriculum_stages_then_the_mixture(world):
    config = PretrainConfig(stages=[[3, {"colour": 1.0}], [2, {"colour": 0.5, "shape": 0.5}]],
                            mixture={"listing": 1.0})
    assert [mixture_at(config, s) for s in (0, 2, 3, 4, 5, 99)] == [{"colour": 1.0}] * 2 + \
        [{"colour": 0.5, "shape": 0.5}] * 2 + [{"listing": 1.0}] * 2
    records, knowledge, held_out = load_world_text(world)
    data = GenerativeData(records, knowledge, held_out, config.mixture)
    examples = [e for step in range(5) for e in data.batch(0, step, 8, mixture_at(config, step))]
    questions = {e.text for e in examples}
    assert questions == {"what colour is the object?", "what shape is the object?"}
    assert all(e.text == "what colour is the object?" for e in examples[:24]), "stage one asks only for colour"
    for e in examples:
        attribute = e.text.split()[1]
        assert {o[attribute] for o in records[e.image]["objects"]} == {e.answer}, \
            "asked only of images whose objects all share the answer"
    assert all(e.answer == listing(records[e.image]["objects"]) for e in data.batch(0, 5, 8)), \
        "after the stages, the mixture"


def test_bad_stages_are_named():
    for stages in ([[10, {"colour": 0.0}]], [[-1, {"colour": 1.0}]], [[10, {"jumping": 1.0}]], [10], None,
                   [[10, {"colour": "all"}]]):
        with pytest.raises(SLQError, match="stages"):
            PretrainConfig(stages=stages)
    with pytest.raises(SLQError, match="the mixture would never train"):
        PretrainConfig(steps=1000)  # the default stages take 1,500
    with pytest.raises(SLQError, match="warmup_steps"):
        PretrainConfig(warmup_steps=-5)


def test_learning_rate_warms_up_again_at_each_stage():
    from slq.recipes.pretrain.loop import _lr_factor

    config = PretrainConfig(steps=100, warmup_steps=5, stages=[[10, {"colour": 1.0}], [20, {"shape": 1.0}]])
    assert _lr_factor(0, config) == pytest.approx(0.2, abs=0.01) and _lr_factor(9, config) > 0.9
    assert _lr_factor(10, config) < 0.25 and _lr_factor(30, config) < 0.25, "a new stage starts gently"
    assert _lr_factor(35, config) > 0.5 and _lr_factor(99, config) == pytest.approx(config.min_lr_ratio, abs=0.01)


def test_model_card_names_word_dropout_only_when_it_was_used():
    from dataclasses import asdict

    from slq.recipes.pretrain import model_card

    dims = {"hidden": 8, "layers": 1, "heads": 1, "kv_heads": 1, "intermediate": 8, "vocab": 16,
            "mrope_section": [1, 1, 2], "vision_depth": 1, "vision_embed": 8, "patch": 8, "image_tokens": 16}
    info = {"dims": dims, "world": {"seed": 0, "n_train": 4}, "parameters": 100, "megabytes": 0.1, "minutes": 1.0,
            "final_loss": 1.0, "command": "python scripts/pretrain_default.py --out x"}
    assert "  - word dropout:" not in model_card({**info, "pretrain_config": asdict(PretrainConfig(noise_prob=0.0))})
    card = model_card({**info, "pretrain_config": asdict(PretrainConfig(noise_prob=0.5, noise_rate=0.8))})
    assert "word dropout: in 50% of caption" in card and "probability 0.8" in card


@pytest.mark.slow
def test_recipe_sweep_script_scores_each_variant_on_validation(tmp_path):
    """scripts/pretrain_sweep.py as a user runs it: one row per (variant, seed), a failed variant named."""
    import subprocess
    import sys

    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"tiny": {"steps": 2, "stages": [], "batch_size": 4}, "broken": {"steps": 0}}))
    script = Path(__file__).resolve().parents[2] / "scripts" / "pretrain_sweep.py"
    done = subprocess.run([sys.executable, str(script), "--variants", str(variants), "--work", str(tmp_path / "w"),
                           "--pretrain-images", "32", "--jobs", "2"],  # the broken one fails beside the other
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, "a failed run makes the sweep fail"
    assert "broken seed 0 failed" in done.stderr and "steps 0: must be" in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "w" / "results.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in rows] == [("tiny", 0)]
    assert set(rows[0]["t2i"]) == {"R@1", "R@5", "R@10"} and 0 <= rows[0]["i2t"]["R@1"] <= 1
    table = done.stdout.splitlines()
    assert any(line.startswith("tiny ") and "/" in line for line in table)
    assert any(line.startswith("broken ") and line.endswith("failed") for line in table)
    assert (rows[0]["scored_on"], rows[0]["images"]) == ("val", 200), "scored on validation, never on the test split"
    assert rows[0]["config"]["steps"] == 2 and rows[0]["device"] == "cpu", "a row says what it ran"


def test_only_text_tasks_name_text_only_clues(world):
    """Clues kept from images (`text_only`) may reach the text paraphrase `knowledge_paraphrase_all`,
    never a task with an image: KARR-Shapes' text-only clues stay out of sight of any picture."""
    from slq.data.shapes import COLOUR_CLUES, SEEN_COLOUR_THINGS

    records, knowledge, held_out = load_world_text(world)
    text_only = [f"of {t}" for c, things in COLOUR_CLUES.items() for t in things if t not in SEEN_COLOUR_THINGS[c]]
    data = GenerativeData(records, knowledge, held_out, {"knowledge_paraphrase_all": 1.0})
    rng = random.Random(0)
    examples = {task: [data.example(task, rng) for _ in range(200)]
                for task in ("knowledge_caption", "knowledge_paraphrase", "knowledge_paraphrase_all")}
    assert all(e.image is None for e in examples["knowledge_paraphrase_all"] + examples["knowledge_paraphrase"])
    assert all(e.image is not None for e in examples["knowledge_caption"])
    named = {task: sum(any(t in e.text + e.answer for t in text_only) for e in found)
             for task, found in examples.items()}
    assert named["knowledge_caption"] == named["knowledge_paraphrase"] == 0, named
    assert named["knowledge_paraphrase_all"] > 20, named

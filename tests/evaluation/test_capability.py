"""Capability probes and weight hashes: what a method's backbone can still do after training, and
whether its weights moved at all (`slq.evaluation.capability`, run by `slq.evaluation.compare`)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

import slq.evaluation.capability as capability
from slq.backbone import Backbone, PrefixBatch
from slq.baselines import PooledEncoder, add_lora
from slq.data import ImageTextDataset, TextRecord, load_jsonl
from slq.data.shapes import write_world
from slq.errors import DataError
from slq.evaluation.capability import (CaptionLossCapability, DefinitionCapability, ShapesCapability,
                                       answer_accuracy, capability_probe_for, first_word, weights_sha256)
from slq.evaluation.compare import compare, standard_methods
from slq.evaluation.report import format_table3, save_comparison
from slq.evaluation.retrieval import RetrievalEvaluator
from slq.generation import continuation_nll
from slq.train import TrainConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    write_world(folder, n_train=2, n_val=1, n_test=4, seed=0, progress=False)
    return load_jsonl(folder / "test.jsonl")


@pytest.fixture(scope="module")
def definitions() -> ImageTextDataset:
    pairs = [("cat", "feline mammal usually having thick soft fur"), ("car", "a motor vehicle with four wheels"),
             ("dog", "a member of the genus canis"), ("tea", "a beverage made by steeping leaves")]
    return ImageTextDataset([TextRecord(w, (d,), f"words:{i}") for i, (w, d) in enumerate(pairs)], "words",
                            directions=("d2w", "w2d"))


def test_answers_match_on_their_first_word():
    assert first_word("  Two. (I think)") == "two" and first_word("...") == ""
    assert answer_accuracy(["Two.", "yes it is", "", "blue square"], ["two", "yes", "no", "red"]) == 0.5
    assert answer_accuracy([], []) is None


@pytest.mark.parametrize("family", ["llava", "gemma3_text"])
def test_a_padded_batch_scores_each_continuation_as_alone(backbones, family):
    """Continuations of different lengths, right-padded after left-padded prompts, score as each would alone."""
    backbone = backbones[family]
    if backbone.text_only:
        batch_of = backbone.text_batch
        inputs = ["a red circle", "two blue squares above a green one"]
    else:
        batch_of = backbone.image_batch
        inputs = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (56, 40), (30, 30, 200))]
    continuations = [backbone.tokenizer(t, add_special_tokens=False)["input_ids"]
                     for t in ("a red circle on the left", "blue")]
    together = continuation_nll(backbone, batch_of(inputs), continuations)
    alone = [continuation_nll(backbone, batch_of([x]), [c]) for x, c in zip(inputs, continuations)]
    assert together[1] == sum(n for _, n in alone) == sum(map(len, continuations))
    assert together[0] == pytest.approx(sum(nll for nll, _ in alone), rel=1e-4)


def test_weights_hash_sees_trained_weights_and_lora_as_merged(tiny_dirs):
    first, again = Backbone.load(tiny_dirs["llava"]), Backbone.load(tiny_dirs["llava"])
    untouched = weights_sha256(first.model)
    assert weights_sha256(again.model) == untouched
    lora = add_lora(PooledEncoder(again))
    assert weights_sha256(lora.backbone.model) == untouched, "an untrained adapter (B = 0) changes no weight"
    with torch.no_grad():
        next(p for name, p in lora.backbone.model.named_parameters() if "lora_B" in name).add_(0.01)
    assert weights_sha256(lora.backbone.model) != untouched
    with torch.no_grad():
        first.model.get_input_embeddings().weight[0, 0] += 1e-3
    assert weights_sha256(first.model) != untouched


def test_the_probe_follows_the_evaluation_data(world, definitions, shapes_jsonl):
    assert isinstance(capability_probe_for(world, 2), ShapesCapability)
    assert len(capability_probe_for(world, 2).records) == 2
    assert isinstance(capability_probe_for(definitions), DefinitionCapability)
    assert isinstance(capability_probe_for(load_jsonl(shapes_jsonl)), CaptionLossCapability)
    with pytest.raises(DataError, match="not a shapes-world record"):
        ShapesCapability.from_dataset(load_jsonl(shapes_jsonl))


def test_shapes_probe_scores_true_captions_and_answers_as_right(tiny_dirs, world, monkeypatch):
    """With the world's own captions and answers in place of the model's, every score is 1; the
    questions are the same on every call (seeded per record)."""
    probe = ShapesCapability.from_dataset(world, questions_per_image=3, batch_size=3)
    asked = probe.questions()
    assert asked == probe.questions() and {i for i, _, _ in asked} == set(range(len(world)))
    captions = iter(r.captions[0] for r in world.records)
    answers = iter(a for _, _, a in asked)
    monkeypatch.setattr(capability, "generate_captions", lambda backbone, images, **kw: [next(captions) for _ in images])
    monkeypatch.setattr(capability, "generate", lambda backbone, batch, **kw: [next(answers) for _ in range(len(batch))])
    scores = probe(Backbone.load(tiny_dirs["qwen2_vl"]))
    assert scores == {"caption_attributes": 1.0, "caption_all_correct": 1.0, "vqa": 1.0}


def test_shapes_probe_runs_on_a_vision_language_model(tiny_dirs, world):
    probe = ShapesCapability.from_dataset(world, 2, questions_per_image=2, max_new_tokens=4)
    backbone = Backbone.load(tiny_dirs["qwen2_vl"])
    scores = probe(backbone)
    assert set(scores) == {"caption_attributes", "caption_all_correct", "vqa"}
    assert all(v is None or 0 <= v <= 1 for v in scores.values()) and scores == probe(backbone)


def test_definition_probe_on_a_text_lm(tiny_dirs, definitions, monkeypatch):
    backbone = Backbone.load(tiny_dirs["gemma3_text"])
    probe = DefinitionCapability.from_dataset(definitions, batch_size=3)
    scores = probe(backbone)
    assert set(scores) == {"word_from_definition", "perplexity"} and 0 <= scores["word_from_definition"] <= 1
    bos = backbone.tokenizer.bos_token_id
    nll, tokens = 0.0, 0
    for text in probe.held_out_texts:  # perplexity: each text after the BOS, one at a time
        ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
        more = continuation_nll(backbone, PrefixBatch(torch.tensor([[bos]]), torch.ones(1, 1, dtype=torch.long)), [ids])
        nll, tokens = nll + more[0], tokens + more[1]
    assert scores["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    monkeypatch.setattr(capability, "generate", lambda backbone, batch, **kw: ["Cat.", "a car", "dog", "tea"][:len(batch)])
    assert probe(backbone)["word_from_definition"] == 0.5  # batches of 3: cat, (car: "a"), dog | tea -> "Cat."


@pytest.fixture(scope="module")
def trained(tiny_dirs, shapes_jsonl, tmp_path_factory):
    """SLQ, LoRA and full fine-tuning with the caption-loss probe; no zero-shot row, so the untouched
    backbone is measured on a fresh load."""
    data = load_jsonl(shapes_jsonl)
    methods = standard_methods(["slq", "lora", "full_ft"], TrainConfig(num_queries=2, batch_size=8, epochs=1))
    report = compare(tiny_dirs["llava"], data, methods, [RetrievalEvaluator(data)], progress=False,
                     capability=CaptionLossCapability.from_dataset(data, 8))
    out = tmp_path_factory.mktemp("report")
    save_comparison(report, out)
    return report, out


def test_slq_leaves_the_backbone_and_its_capability_as_they_were(trained, tiny_dirs, shapes_jsonl):
    report, _ = trained
    untouched = Backbone.load(tiny_dirs["llava"])
    assert report["backbone_sha256"] == weights_sha256(untouched.model)
    probe = CaptionLossCapability.from_dataset(load_jsonl(shapes_jsonl), 8)
    assert report["capability"] == {"probe": "caption_loss", "untouched": probe(untouched)}
    slq_row = report["methods"]["slq"]
    assert slq_row["weights_sha256"] == report["backbone_sha256"] and not slq_row["weights_changed"]
    assert slq_row["capability"] == report["capability"]["untouched"]
    assert slq_row["capability_change"] == {"caption_perplexity": 0.0}


def test_fine_tuning_moves_the_weights_and_the_capability(trained):
    report, _ = trained
    for name in ("lora", "full_ft"):
        row = report["methods"][name]
        assert row["weights_changed"] and row["weights_sha256"] != report["backbone_sha256"], name
        assert row["capability_change"]["caption_perplexity"] == pytest.approx(
            row["capability"]["caption_perplexity"] - report["capability"]["untouched"]["caption_perplexity"], abs=1e-3)
        assert row["capability_change"]["caption_perplexity"] != 0, name


def test_the_table_and_plots_are_written(trained):
    report, out = trained
    table = (out / "table.md").read_text()
    assert table == format_table3(report) + "\n"
    header, rule, *rows = table.split("\n\n")[0].splitlines()
    assert header.split(" | ")[:6] == ["| method", "trainable params", "train time (s)", "R@5 t2i", "R@5 i2t",
                                       "caption_perplexity"]
    assert [r.split(" | ")[0] for r in rows] == ["| slq", "| lora", "| full_ft"]
    assert rows[0].endswith("(+0.000) | unchanged |") and rows[2].endswith("| changed |")
    assert report["backbone_sha256"] in table
    for name in ("recall.png", "cost.png", "gap.png"):
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG", name
    assert json.loads((out / "report.json").read_text())["methods"]["slq"]["weights_changed"] is False


def test_isolated_methods_probe_in_their_own_processes(tiny_dirs, shapes_jsonl):
    """With isolate, the probe travels to each method's process, and the untouched backbone is
    measured in one of its own, with the same threads."""
    data = load_jsonl(shapes_jsonl)
    probe = CaptionLossCapability.from_dataset(data, 4)
    report = compare(tiny_dirs["llava"], data, standard_methods(["slq"], TrainConfig(num_queries=2, batch_size=8)),
                     [RetrievalEvaluator(data)], progress=False, isolate=True, capability=probe)
    row = report["methods"]["slq"]
    assert row["capability"] == report["capability"]["untouched"] and not row["weights_changed"]
    assert row["weights_sha256"] == report["backbone_sha256"] and row["peak_memory_mb"] > 0

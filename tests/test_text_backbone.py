"""Text-only causal LMs as backbones, and text↔text datasets, through the same pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import slq
from slq.backbone import Backbone
from slq.data import TextRecord, load_dataset, load_jsonl, write_jsonl
from slq.errors import DataError, SLQError
from slq.evaluation.compare import compare, random_twin, standard_methods
from slq.evaluation.retrieval import RetrievalEvaluator
from slq.retriever import SLQRetriever
from slq.train import TrainConfig, train

# A toy reverse dictionary: each definition names its word only through what it says.
PAIRS = [
    ("cat", "a small animal with soft fur that says meow"), ("dog", "an animal that barks and guards the house"),
    ("sun", "the star that lights the sky by day"), ("moon", "it shines in the sky at night"),
    ("tree", "a tall plant with a trunk and leaves"), ("car", "a vehicle with four wheels and an engine"),
    ("bus", "a large vehicle that carries many people"), ("apple", "a round red or green fruit"),
    ("banana", "a long yellow fruit"), ("water", "a clear liquid that we drink"),
    ("bird", "an animal with wings and feathers"), ("fish", "it swims in the sea and has fins"),
    ("house", "a building where a family lives"), ("book", "pages bound together to be read"),
    ("cup", "a small open container to drink from"), ("shoe", "it is worn on the foot"),
]


def write_pairs(path: Path, pairs=PAIRS) -> Path:
    write_jsonl([TextRecord(word, (definition,), "") for word, definition in pairs], path)
    return path


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def test_text_backbone_loads_as_causal_lm(tiny_dirs):
    backbone = Backbone.load(tiny_dirs["gemma3_text"])
    assert backbone.text_only and backbone.family.name == "text" and backbone.image_processor is None
    assert type(backbone.model).__name__ == "Gemma3ForCausalLM"
    prompt = backbone.tokenizer.decode(backbone.text_batch(["a red circle"]).input_ids[0])
    assert prompt.endswith("a red circle<end_of_turn>\n<start_of_turn>model\n")  # queries go after the opener
    with pytest.raises(SLQError, match="text-only backbone"):
        backbone.image_batch([])


def without_chat_template(checkpoint: Path, folder: Path) -> Path:
    """A copy of a checkpoint folder whose chat template is gone (as in a base LM's)."""
    folder.mkdir()
    for item in Path(checkpoint).iterdir():
        if item.name != "chat_template.jinja":
            (folder / item.name).write_bytes(item.read_bytes())
    return folder


def test_base_lm_without_chat_template_gets_plain_prompts(tiny_dirs, tmp_path):
    backbone = Backbone.load(without_chat_template(tiny_dirs["gemma3_text"], tmp_path / "base"))
    assert backbone.tokenizer.decode(backbone.text_batch(["a red circle"]).input_ids[0]) == "a red circle"
    queries = SLQRetriever.fresh(backbone, num_queries=3).encode_text(["a red circle", "two cats"])
    assert queries.shape == (2, backbone.hidden_size)


def test_vision_language_template_is_still_required(tiny_dirs, tmp_path):
    with pytest.raises(SLQError, match="no chat template"):
        Backbone.load(without_chat_template(tiny_dirs["qwen2_vl"], tmp_path / "vl"))


def test_text_records_round_trip_and_kinds_do_not_mix(tmp_path, shapes_jsonl):
    path = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:3])
    data = load_jsonl(path)
    assert data.kind == "text" and data.records[0] == TextRecord("cat", (PAIRS[0][1],), f"{path}:1")
    assert data.texts() == [d for _, d in PAIRS[:3]] and data.text_to_image() == [0, 1, 2]
    assert load_jsonl(shapes_jsonl).kind == "image"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(path.read_text() + json.dumps({"image": "x.png", "captions": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r"mixed\.jsonl:4: .*one kind"):
        load_jsonl(mixed)
    both = tmp_path / "both.jsonl"
    both.write_text(json.dumps({"image": "x.png", "text": "cat", "captions": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r"both\.jsonl:1: needs exactly one of"):
        load_jsonl(both)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": " ", "captions": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r'empty\.jsonl:1: "text" must be a non-empty string'):
        load_jsonl(empty)


def test_slq_trains_on_text_pairs_with_a_text_backbone(tiny_dirs, pairs_jsonl):
    """The loss falls below its start through the text-only path (a random model has nothing more to
    elicit: recall on it is not the point here; the evidence run on Gemma is)."""
    data = load_dataset(pairs_jsonl)
    retriever = SLQRetriever.from_pretrained(tiny_dirs["gemma3_text"], num_queries=4, seed=0)
    start = retriever.queries.weight.detach().clone()
    result = train(retriever, data, TrainConfig(num_queries=4, batch_size=8, epochs=15, lr=2e-2), progress=False)
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-6:]) / 6 < sum(losses[:2]) / 2 - 0.1, losses
    assert not torch.equal(retriever.queries.weight, start)


def test_random_twin_of_a_text_backbone(tiny_dirs, tmp_path):
    twin = Backbone.load(random_twin(tiny_dirs["gemma3_text"], tmp_path / "twin", seed=5))
    original = Backbone.load(tiny_dirs["gemma3_text"])
    assert twin.text_only and twin.fingerprint()["config_sha256"] == original.fingerprint()["config_sha256"]
    assert not torch.equal(twin.input_embeddings.weight, original.input_embeddings.weight)


@pytest.mark.slow
def test_isolated_compare_reports_peak_memory(tiny_dirs, pairs_jsonl):
    """Two methods, one process each, both at once (the evidence test runs all five methods so, on this
    backbone, through `slq evidence`)."""
    data = load_dataset(pairs_jsonl)
    methods = standard_methods(("zero_shot_last_token", "slq"), TrainConfig(num_queries=4, batch_size=8, epochs=1))
    report = compare(tiny_dirs["gemma3_text"], data, methods, [RetrievalEvaluator(data)], progress=False,
                     isolate=True, jobs=2)
    assert list(report["methods"]) == ["zero_shot_last_token", "slq"]  # asked order (slq is started first)
    for name, row in report["methods"].items():
        assert row["peak_memory_mb"] > 50, (name, row)  # torch alone is more than that
    assert report["methods"]["slq"]["trainable_params"] == 4 * 32


def cli(*args) -> int:
    """`slq ARGS` run in this process: its exit code."""
    from slq.cli import main

    try:
        return main([str(a) for a in args])
    except SystemExit as e:  # argparse's own refusals
        return e.code


@pytest.mark.slow
def test_cli_trains_and_evaluates_text_pairs(tiny_dirs, pairs_jsonl, tmp_path):
    adapter = tmp_path / "adapter"
    slq("train", "--backbone", tiny_dirs["gemma3_text"], "--train", pairs_jsonl, "--out", adapter,
        "--num-queries", 4, "--batch-size", 8, "--epochs", 1)
    assert json.loads((adapter / "adapter_config.json").read_text())["backbone"]["family"] == "text"
    # the other commands in this process (`slq train` above ran as a real process): their exit codes
    report_path = tmp_path / "report.json"
    assert cli("eval", "--backbone", tiny_dirs["gemma3_text"], "--adapter", adapter, "--data", pairs_jsonl,
               "--report", report_path) == 0
    report = json.loads(report_path.read_text())
    assert report["n_images"] == report["n_texts"] == len(PAIRS)
    assert cli("embed", "--backbone", tiny_dirs["gemma3_text"], "--adapter", adapter, "--images", pairs_jsonl,
               "--out", tmp_path / "words.npy") == 0  # a text-pair dataset's targets: its words
    words = np.load(tmp_path / "words.npy")
    expected = SLQRetriever.from_pretrained(tiny_dirs["gemma3_text"], adapter).encode_text([w for w, _ in PAIRS])
    assert words.shape == (len(PAIRS), 32) and np.allclose(words, expected, atol=1e-5)
    assert cli("train", "--backbone", tiny_dirs["gemma3_text"], "--train", Path(__file__).parent / "conftest.py",
               "--out", tmp_path / "x") == 2


@pytest.mark.slow
def test_cli_refuses_images_on_a_text_backbone(tiny_dirs, shapes_jsonl, tmp_path, capsys):
    code = cli("train", "--backbone", tiny_dirs["gemma3_text"], "--train", shapes_jsonl, "--out", tmp_path / "a",
               "--num-queries", 4, "--batch-size", 8, "--epochs", 1)
    assert code == 2 and "text-only backbone" in capsys.readouterr().err

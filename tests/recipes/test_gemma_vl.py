"""slq-gemma-vl on a tiny Gemma 3 text model: assembly, the frozen language model, pretraining and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from slq.backbone import Backbone
from slq.data import load_jsonl
from slq.data.shapes import write_world
from slq.errors import SLQError
from slq.evaluation.capability import caption_attribute_accuracy
from slq.recipes.gemma_vl import (GemmaVLConfig, VisionSettings, assemble, build_model, language_model_sha256,
                                  pretrain_gemma_vl)
from slq.recipes.pretrain.tasks import IGNORE
from wordnet_fixture import write_fixture

TINY_VISION = VisionSettings(image_side=16, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32, tokens_per_image=4)
FAST = dict(batch_size=4, lr=3e-3, warmup_steps=1, threads=1, vision=TINY_VISION)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gemma-vl") / "world"
    write_world(folder, n_train=12, n_val=2, n_test=4, seed=0, progress=False, image_size=32)
    return folder


def test_language_model_is_gemmas_bit_for_bit(tiny_dirs):
    from transformers import AutoModelForCausalLM

    model, tokenizer, _ = build_model(tiny_dirs["gemma3_text"], TINY_VISION)
    lm = AutoModelForCausalLM.from_pretrained(tiny_dirs["gemma3_text"])
    text_vocab = lm.config.vocab_size
    assert tokenizer.convert_tokens_to_ids("<image_soft_token>") == text_vocab == model.config.image_token_id
    ours, theirs = model.model.language_model.state_dict(), lm.model.state_dict()
    assert torch.equal(ours["embed_tokens.weight"][:text_vocab], theirs["embed_tokens.weight"])
    assert not ours["embed_tokens.weight"][text_vocab:].any(), "the soft token's rows are zero"
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k != "embed_tokens.weight")
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()


def test_pretraining_trains_only_the_tower_and_resumes_exactly(world, tiny_dirs, tmp_path):
    lm = tiny_dirs["gemma3_text"]
    config = GemmaVLConfig(steps=3, save_every=2, **FAST)
    whole = pretrain_gemma_vl(tmp_path / "whole", world, lm, config, work_dir=tmp_path / "work", progress=False)
    assert (tmp_path / "work" / "checkpoint" / "state.json").is_file()
    resumed = pretrain_gemma_vl(tmp_path / "resumed", world, lm, config, work_dir=tmp_path / "work", progress=False)
    assert resumed.history == whole.history
    a, b = (load_file(tmp_path / d / "vision.safetensors") for d in ("whole", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "a resumed run ends the same"
    assert all(k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for k in a)
    initial = build_model(lm, TINY_VISION, seed=0)[0]
    assert any(not torch.equal(a[k], initial.state_dict()[k]) for k in a), "the tower learned"
    saved = json.loads((tmp_path / "whole" / "gemma-vl.json").read_text())
    assert saved["language_model_sha256"] == language_model_sha256(initial)
    with pytest.raises(SLQError, match="other settings"):
        pretrain_gemma_vl(tmp_path / "x", world, lm, GemmaVLConfig(steps=3, save_every=2, **dict(FAST, lr=1e-3)),
                          work_dir=tmp_path / "work", progress=False)


def test_assembled_checkpoint_loads_as_a_gemma3_backbone(world, tiny_dirs, tmp_path):
    lm = tiny_dirs["gemma3_text"]
    pretrain_gemma_vl(tmp_path / "vl", world, lm, GemmaVLConfig(steps=1, save_every=0, **FAST), progress=False)
    folder = assemble(tmp_path / "vl", lm, cache_dir=tmp_path / "cache")
    assert assemble(tmp_path / "vl", lm, cache_dir=tmp_path / "cache") == folder, "assembled once, then reused"
    backbone = Backbone.load(folder)
    assert backbone.family.name == "gemma3" and backbone.config.mm_tokens_per_image == 4
    vision = load_file(tmp_path / "vl" / "vision.safetensors")
    state = backbone.model.state_dict()
    assert all(torch.equal(vision[k], state[k]) for k in vision)
    batch = backbone.image_batch([Image.new("RGB", (20, 30), (200, 10, 10))])
    assert (batch.input_ids == backbone.config.image_token_id).sum() == 4
    with torch.no_grad():
        assert torch.isfinite(backbone.forward(batch, torch.randn(2, backbone.hidden_size)).hidden).all()
    accuracy = caption_attribute_accuracy(folder, world / "test.jsonl", limit=2, max_new_tokens=4, progress=False)
    assert accuracy["n_images"] == 2 and len(accuracy["samples"]) == 2, "it captions, as the model card reports"


def test_only_plain_caption_tasks_are_allowed():
    with pytest.raises(SLQError, match="mixture"):
        GemmaVLConfig(mixture={"caption": 0.5, "knowledge_caption": 0.5})
    with pytest.raises(SLQError, match="tokens_per_image"):
        VisionSettings(tokens_per_image=5)
    assert IGNORE < 0


@pytest.mark.slow
def test_recipe_script_writes_what_slq_ships(tiny_dirs, tmp_path):
    """scripts/pretrain_gemma_vl.py end to end on the tiny Gemma: the tower, its settings and a model card."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "pretrain_gemma_vl.py"
    spec = importlib.util.spec_from_file_location("pretrain_gemma_vl", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    assert script.main(["--out", str(out), "--work", str(tmp_path / "work"), "--lm", str(tiny_dirs["gemma3_text"]),
                        "--steps", "1", "--batch-size", "2", "--n-train", "6", "--n-test", "2", "--threads", "1",
                        "--tokens-per-image", "4"]) == 0
    assert {p.name for p in out.iterdir()} == {"vision.safetensors", "gemma-vl.json", "README.md"}
    card = (out / "README.md").read_text()
    assert "frozen and unchanged" in card and "What it captions" in card


@pytest.mark.slow
def test_real_karr_runs_karr_bench_on_the_real_knowledge_rows(world, tiny_dirs, tmp_path, capsys):
    """`slq real-karr` end to end on a tiny assembled slq-gemma-vl: the shipped real-knowledge rows
    scored with their controls, per category, and the facts as their build probed them."""
    from slq.cli import main
    from slq.karr.real import KARR_REAL

    pretrain_gemma_vl(tmp_path / "vl", world, tiny_dirs["gemma3_text"], GemmaVLConfig(steps=1, save_every=0, **FAST),
                      progress=False)
    folder = assemble(tmp_path / "vl", tiny_dirs["gemma3_text"], cache_dir=tmp_path / "cache")
    argv = ["real-karr", "--out", str(tmp_path / "out"), "--backbone", str(folder), "--methods", "zero_shot_mean,slq",
            "--n-train", "8", "--n-test", "4", "--epochs", "1", "--num-queries", "2", "--batch-size", "4",
            "--capability-limit", "1", "--wordnet-dir", str(write_fixture(tmp_path / "wn"))]
    assert main(argv) == 0
    assert "KARR t2i" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    karr = report["evaluations"]["karr"]["methods"]["slq"]
    assert set(karr["by_category"]) == {r.meta["category"] for r in load_jsonl(KARR_REAL / "karr.jsonl").records}
    assert report["evaluations"]["karr_control"]["methods"]["slq"]
    assert report["knowledge"]["kept"] and "facts" not in report["knowledge"]
    assert report["capability"]["probe"] == "real_knowledge"
    assert {"facts_first", "text_perplexity", "caption_attributes"} <= set(report["capability"]["untouched"])
    assert report["methods"]["slq"]["capability_change"]["text_perplexity"] == 0  # SLQ leaves the LM as it was


def test_the_sweep_script_scores_each_setting_on_validation(world, tiny_dirs, tmp_path):
    """scripts/real_karr_sweep.py trains SLQ once per setting of its grid and logs validation recall."""
    import runpy

    sweep = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "real_karr_sweep.py"))
    log = tmp_path / "sweep.jsonl"
    rows = sweep["main"](["--backbone", str(tiny_dirs["gemma3"]), "--work", str(tmp_path / "w"), "--log", str(log),
                          "--n-train", "6", "--epochs", "1", "--batch-size", "3", "--num-queries", "2", "3"])
    assert [r["num_queries"] for r in rows] == [2, 3]
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows
    assert all(0 <= r["t2i/R@1"] <= 1 and r["final_loss"] > 0 for r in rows)


def test_the_real_knowledge_probe_reads_the_language_model_as_the_text_probe_does(world, tiny_dirs, tmp_path):
    """`RealKnowledgeCapability` on an untouched assembled slq-gemma-vl ranks the facts exactly as
    `slq karr real` ranks them on the text-only language model it holds (the same LM, so the same
    facts first), and scores its text perplexity and the shapes probe; a language model changed by
    training scores otherwise."""
    from slq.evaluation.capability import measure_capability, text_perplexity
    from slq.karr.real import backbone_scorer, probe_facts
    from slq.recipes.gemma_vl.bench import RealKnowledgeCapability

    pretrain_gemma_vl(tmp_path / "vl", world, tiny_dirs["gemma3_text"], GemmaVLConfig(steps=1, save_every=0, **FAST),
                      progress=False)
    vl = Backbone.load(assemble(tmp_path / "vl", tiny_dirs["gemma3_text"], cache_dir=tmp_path / "cache"))
    text = Backbone.load(tiny_dirs["gemma3_text"])
    probe = RealKnowledgeCapability.for_test(load_jsonl(Path(world) / "test.jsonl"), 2, n_texts=4,
                                             wordnet_dir=write_fixture(tmp_path / "wn"))
    assert len(probe.texts) == 4 and len(set(probe.texts)) == 4
    before = measure_capability(probe, vl)
    table = probe_facts(backbone_scorer(text), probe.facts)
    assert before["facts_first"] == round(sum(row["kept"] for row in table) / len(table), 4)
    assert 0 < before["facts_first"] < 1  # so that the equality above could fail
    # The same weights; the assembled table's 64 padding rows (zero, tied to the head) add 64 zero logits
    # to every softmax, which raises the perplexity of a tiny random LM (logits near 0) and not of Gemma.
    assert before["text_perplexity"] > text_perplexity(text, probe.texts) > 1
    assert {"caption_attributes", "vqa"} <= set(before)
    with torch.no_grad():
        for p in vl.model.model.language_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert measure_capability(probe, vl)["text_perplexity"] != before["text_perplexity"]


def test_shipped_tower_is_small_and_made_by_the_default_recipe():
    """What slq ships of slq-gemma-vl: the tower and projector only (no language-model tensor), under
    10 MB, from the recipe's own defaults (so `scripts/pretrain_gemma_vl.py` remakes it), with its card."""
    from dataclasses import asdict

    from slq.recipes.gemma_vl import SLQ_GEMMA_VL, read_vision

    settings, tensors = read_vision(SLQ_GEMMA_VL)
    assert (SLQ_GEMMA_VL / "vision.safetensors").stat().st_size <= 10 * 2**20
    assert all(k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for k in tensors)
    assert tensors["model.multi_modal_projector.mm_input_projection_weight"].shape == (settings.hidden_size, 640)
    saved = json.loads((SLQ_GEMMA_VL / "gemma-vl.json").read_text())
    assert saved["pretraining"] == json.loads(json.dumps(asdict(GemmaVLConfig())))
    assert set(saved["pretraining"]["mixture"]) <= {"caption", "listing"}, "plain captions only"
    card = (SLQ_GEMMA_VL / "README.md").read_text()
    assert saved["language_model_sha256"] in card and "What it captions" in card

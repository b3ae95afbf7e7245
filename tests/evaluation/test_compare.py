"""The comparison harness and the demo pipeline, on a tiny model and a tiny shapes world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slq.adapter import backbone_mismatch
from slq.backbone import Backbone
from slq.baselines import PooledEncoder
from slq.data import load_jsonl
from slq.errors import SLQError
from slq.evaluation.compare import (METHODS, Method, MethodsFailed, baseline_config_for, build_encoder, compare,
                                    random_twin, standard_methods)
from slq.evaluation.report import format_comparison
from slq.evaluation.retrieval import RetrievalEvaluator, evaluate
from slq.recipes.demo import DEMO_METHODS, run_demo
from slq.train import TrainConfig


def test_random_twin_has_same_architecture_other_weights(tiny_dirs, tmp_path):
    twin = random_twin(tiny_dirs["internvl"], tmp_path / "twin", seed=1)  # the original used seed 0
    original, copy = Backbone.load(tiny_dirs["internvl"]), Backbone.load(twin)
    assert backbone_mismatch(original.fingerprint(), copy.fingerprint()) == \
        "same architecture but different weights (embedding probe differs)"
    assert copy.text_batch(["a cat"]).input_ids.tolist() == original.text_batch(["a cat"]).input_ids.tolist()


@pytest.mark.slow
def test_compare_reports_every_method(tiny_dirs, shapes_jsonl):
    data = load_jsonl(shapes_jsonl)
    report = compare(tiny_dirs["llava"], data, standard_methods(METHODS, TrainConfig(num_queries=4, batch_size=8)),
                     [RetrievalEvaluator(data)], progress=False)
    assert list(report["methods"]) == list(METHODS)
    for name, m in report["methods"].items():
        assert set(m["t2i"]) == set(m["i2t"]) == {"R@1", "R@5", "R@10"}
        trained = name in ("slq", "slq_random_init", "lora", "full_ft")
        assert (m["trainable_params"] > 0) == trained and (m["train_seconds"] > 0) == trained
    assert report["methods"]["slq"]["trainable_params"] == 4 * 32
    assert report["methods"]["lora"]["trainable_params"] < report["methods"]["full_ft"]["trainable_params"]
    assert report["chance_R@1"] == 1 / 16
    # without a capability probe, the weights' hashes are still recorded: only what trains the LM moves them
    assert "capability" not in report and report["backbone_sha256"] == report["methods"]["zero_shot_mean"]["weights_sha256"]
    assert {name for name, m in report["methods"].items() if m["weights_changed"]} == {"lora", "full_ft"}
    assert report["methods"]["slq_random_init"]["weights_sha256"] != report["backbone_sha256"]


@pytest.mark.slow
def test_validation_data_is_scored_beside_the_test(tiny_dirs, shapes_jsonl, tmp_path):
    """Settings are chosen on --val: each method's val recall is its own encoder scored on the val data."""
    data = load_jsonl(shapes_jsonl)
    val_path = tmp_path / "val.jsonl"
    records = [json.loads(line) for line in Path(shapes_jsonl).read_text().splitlines()[:6]]
    val_path.write_text("".join(json.dumps({**r, "image": str(Path(shapes_jsonl).parent / r["image"])}) + "\n"
                                for r in records))
    val = load_jsonl(val_path)
    methods = standard_methods(["zero_shot_mean", "slq"], TrainConfig(num_queries=4, batch_size=8, epochs=1))
    report = compare(tiny_dirs["llava"], data, methods, [RetrievalEvaluator(data), RetrievalEvaluator(val, "validation")],
                     progress=False)
    validation = report["evaluations"]["validation"]
    assert set(validation["methods"]) == {"zero_shot_mean", "slq"} and validation["dataset"] == val.name
    assert all("evaluations" not in row for row in report["methods"].values())
    expected = evaluate(PooledEncoder(Backbone.load(tiny_dirs["llava"]), "mean", one_word_prompt=False), val)
    assert validation["methods"]["zero_shot_mean"] == {"t2i": expected["t2i"], "i2t": expected["i2t"],
                                                       "modality_gap": expected["modality_gap"]}
    assert "validation" in format_comparison(report)
    with pytest.raises(SLQError, match="each evaluator needs a name of its own"):
        compare(tiny_dirs["llava"], data, methods, [RetrievalEvaluator(data), RetrievalEvaluator(val)])
    assert "evaluations" not in compare(tiny_dirs["llava"], data, methods[:1], [RetrievalEvaluator(data)],
                                       progress=False)


def test_baselines_get_their_own_learning_rate_and_epochs(tiny_dirs, shapes_jsonl, monkeypatch):
    import slq.evaluation.compare

    seen = {}
    real_train = slq.evaluation.compare.train

    def recording_train(encoder, dataset, config, **kwargs):
        seen[type(encoder).__name__] = config
        return real_train(encoder, dataset, config, **kwargs)

    monkeypatch.setattr(slq.evaluation.compare, "train", recording_train)
    data = load_jsonl(shapes_jsonl)
    config = TrainConfig(num_queries=2, batch_size=8, epochs=1, lr=1e-2, prompt_cache_mb=10)
    methods = standard_methods(["slq", "lora"], config, baseline_config_for(config, lr=3e-4, epochs=2))
    report = compare(tiny_dirs["llava"], data, methods, [RetrievalEvaluator(data)], progress=False)
    assert seen["SLQRetriever"] == config
    lora = seen["PooledEncoder"]
    assert (lora.lr, lora.epochs, lora.prompt_cache_mb, lora.batch_size) == (3e-4, 2, 0.0, 8)
    settings = report["method_settings"]
    assert settings["lora"]["train"]["epochs"] == 2 and settings["slq"]["train"]["epochs"] == 1
    assert baseline_config_for(config).lr == config.lr / 10


def test_lora_starts_from_the_same_adapters_for_one_seed(tiny_dirs):
    def adapters(seed: int, global_state: int) -> dict:
        torch.manual_seed(global_state)  # whatever the global RNG held before must not matter
        encoder = build_encoder(Method("lora", "lora", TrainConfig(seed=seed)), tiny_dirs["llava"])
        return {name: p.detach().clone() for name, p in encoder.trainable_tensors().items()}

    first, again, other = adapters(0, global_state=1), adapters(0, global_state=2), adapters(1, global_state=1)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_unknown_method_is_refused():
    with pytest.raises(SLQError, match="clip: unknown"):
        standard_methods(["slq", "clip"], TrainConfig())
    with pytest.raises(SLQError, match="needs a TrainConfig"):
        Method("lora", "lora")
    with pytest.raises(SLQError, match="does not train"):
        Method("mean", "mean", TrainConfig())


@pytest.mark.parametrize("isolate", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_every_failed_method_is_reported_and_the_others_finish(tiny_dirs, shapes_jsonl, isolate):
    """Two methods that cannot train (batch larger than the data) both fail; the zero-shot row still lands,
    also when each method runs in a process of its own (the errors cross back whole)."""
    data = load_jsonl(shapes_jsonl)
    too_big = TrainConfig(num_queries=2, batch_size=64)
    rows = {}
    with pytest.raises(MethodsFailed) as failed:
        compare(tiny_dirs["llava"], data, standard_methods(["slq", "zero_shot_mean", "lora"], too_big),
                [RetrievalEvaluator(data)], progress=False, on_row=lambda name, row: rows.setdefault(name, row),
                isolate=isolate, jobs=2 if isolate else 1)
    assert set(failed.value.failures) == {"slq", "lora"} and set(rows) == {"zero_shot_mean"}
    assert "method slq failed" in str(failed.value) and "method lora failed" in str(failed.value)


@pytest.mark.slow
def test_demo_pipeline_smoke(tmp_path):
    """The `make demo` pipeline at a few steps: world, tiny backbone, four methods, report and plot."""
    run_demo(tmp_path, backbone_dir="random", n_train=64, n_test=16, epochs=1, batch_size=16, num_queries=4,
             jobs=1, progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["methods"]) == list(DEMO_METHODS)
    assert report["chance_R@1"] == 1 / 16
    for name in ("recall.png", "gap.png", "cost.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # each backbone captioned and answered the world's questions after training; SLQ's as the untouched one's
    assert report["capability"]["probe"] == "shapes"
    assert report["methods"]["slq"]["capability"] == report["capability"]["untouched"]
    assert set(report["methods"]["slq"]["capability_change"].values()) <= {0.0, None}
    assert "capability_change" not in report["methods"]["slq_random_init"], "its backbone is the random twin"
    assert "| vqa |" in (tmp_path / "table.md").read_text()
    for name, row in report["methods"].items():  # every method's modality gap, as its table line says
        assert 0 <= row["modality_gap"]["centroid_distance"] <= 2, name
        gap = row["modality_gap"]
        assert f"{name} {gap['centroid_distance']:.3f} ({gap['spread']:.3f})" in (tmp_path / "table.txt").read_text()
    assert (tmp_path / "world" / "train.jsonl").is_file() and (tmp_path / "backbone" / "config.json").is_file()
    # SLQ's adapter is kept, the test images indexed with it, and the gallery drawn from that index
    assert report["methods"]["slq"]["adapter"] == str(tmp_path / "adapters" / "slq")
    assert "adapter" not in report["methods"]["slq_random_init"], "the twin's backbone is temporary"
    from slq.index import SearchIndex

    index = SearchIndex(tmp_path / "index")
    assert (len(index), index.meta["adapter"]) == (16, str((tmp_path / "adapters" / "slq").resolve()))
    assert (tmp_path / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_compare_cli_scores_val_and_refuses_the_test_data_as_val(tiny_dirs, shapes_jsonl, tmp_path):
    from helpers import slq

    common = ("compare", "--backbone", tiny_dirs["llava"], "--train", shapes_jsonl, "--test", shapes_jsonl,
              "--methods", "zero_shot_mean", "--batch-size", 8)
    proc = slq(*common, "--val", shapes_jsonl, check=False)
    assert proc.returncode == 2 and "--val and --test are the same data" in proc.stderr
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({**r, "image": str(Path(shapes_jsonl).parent / r["image"])}) + "\n" for r in
                           map(json.loads, Path(shapes_jsonl).read_text().splitlines()[:6])))
    proc = slq(*common, "--val", val, "--report", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert "validation (val), R@1: zero_shot_mean" in proc.stdout, proc.stdout
    assert report["capability"]["probe"] == "caption_loss"  # --capability auto, on data without shapes' objects
    assert (tmp_path / "report.md").read_text().startswith("| method | trainable params |")
    assert "| validation R@5 t2i |" in proc.stdout and (tmp_path / "report-cost.png").read_bytes()[:4] == b"\x89PNG"
    assert set(report["evaluations"]["validation"]["methods"]["zero_shot_mean"]) == {"t2i", "i2t", "modality_gap"}


def test_an_isolated_method_reports_its_own_peak_memory_not_its_parents():
    """A spawned child inherits its parent's ru_maxrss across exec; the peak must be the child's own."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from slq._io import peak_rss_mb

    ballast = bytearray(600 * 2**20)  # a parent far larger than the child will be
    ballast[:: 4096] = b"\1" * len(ballast[:: 4096])
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        child = pool.submit(peak_rss_mb).result()
    assert child < 400 < peak_rss_mb(), (child, peak_rss_mb())


def test_comparison_table_prints_recall_per_category():
    from slq.evaluation.report import format_comparison

    scores = {"t2i": {"R@1": 0.1, "R@5": 0.2, "R@10": 0.3}, "i2t": {"R@1": 0.1, "R@5": 0.2, "R@10": 0.3}}
    by_category = {"encyclopedic": {"t2i": {"R@1": 0.05}, "i2t": {"R@1": 0.07}},
                   "functional": {"t2i": {"R@1": 0.15}, "i2t": {"R@1": 0.25}}}
    report = {"methods": {"slq": {**scores, "trainable_params": 8, "train_seconds": 1.0, "by_category": by_category},
                          "zero_shot_mean": {**scores, "trainable_params": 0, "train_seconds": 0.0}},
              "test": "karr", "chance_R@1": 0.002}
    table = format_comparison(report)
    assert "karr, R@1 t2i / i2t per category:" in table
    row = next(line for line in table.splitlines() if line.startswith("slq ") and "/" in line)
    assert row.split()[1:] == ["5.0", "/", "7.0", "15.0", "/", "25.0"]
    assert "zero_shot_mean" in table.split("per category:")[1]  # a method without categories shows dashes


def test_compare_resumes_from_the_rows_it_saved(tiny_dirs, shapes_jsonl, tmp_path, monkeypatch):
    """With `resume`, each finished row is written at once; a rerun with the same settings keeps it
    (nothing recomputed), one with other settings recomputes, and other methods' rows stay in the file."""
    import slq.evaluation.compare as compare_module
    from slq.evaluation.evaluator import SavedRows

    data = load_jsonl(shapes_jsonl)
    methods = standard_methods(["zero_shot_mean"], TrainConfig())
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"other": {"settings": {}, "row": {"t2i": {}}}}))
    first = compare(tiny_dirs["llava"], data, methods, [RetrievalEvaluator(data)], progress=False,
                    resume=SavedRows(rows, {"zero_shot_mean": {"batch": 8}}))
    saved = json.loads(rows.read_text())
    assert set(saved) == {"other", "zero_shot_mean"} and saved["zero_shot_mean"]["settings"] == {"batch": 8}
    ran = []
    real = compare_module.run_method
    monkeypatch.setattr(compare_module, "run_method", lambda method, *a, **k: ran.append(method.name) or real(method, *a, **k))
    again = compare(tiny_dirs["llava"], data, methods, [RetrievalEvaluator(data)], progress=False,
                    resume=SavedRows(rows, {"zero_shot_mean": {"batch": 8}}))
    assert ran == [] and again["methods"] == first["methods"]
    compare(tiny_dirs["llava"], data, methods, [RetrievalEvaluator(data)], progress=False,
            resume=SavedRows(rows, {"zero_shot_mean": {"batch": 16}}))
    assert ran == ["zero_shot_mean"] and json.loads(rows.read_text())["zero_shot_mean"]["settings"] == {"batch": 16}


def test_every_evaluator_names_its_primary_metric(tiny_dirs, shapes_jsonl):
    """Retrieval, MMEB, the capability probes and the knowledge probe follow one contract: a name, a
    primary metric found in what they return, and (for encoders' evaluators) what a report says of them."""
    from slq.data.mmeb import MMEBTask
    from slq.evaluation.capability import CaptionLossCapability
    from slq.evaluation.evaluator import primary_score
    from slq.evaluation.knowledge import KnowledgeProbe, world_probes
    from slq.evaluation.mmeb import MMEBEvaluator

    data = load_jsonl(shapes_jsonl)
    backbone = Backbone.load(tiny_dirs["llava"])
    encoder = PooledEncoder(backbone, "mean", one_word_prompt=False)
    retrieval = RetrievalEvaluator(data, "karr")
    assert retrieval.primary_metric == "t2i/R@1" and retrieval.describe()["dataset"] == data.name
    assert primary_score(retrieval, retrieval(encoder, False)) >= 0
    from slq.data.pairs import Input

    texts = [Input(r.captions[0]) for r in data.records[:3]]
    mmeb = MMEBEvaluator([MMEBTask("toy", "retrieval", texts, [texts, texts[::-1], texts[1:] + texts[:1]])])
    assert 0 <= primary_score(mmeb, mmeb(encoder, False)) <= 100 and mmeb.describe()["dataset"] == "toy"
    probe = CaptionLossCapability.from_dataset(data, 2)
    assert primary_score(probe, probe(backbone)) > 0
    knowledge = KnowledgeProbe(tuple(world_probes())[:2], max_new_tokens=1)
    assert knowledge.name == "knowledge" and 0 <= primary_score(knowledge, knowledge(backbone)) <= 1

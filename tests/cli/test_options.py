"""The CLI's flags come from the library's config dataclasses: one default each, the same flags for
every command that trains, setting errors shown as flags, -q/-v, and `python -m slq`."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from dataclasses import fields

import pytest

from slq.cli import build_parser, main, setup_logging
from slq.data.mmeb_suite import SuiteConfig
from slq.data.shapes import WorldConfig
from slq.data.wordnet import WordNetSplit
from slq.mining import MiningConfig
from slq.recipes.demo import DemoConfig
from slq.recipes.evidence import EvidenceConfig
from slq.recipes.mmeb import MMEBBenchConfig
from slq.train import TrainConfig


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings}


@pytest.mark.parametrize("command,config,skip", [
    (("train",), TrainConfig, ()), (("compare",), TrainConfig, ("save_every", "save_minutes", "save_epochs", "compile")),
    (("demo",), DemoConfig, ("seed",)),
    (("evidence",), EvidenceConfig, ()), (("data", "shapes"), WorldConfig, ()), (("data", "wordnet"), WordNetSplit, ()),
    (("data", "mmeb-suite"), SuiteConfig, ()), (("mmeb-bench",), MMEBBenchConfig, ("world_images", "seed")),
    (("mine-negatives",), MiningConfig, ()),
])
def test_every_config_field_is_a_flag_with_the_config_default(command, config, skip):
    options = _options(_subparser(*command))
    for f in fields(config):
        if f.name in skip:
            assert f.name not in options
            continue
        action = options[f.name]
        flag = f"--{f.name.replace('_', '-')}"
        assert action.option_strings == ([flag, "--no-" + flag[2:]] if f.type == "bool" else [flag])
        assert action.default == f.default, (command, f.name)
        assert f.metadata["help"].split(" (")[0][:30] in action.help


def test_train_and_compare_take_the_same_training_settings():
    train, compare = _options(_subparser("train")), _options(_subparser("compare"))
    for name in ("prompt_cache_mb", "prompt_cache_disk_mb", "prompt_cache_dtype", "warmup_steps", "temperature",
                 "weight_decay", "engine"):
        assert train[name].default == compare[name].default and train[name].choices == compare[name].choices
    assert _options(_subparser("data", "wordnet"))["n_val"].default == WordNetSplit().n_val == 500


def test_a_bad_setting_is_reported_as_its_flag(capsys, tmp_path):
    code = main(["train", "--backbone", str(tmp_path), "--train", str(tmp_path / "x.jsonl"), "--out",
                 str(tmp_path / "out"), "--num-queries", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "slq: error: --num-queries 0: must be an integer >= 1"


def test_quiet_and_verbose_set_the_log_level_before_or_after_the_command():
    command = ["data", "shapes", "--out", "x"]
    for flags, level in (([], logging.INFO), (["-q"], logging.WARNING), (["-v"], logging.DEBUG)):
        for argv in ([*flags, *command], [*command, *flags]):
            setup_logging(build_parser().parse_args(argv).verbosity)
            assert logging.getLogger("slq").level == level, argv


def test_python_dash_m_slq_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "slq", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("slq ")


def test_old_module_paths_import_with_a_warning():
    import importlib

    import slq.evaluation.compare
    import slq.evaluation.report
    import slq.evaluation.retrieval

    sys.modules.pop("slq.compare", None)
    with pytest.warns(DeprecationWarning, match="slq.compare moved to slq.evaluation.compare"):
        old = importlib.import_module("slq.compare")
    assert old.compare is slq.evaluation.compare.compare
    assert old.format_comparison is slq.evaluation.report.format_comparison  # split in two: both halves there
    sys.modules.pop("slq.evaluate", None)
    with pytest.warns(DeprecationWarning):
        assert importlib.import_module("slq.evaluate") is slq.evaluation.retrieval
    with pytest.warns(DeprecationWarning, match="slq.queries.PromptCache moved to slq.prompt_cache"):
        from slq.queries import PromptCache
    from slq.prompt_cache import PromptCache as new_home

    assert PromptCache is new_home
    with pytest.warns(DeprecationWarning, match="slq.data.atomic_write moved to slq._io"):
        from slq.data import atomic_write  # noqa: F401


@pytest.mark.parametrize("argv,message", [
    (["evidence", "--baseline-epochs", "0"], "--baseline-epochs 0: must be an integer >= 1 (or None)"),
    (["demo", "--jobs", "0"], "--jobs 0: must be an integer >= 1"),
    (["compare", "--backbone", "b", "--train", "t.jsonl", "--test", "t.jsonl", "--batch-size", "1"],
     "--batch-size 1: must be an integer >= 2 (in-batch negatives need company)"),
])
def test_recipe_settings_are_checked_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"slq: error: {message}"
    assert not list(tmp_path.iterdir()), "nothing was written"


def _stop_at_loading(monkeypatch) -> list:
    """Replace the dataset loader with one that records its `max_captions` and stops the command."""
    import slq.data
    from slq.errors import SLQError

    seen = []

    def load_dataset(path, **kwargs):
        seen.append(kwargs["max_captions"])
        raise SLQError("stopped at loading")

    monkeypatch.setattr(slq.data, "load_dataset", load_dataset)
    return seen


@pytest.mark.parametrize("command", [
    ["train", "--train", "t.jsonl", "--out", "out"],
    ["eval", "--data", "t.jsonl", "--adapter", "a"],
    ["compare", "--train", "t.jsonl", "--test", "t.jsonl"],
])
def test_data_commands_pass_max_captions_to_the_loader(command, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    seen = _stop_at_loading(monkeypatch)
    assert main([*command, "--backbone", "b", "--max-captions", "5"]) == 2
    assert main([*command, "--backbone", "b"]) == 2
    assert seen == [5, None] and "stopped at loading" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*command, "--backbone", "b", "--max-captions", "0"])
    assert "--max-captions: must be a positive integer, got 0" in capsys.readouterr().err


def _words():
    from slq.data import ImageTextDataset, TextRecord

    return ImageTextDataset([TextRecord(text="w", captions=("a",), source="w:1")], "words")


def test_eval_passes_its_tie_rule(monkeypatch, tmp_path):
    import slq.cli.encode
    import slq.evaluation.retrieval

    seen = []

    def evaluate(encoder, dataset, *, batch_size, ties):
        seen.append(ties)
        return {"t2i": {"R@1": 1.0}, "i2t": {"R@1": 1.0}, "n_images": 1, "n_texts": 1, "ties": ties}

    monkeypatch.setattr(slq.cli.encode, "load_data", lambda *args, **kwargs: _words())
    monkeypatch.setattr(slq.cli.encode, "retriever", lambda args, adapter: None)
    monkeypatch.setattr(slq.evaluation.retrieval, "evaluate", evaluate)
    for flags in (["--ties", "strict"], []):
        assert main(["eval", "--backbone", "b", "--adapter", "a", "--data", "d.jsonl", *flags]) == 0
    assert seen == ["strict", "average"]


def test_compare_passes_its_tie_rule_to_every_evaluator(monkeypatch, tmp_path):
    import slq.cli.compare
    import slq.evaluation.compare

    seen = []

    def compare(backbone, train_data, methods, evaluators, **kwargs):
        seen.append([ev.ties for ev in evaluators])
        return {"methods": {}}

    monkeypatch.setattr(slq.cli.compare, "load_data", lambda *args, **kwargs: _words())
    monkeypatch.setattr(slq.evaluation.compare, "compare", compare)
    argv = ["compare", "--backbone", "b", "--train", "t.jsonl", "--test", "t.jsonl", "--val", "v.jsonl"]
    assert main([*argv, "--ties", "strict"]) == 0 and main(argv) == 0
    assert seen == [["strict", "strict"], ["average", "average"]]


@pytest.mark.parametrize("command", [
    ["train", "--train", "t.jsonl", "--out", "out"],
    ["eval", "--data", "t.jsonl", "--adapter", "a"],
    ["embed", "--texts", "t.txt", "--adapter", "a", "--out", "e.npy"],
    ["compare", "--train", "t.jsonl", "--test", "t.jsonl"],
])
def test_image_fit_reaches_every_backbone_load_only_when_given(command):
    from slq.cli.options import load_options

    parser = build_parser()
    assert load_options(parser.parse_args([*command, "--backbone", "b", "--image-fit", "square"]))["image_fit"] == \
        "square"
    assert "image_fit" not in load_options(parser.parse_args([*command, "--backbone", "b"]))  # the adapter's
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--backbone", "b", "--image-fit", "stretch"])


def test_a_bad_image_fit_for_the_backbone_is_reported_as_its_flag(tiny_dirs, tmp_path, capsys, monkeypatch):
    import slq.cli.train

    monkeypatch.setattr(slq.cli.train, "load_data", lambda *args, **kwargs: _words())
    assert main(["train", "--backbone", str(tiny_dirs["gemma3_text"]), "--train", "x.jsonl", "--out",
                 str(tmp_path / "out"), "--image-fit", "square"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("slq: error: --image-fit square: ")
    assert not (tmp_path / "out").exists()

"""The trade-off table from one call: each method trained and evaluated on the same data.

A comparison is a list of `Method`s (what to build, and how it trains) and a list of evaluators
(`slq.evaluation.evaluator.Evaluator`: retrieval, KARR-Shapes, MMEB; the first is the primary one,
whose scores make the table).
The standard methods, by the report's names:

    zero_shot_last_token  last state under the one-word-summary prompt (E5-V), no training
    zero_shot_mean        mean of the prompt's last-layer states, no training
    slq                   Shared Latent Queries on the frozen backbone
    slq_random_init       the same SLQ training on a randomly initialised twin (control: is it the
                          pretraining that SLQ elicits?)
    lora                  LoRA r=16 on the language model, last-token pooling
    full_ft               full fine-tuning of the language model, last-token pooling

With a capability probe (`slq.evaluation.capability`), each row also says what its backbone can
still do after training, beside the SHA-256 of the weights it computes with; the report holds the
untouched backbone's hash and scores once, and each row's change from them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from .._io import peak_rss_mb
from ..backbone import Backbone
from ..baselines import PooledEncoder, add_lora, unfreeze_language_model
from ..data import ImageTextDataset
from ..encoder import Encoder
from ..errors import SettingError, SLQError
from ..families import family_for
from ..retriever import SLQRetriever
from ..train import TrainConfig, train
from .capability import CapabilityProbe, measure_capability, weights_sha256
from .evaluator import Evaluator, SavedRows

logger = logging.getLogger("slq")

METHODS = ("zero_shot_last_token", "zero_shot_mean", "slq", "slq_random_init", "lora", "full_ft")
ENCODERS = ("slq", "last_token_one_word", "mean", "lora", "full_ft")  # what `Method.encoder` may name
_TRAINED_ENCODERS = {"slq", "lora", "full_ft"}


@dataclass(frozen=True)
class Method:
    """One row of a comparison: which encoder to build, on which backbone, and how it trains.

    encoder: "slq" (fresh queries), "last_token_one_word" (E5-V's prompt, last state), "mean"
    (mean of the prompt's states), "lora" or "full_ft" (last-token pooling, the LM trains).
    `random_init` builds it on a randomly initialised twin of the backbone (the control).
    """

    name: str
    encoder: str
    train: TrainConfig | None = None  # None: zero-shot
    random_init: bool = False

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise SettingError("encoder", self.encoder, f"must be one of {', '.join(ENCODERS)}")
        if (self.train is not None) != (self.encoder in _TRAINED_ENCODERS):
            rule = "needs a TrainConfig" if self.train is None else "does not train (zero-shot): give no TrainConfig"
            raise SettingError("train", self.train, f"method {self.name} ({self.encoder}) {rule}")


def standard_methods(names: Sequence[str], config: TrainConfig, baseline_config: TrainConfig | None = None,
                     ) -> list[Method]:
    """The named standard methods (`METHODS`): SLQ and its twin train with `config`, LoRA and full
    fine-tuning with `baseline_config` (default: `baseline_config_for(config)`)."""
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SettingError("methods", ",".join(unknown), f"unknown; choose from {', '.join(METHODS)}")
    baseline = baseline_config or baseline_config_for(config)
    specs = {"zero_shot_last_token": Method("zero_shot_last_token", "last_token_one_word"),
             "zero_shot_mean": Method("zero_shot_mean", "mean"),
             "slq": Method("slq", "slq", config),
             "slq_random_init": Method("slq_random_init", "slq", config, random_init=True),
             "lora": Method("lora", "lora", baseline), "full_ft": Method("full_ft", "full_ft", baseline)}
    return [specs[name] for name in names]


def baseline_config_for(config: TrainConfig, lr: float | None = None, epochs: int | None = None) -> TrainConfig:
    """LoRA's and full fine-tuning's settings from SLQ's: `lr` (default SLQ's / 10: queries and LoRA
    weights live at different scales), `epochs` (default SLQ's), no prompt cache (it serves SLQ only)."""
    return replace(config, lr=config.lr / 10 if lr is None else lr, epochs=config.epochs if epochs is None else epochs,
                   prompt_cache_device_mb=0.0, prompt_cache_mb=0.0, prompt_cache_disk_mb=0.0, prompt_cache_dtype=None)


def random_twin(backbone_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int) -> Path:
    """A checkpoint folder with the same architecture, tokenizer and processor but random weights.

    `seed` is required: a random backbone built with the same seed would come back identical.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
    )

    source, out = Path(backbone_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(source)
    auto_model = AutoModelForCausalLM if family_for(config.model_type).name == "text" else AutoModelForImageTextToText
    auto_model.from_config(config).save_pretrained(out)
    for item in source.iterdir():  # tokenizer, chat template, processor configs: everything but weights/config
        if item.is_file() and not item.name.startswith(("model", "config.json", "generation_config", "slq-")) \
                and item.suffix in (".json", ".jinja", ".txt", ".model", ".tiktoken"):
            (out / item.name).write_bytes(item.read_bytes())
    return out


def build_encoder(method: Method, backbone_dir: Path, **load) -> Encoder:
    """The method's encoder on `backbone_dir`, untrained."""
    if method.encoder == "slq":
        config = method.train
        return SLQRetriever.from_pretrained(backbone_dir, num_queries=config.num_queries, seed=config.seed, **load)
    backbone = Backbone.load(backbone_dir, **load)
    if method.encoder == "mean":
        return PooledEncoder(backbone, "mean", one_word_prompt=False)
    encoder = PooledEncoder(backbone, "last", one_word_prompt=method.encoder == "last_token_one_word")
    if method.encoder == "lora":
        torch.manual_seed(method.train.seed)  # LoRA's A matrices start random: seeded, so a row is reproducible
        return add_lora(encoder)
    if method.encoder == "full_ft":
        return unfreeze_language_model(encoder)
    return encoder


def run_method(method: Method, backbone_dir: Path, train_data: ImageTextDataset, evaluators: Sequence[Evaluator],
               progress: bool | None = None, keep_adapters: Path | None = None,
               capability: CapabilityProbe | None = None, **load) -> dict:
    """One row: build the method's encoder, train it if it trains, run every evaluator, then (with
    `capability`) probe its backbone with the trained weights active (LoRA's adapters on, full
    fine-tuning's weights as trained).

    The row records `weights_sha256`, the hash of the weights the backbone computes with after
    training (`slq.evaluation.capability.weights_sha256`), and `weights_changed`, whether that
    differs from the hash before training.

    With `keep_adapters`, a trained SLQ method's adapter is saved to `keep_adapters / method.name`
    (the row records where), to search with afterwards; not the random twin's, whose backbone is
    temporary.

    The row holds the primary (first) evaluator's results at its top level and the others' under
    `"evaluations"`, by evaluator name; so does the report (`report["evaluations"][name]["methods"]`).
    """
    encoder = build_encoder(method, backbone_dir, **load)
    before = weights_sha256(encoder.backbone.model)
    seconds = 0.0
    if method.train is not None:
        began = time.perf_counter()
        train(encoder, train_data, method.train, progress=progress)
        seconds = time.perf_counter() - began
    kept = {}
    if keep_adapters is not None and method.train is not None and not method.random_init and isinstance(
            encoder, SLQRetriever):
        kept["adapter"] = str(encoder.save(Path(keep_adapters) / method.name))
    primary, *others = evaluators
    row = {**_directions_only(primary(encoder, progress)),
           "trainable_params": encoder.trainable_parameters if method.train is not None else 0,
           "train_seconds": round(seconds, 2), **kept}
    if others:
        row["evaluations"] = {ev.name: _directions_only(ev(encoder, progress)) for ev in others}
    return {**row, **backbone_state(encoder.backbone, capability, before)}


def backbone_state(backbone: Backbone, capability: CapabilityProbe | None = None, before: str | None = None) -> dict:
    """What a row records of its backbone: the hash of its weights, whether it moved from `before`,
    and the probe's scores (with a probe)."""
    state = {"weights_sha256": weights_sha256(backbone.model)}
    if before is not None:
        state["weights_changed"] = state["weights_sha256"] != before
    if capability is not None:
        state["capability"] = measure_capability(capability, backbone)
    return state


def untouched_backbone(backbone_dir: Path, capability: CapabilityProbe | None = None, **load) -> dict:
    """The untouched backbone's hash and scores, measured on a fresh load."""
    return backbone_state(Backbone.load(backbone_dir, **load), capability)


def _directions_only(result: dict) -> dict:
    """An evaluator's scores without its counts and names: the parts a row keeps."""
    return {k: v for k, v in result.items() if isinstance(v, dict)}


def threads_per_method(jobs: int) -> int:
    """Torch threads each isolated method gets when `jobs` run at once: this process's, shared out."""
    return max(1, torch.get_num_threads() // jobs)


def _run_isolated(threads: int, *args, **load) -> dict:
    """`run_method` in a fresh process (spawned by `compare`), adding that process's peak memory."""
    torch.set_num_threads(threads)
    row = run_method(*args, **load)
    row["peak_memory_mb"] = peak_rss_mb()
    return row


def _untouched_isolated(threads: int, *args, **load) -> dict:
    """`untouched_backbone` in a fresh process with a method's threads, so its scores are computed
    as the methods' are (another thread count may sum in another order)."""
    torch.set_num_threads(threads)
    return untouched_backbone(*args, **load)


class MethodsFailed(SLQError):
    """Some methods of a comparison failed with user errors; `failures` maps each to its error."""

    def __init__(self, failures: dict[str, BaseException]):
        self.failures = failures
        super().__init__(self.message())

    def message(self, name_of=lambda setting: setting) -> str:
        return "; ".join(f"method {name} failed: {error.message(name_of)}" for name, error in self.failures.items())


def compare(backbone_dir: str | os.PathLike, train_data: ImageTextDataset, methods: Sequence[Method],
            evaluators: Sequence[Evaluator], *, progress: bool | None = None, isolate: bool = False, jobs: int = 1,
            done: dict | None = None, on_row: Callable[[str, dict], None] | None = None,
            resume: SavedRows | None = None, keep_adapters: str | os.PathLike | None = None,
            capability: CapabilityProbe | None = None, **load) -> dict:
    """Train (where a method trains) and evaluate every method; returns the report.

    `isolate` runs each method in a process of its own, so each row also gets an honest
    `peak_memory_mb` (the process's peak RSS); `jobs` such processes run at once, sharing this
    process's torch threads (on a CPU, where one process scales poorly past a core, two at a time
    nearly halve the wall time). Rows in `done` (method name -> row, from an interrupted run) are
    kept, not recomputed; `on_row(name, row)` is called as each row is finished; `resume` (a rows
    file, `SavedRows`) keeps the rows an earlier run saved with the same settings and saves each
    row as it is finished, so a rerun skips what was written; `keep_adapters` keeps trained SLQ
    adapters (`run_method`); `capability` probes every method's backbone after training and, once,
    the untouched backbone (a zero-shot row's backbone is the untouched one: its measurement serves,
    else a fresh load is measured). A method that fails does not stop the others; afterwards every
    failure is reported (`MethodsFailed` when all are user errors, else the first bug's traceback,
    naming the rest).

    `load` (dtype, device, trust_remote_code) goes to every backbone load.
    """
    if not methods or not evaluators:
        raise SettingError("methods" if not methods else "evaluators", [], "need at least one")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise SettingError("methods", names, "each method needs a name of its own")
    if len({ev.name for ev in evaluators}) != len(evaluators):
        raise SettingError("evaluators", [ev.name for ev in evaluators], "each evaluator needs a name of its own")
    if jobs < 1 or (jobs > 1 and not isolate):
        raise SettingError("jobs", jobs, f"must be 1, or more with isolate (isolate={isolate})")
    backbone_dir = Path(backbone_dir)
    rows = {name: row for name, row in (done or {}).items() if name in names}
    if resume is not None:
        saved = resume.kept()
        kept = {name: saved[name] for name in names if name in saved and name not in rows}  # in the methods' order
        if kept:
            logger.info("      kept from an earlier run with the same settings: %s (%s)", ", ".join(kept), resume.path)
        rows.update(kept)
    todo = sorted((m for m in methods if m.name not in rows), key=lambda m: m.train is None)  # long ones first
    failures: dict[str, BaseException] = {}

    def finished(name: str, row: dict) -> None:
        rows[name] = row
        if resume is not None:
            resume.save(name, row)
        if on_row is not None:
            on_row(name, row)

    with tempfile.TemporaryDirectory(prefix="slq-twin-") as tmp:
        twin = None
        if any(m.random_init for m in todo):
            seed = next(m.train.seed if m.train else 0 for m in todo if m.random_init)
            twin = random_twin(backbone_dir, Path(tmp) / "twin", seed=seed + 1)

        def args(method: Method) -> tuple:
            return (method, twin if method.random_init else backbone_dir, train_data, evaluators, progress,
                    keep_adapters, capability)

        zero_shot = _untouched_method(methods)  # its row measures the untouched backbone; else a fresh load does
        measure_untouched = zero_shot is None

        if isolate:
            threads = threads_per_method(jobs)
            with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
                futures = {pool.submit(_run_isolated, threads, *args(m), **load): m.name for m in todo}
                measuring = pool.submit(_untouched_isolated, threads, backbone_dir, capability, **load) \
                    if measure_untouched else None
                for future in as_completed(futures):  # one method's failure keeps the others' rows
                    if future.exception() is None:
                        finished(futures[future], future.result())
                    else:
                        failures[futures[future]] = future.exception()
                untouched = measuring.result() if measuring is not None and not failures else None
        else:
            for method in todo:
                try:
                    finished(method.name, run_method(*args(method), **load))
                except Exception as e:  # reported below, with every other failure
                    failures[method.name] = e
            untouched = untouched_backbone(backbone_dir, capability, **load) if measure_untouched and not failures \
                else None
    if failures:
        _raise_failures(failures)
    return _report(methods, rows, train_data, evaluators, untouched or rows[zero_shot.name], capability)


def _untouched_method(methods: Sequence[Method]) -> Method | None:
    """A zero-shot method on the real backbone: its row measures the untouched backbone itself."""
    return next((m for m in methods if m.train is None and not m.random_init), None)


def _raise_failures(failures: dict[str, BaseException]) -> None:
    for name, error in failures.items():
        logger.error("method %s failed: %s: %s", name, type(error).__name__, error)
    bugs = {n: e for n, e in failures.items() if not isinstance(e, SLQError)}
    if not bugs:
        raise MethodsFailed(failures)
    name, error = next(iter(bugs.items()))
    others = ", ".join(n for n in failures if n != name)
    raise RuntimeError(f"method {name} failed" + (f" (and {others}, logged above)" if others else "")) from error


def _report(methods: Sequence[Method], rows: dict, train_data: ImageTextDataset, evaluators: Sequence[Evaluator],
            untouched: dict, capability: CapabilityProbe | None) -> dict:
    primary, *others = evaluators
    described = primary.describe()
    report = {
        "methods": {m.name: _report_row(rows[m.name], untouched, capability is not None and not m.random_init)
                    for m in methods},
        **{k: v for k, v in described.items() if k != "dataset"},  # retrieval: directions, chance_R@1, ties
        "test": described["dataset"],
        "train": train_data.name,
        "method_settings": {m.name: {"encoder": m.encoder, "random_init": m.random_init,
                                     "train": asdict(m.train) if m.train else None} for m in methods},
        "backbone_sha256": untouched.get("weights_sha256"),  # None: a row kept from a run before hashes
    }
    if capability is not None:
        report["capability"] = {"probe": capability.name, "untouched": untouched.get("capability")}
    if others:  # nested, so no evaluator's name can clash with the report's own keys
        report["evaluations"] = {ev.name: {"dataset": ev.describe()["dataset"], "methods": {
            m.name: rows[m.name]["evaluations"][ev.name] for m in methods
            if ev.name in rows[m.name].get("evaluations", {})}} for ev in others}
    return report


def _report_row(row: dict, untouched: dict, with_change: bool) -> dict:
    """A row as the report shows it: without other evaluators' results (reported by evaluator), with
    its capability's change from the untouched backbone's (`with_change`; not for the random twin,
    whose backbone is not the untouched one)."""
    shown = {k: v for k, v in row.items() if k != "evaluations"}
    if with_change and row.get("capability") is not None and untouched.get("capability") is not None:
        shown["capability_change"] = capability_change(row["capability"], untouched["capability"])
    return shown


def capability_change(scores: dict, untouched: dict) -> dict:
    """Each score minus the untouched backbone's (None where either is undefined)."""
    return {k: None if v is None or untouched.get(k) is None else round(v - untouched[k], 4) for k, v in scores.items()}

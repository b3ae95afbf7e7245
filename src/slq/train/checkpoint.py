"""Resumable checkpoints: trainable tensors, temperature, optimizer state, step and history.

They live in `checkpoint/` inside the output folder, as safetensors + JSON (nothing is ever
unpickled), and a kill at any instant leaves one that resumes. A checkpoint records the run's
identity (`run_identity`): resuming with settings that change what the run learns is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._io import atomic_write
from ..data import ImageRecord, ImageTextDataset, PairRecord
from ..encoder import Encoder
from ..errors import SLQError
from ..loss import ContrastiveLoss
from .batches import BatchPlan
from .config import HOW_NOT_WHAT, TrainConfig, TrainResult

CHECKPOINT_DIR = "checkpoint"


def save_checkpoint(folder: Path, step: int, encoder: Encoder, loss_fn: ContrastiveLoss,
                     optimizer: torch.optim.Optimizer, result: TrainResult, run: dict) -> None:
    """Everything needed to continue bit for bit; a kill at any instant leaves a usable checkpoint.

    The tensors go to a new, step-stamped file first; `state.json`, replaced atomically, is the
    commit point that names it; only then are older tensor files removed.
    """
    tensors = {f"param.{name}": p.detach().cpu() for name, p in encoder.trainable_tensors().items()}
    tensors["log_temperature"] = loss_fn.log_temperature.detach()
    optimizer_state, param_groups = optimizer_tensors(optimizer)
    tensors.update(optimizer_state)
    folder.mkdir(parents=True, exist_ok=True)
    tensors_name = f"state-{step:08d}.safetensors"
    staging = folder / f".{tensors_name}.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging))
    with open(staging, "rb+") as f:
        os.fsync(f.fileno())  # on disk before state.json names it
    os.replace(staging, folder / tensors_name)
    meta = {"step": step, "tensors": tensors_name, "param_groups": param_groups, "history": result.history,
            "train_seconds": result.train_seconds, "run": run}
    atomic_write(folder / "state.json", json.dumps(meta))
    for stale in [*folder.glob("state-*.safetensors"), *folder.glob(".state-*.tmp")]:
        if stale.name != tensors_name:
            stale.unlink(missing_ok=True)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as named tensors (for safetensors) and its parameter groups (for JSON):
    a checkpoint then needs no pickle."""
    state = optimizer.state_dict()
    tensors = {f"optimizer.{index}.{name}": torch.as_tensor(value).cpu()
               for index, entries in state["state"].items() for name, value in entries.items()}
    return tensors, state["param_groups"]


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           param_groups: list[dict]) -> None:
    """The inverse of `optimizer_tensors` (keys other than "optimizer.*" are ignored)."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


OPTIMIZER_FILE = "optimizer.safetensors"


def save_optimizer_state(folder: Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """A recipe's resumable state in `folder`: the optimizer's tensors as safetensors, its groups and
    the run's `state` (step, history, settings) as `state.json`, written last (no pickle)."""
    tensors, groups = optimizer_tensors(optimizer)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / OPTIMIZER_FILE))
    atomic_write(folder / "state.json", json.dumps({**state, "param_groups": groups}))


def load_optimizer_state(folder: Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The inverse of `save_optimizer_state`, given the `state.json` already read from `folder`."""
    load_optimizer_tensors(optimizer, load_file(str(folder / OPTIMIZER_FILE)), state["param_groups"])


def run_identity(config: TrainConfig, encoder: Encoder, dataset: ImageTextDataset, world_size: int) -> dict:
    """What a checkpoint must share with the run resuming it: data order, schedule, model, processes."""
    same = {k: v for k, v in asdict(config).items() if k not in HOW_NOT_WHAT}
    return {**same, "world_size": world_size, "train_images": len(dataset), "train_data": _captions_sha256(dataset),
            "image_fit": encoder.backbone.image_fit,
            "backbone": encoder.backbone.fingerprint()["config_sha256"],
            "trainable": sorted(encoder.trainable_tensors())}


def _captions_sha256(dataset: ImageTextDataset) -> str:
    """What the batches are drawn from: each record's target name and captions, in order (not the
    folder it sits in, so a dataset moved to another disk still resumes)."""
    digest = hashlib.sha256()
    for record in dataset.records:
        if isinstance(record, PairRecord):  # each side's text, image name and instruction
            sides = [record.query, record.positive, *record.negatives]
            digest.update(json.dumps([[x.text, x.image.name if x.image else None, x.instruction] for x in sides]).encode())
            continue
        target = record.image.name if isinstance(record, ImageRecord) else record.text
        digest.update(json.dumps([target, list(record.captions)]).encode())
    return digest.hexdigest()


def load_checkpoint(folder: Path, encoder: Encoder, loss_fn: ContrastiveLoss,
                     optimizer: torch.optim.Optimizer, result: TrainResult, run: dict) -> int:
    try:
        meta = json.loads((folder / "state.json").read_text())
        saved = meta["run"]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise SLQError(f"{folder}: cannot resume from this checkpoint: {type(e).__name__}: {e}") from None
    defaults = {**asdict(TrainConfig()), "image_fit": "processor"}  # what a setting added since meant then
    differ = [f"{k} {saved.get(k, defaults.get(k))!r} -> {v!r}" for k, v in run.items()
              if (k in saved or k in defaults) and saved.get(k, defaults.get(k)) != v]
    if differ:
        raise SLQError(f"{folder}: resuming needs the checkpointed run's settings; these differ: {'; '.join(differ)}")
    try:
        tensors = load_file(str(folder / meta["tensors"]))
        with torch.no_grad():
            for name, param in encoder.trainable_tensors().items():
                param.copy_(tensors.pop(f"param.{name}"))
            loss_fn.log_temperature.copy_(tensors.pop("log_temperature"))
        load_optimizer_tensors(optimizer, tensors, meta["param_groups"])
        result.history, result.train_seconds = meta["history"], meta["train_seconds"]
        return int(meta["step"])
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as e:
        raise SLQError(f"{folder}: cannot resume from this checkpoint: {type(e).__name__}: {e}") from None



def checkpoint_due(done: int, plan: BatchPlan, config: TrainConfig, last_save: float) -> bool:
    """After `done` steps: at the end, at an epoch's end, every `save_every` steps, or `save_minutes` after
    the last checkpoint. Checkpoints on by default, so a run killed with default settings loses at most
    an epoch or a few minutes of training."""
    return (done == plan.total_steps
            or (config.save_epochs and done % plan.steps_per_epoch == 0)
            or bool(config.save_every and done % config.save_every == 0)
            or bool(config.save_minutes and time.monotonic() - last_save >= 60 * config.save_minutes))

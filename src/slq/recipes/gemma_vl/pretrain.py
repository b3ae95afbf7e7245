"""Pretraining slq-gemma-vl's vision tower and projector on plain captions, the language model frozen.

The language model is Gemma 3 270M, as its package ships it; it never changes. Only the vision tower
and the projector learn, from the shapes world's *plain* captions (what objects, colours, sizes and
places an image shows): no knowledge clue is ever beside an image or in a training text, so whatever
a caption like "a shape the colour of a ripe banana" retrieves later, Gemma's own pretraining put
there. The loss is next-token prediction on the caption after the image's prompt (the prompt slq
builds for an image, so the assistant opener is where the model has learnt to say what it sees);
the LM head runs only on the caption's positions, its 262K-word softmax being most of the cost.

Every batch is a pure function of (seed, step) and the checkpoint holds only what trains (a few MB,
safetensors and JSON), so a killed run resumes where it stopped and a CPU run is reproducible bit for
bit for a given thread count.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..._io import atomic_write, check_settings, save_folder, setting
from ...errors import SettingError, SLQError
from ...train import load_optimizer_state, save_optimizer_state
from ..pretrain.loop import load_images, load_world_text
from ..pretrain.tasks import IGNORE, Collator, GenerativeData
from .assemble import SETTINGS_FILE, VISION_FILE, VisionSettings, build_model, language_model_sha256, vision_tensors

logger = logging.getLogger("slq")

PLAIN_TASKS = ("caption", "listing")  # the world's captions, and every object listed: nothing but what is seen


@dataclass(frozen=True)
class GemmaVLConfig:
    """Settings of one slq-gemma-vl pretraining run; stored beside the weights."""

    seed: int = setting(0, "vision initialisation and every batch")
    steps: int = setting(1800, "optimizer steps (about 65 minutes on 2 idle cores)", minimum=1)
    batch_size: int = setting(16, "captioned images per step", minimum=1)
    lr: float = setting(2e-3, "peak AdamW learning rate (cosine decay to a tenth after the warmup)", positive=True)
    warmup_steps: int = setting(20, "linear warmup steps")
    weight_decay: float = setting(0.05, "AdamW weight decay")
    grad_clip: float = setting(1.0, "clip the gradient's global norm to this")
    mixture: dict = setting(None, f"task -> share of examples, over {', '.join(PLAIN_TASKS)} only (plain captions)",
                            factory=lambda: {"caption": 0.5, "listing": 0.5})
    save_every: int = setting(10, "steps between resumable checkpoints (0: none)")
    threads: int = setting(2, "torch threads: a run is reproducible bit for bit for a given count", minimum=1)
    vision: VisionSettings = setting(None, "the vision tower and projector", factory=VisionSettings)

    def __post_init__(self):
        check_settings(self)
        if not (isinstance(self.mixture, dict) and self.mixture and set(self.mixture) <= set(PLAIN_TASKS)
                and all(v >= 0 for v in self.mixture.values()) and sum(self.mixture.values()) > 0):
            raise SettingError("mixture", self.mixture, f"must map some of {', '.join(PLAIN_TASKS)} to shares, "
                                                        "not all zero (no knowledge task: the tower sees plain captions)")
        if isinstance(self.vision, dict):
            object.__setattr__(self, "vision", VisionSettings(**{k: tuple(v) if isinstance(v, list) else v
                                                                 for k, v in self.vision.items()}))


def _lr(step: int, config: GemmaVLConfig) -> float:
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    return config.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps)))


def caption_loss(model, batch: dict) -> torch.Tensor:
    """Next-token loss on the labelled positions only: the LM head runs on those rows, not on the
    whole (B, L, 262K) grid."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs).last_hidden_state  # (B, L, d)
    targets = labels[:, 1:]  # (B, L-1): position t predicts token t+1
    keep = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])  # (n, V)
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


@dataclass
class GemmaVLResult:
    steps: int
    seconds: float
    history: list[dict]  # every 5th step: step, loss, lr


def pretrain_gemma_vl(out_dir: str | os.PathLike, world_dir: str | os.PathLike, lm_dir: str | os.PathLike,
                      config: GemmaVLConfig | None = None, *, work_dir: str | os.PathLike | None = None,
                      resume: bool = True, progress: bool | None = None) -> GemmaVLResult:
    """Train the vision tower and projector on the world in `world_dir` with the language model in
    `lm_dir` frozen; write `vision.safetensors` + `gemma-vl.json` to `out_dir`.

    `work_dir` (default: `out_dir` + ".work") holds the resumable checkpoint; with `resume` a run
    continues from it with exactly the batches it would have seen.
    """
    config = config or GemmaVLConfig()
    out, world = Path(out_dir), Path(world_dir)
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain(out, world, Path(lm_dir), work, config, resume, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _trainable(model) -> list[torch.nn.Parameter]:
    model.requires_grad_(False)
    params = []
    for name, p in model.named_parameters():
        if name.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
            p.requires_grad_(True)
            params.append(p)
    return params


def _pretrain(out: Path, world: Path, lm_dir: Path, work: Path, config: GemmaVLConfig, resume: bool,
              progress: bool | None) -> GemmaVLResult:
    ckpt = work / "checkpoint"
    saved_config = json.loads(json.dumps(asdict(config)))
    vision = None
    start, history = 0, []
    state = None
    if resume and (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        if state["config"] != saved_config:
            raise SLQError(f"{ckpt}: checkpoint of a run with other settings; use another work folder or resume=False")
        vision = load_file(str(ckpt / VISION_FILE))
        start, history = state["step"], state["history"]
    model, tokenizer, image_processor = build_model(lm_dir, config.vision, seed=config.seed, vision=vision)
    lm_sha = language_model_sha256(model)
    tokenizer.padding_side = "right"
    records, knowledge, held_out = load_world_text(world)
    data = GenerativeData(records, knowledge, held_out, config.mixture)
    collate = Collator(model, tokenizer, image_processor, load_images(world, records))
    optimizer = torch.optim.AdamW(_trainable(model), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    if state is not None:
        load_optimizer_state(ckpt, optimizer, state)
        logger.info("resuming slq-gemma-vl pretraining at step %d", start)
    model.model.vision_tower.train()
    model.model.multi_modal_projector.train()
    began = time.perf_counter()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="slq-gemma-vl",
               disable=None if progress is None else not progress, mininterval=2.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, config)
        loss = caption_loss(model, collate(data.batch(config.seed, step, config.batch_size)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], config.grad_clip)
        optimizer.step()
        if step % 5 == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4), "lr": optimizer.param_groups[0]["lr"]})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if config.save_every and done % config.save_every == 0 and done < config.steps:
            _save(ckpt, model, optimizer, {"step": done, "history": history, "config": saved_config})
    bar.close()
    if language_model_sha256(model) != lm_sha:
        raise SLQError("the language model changed during pretraining; it must stay frozen")
    result = GemmaVLResult(config.steps, time.perf_counter() - began, history)
    write_vision(out, model, config, {"language_model_sha256": lm_sha, "history": history})
    return result


def _save(folder: Path, model, optimizer: torch.optim.Optimizer, state: dict) -> None:
    def write(d: Path) -> None:
        save_file(vision_tensors(model), str(d / VISION_FILE))
        save_optimizer_state(d, optimizer, state)

    save_folder(folder, write)


def write_vision(out: Path, model, config: GemmaVLConfig, extra: dict) -> Path:
    """`vision.safetensors` (the tower and projector, float32) and `gemma-vl.json` (their settings,
    the run's, and the language model's hash): all slq-gemma-vl ships."""
    def write(d: Path) -> None:
        save_file(vision_tensors(model), str(d / VISION_FILE), metadata={"format": "pt"})
        atomic_write(d / SETTINGS_FILE, json.dumps({"vision": asdict(config.vision), "pretraining": asdict(config),
                                                    **extra}, indent=2) + "\n")

    save_folder(out, write)
    return out

"""The pretraining loop of slq-tiny-vl: next-token prediction on the shapes world, resumable.

Every batch is a pure function of (seed, step), so a run is deterministic on the CPU (for a given
thread count) and a resumed run sees exactly the batches it would have seen. Checkpoints are
safetensors and JSON, as `slq.train` writes them: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..._io import save_folder
from ...data.shapes import held_out_combos
from ...errors import SLQError
from ...tiny import build_tiny_model
from ...train import load_optimizer_state, save_optimizer_state
from .config import VOCAB_SIZE, PretrainConfig, _stage_at, image_processor_overrides, mixture_at, model_overrides
from .tasks import Collator, GenerativeData, _rng, vqa_pairs

logger = logging.getLogger("slq")

def _lr_factor(step: int, config: PretrainConfig) -> float:
    """Cosine decay to `min_lr_ratio`, times a linear warmup at the start *of every stage*: when the
    tasks change, AdamW's second moments still describe the old ones (tokens never seen as targets
    have tiny ones), so full-size steps would wreck what the last stage taught."""
    since = _stage_at(config, step)[1]
    warm = min(1.0, (since + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    progress = step / max(1, config.steps)
    return warm * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _param_groups(model, config: PretrainConfig) -> list[dict]:
    """The language model and the vision tower as two AdamW groups (own lr ratio, own weight decay)."""
    visual = [p for n, p in model.named_parameters() if ".visual." in f".{n}"]
    ids = {id(p) for p in visual}
    rest = [p for p in model.parameters() if id(p) not in ids]
    assert visual and rest, "slq-tiny-vl must have a vision tower (model.visual) and a language model"
    return [{"params": rest, "weight_decay": config.weight_decay, "lr_ratio": 1.0, "vision": False},
            {"params": visual, "weight_decay": config.vision_weight_decay, "lr_ratio": config.vision_lr_ratio,
             "vision": True}]


def load_world_text(world_dir: Path) -> tuple[list[dict], list[str], frozenset]:
    """Training records, knowledge sentences and held-out pairs of a world folder."""
    records = [json.loads(line) for line in (world_dir / "train.jsonl").read_text().splitlines() if line.strip()]
    seed = json.loads((world_dir / "world.json").read_text())["seed"]
    knowledge = [s for s in (world_dir / "knowledge.txt").read_text().splitlines() if s.strip()]
    return records, knowledge, held_out_combos(seed)


def load_images(world_dir: Path, records: Sequence[dict]) -> list[Image.Image]:
    images = []
    for r in records:
        with Image.open(world_dir / r["image"]) as im:
            images.append(im.convert("RGB"))
    return images


def tokenizer_corpus(world_dir: str | os.PathLike) -> list[str]:
    """Texts the tokenizer learns from: the world's training captions, questions, answers, facts."""
    world_dir = Path(world_dir)
    records, knowledge, held_out = load_world_text(world_dir)
    texts = list(knowledge)
    for i, r in enumerate(records):
        texts += r["captions"]
        texts += [f"{q} {a}" for q, a in vqa_pairs(r["objects"], held_out, _rng("corpus", i))]
    return texts


def build_initial_model(out_dir: str | os.PathLike, world_dir: str | os.PathLike, *, seed: int,
                        image_side: int = 64, image_mean: Sequence[float] | None = None,
                        image_std: Sequence[float] | None = None, size: dict | None = None) -> Path:
    """The randomly initialised slq-tiny-vl, with a tokenizer trained on the world's texts; `size`:
    `model_overrides`' arguments, for a bigger model of the same kind."""
    return build_tiny_model("qwen2_vl", out_dir, seed=seed, vocab_size=VOCAB_SIZE,
                            config_overrides=model_overrides(**(size or {})),
                            image_processor_overrides=image_processor_overrides(image_side, image_mean, image_std),
                            corpus=tokenizer_corpus(world_dir), overwrite=True)


@dataclass
class PretrainResult:
    steps: int
    seconds: float
    history: list[dict]  # every 10th step: step, loss, lr


def pretrain(out_dir: str | os.PathLike, world_dir: str | os.PathLike, config: PretrainConfig | None = None, *,
             work_dir: str | os.PathLike | None = None, resume: bool = True, progress: bool | None = None,
             device: str | torch.device = "cpu") -> PretrainResult:
    """Pretrain slq-tiny-vl on the world in `world_dir` and write the checkpoint folder `out_dir`.

    `work_dir` (default: `out_dir` + ".work") holds the initial model and the resumable checkpoint;
    with `resume`, a run continues from it with exactly the batches it would have seen. On the CPU
    the weights are reproducible bit for bit (for a given thread count); another `device` (a GPU, to
    compare recipes quickly: `scripts/pretrain_sweep.py`) runs the same batches in its own arithmetic.
    """
    config = config or PretrainConfig()
    out, world = Path(out_dir), Path(world_dir)
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")
    device = torch.device(device)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(device.type == "cpu")
    try:
        return _pretrain(out, world, work, config, resume, progress, device)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _pretrain(out: Path, world: Path, work: Path, config: PretrainConfig, resume: bool, progress: bool | None,
              device: torch.device) -> PretrainResult:
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoTokenizer,
    )

    torch.manual_seed(config.seed)
    init, ckpt = work / "init", work / "checkpoint"
    if not (init / "config.json").is_file():
        build_initial_model(init, world, seed=config.seed, image_side=config.image_side,
                            image_mean=config.image_mean, image_std=config.image_std,
                            size={"hidden_size": config.hidden_size, "num_layers": config.num_layers,
                                  "intermediate_size": config.intermediate_size})
    start = 0
    source = ckpt if resume and (ckpt / "state.json").is_file() else init
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(init)
    tokenizer.padding_side = "right"
    image_processor = AutoImageProcessor.from_pretrained(init)
    records, knowledge, held_out = load_world_text(world)
    images = load_images(world, records)
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())  # incl. image tokens
    data = GenerativeData(records, knowledge, held_out, config.mixture,
                          noise_ids=[i for i in range(len(tokenizer)) if i not in special],
                          noise_prob=config.noise_prob, noise_rate=config.noise_rate)
    collate = Collator(model, tokenizer, image_processor, images)
    if source is init and config.merger_init_scale != 1.0:
        with torch.no_grad():
            model.model.visual.merger.mlp[-1].weight.mul_(config.merger_init_scale)
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, betas=(0.9, 0.98))
    history: list[dict] = []
    if source is ckpt:
        state = json.loads((ckpt / "state.json").read_text())
        if state["config"] != json.loads(json.dumps(asdict(config))):
            raise SLQError(f"{ckpt}: checkpoint of a run with other settings ({state['config']}); "
                           "use another work folder or resume=False")
        if state.get("device", "cpu") != device.type:  # one run, one arithmetic: no CPU run that began on a GPU
            raise SLQError(f"{ckpt}: checkpoint of a run on {state.get('device', 'cpu')}, not {device.type}; "
                           "use another work folder or resume=False")
        start, history = state["step"], state["history"]
        load_optimizer_state(ckpt, optimizer, state)
        logger.info("resuming pretraining at step %d", start)
    model.train()
    began = time.perf_counter()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="pretraining",
               disable=None if progress is None else not progress, mininterval=2.0)
    for step in bar:
        for group in optimizer.param_groups:
            frozen = group["vision"] and step < config.vision_freeze_steps
            group["lr"] = 0.0 if frozen else config.lr * group["lr_ratio"] * _lr_factor(step, config)
        examples = data.batch(config.seed, step, config.batch_size, mixture_at(config, step))
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(examples).items()}
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:  # per group: the tower's large early gradients must not
            torch.nn.utils.clip_grad_norm_(group["params"], config.grad_clip)  # shrink the LM's steps
        optimizer.step()
        if step % 10 == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4), "lr": optimizer.param_groups[0]["lr"]})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if config.save_every and done % config.save_every == 0 and done < config.steps:
            state = {"step": done, "history": history, "device": device.type, "config": asdict(config)}
            save_folder(ckpt, model.save_pretrained, lambda d, state=state: save_optimizer_state(d, optimizer, state))
    bar.close()
    seconds = time.perf_counter() - began
    model.eval()
    tokenizer.padding_side = "left"  # as slq and generation want it
    save_folder(out, model.save_pretrained, tokenizer.save_pretrained, image_processor.save_pretrained)
    return PretrainResult(config.steps, seconds, history)

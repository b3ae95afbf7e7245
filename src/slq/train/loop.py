"""The training loop: symmetric InfoNCE, AdamW, warmup then linear decay, chunked steps.

For SLQ only the queries and the temperature train (baselines bring their own trainable tensors).
Batches come from `BatchPlan`, a pure function of (seed, step), so a run is deterministic on the
CPU and a run resumed from a checkpoint continues with exactly the batches it would have seen.
Checkpoints are on by default (each epoch's end and every ten minutes of training), because long
runs on shared GPUs get preempted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import ImageTextDataset, PairDataset
from ..distributed import distributed_context, rank0_value, sync_gradients
from ..encoder import Encoder
from ..errors import SettingError, SLQError
from ..loss import ContrastiveLoss
from ..prefetch import prebuilt, training_batches
from ..prompt_cache import PromptCache
from .batches import BatchPlan
from .checkpoint import CHECKPOINT_DIR, checkpoint_due, load_checkpoint, run_identity, save_checkpoint
from .config import TrainConfig, TrainResult

logger = logging.getLogger("slq")


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1 over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))



def make_optimizer(encoder: Encoder, loss_fn: ContrastiveLoss, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over what the encoder trains (with weight decay) and the temperature (without)."""
    return torch.optim.AdamW(
        [{"params": list(encoder.trainable_tensors().values()), "weight_decay": config.weight_decay},
         {"params": [loss_fn.log_temperature], "weight_decay": 0.0}],
        lr=config.lr,
    )


def train_step(encoder: Encoder, loss_fn: ContrastiveLoss, optimizer: torch.optim.Optimizer, texts: list,
               targets: list, engine: str = "cached", cache: PromptCache | None = None, *, chunk_size: int = 0,
               clip_grad_norm: float = 0.0, negatives: list | None = None,
               labels: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """One optimisation step on B aligned (query, target) pairs; returns the loss.

    Queries are captions or `Input`s; targets are image records (or images), `TextRecord`s for a
    text-pair dataset, or `Input`s. `negatives` (B·K, any of those kinds) join every query's
    candidates; `labels` (`BatchPlan.labels`) keep equal targets from counting as each other's
    negatives. With a `cache`, prompts already run in an earlier epoch are not run again (SLQ,
    cached engine). `chunk_size` bounds memory by the chunk (see `contrastive_backward`).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = contrastive_backward(encoder, loss_fn, texts, targets, engine, cache, chunk_size, negatives, labels)
    trainable = list(encoder.trainable_tensors().values())
    if loss_fn.world_size > 1:
        sync_gradients(trainable, loss_fn.log_temperature, loss_fn.world_size)
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_([*trainable, loss_fn.log_temperature], clip_grad_norm)
    optimizer.step()
    return loss.item()


def contrastive_backward(encoder: Encoder, loss_fn: ContrastiveLoss, texts: list, targets: list,
                         engine: str = "cached", cache: PromptCache | None = None, chunk_size: int = 0,
                         negatives: list | None = None, labels: tuple[torch.Tensor, torch.Tensor] | None = None,
                         ) -> torch.Tensor:
    """The batch's loss, its gradient accumulated into what trains (and the temperature).

    With `chunk_size` smaller than the batch, the step runs in chunks, as GradCache does: every
    chunk's embeddings are computed without grad, the loss and its gradient with respect to the
    embeddings use the whole batch, then each chunk's embeddings are recomputed with grad and
    back-propagated with their slice of that gradient. Activations are bounded by the chunk, and the
    gradients equal the whole batch's. What `prepare_*` returns is computed once, held for the whole
    batch and reused by both passes: for SLQ the prompts' keys/values, so the recomputation is a pass
    of the queries only, never a second forward; for LoRA and full fine-tuning it is the full forward
    again. Hard `negatives` are a third side, chunked the same way.
    """
    sides = [texts, targets] + ([negatives] if negatives else [])
    named = {"labels": labels[0], "negative_labels": labels[1]} if labels is not None else {}
    if not chunk_size or all(chunk_size >= len(side) for side in sides):
        loss = loss_fn(*(encoder.embed_prepared(encoder.prepare_targets(side, engine, cache), engine) for side in sides),
                       **named)
        loss.backward()
        return loss.detach()
    chunks = [[(span, encoder.prepare_targets(side[span], engine, cache))
               for span in (slice(start, start + chunk_size) for start in range(0, len(side), chunk_size))]
              for side in sides]
    with torch.no_grad():  # (B, d) per side; (B·K, d) for the negatives
        embeddings = [torch.cat([encoder.embed_prepared(part, engine) for _, part in side]).requires_grad_()
                      for side in chunks]
    loss = loss_fn(*embeddings, **named)
    loss.backward()  # the temperature's gradient, and the loss's gradient at every embedding
    for side, embedded in zip(chunks, embeddings):
        for span, part in side:
            encoder.embed_prepared(part, engine).backward(embedded.grad[span])
    return loss.detach()


def train(encoder: Encoder, dataset: ImageTextDataset | PairDataset, config: TrainConfig, *,
          checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool | None = None,
          on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Train `encoder`'s trainable tensors in place on `dataset`; returns the per-step history.

    The encoder is an `SLQRetriever` (the queries train) or a baseline (LoRA, full fine-tuning).
    """
    rank, world_size = distributed_context()
    plan = BatchPlan(dataset, config, rank, world_size)
    warmup = min(100, plan.total_steps // 10) if config.warmup_steps is None else config.warmup_steps
    if warmup > plan.total_steps:
        raise SettingError("warmup_steps", warmup, f"is longer than the run ({plan.total_steps} steps): the "
                           "learning rate would never reach its peak")
    queries = getattr(encoder, "queries", None)
    if queries is not None and queries.num_queries != config.num_queries:
        raise SettingError("num_queries", config.num_queries, f"the retriever has {queries.num_queries} queries")
    run = run_identity(config, encoder, dataset, world_size)
    if config.compile:
        encoder.backbone.compile()
    loss_fn = ContrastiveLoss(config.temperature, rank=rank, world_size=world_size)
    optimizer = make_optimizer(encoder, loss_fn, config)
    result = TrainResult(steps=plan.total_steps)
    cache = None
    if config.engine == "cached" and config.keeps_prompts:
        dtype = getattr(torch, config.prompt_cache_dtype) if config.prompt_cache_dtype else None
        cache = PromptCache(config.prompt_cache_mb, dtype, disk_mb=config.prompt_cache_disk_mb,
                            device_mb=config.prompt_cache_device_mb)
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_DIR if checkpoint_dir is not None else None
    start = 0
    if resume:
        if checkpoint is None:
            raise SettingError("resume", rule="needs a checkpoint folder to resume from")
        found = (checkpoint / "state.json").is_file()
        if rank0_value(found) and not found:  # process 0 resumes: every process must, from the same state
            raise SLQError(f"{checkpoint}: process {rank} finds no checkpoint where process 0 resumes from one; "
                           "the output folder must be shared by every process")
        if rank0_value(found):
            start = load_checkpoint(checkpoint, encoder, loss_fn, optimizer, result, run)
            logger.info("resuming at step %d of %d from %s", start, plan.total_steps, checkpoint)
        elif rank == 0:  # a job script may always pass resume: the first attempt has nothing to resume
            logger.info("nothing to resume in %s: starting afresh", checkpoint_dir)
    bar = tqdm(total=plan.total_steps, initial=start, desc="training", unit="step",
               disable=(None if progress is None else not progress) if rank == 0 else True)
    last_save = time.monotonic()
    prepared = training_batches(encoder, plan, range(start, plan.total_steps), chunk_size=config.chunk_size,
                                engine=config.engine, cache=cache, workers=config.workers, prefetch=config.prefetch)
    for step in range(start, plan.total_steps):
        began = time.perf_counter()
        batches = next(prepared)  # the step's inputs, prepared ahead (or now, without workers)
        ready = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, warmup, plan.total_steps)
        records, texts = plan(step)
        with prebuilt(encoder, batches):
            loss = train_step(encoder, loss_fn, optimizer, texts, records, config.engine, cache,
                              chunk_size=config.chunk_size, clip_grad_norm=config.clip_grad_norm,
                              negatives=plan.negatives(step), labels=plan.labels(step))
        done = time.perf_counter()
        result.train_seconds += done - began
        entry = {"step": step + 1, "loss": loss, "temperature": loss_fn.temperature.item(),
                 "lr": optimizer.param_groups[0]["lr"]}
        result.history.append(entry)
        # waiting for inputs (prep) against the model's time: a large prep means input is the bottleneck
        bar.set_postfix(loss=f"{loss:.3f}", t=f"{entry['temperature']:.3f}", prep=f"{ready - began:.2f}s",
                        model=f"{done - ready:.2f}s")
        bar.update(1)
        if on_step is not None:
            on_step(entry)
        if checkpoint is not None and rank == 0 and checkpoint_due(step + 1, plan, config, last_save):
            save_checkpoint(checkpoint, step + 1, encoder, loss_fn, optimizer, result, run)
            last_save = time.monotonic()
    prepared.close()  # stops the worker processes
    bar.close()
    if cache is not None:
        result.prompt_cache = cache.stats()
    if hasattr(encoder, "temperature"):
        encoder.temperature = loss_fn.temperature.item()
    return result

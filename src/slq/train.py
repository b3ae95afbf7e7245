"""Training the latent queries: symmetric InfoNCE, AdamW, warmup then linear decay.

For SLQ only the queries and the temperature train (baselines bring their own trainable tensors).
Every batch is a pure function of (seed, step): the epoch's order comes from a generator seeded
by (seed, epoch) and each record's caption from one seeded by (seed, step), both through
`slq._io.seeded_generator` (SHA-256, the same on every machine). So a run is deterministic on
the CPU, and a run resumed from a checkpoint continues with exactly the batches it would have seen.

Checkpoints (trainable tensors, temperature, optimizer state, step, history) live in `checkpoint/`
inside the output folder, as safetensors + JSON (nothing is ever unpickled), and a kill at any
instant leaves one that resumes. They are on by default (each epoch's end and every ten minutes of
training), because long runs on shared GPUs get preempted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ._io import atomic_write, seeded_generator, setting
from .data import ImageRecord, ImageTextDataset, PairDataset, PairRecord
from .distributed import distributed_context, rank0_value, sync_gradients
from .encoder import Encoder
from .errors import SettingError, SLQError
from .loss import MAX_TEMPERATURE, MIN_TEMPERATURE, ContrastiveLoss
from .prompt_cache import PromptCache
from .queries import ENGINES

logger = logging.getLogger("slq")

CHECKPOINT_DIR = "checkpoint"
PAIRS = ("one", "all")  # an epoch: every image once (one random caption), or every (image, caption) pair
PROMPT_CACHE_DTYPES = (None, "float16", "bfloat16")  # storage of kept prompt keys/values (None: the model's)


@dataclass
class TrainConfig:
    """Settings of one training run; saved with the adapter so the run can be told apart."""

    num_queries: int = setting(20, "number of shared latent queries N_q")
    epochs: int = setting(1, "passes over the training set")
    batch_size: int = setting(32, "caption-target pairs per step (per process); the other pairs are the negatives")
    lr: float = setting(5e-4, "peak AdamW learning rate")
    weight_decay: float = setting(0.0, "AdamW weight decay on what trains (not the temperature)")
    warmup_steps: int | None = setting(None, "linear warmup steps, then linear decay to 0 (default: min(100, a "
                                             "tenth of the run))")
    temperature: float = setting(0.07, "initial InfoNCE temperature (learned)")
    seed: int = setting(0, "seed of the data order, the caption choice and the query initialisation")
    pairs: str = setting("one", "what an epoch visits: one: every image once, with one of its captions drawn at "
                                "random; all: every (image, caption) pair once, as the paper's reference code "
                                "trains (an epoch is ~5 per image on COCO; an image drawn twice into one batch is "
                                "then its own negative, as there)", choices=PAIRS)
    hard_negatives: int = setting(0, "pair data only: each pair brings this many of its record's \"negatives\" "
                                     "(drawn at random each step) into the loss, as extra candidates for every "
                                     "query beside the in-batch ones (0: in-batch negatives only)")
    chunk_size: int = setting(0, "run each batch in chunks of this many pairs: activations are bounded by the "
                                 "chunk while the loss and gradients stay those of the whole batch (SLQ: the "
                                 "batch's prompt keys/values are kept and the queries run twice; LoRA/full: "
                                 "GradCache, a second forward); 0: the whole batch at once")
    clip_grad_norm: float = setting(0.0, "clip the gradient's global norm to this before each step (the reference "
                                         "code: 1.0; 0: off)")
    save_every: int = setting(0, "also write a resumable checkpoint into OUT/checkpoint every N steps (0: off)")
    save_minutes: float = setting(10.0, "write a resumable checkpoint into OUT/checkpoint after this many minutes "
                                        "of training since the last one, so a killed run loses at most that "
                                        "(0: off)")
    save_epochs: bool = setting(True, "write a resumable checkpoint at the end of every epoch (default: on)")
    engine: str = setting("cached", "cached: the prompt runs once without grad and the backward pass covers only "
                                    "the queries; naive: one pass with grad over the whole sequence (for checking)",
                          choices=ENGINES)
    compile: bool = setting(False, "compile the language model with torch.compile (dynamic shapes) before "
                                   "training: on a GPU the query pass's many small kernels fuse (an H200 ran a "
                                   "later-epoch step in 0.11 s instead of 0.17 s), after a first minute or so of "
                                   "compiling (default: off)")
    prompt_cache_device_mb: float = setting(0.0, "with the cached engine, keep each prompt's keys/values across "
                                                 "epochs in up to this many MB of the model's GPU memory first, "
                                                 "before the RAM and disk budgets (0: off)")
    prompt_cache_mb: float = setting(0.0, "with the cached engine, keep each prompt's keys/values across epochs in "
                                          "up to this many MB of RAM, so later epochs run only the queries (0: off)")
    prompt_cache_disk_mb: float = setting(0.0, "keep prompts beyond the RAM budget in a temporary file of up to this "
                                               "many MB, read back as a memory map (in $TMPDIR; removed when "
                                               "training ends; 0: off)")
    prompt_cache_dtype: str | None = setting(None, "store kept keys/values in this dtype, halving a float32 model's "
                                                   "footprint (default: the model's dtype)",
                                             choices=PROMPT_CACHE_DTYPES[1:])

    def __post_init__(self):
        def need(ok: bool, name: str, rule: str):
            if not ok:
                raise SettingError(name, getattr(self, name), rule)

        need(_is_int(self.num_queries) and self.num_queries >= 1, "num_queries", "must be an integer >= 1")
        need(_is_int(self.epochs) and self.epochs >= 1, "epochs", "must be an integer >= 1")
        need(_is_int(self.batch_size) and self.batch_size >= 2, "batch_size",
             "must be an integer >= 2 (in-batch negatives need company)")
        need(_is_number(self.lr) and self.lr > 0, "lr", "must be a positive number")
        need(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.warmup_steps is None or (_is_int(self.warmup_steps) and self.warmup_steps >= 0),
             "warmup_steps", "must be an integer >= 0")
        need(_is_number(self.temperature) and MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE, "temperature",
             f"must lie in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        need(self.pairs in PAIRS, "pairs", f"must be one of {', '.join(PAIRS)}")
        need(_is_int(self.hard_negatives) and self.hard_negatives >= 0, "hard_negatives", "must be an integer >= 0")
        need(_is_int(self.chunk_size) and self.chunk_size >= 0, "chunk_size", "must be an integer >= 0")
        need(_is_number(self.clip_grad_norm) and self.clip_grad_norm >= 0, "clip_grad_norm", "must be >= 0")
        need(_is_int(self.save_every) and self.save_every >= 0, "save_every", "must be an integer >= 0")
        need(_is_number(self.save_minutes) and self.save_minutes >= 0, "save_minutes", "must be >= 0")
        need(isinstance(self.save_epochs, bool), "save_epochs", "must be true or false")
        need(isinstance(self.compile, bool), "compile", "must be true or false")
        need(self.engine in ENGINES, "engine", f"must be one of {', '.join(ENGINES)}")
        need(_is_number(self.prompt_cache_mb) and self.prompt_cache_mb >= 0, "prompt_cache_mb", "must be >= 0")
        need(_is_number(self.prompt_cache_disk_mb) and self.prompt_cache_disk_mb >= 0, "prompt_cache_disk_mb",
             "must be >= 0")
        need(self.prompt_cache_dtype in PROMPT_CACHE_DTYPES, "prompt_cache_dtype",
             f"must be one of {', '.join(d for d in PROMPT_CACHE_DTYPES if d)}")
        need(_is_number(self.prompt_cache_device_mb) and self.prompt_cache_device_mb >= 0, "prompt_cache_device_mb",
             "must be >= 0")
        need(self.prompt_cache_dtype is None or self.keeps_prompts, "prompt_cache_dtype",
             "needs a prompt cache: prompt_cache_device_mb, prompt_cache_mb or prompt_cache_disk_mb")

    @property
    def keeps_prompts(self) -> bool:
        """Whether prompts' keys/values are kept across epochs (a prompt cache with a budget)."""
        return self.prompt_cache_device_mb > 0 or self.prompt_cache_mb > 0 or self.prompt_cache_disk_mb > 0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one entry per step: step, loss, temperature, lr
    train_seconds: float = 0.0
    steps: int = 0
    prompt_cache: dict | None = None  # size and hit counts when prompts were kept across epochs


class BatchPlan:
    """Which images and which of their captions make up each step, for this process.

    An epoch visits every image once with one caption drawn at random (`pairs="one"`), or every
    (image, caption) pair once (`pairs="all"`). A step's global batch is `batch_size × world_size`
    pairs; process `rank` takes its slice, so W processes see exactly the pairs one process with the
    global batch would.
    """

    def __init__(self, dataset: ImageTextDataset | PairDataset, config: TrainConfig, rank: int = 0,
                 world_size: int = 1):
        self.global_batch = config.batch_size * world_size
        pair_data = isinstance(dataset, PairDataset)
        _check_hard_negatives(dataset, config.hard_negatives)
        self.units = [(i, c) for i, r in enumerate(dataset.records) for c in range(len(r.captions))] \
            if config.pairs == "all" and not pair_data else None  # (record, caption) pairs, in a fixed order
        size = len(self.units) if self.units is not None else len(dataset)
        if self.global_batch > size:
            across = f" once each of {world_size} processes takes a batch" if world_size > 1 else ""
            what = f"{size} (image, caption) pairs" if self.units is not None else f"{size} records"
            raise SettingError("batch_size", config.batch_size, f"is larger than the training set ({what} in "
                               f"{dataset.name}){across}")
        self.dataset, self.config, self.rank, self.size = dataset, config, rank, size
        self.steps_per_epoch = size // self.global_batch  # drop the ragged tail: equal negatives per step
        self.total_steps = self.steps_per_epoch * config.epochs

    def __call__(self, step: int) -> tuple[list, list]:
        """This process's (targets, queries) of `step`: records and captions, or, for pair data,
        the pairs' positives and queries (`Input`s)."""
        picked, (epoch, within) = self._picked(step), divmod(step, self.steps_per_epoch)
        if isinstance(self.dataset, PairDataset):
            pairs = [self.dataset.records[i] for i in picked[self._mine()]]
            return [p.positive for p in pairs], [p.query for p in pairs]
        if self.units is not None:
            records = [self.dataset.records[self.units[u][0]] for u in picked]
            texts = [r.captions[self.units[u][1]] for r, u in zip(records, picked)]
        else:
            choice = seeded_generator("slq-train", self.config.seed, epoch, within, "captions")
            records = [self.dataset.records[i] for i in picked]
            texts = [r.captions[int(torch.randint(len(r.captions), (1,), generator=choice))] for r in records]
        return records[self._mine()], texts[self._mine()]

    def negatives(self, step: int) -> list:
        """`hard_negatives` negatives of each of this process's pairs at `step`, pair by pair (B·K
        inputs; empty when off): drawn without replacement from the record's, seeded by (seed, step)."""
        return [n for pair in self._negatives(step)[self._mine()] for n in pair]

    def labels(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For pair data: what each positive and each hard negative of the whole global batch is,
        as integers (equal inputs, equal labels), so the loss never counts a pair's own positive,
        met again elsewhere in the batch, as its negative; None for captioned data."""
        if not isinstance(self.dataset, PairDataset):
            return None
        names: dict = {}

        def label(x) -> int:
            key = x.key() if x.key() is not None else ("pixels", id(x.image))
            return names.setdefault(key, len(names))

        positives = [label(self.dataset.records[i].positive) for i in self._picked(step)]
        negatives = [label(n) for pair in self._negatives(step) for n in pair]
        return torch.tensor(positives), torch.tensor(negatives, dtype=torch.long)

    def _negatives(self, step: int) -> list[list]:
        """Each global pair's drawn negatives (drawn for the whole global batch: the same on every process)."""
        k = self.config.hard_negatives
        if not k:
            return [[] for _ in range(self.global_batch)]
        epoch, within = divmod(step, self.steps_per_epoch)
        draw = seeded_generator("slq-train", self.config.seed, epoch, within, "negatives")
        chosen = []
        for i in self._picked(step):
            negatives = self.dataset.records[i].negatives
            chosen.append([negatives[j] for j in torch.randperm(len(negatives), generator=draw)[:k].tolist()])
        return chosen

    def _picked(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.size, generator=seeded_generator("slq-train", self.config.seed, epoch))
        return order[within * self.global_batch:(within + 1) * self.global_batch].tolist()

    def _mine(self) -> slice:
        return slice(self.rank * self.config.batch_size, (self.rank + 1) * self.config.batch_size)


def _check_hard_negatives(dataset: ImageTextDataset | PairDataset, k: int) -> None:
    if not k:
        return
    if not isinstance(dataset, PairDataset):
        raise SettingError("hard_negatives", k, f"needs pair data ({dataset.name} is captioned targets); see the "
                           "pair form of our JSONL")
    short = next((r for r in dataset.records if len(r.negatives) < k), None)
    if short is not None:
        raise SettingError("hard_negatives", k, f"is more than the {len(short.negatives)} negative(s) of "
                           f"{short.source}; every pair needs at least that many (mine them: slq mine-negatives)")


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1 over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _save_checkpoint(folder: Path, step: int, encoder: Encoder, loss_fn: ContrastiveLoss,
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


# Settings that change how a run computes or saves, not what it learns: a resumed run may change them.
HOW_NOT_WHAT = ("save_every", "save_minutes", "save_epochs", "engine", "chunk_size", "compile", "prompt_cache_device_mb",
                "prompt_cache_mb", "prompt_cache_disk_mb", "prompt_cache_dtype")


def _run_identity(config: TrainConfig, encoder: Encoder, dataset: ImageTextDataset, world_size: int) -> dict:
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


def _load_checkpoint(folder: Path, encoder: Encoder, loss_fn: ContrastiveLoss,
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
    run = _run_identity(config, encoder, dataset, world_size)
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
            start = _load_checkpoint(checkpoint, encoder, loss_fn, optimizer, result, run)
            logger.info("resuming at step %d of %d from %s", start, plan.total_steps, checkpoint)
        elif rank == 0:  # a job script may always pass resume: the first attempt has nothing to resume
            logger.info("nothing to resume in %s: starting afresh", checkpoint_dir)
    bar = tqdm(total=plan.total_steps, initial=start, desc="training", unit="step",
               disable=(None if progress is None else not progress) if rank == 0 else True)
    last_save = time.monotonic()
    for step in range(start, plan.total_steps):
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(step, warmup, plan.total_steps)
        records, texts = plan(step)
        loss = train_step(encoder, loss_fn, optimizer, texts, records, config.engine, cache,
                          chunk_size=config.chunk_size, clip_grad_norm=config.clip_grad_norm,
                          negatives=plan.negatives(step), labels=plan.labels(step))
        result.train_seconds += time.perf_counter() - began
        entry = {"step": step + 1, "loss": loss, "temperature": loss_fn.temperature.item(),
                 "lr": optimizer.param_groups[0]["lr"]}
        result.history.append(entry)
        bar.set_postfix(loss=f"{loss:.3f}", t=f"{entry['temperature']:.3f}")
        bar.update(1)
        if on_step is not None:
            on_step(entry)
        if checkpoint is not None and rank == 0 and _checkpoint_due(step + 1, plan, config, last_save):
            _save_checkpoint(checkpoint, step + 1, encoder, loss_fn, optimizer, result, run)
            last_save = time.monotonic()
    bar.close()
    if cache is not None:
        result.prompt_cache = cache.stats()
    if hasattr(encoder, "temperature"):
        encoder.temperature = loss_fn.temperature.item()
    return result


def _checkpoint_due(done: int, plan: BatchPlan, config: TrainConfig, last_save: float) -> bool:
    """After `done` steps: at the end, at an epoch's end, every `save_every` steps, or `save_minutes` after
    the last checkpoint. Checkpoints on by default, so a run killed with default settings loses at most
    an epoch or a few minutes of training."""
    return (done == plan.total_steps
            or (config.save_epochs and done % plan.steps_per_epoch == 0)
            or bool(config.save_every and done % config.save_every == 0)
            or bool(config.save_minutes and time.monotonic() - last_save >= 60 * config.save_minutes))


def train_settings(config: TrainConfig, dataset: ImageTextDataset, result: TrainResult) -> dict:
    """The record of a run stored in the adapter's config and model card."""
    final = result.history[-1] if result.history else {}
    return {**asdict(config), "train_data": dataset.name, "train_images": len(dataset), "steps": result.steps,
            "final_loss": final.get("loss"), "train_seconds": round(result.train_seconds, 3)}

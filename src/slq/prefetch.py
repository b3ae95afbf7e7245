"""Input preparation ahead of the model, in DataLoader worker processes.

Turning records into what a model call takes (decoding images, the image processor, rendering
prompts, tokenising) runs on the CPU, one thread at a time; at large batches it takes longer than
the model's step on a GPU, which then waits. `prepare_ahead` runs that work in `workers` processes,
up to `prefetch` jobs ahead of the model each, while the main process runs the model:

* order: results come back in the order of the jobs, and each is a pure function of its job, so
  what the model sees does not depend on the number of workers (bit for bit);
* errors: a job that fails in a worker is run again in the main process, which raises the very
  error the work raises without workers (naming the bad record);
* hangs: a job not back after `timeout` seconds stops the run with a message saying so.

Workers are forked, so they share the encoder (tokenizer, image processor) without the model being
pickled, and never touch the GPU: batches are built on the CPU (`Encoder.build_batch`) and placed
on the device by the main process. `workers=0` runs each job in the main process, when its result
is asked for, as slq did before workers.

Training's jobs name the prompt batches a step will build (`step_batches`); the worker's result
goes to `Encoder.prebuilt`, where the step's own builders find it.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import Input, TextRecord
from .encoder import Encoder, batch_key, kind_groups
from .errors import SettingError, SLQError

logger = logging.getLogger("slq")

TIMEOUT_S = 1800.0  # a job of a few thousand large images takes minutes in one worker; an hour means a hang


def default_workers() -> int:
    """Worker processes when none are asked for: one core is the model's, up to four prepare."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(4, cores - 1))


def resolve_workers(workers: int | None, prefetch: int = 2) -> int:
    """`workers` checked (None: `default_workers()`), with `prefetch`."""
    if workers is None:
        workers = default_workers()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise SettingError("workers", workers, "must be an integer >= 0 (0: prepare inputs in the main process)")
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 1:
        raise SettingError("prefetch", prefetch, "must be an integer >= 1")
    return workers


@dataclass
class _Failed:
    """What a worker returns for a job that raised: the main process runs the job again."""

    job: Any
    error: str


class _Work(Dataset):
    """The work as a dataset whose "indices" are the jobs themselves (DataLoader passes them through)."""

    def __init__(self, work: Callable):
        self.work = work

    def __getitem__(self, job):
        try:
            return self.work(job)
        except Exception as e:  # any error: the main process reproduces it with its own traceback
            return _Failed(job, f"{type(e).__name__}: {e}")


class _Jobs(Sampler):
    def __init__(self, jobs: Iterable):
        self.jobs = jobs

    def __iter__(self):
        return iter(self.jobs)


def _as_is(result):
    return result


def prepare_ahead(work: Callable[[Any], Any], jobs: Iterable, *, workers: int, prefetch: int = 2,
                  timeout: float = TIMEOUT_S) -> Iterator:
    """`work(job)` for each job, in order, computed by `workers` processes ahead of the consumer.

    `jobs` is read lazily, at most `workers × prefetch` jobs ahead of the result last consumed, so
    a job may depend on what the consumer has done until then (training's prompt cache). `work`
    must be a pure function of its job and must not touch the GPU; jobs and results cross process
    boundaries (pickled; tensors through shared memory).
    """
    workers = resolve_workers(workers, prefetch)
    if workers and "fork" not in multiprocessing.get_all_start_methods():
        logger.warning("input preparation: this platform cannot fork worker processes; preparing in the main process")
        workers = 0
    if not workers:
        yield from (work(job) for job in jobs)
        return
    loader = DataLoader(_Work(work), batch_size=None, sampler=_Jobs(jobs), num_workers=workers,
                        prefetch_factor=prefetch, collate_fn=_as_is, timeout=timeout,
                        multiprocessing_context="fork", generator=torch.Generator().manual_seed(0))
    results = iter(loader)  # its workers stop when it is dropped (also when the consumer stops early)
    while True:
        try:
            result = next(results)
        except StopIteration:
            return
        except RuntimeError as e:  # a worker timed out, died or was killed
            raise SLQError(f"input preparation in worker processes failed: {e}; with workers=0 inputs are "
                           "prepared in the main process, where a hang or a crash shows where it is") from None
        if isinstance(result, _Failed):
            failed, result = result, work(result.job)  # raises the error again, here, as without workers
            logger.warning("input preparation: a worker failed (%s) where the main process did not", failed.error)
        yield result


# --- training's jobs ----------------------------------------------------------------------------

def step_batches(encoder: Encoder, sides: Sequence[list], *, chunk_size: int = 0, engine: str = "cached",
                 cache=None) -> list[tuple[str, list]]:
    """The prompt batches a training step will build, as (kind, items): each side (queries,
    targets, negatives) in its chunks, each chunk per kind of input (`Encoder.prepare_targets`).

    With a prompt cache, an encoder that reuses prompts (SLQ) builds only the prompts the cache
    lacks, each once; those the cache holds now are left out. A prompt kept between now and the
    step makes its batch differ from the one built ahead: the step then builds its own.
    """
    dedup = cache is not None and engine == "cached" and encoder.reuses_prompts
    batches = []
    for side in sides:
        spans = [side] if not chunk_size or chunk_size >= len(side) else \
            [side[start:start + chunk_size] for start in range(0, len(side), chunk_size)]
        for span in spans:
            for kind, items in _kinds(span):
                if dedup:
                    items = _missing(kind, items, cache)
                if items and batch_key(kind, items) is not None:
                    batches.append((kind, items))
    return batches


def _kinds(items: list) -> list[tuple[str, list]]:
    if items and isinstance(items[0], Input):
        return [("input", [items[i] for i in rows]) for rows in kind_groups(items)]
    if items and isinstance(items[0], str):
        return [("text", items)]
    if items and isinstance(items[0], TextRecord):
        return [("text", [r.text for r in items])]
    return [("image", items)] if items else []


def _missing(kind: str, items: list, cache) -> list:
    """The first of each prompt `cache` lacks, in order (as `SLQRetriever` runs them)."""
    seen, missing = set(), []
    for item in items:
        key = batch_key(kind, [item])
        if key is None:  # pixels: the whole batch is built by the step itself
            return items
        key = key[1] if kind == "input" else key  # the prompt cache's keys
        if key not in seen and key not in cache:
            seen.add(key)
            missing.append(item)
    return missing


def build_batches(encoder: Encoder, batches: list[tuple[str, list]]) -> dict:
    """Each (kind, items) built on the CPU, by `batch_key` (a worker's work for a training step)."""
    return {batch_key(kind, items): encoder.build_batch(kind, items) for kind, items in batches}


@contextmanager
def prebuilt(encoder: Encoder, batches: dict):
    """The encoder takes its prompt batches from `batches` where it can, inside the block."""
    encoder.prebuilt = batches
    try:
        yield
    finally:
        encoder.prebuilt = None


def training_batches(encoder: Encoder, plan, steps: Iterable[int], *, chunk_size: int = 0, engine: str = "cached",
                     cache=None, workers: int = 0, prefetch: int = 2) -> Iterator[dict]:
    """For each step, the prompt batches it builds (`step_batches`), built ahead by `workers`
    processes: what `prebuilt` gives the encoder during the step. `plan(step)` gives a step's
    (targets, queries) and `plan.negatives(step)` its hard negatives (`slq.train.BatchPlan`)."""
    def batches(step: int) -> list[tuple[str, list]]:
        targets, queries = plan(step)
        negatives = plan.negatives(step)
        return step_batches(encoder, [queries, targets] + ([negatives] if negatives else []), chunk_size=chunk_size,
                            engine=engine, cache=cache)

    return prepare_ahead(functools.partial(build_batches, encoder), (batches(step) for step in steps),
                         workers=workers, prefetch=prefetch)

"""Prompts' keys/values kept across epochs, so that later epochs run only the queries.

The cached engine runs each prompt once without grad (`slq.queries.run_prompts`); since the
backbone is frozen and the queries come last, what it leaves never changes during training.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import torch

from .queries import PromptState

logger = logging.getLogger("slq")


class PromptCache:
    """Prompt states kept across epochs, in tiers: the model's device memory up to one byte budget
    (`device_mb`, for a GPU with room to spare), then CPU memory up to another (`budget_mb`), then a
    disk file up to a third (`disk_mb`).

    `dtype` may halve the footprint (float16/bfloat16); states are cast back to the backbone's dtype
    when used. CPU copies of prompts for a CUDA model are pinned, so copying them back does not wait
    (counted against the budget at the pinned allocator's rounded-up size).
    The disk file is unnamed (gone when the cache is, even after a crash) and read back as a memory
    map, so the page cache serves repeated epochs. Nothing is evicted, so what is kept does not
    depend on the order of lookups. Keys name prompts only, so a cache belongs to one backbone and
    one query count (one training run).
    """

    def __init__(self, budget_mb: float, dtype: torch.dtype | None = None, *, disk_mb: float = 0.0,
                 disk_dir: str | os.PathLike | None = None, device_mb: float = 0.0):
        self.budget, self.disk_budget = int(budget_mb * 2**20), int(disk_mb * 2**20)
        self.device_budget = int(device_mb * 2**20)
        self.dtype = dtype
        self.used = self.disk_used = self.device_used = self.hits = self.misses = 0
        self._states: dict[tuple, PromptState] = {}
        self._on_disk: dict[tuple, tuple[int, torch.Size, torch.dtype, torch.Tensor]] = {}
        self._file = tempfile.TemporaryFile(prefix="slq-prompt-cache-", dir=disk_dir) if disk_mb > 0 else None

    def get(self, key: tuple) -> PromptState | None:
        state = self._states.get(key)
        if state is None and key in self._on_disk:
            state = self._read(*self._on_disk[key])
        self.hits += state is not None
        self.misses += state is None
        return state

    def __contains__(self, key: tuple) -> bool:
        """Whether `key`'s prompt is kept (not counted as a lookup)."""
        return key in self._states or key in self._on_disk

    def put(self, key: tuple, state: PromptState) -> None:
        """Keep a copy of `state` (which may be a view of its batch) in the first tier with room."""
        if key in self._states or key in self._on_disk:  # e.g. the same caption twice in one batch
            return
        half = state.keys.numel() * (self.dtype or state.keys.dtype).itemsize  # keys (or values) as stored
        nbytes = 2 * half
        on_gpu = state.keys.device.type == "cuda"
        host_nbytes = 2 * _power_of_two(half) if on_gpu else nbytes  # torch's pinned allocator rounds up
        if self.device_used + nbytes <= self.device_budget:  # where the model runs (on a CPU model: RAM too)
            self._states[key] = state.copy(self.dtype)
            self.device_used += nbytes
        elif self.used + host_nbytes <= self.budget:
            self._states[key] = state.copy(self.dtype, "cpu", pin_memory=on_gpu)
            self.used += host_nbytes
        elif self._file is not None and self.disk_used + nbytes <= self.disk_budget:
            self._write(key, state.copy(self.dtype, "cpu"))

    def _write(self, key: tuple, state: PromptState) -> None:
        """Append a state to the file; if the disk fails (full, say), keep training with what is kept."""
        try:
            self._file.seek(self.disk_used)
            for tensor in (state.keys, state.values):
                self._file.write(tensor.contiguous().view(torch.uint8).numpy())
            self._file.flush()
        except OSError as error:
            logger.warning("prompt cache: writing to the disk file failed (%s); keeping no more prompts there", error)
            self.disk_budget = self.disk_used
            return
        self._on_disk[key] = (self.disk_used, state.keys.shape, state.keys.dtype, state.query_positions)
        self.disk_used += state.nbytes

    def _read(self, offset: int, shape: torch.Size, dtype: torch.dtype, positions: torch.Tensor) -> PromptState:
        half = shape.numel() * dtype.itemsize
        mapped = np.memmap(self._file, dtype=np.uint8, mode="c", offset=offset, shape=(2 * half,))
        raw = torch.frombuffer(mapped, dtype=torch.uint8)
        return PromptState(raw[:half].view(dtype).view(shape), raw[half:].view(dtype).view(shape), positions)

    def __len__(self) -> int:
        return len(self._states) + len(self._on_disk)

    def stats(self) -> dict:
        """Size and hit counts, for a run's record."""
        return {"prompts": len(self), "device_mb": round(self.device_used / 2**20, 1), "mb": round(self.used / 2**20, 1),
                "disk_mb": round(self.disk_used / 2**20, 1), "hits": self.hits, "misses": self.misses}


def _power_of_two(n: int) -> int:
    """The smallest power of two >= n: what torch's caching host allocator reserves for n pinned bytes."""
    return 1 << max(0, n - 1).bit_length()

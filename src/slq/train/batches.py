"""Which pairs make up each step: a pure function of (seed, step), so a resumed run sees the same batches.

The epoch's order comes from a generator seeded by (seed, epoch) and each record's caption from one
seeded by (seed, step), both through `slq._io.seeded_generator` (SHA-256, the same on every machine).
"""

from __future__ import annotations

import torch

from .._io import seeded_generator
from ..data import ImageTextDataset, PairDataset
from ..errors import SettingError
from .config import TrainConfig



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

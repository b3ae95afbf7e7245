"""Hard-negative mining: each pair's negatives are the candidates its query ranks highest but should not.

Contrastive training learns most from the wrong candidates a model already confuses with the right
one, not from random ones; embedding recipes commonly mine them with a first retriever and train
again. The candidates of a pair are the positives of the other pairs of its group
(`MiningConfig.group_by`, by default the record's "task": a VQA answer is no negative for an image
query). Three kinds of candidate are never a negative, because they are, or may be, right:

- the pair's positive itself, under any name: the same `Input.key()` (another pair with the same
  positive text), or the same text, instruction and image bytes under another path;
- another positive of the same query (a caption that fits two images: both are right), or the
  query itself (text-to-text pairs: one pair's query may be another's positive);
- a near-duplicate of the positive (cosine to it at or above `max_similarity`): a re-encoded copy
  of an image, a paraphrase of an answer;
- with `max_relative_score`, a candidate the query scores above that fraction of its positive's
  score (positive-aware mining, as NV-Retriever does): the top of a ranking holds the most false
  negatives, candidates that are right but unlabelled (an image a caption also fits).

The pool is embedded once; queries are embedded and scored in blocks, so memory holds the pool's
embeddings and one block of scores, however many pairs there are. Ranks are deterministic: ties go
to the candidate first in file order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ._io import check_settings, file_sha256, setting
from .data import Input, PairDataset, PairRecord
from .encoder import Encoder
from .errors import SettingError

logger = logging.getLogger("slq")

QUERY_BLOCK = 1024  # queries embedded and scored at a time
SCORE_BLOCK = 1 << 26  # at most this many scores (256 MB of float32) in one block: fewer queries for a large pool
SMALL_GROUP, SKIPPED = "small group", "skipped"  # why a pair got fewer than k negatives


@dataclass(frozen=True)
class MiningConfig:
    """How many negatives each pair gets, and which candidates are never one."""

    k: int = setting(4, "hard negatives mined per pair", minimum=1)
    max_similarity: float = setting(0.95, "a candidate whose cosine to the pair's positive is at or above this is "
                                          "a near-duplicate of the positive, not a negative, and is skipped",
                                    minimum=-1, maximum=1, why="a cosine")
    max_relative_score: float | None = setting(None, "skip a candidate the query scores above this fraction of "
                                                     "its positive's score: so close to the positive it may well "
                                                     "be right, a false negative (positive-aware mining, as "
                                                     "NV-Retriever's 0.95; default: off)", positive=True, maximum=1)
    group_by: str = setting("task", "a record field (e.g. the task): a pair's candidates come only from pairs with "
                                    "the same value of it (records without it form one group); \"\": one pool")
    keep_existing: bool = setting(False, "append the mined negatives after each record's own instead of replacing "
                                         "them (a candidate it already has is skipped; default: replace)")

    def __post_init__(self):
        check_settings(self)
        if not isinstance(self.group_by, str):
            raise SettingError("group_by", self.group_by, "must be a record field name, or \"\" for one pool")


@dataclass
class MiningResult:
    """The pairs with their mined negatives (same records, same order), and what mining skipped."""

    dataset: PairDataset
    config: MiningConfig
    groups: int  # candidate pools
    candidates: int  # distinct positives, all groups together
    short: list[tuple[str, int, str]] = field(default_factory=list)  # (source, negatives mined, SMALL_GROUP or SKIPPED)
    skipped_positive: int = 0  # candidates that were the pair's positive (any name), another of its query's, the query
    skipped_near_duplicate: int = 0  # candidates at or above max_similarity to the positive
    skipped_existing: int = 0  # keep_existing: candidates the record already had
    skipped_above_positive: int = 0  # max_relative_score: candidates scored too close to the positive

    @property
    def pairs(self) -> int:
        return len(self.dataset)

    def short_reasons(self) -> Counter:
        """How many pairs got fewer than k negatives, by why: SMALL_GROUP (fewer than k candidates
        besides the positive) or SKIPPED (enough candidates, too many of them skipped)."""
        return Counter(why for _, _, why in self.short)


def mine_negatives(encoder: Encoder, dataset: PairDataset, config: MiningConfig | None = None, *,
                   batch_size: int = 32, progress: bool | None = None) -> MiningResult:
    """Give every pair of `dataset` the `config.k` candidates its query ranks highest, skipping
    those that are (or may be) right (see the module's docstring). A pair whose group cannot
    supply k gets fewer, and the result lists it."""
    config = config or MiningConfig()
    records = dataset.records
    pool_inputs, positive_of = _distinct([r.positive for r in records])
    logger.info("mining %d negative(s) for each of %d pairs among %d distinct positives", config.k, len(records),
                len(pool_inputs))
    pool = encoder.encode_inputs(pool_inputs, batch_size=batch_size, show_progress_bar=progress)  # (P, d)
    groups = _groups(records, config.group_by)
    picker = _Picker(config, records, pool, pool_inputs, positive_of)
    mined: list[tuple[Input, ...]] = [()] * len(records)
    bar = tqdm(total=len(records), desc="mining negatives", unit="pair",
               disable=None if progress is None else not progress)
    for rows in groups.values():
        members = np.array(sorted({positive_of[i] for i in rows}))  # the group's pool, in file order
        picker.enter(members)
        step = max(1, min(QUERY_BLOCK, SCORE_BLOCK // len(members)))
        for start in range(0, len(rows), step):
            block = rows[start:start + step]
            queries = encoder.encode_inputs([records[i].query for i in block], batch_size=batch_size,
                                            show_progress_bar=False)  # (b, d)
            scores = torch.from_numpy(queries) @ torch.from_numpy(picker.pool).T  # (b, P_group)
            depth = min(len(members), 2 * config.k + 8)  # the own positive and a few skips fit in the first look
            floors = torch.topk(scores, depth, dim=1).values[:, -1]  # (b,)
            for row, i in enumerate(block):
                mined[i] = picker.pick(i, scores[row].numpy(), float(floors[row]))
            bar.update(len(block))
    bar.close()
    out = PairDataset([replace(r, negatives=(r.negatives if config.keep_existing else ()) + mined[i])
                       for i, r in enumerate(records)], dataset.name, dataset.skipped, dataset.directions)
    result = MiningResult(out, config, len(groups), len(pool_inputs), picker.short, **picker.skipped)
    _log_short(result)
    return result


class _Picker:
    """Walks one query's ranking of its group's pool and keeps the first k candidates that are negatives."""

    def __init__(self, config: MiningConfig, records: Sequence[PairRecord], pool: np.ndarray,
                 pool_inputs: Sequence[Input], positive_of: Sequence[int]):
        self.config, self.records, self.all_pool, self.pool_inputs = config, records, pool, pool_inputs
        self.positive_of = positive_of
        self.short: list[tuple[str, int, str]] = []  # as MiningResult.short
        self.skipped = dict.fromkeys(("skipped_positive", "skipped_near_duplicate", "skipped_existing",
                                      "skipped_above_positive"), 0)
        self.answers: dict[Hashable, set[int]] = {}  # a query -> the pool rows of all its positives
        for i, r in enumerate(records):
            self.answers.setdefault(_identity(r.query), set()).add(positive_of[i])
        self.same_content = _SameContent()

    def enter(self, members: np.ndarray) -> None:
        """Score against the pool of one group (its rows of the whole pool, in order)."""
        self.members = members
        whole = len(members) == len(self.all_pool)  # members are distinct rows, sorted: all of them, in order
        self.pool = self.all_pool if whole else self.all_pool[members]  # (P_group, d)
        self.local = {int(g): j for j, g in enumerate(members)}

    def pick(self, i: int, scores: np.ndarray, floor: float) -> tuple[Input, ...]:
        """The negatives of record i, from its query's `scores` against the group's pool."""
        record, k = self.records[i], self.config.k
        positive = self.local[self.positive_of[i]]
        query = _identity(record.query)
        answers = self.answers[query]
        existing = {_identity(n) for n in record.negatives} if self.config.keep_existing else set()
        ratio = self.config.max_relative_score
        ceiling = ratio * float(scores[positive]) if ratio is not None else float("inf")
        chosen: list[Input] = []
        for j in _ranked(scores, floor):
            candidate = self.pool_inputs[self.members[j]]
            if (int(self.members[j]) in answers or _identity(candidate) == query
                    or self.same_content(candidate, record.positive)):
                self.skipped["skipped_positive"] += 1
            elif float(self.pool[j] @ self.pool[positive]) >= self.config.max_similarity:
                self.skipped["skipped_near_duplicate"] += 1
            elif _identity(candidate) in existing:
                self.skipped["skipped_existing"] += 1
            elif float(scores[j]) > ceiling:
                self.skipped["skipped_above_positive"] += 1
            else:
                chosen.append(candidate)
                if len(chosen) == k:
                    return tuple(chosen)
        why = SMALL_GROUP if len(self.members) - 1 < k else SKIPPED
        self.short.append((record.source, len(chosen), why))
        return tuple(chosen)


def _ranked(scores: np.ndarray, floor: float) -> Iterator[int]:
    """Indices of `scores`, best first, ties in index order: those at or above `floor` (a few,
    sorted first), then, only if the caller reads on, the rest."""
    top = np.flatnonzero(scores >= floor)
    yield from top[np.lexsort((top, -scores[top]))].tolist()
    rest = np.flatnonzero(scores < floor)
    yield from rest[np.lexsort((rest, -scores[rest]))].tolist()


def _identity(x: Input) -> Hashable:
    """`Input.key()`, or the pixels' object for an input that holds them (no stable name)."""
    key = x.key()
    return key if key is not None else ("pixels", id(x.image))


def _distinct(inputs: Sequence[Input]) -> tuple[list[Input], list[int]]:
    """The distinct inputs (by identity) in first-seen order, and each input's row among them."""
    rows: dict[Hashable, int] = {}
    distinct, row_of = [], []
    for x in inputs:
        name = _identity(x)
        if name not in rows:
            rows[name] = len(distinct)
            distinct.append(x)
        row_of.append(rows[name])
    return distinct, row_of


def _groups(records: Sequence[PairRecord], group_by: str) -> dict[str, list[int]]:
    """Record indices by the value of their `group_by` field, groups in first-seen order; one group
    when `group_by` is "" (records without the field form a group of their own)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        value = r.meta.get(group_by) if group_by else None
        groups.setdefault(json.dumps(value, sort_keys=True, default=str), []).append(i)
    return groups


class _SameContent:
    """Whether two inputs are one content under two names: the same text and instruction, and the
    same image bytes (a copy of the file elsewhere, a link, a path spelt another way). File sizes are
    compared first, so only files of equal size are ever read."""

    def __init__(self):
        self._sizes: dict = {}
        self._digests: dict = {}

    def __call__(self, a: Input, b: Input) -> bool:
        if (a.text or "") != (b.text or "") or a.instruction != b.instruction:
            return False
        if a.image is None or b.image is None:
            return a.image is None and b.image is None
        if self._size(a.image) != self._size(b.image):
            return False
        digest = self._digest(a.image)
        return digest is not None and digest == self._digest(b.image)

    def _size(self, image) -> Hashable:
        if isinstance(image, Image.Image):
            return image.mode, image.size
        if image not in self._sizes:
            try:
                self._sizes[image] = os.stat(image).st_size
            except OSError:
                self._sizes[image] = None
        return self._sizes[image]

    def _digest(self, image) -> str | None:
        name = ("pixels", id(image)) if isinstance(image, Image.Image) else image
        if name not in self._digests:
            try:
                self._digests[name] = (hashlib.sha256(image.tobytes()).hexdigest() if isinstance(image, Image.Image)
                                       else file_sha256(image))
            except OSError:
                self._digests[name] = None  # unreadable: never the same as anything
        return self._digests[name]


def _log_short(result: MiningResult) -> None:
    if not result.short:
        return
    reasons = result.short_reasons()
    source, found, why = result.short[0]
    logger.warning("%d of %d pairs got fewer than %d negatives (%d in groups with too few candidates, %d with too "
                   "many skipped as their positive or near-duplicates of it at max_similarity %s); first: %s, %d",
                   len(result.short), result.pairs, result.config.k, reasons[SMALL_GROUP], reasons[SKIPPED],
                   result.config.max_similarity, source, found)
    for source, found, why in result.short:
        logger.debug("%s: %d negative(s) mined (%s)", source, found, why)

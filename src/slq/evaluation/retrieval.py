"""Recall@K evaluation of an encoder on a captioned dataset (images or texts), both directions."""

from __future__ import annotations

from ..data import ImageTextDataset
from ..encoder import Encoder
from .gap import modality_gap
from .metrics import check_ties, recall_at_k, recall_by_group


GROUPINGS = {"category": "by_category", "clues": "by_clues"}  # a record's meta field -> the report's key


def evaluate(encoder: Encoder, dataset: ImageTextDataset, *, batch_size: int = 32,
             ks: tuple[int, ...] = (1, 5, 10), show_progress_bar: bool | None = None,
             ties: str = "average") -> dict:
    """Embed every caption and target of `dataset` and score retrieval both ways.

    Returns `{forward: {"R@1": …}, backward: {…}, "n_images": …, "n_texts": …, "ties": …, "dataset": …,
    "modality_gap": …}` (`slq.evaluation.gap`), and `"by_category": {category: {forward: …, backward: …,
    "n_images": …, "n_texts": …}}` when every record's meta names a `category` (a KARR benchmark; each
    query still ranked against the whole set); likewise `"by_clues"` by the records' `clues` (KARR-Shapes:
    clues seen beside images in pretraining, or met in text only)
    where forward/backward are the dataset's `directions` ("t2i"/"i2t" unless it names its own); a
    target→caption query hits when any of the target's captions is in the top k. `ties` is the rule
    for scores tied with a query's best positive (`slq.evaluation.metrics`): "average" or "strict".
    """
    check_ties(ties)  # before minutes of embedding
    text_emb = encoder.encode_text(dataset.texts(), batch_size=batch_size, show_progress_bar=show_progress_bar)
    target_emb = encoder.encode_targets(dataset.records, batch_size=batch_size, show_progress_bar=show_progress_bar)
    similarity = text_emb @ target_emb.T  # (n_texts, n_targets)
    scores = recall_at_k(similarity, dataset.text_to_image(), ks=ks, ties=ties)
    forward, backward = dataset.directions
    report = {forward: scores["t2i"], backward: scores["i2t"], "n_images": scores["n_images"],
              "n_texts": scores["n_texts"], "ties": ties, "dataset": dataset.name,
              "modality_gap": modality_gap(text_emb, target_emb)}
    for field, key in GROUPINGS.items():
        groups = [r.meta.get(field) for r in dataset.records]
        if groups and all(isinstance(g, str) and g for g in groups):
            report[key] = {
                group: {forward: r["t2i"], backward: r["i2t"], "n_images": r["n_images"], "n_texts": r["n_texts"]}
                for group, r in recall_by_group(similarity, dataset.text_to_image(), groups, ks=ks, ties=ties).items()}
    if dataset.skipped:
        report["skipped"] = [{"source": s.source, "reason": s.reason} for s in dataset.skipped]
    return report


class RetrievalEvaluator:
    """Recall@K both ways on one dataset, as one of `slq.evaluation.compare`'s evaluators.

    `name` keys its results in a comparison's report ("test", "validation", "karr", …); `ties` is the
    rule for tied scores, "average" or "strict" (`slq.evaluation.metrics`). Its primary metric is
    R@1 in the dataset's forward direction ("t2i/R@1" unless the dataset names its own).
    """

    def __init__(self, dataset: ImageTextDataset, name: str = "test", *, batch_size: int = 32,
                 ks: tuple[int, ...] = (1, 5, 10), ties: str = "average"):
        self.dataset, self.name, self.batch_size, self.ks = dataset, name, batch_size, ks
        self.ties = check_ties(ties)

    @property
    def directions(self) -> tuple[str, str]:
        return self.dataset.directions

    @property
    def primary_metric(self) -> str:
        return f"{self.directions[0]}/R@1"

    def describe(self) -> dict:
        """What a comparison's report records of it: the directions, chance R@1 (one target in all of
        them), the tie rule and the dataset's name."""
        return {"directions": list(self.directions), "chance_R@1": 1 / len(self.dataset), "ties": self.ties,
                "dataset": self.dataset.name}

    def __call__(self, encoder: Encoder, progress: bool | None = None) -> dict:
        return evaluate(encoder, self.dataset, batch_size=self.batch_size, ks=self.ks, show_progress_bar=progress,
                        ties=self.ties)

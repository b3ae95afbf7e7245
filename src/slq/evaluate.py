"""Recall@K evaluation of a retriever on a captioned dataset (images or texts), both directions."""

from __future__ import annotations

from .data import ImageTextDataset
from .metrics import recall_at_k
from .retriever import SLQRetriever


def evaluate(retriever: SLQRetriever, dataset: ImageTextDataset, *, batch_size: int = 32,
             ks: tuple[int, ...] = (1, 5, 10), show_progress_bar: bool | None = None) -> dict:
    """Embed every caption and image of `dataset` and score text→image and image→text retrieval.

    Returns `{"t2i": {"R@1": …}, "i2t": {…}, "n_images": …, "n_texts": …, "dataset": …}`; an
    image→text query hits when any of the image's captions is in the top k. On a text-pair dataset
    the targets are texts and "t2i"/"i2t" read caption→target and target→caption.
    """
    text_emb = retriever.encode_text(dataset.texts(), batch_size=batch_size, show_progress_bar=show_progress_bar)
    image_emb = retriever.encode_targets(dataset.records, batch_size=batch_size, show_progress_bar=show_progress_bar)
    report = recall_at_k(text_emb @ image_emb.T, dataset.text_to_image(), ks=ks)  # (n_texts, n_images)
    report["dataset"] = dataset.name
    if dataset.skipped:
        report["skipped"] = [{"source": s.source, "reason": s.reason} for s in dataset.skipped]
    return report

"""Evaluators: the tie rule reaches the recall and is recorded in the report."""

import numpy as np
import pytest

from slq.data import ImageTextDataset, TextRecord
from slq.errors import SettingError
from slq.evaluation.retrieval import RetrievalEvaluator, evaluate


class CollapsedEncoder:
    """Every text and target to the same vector: every score ties."""

    def encode_text(self, texts, **kwargs):
        return np.ones((len(texts), 4), dtype=np.float32)

    def encode_targets(self, records, **kwargs):
        return np.ones((len(records), 4), dtype=np.float32)


@pytest.fixture
def words() -> ImageTextDataset:
    records = [TextRecord(text=f"word {i}", captions=(f"a {i}", f"b {i}"), source=f"words:{i}") for i in range(4)]
    return ImageTextDataset(records, "words")


def test_evaluate_scores_ties_as_chance_by_default_and_records_the_rule(words):
    report = evaluate(CollapsedEncoder(), words)
    assert report["ties"] == "average"
    assert report["t2i"]["R@1"] == pytest.approx(1 / 4) and report["t2i"]["R@5"] == 1.0
    strict = evaluate(CollapsedEncoder(), words, ties="strict")
    assert strict["ties"] == "strict" and strict["t2i"]["R@1"] == 0.0 and strict["i2t"]["R@1"] == 0.0


def test_retrieval_evaluator_passes_its_tie_rule(words):
    assert RetrievalEvaluator(words)(CollapsedEncoder())["ties"] == "average"
    report = RetrievalEvaluator(words, ties="strict")(CollapsedEncoder())
    assert report["ties"] == "strict" and report["t2i"]["R@1"] == 0.0


def test_unknown_tie_rule_is_refused_before_embedding(words):
    with pytest.raises(SettingError, match="ties best: must be one of average, strict"):
        RetrievalEvaluator(words, ties="best")
    with pytest.raises(SettingError, match="ties best"):
        evaluate(None, words, ties="best")  # no encoder is touched

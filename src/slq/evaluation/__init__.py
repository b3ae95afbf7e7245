"""Evaluation: Recall@K, retrieval evaluators, and comparisons of methods (trade-off tables, plots).

Built on the method (`slq.encoder`, `slq.train`) and never imported by it.
"""

from .compare import (  # the function compare: slq.evaluation.compare.compare
           METHODS,
           Method,
           standard_methods,
)
from .metrics import format_recall_table, recall_at_k, recall_by_group
from .retrieval import RetrievalEvaluator, evaluate

__all__ = ["METHODS", "Method", "RetrievalEvaluator", "evaluate", "format_recall_table", "recall_at_k", "recall_by_group",
           "standard_methods"]

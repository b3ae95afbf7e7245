"""The rule rewriters slq ships, and which one a dataset gets.

`build` is generic: it takes whatever rewriters it is given. This module sits above it and above the
rule sets (`shapes`, `english`), so that the default choice lives in one place and no rule set is
imported by the build.
"""

from __future__ import annotations

import os

from ..data import ImageTextDataset
from .core import Rewriter
from .english import ENGLISH_ATTRIBUTES, WordNetRewriter
from .shapes import ATTRIBUTES as SHAPES_ATTRIBUTES
from .shapes import ShapesRewriter


def rule_rewriter_for(dataset: ImageTextDataset, wordnet_dir: str | os.PathLike | None = None
                      ) -> tuple[Rewriter, frozenset[str]]:
    """The rules for a dataset and the attributes its validator guards: the shapes world's (its
    records carry their `objects`) or English through WordNet."""
    if dataset.records and all(isinstance(r.meta.get("objects"), list) for r in dataset.records):
        return ShapesRewriter(), SHAPES_ATTRIBUTES
    rewriter = WordNetRewriter(wordnet_dir) if wordnet_dir is not None else WordNetRewriter()
    return rewriter, frozenset(ENGLISH_ATTRIBUTES)

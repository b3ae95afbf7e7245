"""KARR-Bench: knowledge-aware reasoning retrieval, built from any captioned image set.

`core` says what a rewrite is and validates it; `build` picks one accepted rewrite per image from the
rewriters it is given and writes the benchmark; `shapes` rewrites the shapes world's captions with
its knowledge corpus (and builds KARR-Shapes); `english` rewrites English captions through WordNet;
`lm` asks a local causal LM for rewrites; `rules` picks the rule set a dataset gets.
"""

from .build import BUILD_FILE, KARR_FILE, KarrBuild, build_karr, control_dataset, plot_categories, write_karr
from .core import CATEGORIES, REJECTIONS, Candidate, Rewrite, Rewriter, counts, validate
from .shapes import ATTRIBUTES as SHAPES_ATTRIBUTES
from .shapes import KARR_SHAPES, ShapesRewriter, build_karr_shapes
from .rules import rule_rewriter_for

__all__ = ["BUILD_FILE", "CATEGORIES", "KARR_FILE", "KARR_SHAPES", "REJECTIONS", "SHAPES_ATTRIBUTES", "Candidate",
           "KarrBuild", "Rewrite", "Rewriter", "ShapesRewriter", "build_karr", "build_karr_shapes", "control_dataset",
           "counts", "plot_categories", "rule_rewriter_for", "validate", "write_karr"]

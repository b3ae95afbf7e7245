"""`slq real-karr`: KARR on knowledge nobody here wrote, on slq-gemma-vl, in one command.

The backbone is slq-gemma-vl: Gemma 3 270M's language model, unchanged, with the vision tower slq
trained on plain captions only (`slq.recipes.gemma_vl`). The KARR set is `slq.karr.KARR_REAL`: each
caption names one object through a fact Gemma 3 270M itself ranked first in text ("a large circle the
colour of a lemon"), beside its control with the clue taken out ("a large circle"). Every method is
`slq karr-bench`'s, trained on the shapes world's plain captions; the table adds recall with the
clue against the control per category, and what training left of the backbone
(`RealKnowledgeCapability`: captions, VQA, the facts the LM still ranks first in text, its text
perplexity; and the weights' hash).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from ..._io import setting
from ...backbone import Backbone
from ...data import ImageTextDataset
from ...data.wordnet import DEFAULT_WORDNET_DIR, reverse_dictionary
from ...errors import SettingError
from ...evaluation.capability import ShapesCapability, text_perplexity
from ...karr.real import FACTS, KARR_REAL, Fact, backbone_scorer, probe_facts
from ..karr import KARR_METHODS, KarrBenchConfig, run_karr_bench
from .assemble import SLQ_GEMMA_VL, gemma_vl_backbone

logger = logging.getLogger("slq")


@dataclass(frozen=True)
class RealKarrConfig(KarrBenchConfig):
    """karr-bench's settings, sized for a 270M language model on a CPU."""

    num_queries: int = setting(8, "SLQ queries (chosen on the world's validation split: docs/gemma-vl.md)", minimum=1)
    lr: float = setting(1e-1, "SLQ's peak learning rate (chosen on the validation split)")
    baseline_epochs: int = setting(2, "LoRA's and full fine-tuning's epochs (each step runs the whole 270M model "
                                      "with grad)", minimum=1)
    capability_limit: int = setting(50, "test images on which each method's backbone is probed after training "
                                        "(greedy captions and VQA answers scored, with the facts and the text "
                                        "perplexity); 0 = no probe at all", minimum=0)
    eval_batch_size: int = setting(32, "items per forward pass when evaluating", minimum=1)
    jobs: int = setting(1, "methods trained at once, in separate processes (each holds the 270M model)", minimum=1)
    wordnet_dir: str = setting(str(DEFAULT_WORDNET_DIR), "WordNet 3.0 (Debian's wordnet-base): its noun definitions "
                                                         "are the held-out English of the text perplexity")


@dataclass(frozen=True)
class RealKnowledgeCapability:
    """What a method leaves of slq-gemma-vl's abilities, before and after training: the shapes probe
    (greedy captions, VQA answers: `ShapesCapability`), `facts_first`, the share of the real-knowledge
    facts (all of `slq.karr.real.FACTS`, kept or not) whose right word the language model still ranks
    first in text, asked as `slq karr real` asked them, and `text_perplexity` on held-out English
    (WordNet noun definitions, which no method trains on)."""

    shapes: ShapesCapability
    facts: tuple[Fact, ...]
    texts: tuple[str, ...]
    name: str = "real_knowledge"
    primary_metric: ClassVar[str] = "facts_first"

    @classmethod
    def for_test(cls, test: ImageTextDataset, limit: int, *, wordnet_dir: str | os.PathLike = DEFAULT_WORDNET_DIR,
                 n_texts: int = 200) -> RealKnowledgeCapability:
        """The shapes probe on the first `limit` test images, every fact, and `n_texts` definitions
        spread evenly over WordNet's reverse dictionary."""
        if not isinstance(n_texts, int) or n_texts < 1:
            raise SettingError("n_texts", n_texts, "must be an integer >= 1 (definitions for the text perplexity)")
        definitions = [pair.definition for pair in reverse_dictionary(wordnet_dir)]
        texts = definitions[::max(1, len(definitions) // n_texts)][:n_texts]
        return cls(ShapesCapability.from_dataset(test, limit), tuple(FACTS), tuple(texts))

    def __call__(self, backbone: Backbone) -> dict[str, float | None]:
        table = probe_facts(backbone_scorer(backbone), self.facts)
        first = round(sum(row["kept"] for row in table) / len(table), 4) if table else None
        return {**self.shapes(backbone), "facts_first": first, "text_perplexity": text_perplexity(backbone, self.texts)}


def run_real_karr(out_dir: str | os.PathLike, config: RealKarrConfig | None = None, *,
                  backbone_dir: str | os.PathLike | None = None, vision_dir: str | os.PathLike | None = None,
                  methods: Sequence[str] = KARR_METHODS, progress: bool | None = None, **settings) -> dict:
    """Run karr-bench on slq-gemma-vl (assembled from `vision_dir`, default the shipped tower, and Gemma 3
    270M's package) and the real-knowledge KARR set; `backbone_dir` instead names a checkpoint."""
    config = replace(config or RealKarrConfig(), **settings)
    if backbone_dir is None:
        backbone_dir = gemma_vl_backbone(vision_dir or SLQ_GEMMA_VL)
    logger.info("slq-gemma-vl: %s", backbone_dir)
    probe_for = functools.partial(RealKnowledgeCapability.for_test, wordnet_dir=config.wordnet_dir)
    return run_karr_bench(out_dir, config, backbone_dir=backbone_dir, karr_dir=KARR_REAL, methods=methods,
                          progress=progress, probe_for=probe_for)

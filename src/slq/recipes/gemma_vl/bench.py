"""`slq real-karr`: KARR on knowledge nobody here wrote, on slq-gemma-vl, in one command.

The backbone is slq-gemma-vl: Gemma 3 270M's language model, unchanged, with the vision tower slq
trained on plain captions only (`slq.recipes.gemma_vl`). The KARR set is `slq.karr.KARR_REAL`: each
caption names one object through a fact Gemma 3 270M itself ranked first in text ("a large circle the
colour of a lemon"), beside its control with the clue taken out ("a large circle"). Every method is
`slq karr-bench`'s, trained on the shapes world's plain captions; the table adds recall with the
clue against the control per category, and what training left of the backbone (captions, VQA,
weights' hash).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..._io import setting
from ...karr.real import KARR_REAL
from ..karr import KARR_METHODS, KarrBenchConfig, run_karr_bench
from .assemble import SLQ_GEMMA_VL, gemma_vl_backbone

logger = logging.getLogger("slq")


@dataclass(frozen=True)
class RealKarrConfig(KarrBenchConfig):
    """karr-bench's settings, sized for a 270M language model on a CPU."""

    baseline_epochs: int = setting(2, "LoRA's and full fine-tuning's epochs (each step runs the whole 270M model "
                                      "with grad)", minimum=1)
    capability_limit: int = setting(50, "test images on which each method's backbone is probed after training "
                                        "(greedy captions and VQA answers scored); 0 = no probe", minimum=0)
    eval_batch_size: int = setting(32, "items per forward pass when evaluating", minimum=1)
    jobs: int = setting(1, "methods trained at once, in separate processes (each holds the 270M model)", minimum=1)


def run_real_karr(out_dir: str | os.PathLike, config: RealKarrConfig | None = None, *,
                  backbone_dir: str | os.PathLike | None = None, vision_dir: str | os.PathLike | None = None,
                  methods: Sequence[str] = KARR_METHODS, progress: bool | None = None, **settings) -> dict:
    """Run karr-bench on slq-gemma-vl (assembled from `vision_dir`, default the shipped tower, and Gemma 3
    270M's package) and the real-knowledge KARR set; `backbone_dir` instead names a checkpoint."""
    config = replace(config or RealKarrConfig(), **settings)
    if backbone_dir is None:
        backbone_dir = gemma_vl_backbone(vision_dir or SLQ_GEMMA_VL)
    logger.info("slq-gemma-vl: %s", backbone_dir)
    return run_karr_bench(out_dir, config, backbone_dir=backbone_dir, karr_dir=KARR_REAL, methods=methods,
                          progress=progress)

"""slq-gemma-vl: Gemma 3 270M's language model, frozen, with a small vision tower trained on plain captions."""

from .assemble import (SLQ_GEMMA_VL, VisionSettings, assemble, build_model, gemma_vl_backbone, language_model_sha256,
                       read_vision, vision_tensors)
from .pretrain import GemmaVLConfig, GemmaVLResult, caption_loss, pretrain_gemma_vl

__all__ = ["SLQ_GEMMA_VL", "GemmaVLConfig", "GemmaVLResult", "VisionSettings", "assemble", "build_model",
           "caption_loss", "gemma_vl_backbone", "language_model_sha256", "pretrain_gemma_vl", "read_vision",
           "vision_tensors"]

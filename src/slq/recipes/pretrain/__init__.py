"""Generative pretraining of `slq-tiny-vl`, the small Qwen2-VL that slq ships as its default backbone.

SLQ *elicits* retrieval from what a multimodal LLM already knows, and no vision-language weights
can be downloaded here, so slq pretrains its own tiny one on the shapes world, the way real MLLMs
are trained: only next-token prediction, never a contrastive objective.

    config   PretrainConfig: the model's size, the image processor, the task mixture and curriculum
    tasks    the generative tasks and how an example becomes training tokens
    loop     the resumable training loop (`pretrain`)
    card     the checkpoint's model card

`scripts/pretrain_default.py` runs it; `scripts/pretrain_sweep.py` compares recipes over seeds by
what SLQ elicits. What was learnt on the way, with the numbers: docs/slq-tiny-vl.md.
"""

from ...evaluation.capability import caption_attribute_accuracy, score_caption, vision_feature_health
from ...generation import generate_captions
from .card import model_card
from .config import (MODEL_OVERRIDES, TASKS, VOCAB_SIZE, WORLD_PIXEL_MEAN, WORLD_PIXEL_STD, PretrainConfig,
                     image_processor_overrides, mixture_at, model_overrides)
from .loop import PretrainResult, build_initial_model, pretrain, tokenizer_corpus
from .tasks import IGNORE, Collator, Example, GenerativeData, listing, vqa_pairs

__all__ = [
    "IGNORE", "MODEL_OVERRIDES", "TASKS", "VOCAB_SIZE", "WORLD_PIXEL_MEAN", "WORLD_PIXEL_STD", "Collator", "Example",
    "GenerativeData", "PretrainConfig", "PretrainResult", "build_initial_model", "caption_attribute_accuracy",
    "generate_captions", "image_processor_overrides", "listing", "mixture_at", "model_card", "model_overrides", "pretrain",
    "score_caption", "tokenizer_corpus", "vision_feature_health", "vqa_pairs",
]

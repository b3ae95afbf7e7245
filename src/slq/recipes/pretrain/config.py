"""Settings of slq-tiny-vl's pretraining: the model's size, the image processor, the task mixture and
its curriculum, the optimiser. Why these values: docs/slq-tiny-vl.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...errors import SettingError

TASKS = ("caption", "listing", "vqa", "paraphrase", "knowledge", "colour", "shape",
         "knowledge_qa", "knowledge_caption", "knowledge_paraphrase", "knowledge_vqa", "knowledge_paraphrase_all")

# slq-tiny-vl: a Qwen2-VL with a 4-layer, 192-wide language model and a 3-block vision tower whose
# 8-px patches, merged 2x2, turn a 64x64 image into 16 tokens (the processor resizes every image to
# `image_side` squared pixels, so each gives (image_side / 16)^2 tokens).
MODEL_OVERRIDES = {
    "text_config": {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                    "rope_parameters": {"mrope_section": [8, 8, 8]}},  # sums to head_dim / 2 = 24
    "vision_config": {"depth": 3, "embed_dim": 128, "hidden_size": 192, "num_heads": 4, "mlp_ratio": 2,
                      "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2},
}


def model_overrides(hidden_size: int = 192, num_layers: int = 4, intermediate_size: int = 512) -> dict:
    """`MODEL_OVERRIDES` at another language-model size (the defaults give it back): what a bigger
    default costs (`benchmarks/default_size.py`). Four heads, two of them key/value, as shipped."""
    head_dim = hidden_size // 4
    text = {**MODEL_OVERRIDES["text_config"], "hidden_size": hidden_size, "num_hidden_layers": num_layers,
            "intermediate_size": intermediate_size, "rope_parameters": {"mrope_section": [head_dim // 6] * 3}}
    return {"text_config": text, "vision_config": {**MODEL_OVERRIDES["vision_config"], "hidden_size": hidden_size}}


def image_processor_overrides(image_side: int, image_mean: Sequence[float] | None = None,
                              image_std: Sequence[float] | None = None) -> dict:
    if image_side % 16:
        raise SettingError("image_side", image_side, "must be a multiple of 16 (patch 8 x merge 2)")
    overrides = {"patch_size": 8, "merge_size": 2,
                 "size": {"shortest_edge": image_side * image_side, "longest_edge": image_side * image_side}}
    if image_mean is not None:
        overrides["image_mean"] = list(image_mean)
    if image_std is not None:
        overrides["image_std"] = list(image_std)
    return overrides


VOCAB_SIZE = 1024
# slq-tiny-vl's mixture until 2026-12-01, without knowledge tasks: its clues were read, never used (docs/karr.md)
PREVIOUS_MIXTURE = {"listing": 0.24, "vqa": 0.20, "caption": 0.12, "paraphrase": 0.16, "knowledge": 0.08,
                    "colour": 0.1, "shape": 0.1}
# Per-channel mean and std of the shapes world's pixels (train split, seed 0; near-white backgrounds):
# with them the background is about 0 and a coloured object far from it, where CLIP's statistics
# leave every patch dominated by the same large background offset.
WORLD_PIXEL_MEAN = (0.95, 0.93, 0.92)
WORLD_PIXEL_STD = (0.14, 0.16, 0.19)


@dataclass
class PretrainConfig:
    """Settings of one pretraining run; stored in the model card."""

    seed: int = 0  # model initialisation and every batch
    steps: int = 3500  # optimizer steps
    batch_size: int = 32  # examples per step, tasks mixed
    lr: float = 2e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    mixture: dict = field(default_factory=lambda: {"listing": 0.211, "vqa": 0.176, "caption": 0.106, "paraphrase": 0.141,
                                                   "knowledge": 0.07, "colour": 0.088, "shape": 0.088,
                                                   "knowledge_paraphrase_all": 0.08, "knowledge_qa": 0.04})
    # task -> share of examples, once the leading `stages` are over (relative weights). Since 2026-12-01 the
    # knowledge tasks take 12%, the rest kept in proportion; before, PREVIOUS_MIXTURE (docs/karr.md)
    stages: list = field(default_factory=lambda: [
        [300, {"colour": 0.8, "knowledge": 0.1, "paraphrase": 0.1}],
        [1200, {"colour": 0.25, "shape": 0.55, "knowledge": 0.1, "paraphrase": 0.1}]])
    # leading [steps, mixture] pairs: the curriculum that teaches the language model to read the image
    noise_prob: float = 0.0  # share of caption/listing/paraphrase examples whose answer *inputs* are corrupted
    noise_rate: float = 0.8  # in such an example, each answer input token becomes a random token with this chance
    save_every: int = 500  # steps between resumable checkpoints (0 = none)
    threads: int = 1  # torch threads: results are reproducible for a given count; two threads gain
    # little on a model this small and slow down badly when another process shares the cores
    image_side: int = 64  # the processor resizes images to this square: (image_side / 16)^2 tokens
    hidden_size: int = 192  # the language model's width, and the vision tower's output (4 heads)
    num_layers: int = 4  # language-model layers
    intermediate_size: int = 512  # the language model's MLP width
    vision_lr_ratio: float = 1.0  # the vision tower (model.visual) learns at lr * vision_lr_ratio
    vision_freeze_steps: int = 0  # the vision tower stays at its initialisation for this many first steps
    vision_weight_decay: float = 0.05  # AdamW weight decay of the vision tower
    merger_init_scale: float = 0.2  # at initialisation, scale the merger's output layer by this factor
    image_mean: list | None = field(default_factory=lambda: list(WORLD_PIXEL_MEAN))  # processor's (None: CLIP's)
    image_std: list | None = field(default_factory=lambda: list(WORLD_PIXEL_STD))  # processor's (None: CLIP's)

    def __post_init__(self):
        def need(ok: bool, name: str, rule: str):
            if not ok:
                raise SettingError(name, getattr(self, name), rule)

        need(isinstance(self.steps, int) and self.steps >= 1, "steps", "must be an integer >= 1")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "must be an integer >= 1")
        need(math.isfinite(self.lr) and self.lr > 0, "lr", "must be a positive number")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must lie in [0, 1]")
        need(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps", "must be an integer >= 0")
        need(_is_mixture(self.mixture), "mixture",
             f"must map some of {', '.join(TASKS)} to non-negative shares, not all zero")
        need(isinstance(self.stages, (list, tuple)) and all(
            isinstance(st, (list, tuple)) and len(st) == 2 and isinstance(st[0], int) and st[0] >= 0
            and _is_mixture(st[1]) for st in self.stages), "stages",
             f"must be a list of [steps >= 0, mixture] pairs, each mixture over {', '.join(TASKS)}")
        need(sum(st[0] for st in self.stages) < self.steps, "stages",
             f"take {sum(st[0] for st in self.stages)} steps of the run's {self.steps}: the mixture would never "
             "train; shorten them (e.g. stages=[]) or raise steps")
        need(isinstance(self.save_every, int) and self.save_every >= 0, "save_every", "must be an integer >= 0")
        need(0 <= self.noise_prob <= 1, "noise_prob", "must lie in [0, 1]")
        need(0 <= self.noise_rate <= 1, "noise_rate", "must lie in [0, 1]")
        need(math.isfinite(self.vision_lr_ratio) and self.vision_lr_ratio >= 0, "vision_lr_ratio",
             "must be a number >= 0")
        need(isinstance(self.vision_freeze_steps, int) and self.vision_freeze_steps >= 0, "vision_freeze_steps",
             "must be an integer >= 0")
        need(self.vision_weight_decay >= 0, "vision_weight_decay", "must be >= 0")
        need(isinstance(self.hidden_size, int) and self.hidden_size >= 24 and self.hidden_size % 24 == 0,
             "hidden_size", "must be a positive multiple of 24 (4 heads, M-RoPE in three equal sections)")
        need(isinstance(self.num_layers, int) and self.num_layers >= 1, "num_layers", "must be an integer >= 1")
        need(isinstance(self.intermediate_size, int) and self.intermediate_size >= 1, "intermediate_size",
             "must be an integer >= 1")
        need(math.isfinite(self.merger_init_scale) and self.merger_init_scale > 0, "merger_init_scale",
             "must be a positive number")


def _is_mixture(mixture: object) -> bool:
    return (isinstance(mixture, dict) and set(mixture) <= set(TASKS)
            and all(isinstance(v, (int, float)) and v >= 0 for v in mixture.values()) and sum(mixture.values()) > 0)


def _stage_at(config: PretrainConfig, step: int) -> tuple[dict, int]:
    """(the mixture of the stage `step` falls in, or `config.mixture` after the stages; steps since
    that stage began)."""
    for steps, mixture in config.stages:
        if step < steps:
            return mixture, step
        step -= steps
    return config.mixture, step


def mixture_at(config: PretrainConfig, step: int) -> dict:
    """The task mixture of `step`: the stage it falls in, or `config.mixture` after the stages."""
    return _stage_at(config, step)[0]

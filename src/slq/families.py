"""Everything that differs between backbone families, in one registry.

slq drives every family through one path: render the checkpoint's own chat template, expand the
image placeholder into the number of feature tokens the vision tower will produce, tokenise, and
call the base model with `inputs_embeds`. A family supplies only two things:

* `image_inputs`: run the image processor and say, per image, what text replaces the placeholder
  (this is the part of a HF *processor* we need; Qwen-VL processors cannot be built without
  torchvision, so slq does not use processors at all);
* `position_ids`: 1-D RoPE families count real tokens (left padding aware); Qwen-VL families use
  M-RoPE, whose positions only the model's own `get_rope_index` knows. Getting these wrong silently
  changes the prefix's hidden states, so appended queries must continue exactly where the prefix
  stopped.

A family whose processor tiles large images (InternVL, Idefics3) also names, in `one_tile_options`,
the processor arguments that give each image as one tile at the processor's native size instead
(`image_inputs(..., one_tile=True)`), as the SLQ paper's reference code feeds InternVL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .errors import SLQError


@dataclass
class ImageInputs:
    """Processed pixels for one batch, plus the text each image's placeholder becomes."""

    model_inputs: dict[str, torch.Tensor]  # passed to the model as keyword arguments
    placeholder_text: list[str]  # one per image


class Family:
    """Base family: 1-D RoPE, one image placeholder token expanded to a fixed count."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    # Image-processor arguments that make it give each image as one tile of its native size; empty
    # for a family whose processor never tiles.
    one_tile_options: dict = {}

    def image_token(self, config, tokenizer) -> str:
        return tokenizer.convert_ids_to_tokens(config.image_token_id)

    def image_inputs(self, config, tokenizer, image_processor, images: Sequence[Image.Image], *,
                     one_tile: bool = False) -> ImageInputs:
        """Pixels and placeholder texts for `images`; `one_tile`: each image as one tile (no tiling)."""
        raise NotImplementedError

    def _process(self, image_processor, images, one_tile: bool, **kwargs) -> dict:
        """The image processor's output for `images`, as tensors; one tile each when `one_tile`."""
        return image_processor(images=images, return_tensors="pt", **(self.one_tile_options if one_tile else {}),
                               **kwargs)

    def extra_inputs(self, config, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model kwargs derived from the token ids (e.g. Qwen's multimodal token types)."""
        return {}

    def position_ids(self, model, input_ids, attention_mask, model_inputs) -> torch.Tensor:
        """Positions of real tokens count from 0 after the left padding."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)


class TextFamily(Family):
    """Text-only causal LMs (Gemma 3, Qwen2/2.5/3, Llama, ...): 1-D RoPE, no images.

    E5-V showed a language model's text embeddings carry over; the same queries, pooling and loss
    train on text pairs alone.
    """

    name = "text"
    model_types = ()  # any causal-LM model_type that no vision-language family claims

    def image_token(self, config, tokenizer) -> str:
        raise self._no_images(config)

    def image_inputs(self, config, tokenizer, image_processor, images, *, one_tile=False):
        raise self._no_images(config)

    @staticmethod
    def _no_images(config) -> SLQError:
        return SLQError(f"{config.model_type} is a text-only backbone: it cannot embed images")


class QwenVLFamily(Family):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: dynamic resolution, M-RoPE."""

    def __init__(self, name: str):
        self.name = name
        self.model_types = (name,)

    def image_inputs(self, config, tokenizer, image_processor, images, *, one_tile=False):
        out = self._process(image_processor, list(images), one_tile)
        merge = image_processor.merge_size
        token = self.image_token(config, tokenizer)
        counts = [int(thw.prod()) // (merge * merge) for thw in out["image_grid_thw"]]
        return ImageInputs(
            {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]},
            [token * n for n in counts],
        )

    def extra_inputs(self, config, input_ids):
        return {"mm_token_type_ids": (input_ids == config.image_token_id).int()}  # 1 = image token

    def position_ids(self, model, input_ids, attention_mask, model_inputs):
        position_ids, _ = model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=self.extra_inputs(model.config, input_ids)["mm_token_type_ids"],
            image_grid_thw=model_inputs.get("image_grid_thw"),
            attention_mask=attention_mask,
        )
        return position_ids  # (3, B, L)


class InternVLFamily(Family):
    """InternVL (HF-native): fixed tiles of image_seq_length tokens wrapped in <img>…</img>.

    Its processor may cut an image into up to `max_patches` tiles plus a thumbnail; one tile is the
    image resized to the processor's `size` (448x448 for InternVL3: 256 tokens).
    """

    name = "internvl"
    model_types = ("internvl",)
    one_tile_options = {"crop_to_patches": False}

    def image_inputs(self, config, tokenizer, image_processor, images, *, one_tile=False):
        out = self._process(image_processor, list(images), one_tile)
        vision = config.vision_config
        side = vision.image_size[0] // vision.patch_size[0]
        per_tile = int(side * side * config.downsample_ratio**2)
        tiles = out.get("num_patches", torch.ones(len(images), dtype=torch.long))
        token = self.image_token(config, tokenizer)
        return ImageInputs(
            {"pixel_values": out["pixel_values"]},
            [f"<img>{token * per_tile * int(n)}</img>" for n in tiles],
        )


class Idefics3Family(Family):
    """Idefics3 / SmolVLM: optional grid of tiles, each tagged, then a global image."""

    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    one_tile_options = {"do_image_splitting": False}  # the global image alone, at max_image_size

    def image_inputs(self, config, tokenizer, image_processor, images, *, one_tile=False):
        out = self._process(image_processor, [[im] for im in images], one_tile, return_row_col_info=True)
        vision = config.vision_config
        seq = int((vision.image_size // vision.patch_size) ** 2 / config.scale_factor**2)
        token = self.image_token(config, tokenizer)
        tiles = token * seq
        fake, glob = "<fake_token_around_image>", "<global-img>"
        texts = []
        for rows, cols in zip(out["rows"], out["cols"]):
            rows, cols = int(rows[0]), int(cols[0])
            grid = "".join(
                "".join(f"{fake}<row_{r + 1}_col_{c + 1}>{tiles}" for c in range(cols)) + "\n" for r in range(rows)
            )
            texts.append(f"{grid}\n{fake}{glob}{tiles}{fake}" if rows or cols else f"{fake}{glob}{tiles}{fake}")
        inputs = {"pixel_values": out["pixel_values"]}
        if "pixel_attention_mask" in out:
            inputs["pixel_attention_mask"] = out["pixel_attention_mask"]
        return ImageInputs(inputs, texts)


class LlavaFamily(Family):
    """LLaVA-1.5 style: one CLIP-like image, a token per patch (plus CLS under 'full')."""

    name = "llava"
    model_types = ("llava",)

    def image_inputs(self, config, tokenizer, image_processor, images, *, one_tile=False):
        out = self._process(image_processor, list(images), one_tile)
        height, width = out["pixel_values"].shape[-2:]
        patch = config.vision_config.patch_size
        count = (height // patch) * (width // patch) + (config.vision_feature_select_strategy == "full")
        return ImageInputs({"pixel_values": out["pixel_values"]}, [self.image_token(config, tokenizer) * count] * len(images))


class Gemma3Family(Family):
    """Gemma 3 (4B-27B, and slq-gemma-vl): a SigLIP tower pooled to `mm_tokens_per_image` soft tokens.

    The chat template marks an image with `<start_of_image>`; Gemma's processor expands it to
    `\n\n<start_of_image>` + soft tokens + `<end_of_image>\n\n` (with pan-and-scan, the original
    image and its crops, each so expanded). The soft tokens of one image attend to each other both
    ways, which the model does when told where they are by `token_type_ids` (1 on image tokens); the
    appended queries are text (0), so they attend causally and leave the prompt untouched.
    """

    name = "gemma3"
    model_types = ("gemma3",)
    one_tile_options = {"do_pan_and_scan": False}

    def image_token(self, config, tokenizer) -> str:
        return tokenizer.convert_ids_to_tokens(config.boi_token_id)

    def image_inputs(self, config, tokenizer, image_processor, images, *, one_tile=False):
        out = self._process(image_processor, list(images), one_tile)
        soft = tokenizer.convert_ids_to_tokens(config.image_token_id)
        boi, eoi = self.image_token(config, tokenizer), tokenizer.convert_ids_to_tokens(config.eoi_token_id)
        full = f"\n\n{boi}{soft * config.mm_tokens_per_image}{eoi}\n\n"
        crops = [int(n) for n in out.get("num_crops", [0] * len(images))]
        texts = [full if not n else f"Here is the original image {full} and here are some crops to help you see "
                 "better " + " ".join([full] * n) for n in crops]
        return ImageInputs({"pixel_values": out["pixel_values"]}, texts)

    def extra_inputs(self, config, input_ids):
        return {"token_type_ids": (input_ids == config.image_token_id).long()}  # 1 = image token: bidirectional


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        QwenVLFamily("qwen2_vl"),
        QwenVLFamily("qwen2_5_vl"),
        QwenVLFamily("qwen3_vl"),
        InternVLFamily(),
        Idefics3Family(),
        LlavaFamily(),
        Gemma3Family(),
        TextFamily(),
    )
}


def family_for(model_type: str) -> Family:
    """The family that handles a config's `model_type`, or a clear error listing what is supported."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    if is_causal_lm(model_type):
        return FAMILIES["text"]
    supported = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise SLQError(f"unsupported backbone model_type {model_type!r}; slq supports: {', '.join(supported)}, "
                   "and text-only causal LMs (AutoModelForCausalLM)")


def is_causal_lm(model_type: str) -> bool:
    """Whether this model_type is a decoder-only LM: transformers has a causal-LM head for it and it is
    not an encoder (BERT-like models have a causal-LM head too, but attend both ways)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES

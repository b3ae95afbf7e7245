"""Tiny randomly initialised checkpoints of every supported family, built offline.

No model hub is reachable here, yet tests and smoke runs must load checkpoints through exactly the
path a downloaded one takes. So `build_tiny_model` writes a *normal checkpoint folder*: config,
safetensors weights, a tokenizer trained on a small corpus, a chat template in the family's own
style and an image-processor config. Nothing in slq treats these folders specially.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ._io import save_folder
from .errors import SettingError, SLQError

# Words enough for a byte-level BPE that tokenises captions in a few pieces, not byte by byte.
_CORPUS = """a an the one two three four five small large big tiny red green blue yellow purple orange
black white grey gray brown pink circle square triangle star shape shapes object objects above below
left right of next to on in near and with cat dog bird animal shelf table photo picture image of
sitting standing lying man woman child people street car bus train sky water grass tree house room
kitchen food plate pizza bowl cup banana apple sandwich horse sheep cow elephant bear zebra giraffe""".split()

_QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_INTERNVL_TEMPLATE = _QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")
_IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
_LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinyRecipe:
    """What differs between families' tiny checkpoints."""

    special_tokens: tuple[str, ...]
    pad_token: str
    eos_token: str
    chat_template: str
    make_config: Callable[[dict[str, int], int], tuple[type, dict]]  # (token ids, vocab) -> (class, kwargs)
    make_image_processor: Callable[[], object] | None  # None: a text-only causal LM
    bos_token: str | None = None


def _qwen_text(vocab: int, ids: dict[str, int], **extra) -> dict:
    return dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], **extra,
    )


def _qwen_ids(ids: dict[str, int]) -> dict[str, int]:
    return dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def _qwen2_vl_config(ids: dict[str, int], vocab: int):
    from transformers import Qwen2VLConfig

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    return Qwen2VLConfig, dict(
        text_config=_qwen_text(vocab, ids, rope_parameters=rope),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2, in_channels=3),
        **_qwen_ids(ids),
    )


def _qwen2_5_vl_config(ids: dict[str, int], vocab: int):
    from transformers import Qwen2_5_VLConfig

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    return Qwen2_5_VLConfig, dict(
        text_config=_qwen_text(vocab, ids, rope_parameters=rope),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=56,
                           fullatt_block_indexes=[1], in_channels=3),
        **_qwen_ids(ids),
    )


def _qwen3_vl_config(ids: dict[str, int], vocab: int):
    from transformers import Qwen3VLConfig

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "mrope_interleaved": True}
    return Qwen3VLConfig, dict(
        text_config=_qwen_text(vocab, ids, head_dim=8, rope_parameters=rope),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=[0, 1], in_channels=3),
        **_qwen_ids(ids),
    )


def _qwen_image_processor(patch: int):
    def make():
        from transformers import Qwen2VLImageProcessorPil

        unit = patch * 2  # patch x spatial merge
        return Qwen2VLImageProcessorPil(
            patch_size=patch, merge_size=2, temporal_patch_size=2,
            size={"shortest_edge": unit * unit * 4, "longest_edge": unit * unit * 16},
        )

    return make


def _internvl_config(ids: dict[str, int], vocab: int):
    from transformers import InternVLConfig

    return InternVLConfig, dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=[32, 32], patch_size=[4, 4], use_mask_token=False),
        text_config=dict(model_type="qwen2", vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<IMG_CONTEXT>"], downsample_ratio=0.5, projector_hidden_act="gelu",
    )


def _internvl_image_processor():
    from transformers import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=False)


def _idefics3_config(ids: dict[str, int], vocab: int):
    from transformers import Idefics3Config

    return Idefics3Config, dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=4),
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=ids["<|endoftext|>"],
                         bos_token_id=None, eos_token_id=ids["<end_of_utterance>"]),
        image_token_id=ids["<image>"], scale_factor=2,
    )


def _idefics3_image_processor():
    from transformers import Idefics3ImageProcessorPil

    return Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 32}, max_image_size={"longest_edge": 16},
    )


def _llava_config(ids: dict[str, int], vocab: int):
    from transformers import LlavaConfig

    return LlavaConfig, dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                           projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                         eos_token_id=ids["</s>"]),
        image_token_id=ids["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1,
    )


_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# Gemma 3's text vocabulary has the image delimiters; only multimodal checkpoints add the soft token.
_GEMMA_TOKENS = ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>")


def _gemma3_text_config(ids: dict[str, int], vocab: int):
    """Gemma 3's text model: embeddings scaled inside the embedding layer, sliding-window layers."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig, dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
        pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
    )


def _gemma3_config(ids: dict[str, int], vocab: int):
    """Gemma 3 with images: a SigLIP tower (16 patches) average-pooled to 4 soft tokens per image."""
    from transformers import Gemma3Config

    _, text = _gemma3_text_config(ids, vocab)
    return Gemma3Config, dict(
        text_config=text,
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        mm_tokens_per_image=4, boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )


def _gemma3_image_processor():
    from transformers import Gemma3ImageProcessorPil

    return Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False,
                                   pan_and_scan_min_crop_size=8, pan_and_scan_max_num_crops=2,
                                   pan_and_scan_min_ratio_to_activate=1.2)


def _llava_image_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


_QWEN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")

RECIPES: dict[str, TinyRecipe] = {
    "qwen2_vl": TinyRecipe(_QWEN_TOKENS, "<|endoftext|>", "<|im_end|>", _QWEN_TEMPLATE,
                           _qwen2_vl_config, _qwen_image_processor(14)),
    "qwen2_5_vl": TinyRecipe(_QWEN_TOKENS, "<|endoftext|>", "<|im_end|>", _QWEN_TEMPLATE,
                             _qwen2_5_vl_config, _qwen_image_processor(14)),
    "qwen3_vl": TinyRecipe(_QWEN_TOKENS, "<|endoftext|>", "<|im_end|>", _QWEN_TEMPLATE,
                           _qwen3_vl_config, _qwen_image_processor(16)),
    "internvl": TinyRecipe(("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"),
                           "<|endoftext|>", "<|im_end|>", _INTERNVL_TEMPLATE, _internvl_config,
                           _internvl_image_processor),
    "idefics3": TinyRecipe(("<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                            "<image>", "<global-img>",
                            *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))),
                           "<|endoftext|>", "<end_of_utterance>", _IDEFICS3_TEMPLATE, _idefics3_config,
                           _idefics3_image_processor),
    "llava": TinyRecipe(("<unk>", "<s>", "</s>", "<pad>", "<image>"), "<pad>", "</s>", _LLAVA_TEMPLATE,
                        _llava_config, _llava_image_processor),
    "gemma3": TinyRecipe(_GEMMA_TOKENS + ("<image_soft_token>",), "<pad>", "<eos>", _GEMMA_TEMPLATE, _gemma3_config,
                         _gemma3_image_processor, bos_token="<bos>"),
    "gemma3_text": TinyRecipe(_GEMMA_TOKENS, "<pad>", "<eos>", _GEMMA_TEMPLATE, _gemma3_text_config, None,
                              bos_token="<bos>"),
}

TINY_FAMILIES = tuple(RECIPES)
TINY_TEXT_FAMILIES = tuple(name for name, recipe in RECIPES.items() if recipe.make_image_processor is None)


def _train_tokenizer(recipe: TinyRecipe, vocab_size: int, corpus: Sequence[str] = ()):
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(recipe.special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([" ".join(_CORPUS)] + _CORPUS + list(corpus), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=recipe.pad_token, eos_token=recipe.eos_token,
                                   bos_token=recipe.bos_token, chat_template=recipe.chat_template,
                                   padding_side="left")


def _deep_merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


def tiny_parts(family: str, *, vocab_size: int = 512, config_overrides: dict | None = None,
               image_processor_overrides: dict | None = None, corpus: Sequence[str] = ()):
    """(config, tokenizer, image processor or None) of a tiny `family` checkpoint, without its weights: a
    benchmark can then build a random model of any size directly on its device."""
    if family not in RECIPES:
        raise SLQError(f"unknown family {family!r}; choose one of: {', '.join(TINY_FAMILIES)}")
    recipe = RECIPES[family]
    tokenizer = _train_tokenizer(recipe, vocab_size, corpus)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in recipe.special_tokens}
    config_class, config_kwargs = recipe.make_config(ids, len(tokenizer))
    config = config_class(**_deep_merge(config_kwargs, config_overrides or {}))
    image_processor = None
    if recipe.make_image_processor is not None:
        image_processor = recipe.make_image_processor()
        if image_processor_overrides:
            image_processor = type(image_processor)(**_deep_merge(image_processor.to_dict(), image_processor_overrides))
    return config, tokenizer, image_processor


def build_tiny_model(family: str, out_dir: str | os.PathLike, *, seed: int = 0, vocab_size: int = 512,
                     config_overrides: dict | None = None, image_processor_overrides: dict | None = None,
                     corpus: Sequence[str] = (), overwrite: bool = False) -> Path:
    """Write a small random checkpoint folder of `family` to `out_dir` (atomically) and return its path.

    The overrides are deep-merged into the config and the image processor's settings, so the same
    recipe gives benchmark-sized models (e.g. `{"text_config": {"hidden_size": 512}}`). `corpus`:
    extra texts the tokenizer is trained on, so a model's own domain tokenises into few pieces.
    """
    if family not in RECIPES:
        raise SLQError(f"unknown family {family!r}; choose one of: {', '.join(TINY_FAMILIES)}")
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise SettingError("overwrite", rule=f"{out} exists and is not empty; choose a new folder or overwrite it")
    config, tokenizer, image_processor = tiny_parts(family, vocab_size=vocab_size, config_overrides=config_overrides,
                                                    image_processor_overrides=image_processor_overrides, corpus=corpus)
    writers = [image_processor.save_pretrained] if image_processor is not None else []
    torch.manual_seed(seed)
    auto_model = AutoModelForImageTextToText if image_processor is not None else AutoModelForCausalLM
    model = auto_model.from_config(config)
    save_folder(out, model.save_pretrained, tokenizer.save_pretrained, *writers)
    return out

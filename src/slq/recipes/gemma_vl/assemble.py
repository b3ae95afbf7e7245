"""slq-gemma-vl as a checkpoint folder: Gemma 3 270M's language model, untouched, with a small vision
tower and projector, laid out as Gemma 3's multimodal checkpoints are (`Gemma3ForConditionalGeneration`).

Only the vision tower and the projector are slq's (`vision.safetensors`, a few MB, shipped in
`slq/assets/slq-gemma-vl`); the language model comes from its registry package (Gemma terms) and
is assembled with them into a cached folder on first use, so the two are never redistributed
together. Gemma 3 270M's text vocabulary (262,144 tokens) has no image soft token; Gemma 3's
multimodal checkpoints put it at id 262,144 in a table padded to 262,208 rows, and so does this one
(the 64 new rows are zero and never read: image positions take the projector's output). Every
other weight of the language model is Gemma's, bit for bit (`language_model_sha256`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..._io import cache_root, file_sha256, save_folder, setting
from ...errors import SettingError, SLQError

logger = logging.getLogger("slq")

IMAGE_SOFT_TOKEN = "<image_soft_token>"
EXTRA_ROWS = 64  # Gemma 3 4B-27B: 262,144 text tokens, then the soft token and padding (262,208 rows)
VISION_FILE = "vision.safetensors"
SETTINGS_FILE = "gemma-vl.json"
_MARKER = "slq-gemma-vl.json"  # written last in an assembled folder
SLQ_GEMMA_VL = Path(__file__).resolve().parents[2] / "assets" / "slq-gemma-vl"  # the shipped tower and projector

# Gemma 3's chat template (as its instruction-tuned checkpoints ship it), image parts included.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)


@dataclass(frozen=True)
class VisionSettings:
    """The vision tower and projector slq adds to the language model (saved beside their weights)."""

    image_side: int = setting(64, "the processor resizes every image to this square")
    patch_size: int = setting(8, "pixels per patch side: (image_side / patch_size)^2 patches")
    hidden_size: int = setting(192, "the vision tower's width")
    num_layers: int = setting(4, "the vision tower's transformer blocks")
    num_heads: int = setting(4, "attention heads in the vision tower")
    intermediate_size: int = setting(768, "the vision tower's MLP width")
    tokens_per_image: int = setting(16, "soft tokens per image (a square number; patches are average-pooled to it)")
    image_mean: tuple = setting((0.95, 0.93, 0.92), "the processor's per-channel mean (the shapes world's pixels)")
    image_std: tuple = setting((0.14, 0.16, 0.19), "the processor's per-channel std (the shapes world's pixels)")

    def __post_init__(self):
        side = self.image_side // self.patch_size
        if self.image_side % self.patch_size:
            raise SettingError("image_side", self.image_side, f"must be a multiple of patch_size {self.patch_size}")
        root = round(self.tokens_per_image ** 0.5)
        if root * root != self.tokens_per_image or side % root:
            raise SettingError("tokens_per_image", self.tokens_per_image,
                               f"must be a square number whose root divides the {side} patches per side")
        if self.hidden_size % self.num_heads:
            raise SettingError("hidden_size", self.hidden_size, f"must be a multiple of num_heads {self.num_heads}")

    def vision_config(self) -> dict:
        return dict(model_type="siglip_vision_model", hidden_size=self.hidden_size,
                    intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
                    num_attention_heads=self.num_heads, image_size=self.image_side, patch_size=self.patch_size)

    def image_processor(self):
        from transformers import Gemma3ImageProcessorPil

        return Gemma3ImageProcessorPil(size={"height": self.image_side, "width": self.image_side},
                                       image_mean=list(self.image_mean), image_std=list(self.image_std),
                                       do_pan_and_scan=False)


def vision_tensors(model) -> dict[str, torch.Tensor]:
    """What slq-gemma-vl adds to the language model: the tower and the projector, by their names in
    the full model's state dict."""
    return {name: p.detach().contiguous() for name, p in model.state_dict().items()
            if name.startswith(("model.vision_tower.", "model.multi_modal_projector."))}


def language_model_sha256(model) -> str:
    """SHA-256 over the language model's tensors as Gemma ships them: names, shapes and bytes, the
    embedding table cut back to the text vocabulary. Equal to the package's: nothing was changed."""
    digest = hashlib.sha256()
    state = model.model.language_model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if name == "embed_tokens.weight":
            tensor = tensor[: model.config.text_config.vocab_size - EXTRA_ROWS]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def build_model(lm_dir: str | os.PathLike, settings: VisionSettings, *, seed: int = 0,
                vision: Mapping[str, torch.Tensor] | None = None):
    """(model, tokenizer, image processor): Gemma's language model from `lm_dir` (a text-only Gemma 3
    folder), a vision tower and projector initialised from `seed`, or loaded from `vision`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Gemma3Config, \
        Gemma3ForConditionalGeneration

    lm_dir = Path(lm_dir)
    text = AutoConfig.from_pretrained(lm_dir)
    if text.model_type != "gemma3_text":
        raise SLQError(f"{lm_dir}: model_type {text.model_type!r}; slq-gemma-vl is built on a text-only Gemma 3 "
                       "(gemma3_text)")
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    if IMAGE_SOFT_TOKEN not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(IMAGE_SOFT_TOKEN, special=True, normalized=False)], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_SOFT_TOKEN)
    if image_id != text.vocab_size:
        raise SLQError(f"{lm_dir}: the image soft token became id {image_id}, not {text.vocab_size} as in Gemma 3")
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    text_dict = {**text.to_dict(), "vocab_size": text.vocab_size + EXTRA_ROWS}
    config = Gemma3Config(text_config=text_dict, vision_config=settings.vision_config(),
                          mm_tokens_per_image=settings.tokens_per_image,
                          boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
                          eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
                          image_token_index=image_id)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    state = lm.model.state_dict()
    rows = state["embed_tokens.weight"]
    state["embed_tokens.weight"] = torch.cat([rows, rows.new_zeros(EXTRA_ROWS, rows.shape[1])])
    missing, unexpected = model.model.language_model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "embed_scale" not in m]:
        raise SLQError(f"{lm_dir}: the language model's weights do not fit Gemma 3's ({missing[:3]}, {unexpected[:3]})")
    model.tie_weights()
    if vision is not None:
        own = vision_tensors(model)
        if set(vision) != set(own) or any(vision[k].shape != own[k].shape for k in own):
            raise SLQError("the vision weights do not fit these vision settings (names or shapes differ)")
        model.load_state_dict(dict(vision), strict=False)
    model.eval()
    return model, tokenizer, settings.image_processor()


def write_checkpoint(out: str | os.PathLike, model, tokenizer, image_processor, settings: VisionSettings,
                     lm_sha256: str) -> Path:
    """The full checkpoint folder, loadable by `Backbone.load` like any downloaded Gemma 3."""
    out = Path(out)

    def marker(folder: Path) -> None:
        (folder / "chat_template.jinja").write_text(GEMMA3_CHAT_TEMPLATE)
        (folder / _MARKER).write_text(json.dumps({"vision_settings": asdict(settings),
                                                  "language_model_sha256": lm_sha256}, indent=2) + "\n")

    save_folder(out, model.save_pretrained, tokenizer.save_pretrained, image_processor.save_pretrained, marker)
    return out


def read_vision(folder: str | os.PathLike) -> tuple[VisionSettings, dict[str, torch.Tensor]]:
    """The vision settings and weights of an slq-gemma-vl folder (`vision.safetensors` + `gemma-vl.json`)."""
    folder = Path(folder)
    if not (folder / VISION_FILE).is_file() or not (folder / SETTINGS_FILE).is_file():
        raise SLQError(f"{folder}: not an slq-gemma-vl folder (needs {VISION_FILE} and {SETTINGS_FILE})")
    saved = json.loads((folder / SETTINGS_FILE).read_text())
    settings = VisionSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["vision"].items()})
    return settings, load_file(str(folder / VISION_FILE))


def assemble(vision_dir: str | os.PathLike, lm_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The full slq-gemma-vl checkpoint folder for the vision weights in `vision_dir` and the language
    model in `lm_dir`, assembled once into slq's cache (named by both files' hashes) and reused."""
    vision_dir = Path(vision_dir)
    key = hashlib.sha256((file_sha256(vision_dir / VISION_FILE) + file_sha256(vision_dir / SETTINGS_FILE)
                          + str(Path(lm_dir).resolve())).encode()).hexdigest()[:16]
    folder = Path(cache_dir or cache_root() / "gemma-vl") / f"slq-gemma-vl-{key}"
    if (folder / _MARKER).is_file():
        return folder
    settings, vision = read_vision(vision_dir)
    logger.info("assembling slq-gemma-vl from %s and %s (once)", vision_dir, lm_dir)
    model, tokenizer, image_processor = build_model(lm_dir, settings, vision=vision)
    return write_checkpoint(folder, model, tokenizer, image_processor, settings, language_model_sha256(model))


def gemma_vl_backbone(vision_dir: str | os.PathLike = SLQ_GEMMA_VL, cache_dir: str | os.PathLike | None = None) -> Path:
    """The full slq-gemma-vl checkpoint folder: the shipped tower (or `vision_dir`'s) with Gemma 3 270M's
    language model from its registry package, assembled once into slq's cache."""
    from ..evidence import gemma_backbone

    return assemble(vision_dir, gemma_backbone(cache_dir), cache_dir)

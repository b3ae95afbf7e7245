"""Loading a frozen backbone and turning texts or images into prompt batches.

A backbone is a checkpoint folder as downloaded from a hub: config, weights, tokenizer (with its
chat template) and image-processor config. slq loads each part with transformers' Auto classes,
freezes the model structurally (no parameter requires grad, eval mode) and renders every input
through the checkpoint's own chat template with the assistant opener at the end, which is where
the latent queries go.

Text-only causal LMs (`AutoModelForCausalLM`) are backbones too, for text↔text retrieval. A base
LM may ship no chat template; its prompt is then the plain text (after the BOS), and the queries
follow it. A GGUF file is converted once to a checkpoint folder (`slq.gguf`) and loaded from there.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ._io import require_choice
from .attention import folded_gqa
from .data.images import pad_to_square
from .errors import DataError, SettingError, SLQError
from .families import Family, family_for

# Config keys that say how a checkpoint was saved or run, not what the network is.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "_attn_implementation_autoset",
    "_attn_implementation", "attn_implementation",
}
_PROBE_ROWS = 16
DEFAULT_MAX_TEXT_TOKENS = 128
# How an image becomes the vision tower's input: "processor" as the checkpoint's image processor does
# (which may tile it); "square" padded to a grey square, centred, first, and families that tile
# (InternVL, Idefics3) then give it as one tile at the processor's size, as the SLQ paper's reference
# code feeds InternVL. Others process the square as usual (Qwen-VL at its native resolution).
IMAGE_FITS = ("processor", "square")


@functools.cache
def image_processor_backend() -> str:
    """Which of transformers' image processors slq loads: "torchvision" (the fast ones, batched
    torch operations, several times faster than PIL's on a CPU) when torchvision imports, else
    "pil". Asked explicitly, because transformers picks torchvision whenever it is installed, also
    when it cannot load (a CUDA build of it beside a CPU-only torch)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or RuntimeError from a build for another torch
        return "pil"
    return "torchvision"


def check_image_fit(image_fit: str) -> str:
    """`image_fit` if it is one of `IMAGE_FITS`, else a SettingError naming them."""
    require_choice("image_fit", image_fit, IMAGE_FITS)
    return image_fit


@dataclass
class BackboneOutput:
    """What one call of the backbone gives back."""

    hidden: torch.Tensor | None  # (B, T, d) last-layer states of every token run (None when logits were asked)
    logits: torch.Tensor | None = None  # (B, k, vocab) for the last k tokens, with `logits_to_keep=k`
    keys_values: tuple | None = None  # per layer (keys, values), each (B, kv_heads, T, head_dim), if kept
    appended_positions: torch.Tensor | None = None  # (B, N) or (3, B, N): where appended tokens go


@dataclass
class PrefixBatch:
    """Left-padded prompts ending with the assistant opener, ready for queries to be appended."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L), 0 on left padding
    model_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # pixels for image batches

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _canonical(value):
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items()) if k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _read_chat_template(path: Path, tokenizer, required: bool = True) -> str | None:
    """The tokenizer's template, else the processor-level one many VL checkpoints ship separately.

    Only a text-only base LM may have none (`required=False`): its prompts are then plain text.
    """
    if tokenizer.chat_template:
        return tokenizer.chat_template
    jinja, as_json = path / "chat_template.jinja", path / "chat_template.json"
    if jinja.is_file():
        return jinja.read_text()
    if as_json.is_file():
        return json.loads(as_json.read_text())["chat_template"]
    if not required:
        return None
    raise SLQError(f"{path}: no chat template found (tokenizer_config.json, chat_template.jinja or chat_template.json)")


def model_kwargs(model, family: Family, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 model_inputs: dict[str, torch.Tensor], positions: torch.Tensor | None = None) -> dict:
    """Keyword arguments of one call of `model` over `input_ids` (B, L): the mask, the positions (the
    family's: M-RoPE for Qwen-VL; `positions` when the caller has them already), the pixel inputs
    and the family's extra inputs. Every call of a model on prompts is built here (`Backbone.forward`,
    pretraining's collator); `Backbone.forward_after` only continues prompts already run."""
    if positions is None:
        positions = family.position_ids(model, input_ids, attention_mask, model_inputs)
    return dict(attention_mask=attention_mask, position_ids=positions, **model_inputs,
                **family.extra_inputs(model.config, input_ids))


class Backbone:
    """A frozen vision-language model (or text-only LM) with its tokenizer, image processor and family hooks."""

    def __init__(self, model, tokenizer, image_processor, family: Family, path: Path,
                 max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS, *, image_fit: str = "processor"):
        if check_image_fit(image_fit) != "processor" and family.name == "text":
            raise SettingError("image_fit", image_fit, f"{path} is a text-only backbone: it has no images to fit")
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.family = family
        self.path = path
        self.max_text_tokens = max_text_tokens
        self.image_fit = image_fit
        self.tokenizer.padding_side = "left"  # queries must sit right after each row's last real token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Some templates (LLaVA-1.5) leave the BOS to the tokenizer, which slq does not let add
        # specials (most templates render them); prepend it where the tokenizer itself would.
        bos = self.tokenizer.bos_token
        adds_bos = bos is not None and self.tokenizer("a")["input_ids"][:1] == [self.tokenizer.bos_token_id]
        self._bos_prefix = bos if adds_bos else ""
        # Special tokens only: Gemma's tokenizer also adds plain ones (runs of newlines, spaces) that texts may hold.
        specials = {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        self._special_strings = sorted(specials, key=len, reverse=True)
        self.freeze()

    @classmethod
    def load(cls, path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
             trust_remote_code: bool = False, image_fit: str = "processor") -> Backbone:
        """Load a checkpoint folder through transformers' Auto classes, exactly as downloaded.

        A `.gguf` file is converted to a folder in slq's cache on first use (see `slq.gguf`).
        `image_fit`: how images reach the vision tower (`IMAGE_FITS`).
        """
        check_image_fit(image_fit)  # before minutes of loading
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoTokenizer,
        )

        path = Path(path)
        if path.suffix.lower() == ".gguf" and path.is_file():
            from .gguf import convert_gguf

            path = convert_gguf(path)
        if not (path / "config.json").is_file():
            raise SLQError(f"{path}: not a checkpoint folder (no config.json)")
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as e:
            raise SLQError(f"{path}: cannot read config.json: {e}") from None
        family = family_for(config.model_type)
        text_only = family.name == "text"
        if text_only and hasattr(config, "vision_config"):
            raise SLQError(f"{path}: model_type {config.model_type!r} is a vision-language model slq does not "
                           "support yet; its text-only variant would load, but not its images")
        auto_model = AutoModelForCausalLM if text_only else AutoModelForImageTextToText
        try:
            model = auto_model.from_pretrained(path, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            image_processor = None if text_only else AutoImageProcessor.from_pretrained(
                path, trust_remote_code=trust_remote_code, backend=image_processor_backend())
        except (OSError, ValueError) as e:  # missing weights, tokenizer or processor files
            raise SLQError(f"{path}: cannot load the checkpoint: {str(e).splitlines()[0]}") from None
        tokenizer.chat_template = _read_chat_template(path, tokenizer, required=not text_only)
        if device is not None:
            try:
                model.to(device)
            except (AssertionError, RuntimeError) as e:  # e.g. CUDA asked of a CPU-only torch
                raise SettingError("device", str(device), str(e)) from None
        return cls(model, tokenizer, image_processor, family, path, image_fit=image_fit)

    def compile(self) -> None:
        """Compile the language model in place with torch.compile (dynamic shapes, so prompts of any
        length share graphs). A query pass runs a few tokens through every layer, so on a GPU it is
        bound by kernel launches, which compiling fuses (measured in docs/performance.md)."""
        self.model.get_decoder().compile(dynamic=True)

    # --- identity -----------------------------------------------------------------------------

    def freeze(self) -> None:
        """Frozen structurally: nothing in the backbone can receive a gradient or change mode."""
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def config(self):
        return self.model.config

    @property
    def text_only(self) -> bool:
        """A causal LM without a vision tower: it embeds texts only."""
        return self.family.name == "text"

    @property
    def hidden_size(self) -> int:
        return self.config.get_text_config().hidden_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embeddings.weight.dtype

    @property
    def input_embeddings(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()

    def fingerprint(self) -> dict:
        """What an adapter records to refuse being loaded onto another backbone.

        `config_sha256` identifies the architecture; `embedding_probe` (L2 norms of a few evenly
        spaced rows of the input embedding) and `weights_probe` (norms of a few parameters spread
        over the whole model, vision tower and language model alike) tell apart checkpoints of the
        same architecture: a pretrained model and its random twin, or a fine-tune that left the
        embeddings alone. Norms, unlike sums, do not cancel, so a reload in bfloat16 stays within
        the comparison's tolerance.
        """
        text = self.config.get_text_config()
        canonical = json.dumps(_canonical(self.config.to_dict()), sort_keys=True, default=str)
        weight = self.input_embeddings.weight.detach()
        rows = torch.linspace(0, weight.shape[0] - 1, _PROBE_ROWS).long()
        probe = weight[rows].float().norm(dim=-1).tolist()
        params = sorted(self.model.named_parameters())
        picked = [params[i][1] for i in torch.linspace(0, len(params) - 1, min(8, len(params))).long().tolist()]
        weights_probe = [p.detach().float().norm().item() for p in picked]
        return {
            "family": self.family.name,
            "model_type": self.config.model_type,
            "hidden_size": text.hidden_size,
            "num_hidden_layers": text.num_hidden_layers,
            "vocab_size": text.vocab_size,
            "config_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
            "embedding_probe": [round(v, 6) for v in probe],
            "weights_probe": [round(v, 6) for v in weights_probe],
        }

    # --- prompts ------------------------------------------------------------------------------

    def _prompt(self, content: list[dict]) -> str:
        """The user turn and the assistant opener, rendered by the checkpoint's own chat template.

        A text-only base LM without a template gets the plain text (the queries then follow it).
        """
        if self.tokenizer.chat_template is None:
            return self._bos_prefix + "".join(item["text"] for item in content)
        prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                    add_generation_prompt=True, tokenize=False)
        return prompt if prompt.startswith(self._bos_prefix) else self._bos_prefix + prompt

    def _check_text(self, text: str) -> str:
        """Refuse texts that spell a special token: it would become that token and reshape the prompt."""
        for token in self._special_strings:
            if token in text:
                shown = text if len(text) <= 60 else text[:57] + "..."
                raise DataError(f"text {shown!r} contains {token!r}, a special token of this backbone's "
                                "tokenizer; remove it (it would change the prompt's structure)")
        return text

    def truncate(self, text: str) -> str:
        """`text` cut to `max_text_tokens` tokens (a caption longer than what the model was tuned on)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_text_tokens:
            return text
        return self.tokenizer.decode(ids[: self.max_text_tokens])

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(prompts, padding=True, add_special_tokens=False, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def place(self, batch: PrefixBatch) -> PrefixBatch:
        """A batch built on the CPU (`place=False`) moved to the model's device, pixels in its dtype.

        Building and placing are apart so that batches can be built ahead in worker processes
        (`slq.prefetch`), which must never touch the GPU; placing is the same either way, so a
        batch built ahead is bit for bit the one built in place."""
        model_inputs = {k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype)
                        for k, v in batch.model_inputs.items()}
        return PrefixBatch(batch.input_ids.to(self.device), batch.attention_mask.to(self.device), model_inputs)

    def text_batch(self, texts: Sequence[str], instruction: str = "", *, truncate: bool = True,
                   place: bool = True) -> PrefixBatch:
        """Captions as user turns, each truncated to `max_text_tokens` tokens (unless the caller
        has cut what it must), then `instruction`. `place=False` leaves the batch on the CPU."""
        cut = self.truncate if truncate else (lambda t: t)
        prompts = [self._prompt([{"type": "text", "text": cut(self._check_text(t)) + instruction}]) for t in texts]
        batch = PrefixBatch(*self._tokenize(prompts))
        return self.place(batch) if place else batch

    def image_batch(self, images: Sequence[Image.Image], instruction: str = "", *, place: bool = True) -> PrefixBatch:
        """Images as user turns whose placeholder is expanded to the vision tower's token count,
        each followed by `instruction` (if any) in the same turn.

        Under `image_fit="square"` each image is padded to a grey square first and given as one tile.
        """
        return self.image_text_batch(images, [instruction] * len(images), place=place)

    def image_text_batch(self, images: Sequence[Image.Image], texts: Sequence[str], *,
                         place: bool = True) -> PrefixBatch:
        """Each image with its own text after it in one user turn (texts may be empty): an image
        with a question, an instruction, or both, as one prompt. Texts are checked for special
        tokens; truncating them is the caller's choice. `place=False` leaves the batch on the CPU."""
        if self.text_only:
            raise SLQError(f"{self.path}: a text-only backbone ({self.config.model_type}) cannot embed images; "
                           "use a dataset whose records have \"text\" targets")
        assert len(images) == len(texts), f"{len(images)} images for {len(texts)} texts"
        square = self.image_fit == "square"
        if square:
            images = [pad_to_square(image) for image in images]
        inputs = self.family.image_inputs(self.config, self.tokenizer, self.image_processor, images, one_tile=square)
        token = self.family.image_token(self.config, self.tokenizer)
        templates: dict[str, str] = {}  # one rendering per distinct text
        for text in texts:
            if text not in templates:
                content = [{"type": "image"}] + ([{"type": "text", "text": self._check_text(text)}] if text else [])
                templates[text] = template = self._prompt(content)
                if template.count(token) != 1:
                    raise SLQError(f"{self.path}: the chat template renders an image as {template.count(token)} "
                                   f"{token!r} placeholders; slq expects exactly one")
        prompts = [templates[text].replace(token, expansion) for text, expansion in zip(texts, inputs.placeholder_text)]
        batch = PrefixBatch(*self._tokenize(prompts), dict(inputs.model_inputs))
        return self.place(batch) if place else batch

    # --- the one call of the model ------------------------------------------------------------

    def forward(self, batch: PrefixBatch, appended: torch.Tensor | None = None, *, num_appended: int = 0,
                keep_keys_values: bool = False, logits_to_keep: int = 0) -> BackboneOutput:
        """Run a prompt batch through the model, the only place slq calls it on prompts.

        Positions come from the family (M-RoPE for Qwen-VL) over the whole sequence, so tokens after
        the prompt continue exactly where it stopped; wrong positions would silently change every
        state. `appended` (N, d) or (B, N, d) embeddings run after every row's prompt (the latent
        queries). With `num_appended` instead, only the prompt runs, and `appended_positions` says
        where N tokens appended later must go (the cached engine's first half). `keep_keys_values`
        returns every layer's keys/values at full length; `logits_to_keep` > 0 runs the LM head on
        the last that many tokens (generation) instead of returning hidden states.
        """
        prefix_len = batch.input_ids.shape[1]
        count = appended.shape[-2] if appended is not None else num_appended
        ids, mask = batch.input_ids, batch.attention_mask
        if count:  # positions over prompt + appended tokens, so that the appended ones continue the prompt
            b = len(batch)
            ids = torch.cat([ids, ids.new_full((b, count), self.tokenizer.pad_token_id)], dim=1)  # (B, L+N): stand-ins
            mask = torch.cat([mask, mask.new_ones((b, count))], dim=1)
        positions = self.family.position_ids(self.model, ids, mask, batch.model_inputs)  # (..., B, L+N)
        if appended is not None:
            embeds = self.input_embeddings(batch.input_ids)  # (B, L, d)
            extra = appended.to(embeds.dtype).expand(len(batch), -1, -1)  # (B, N, d)
            inputs = {"inputs_embeds": torch.cat([embeds, extra], dim=1)}  # (B, L+N, d)
        else:  # the prompt alone runs; its ids find the image slots exactly
            ids, mask = batch.input_ids, batch.attention_mask
            positions, later = positions[..., :prefix_len], positions[..., prefix_len:]
            inputs = {"input_ids": batch.input_ids}
        kwargs = {**model_kwargs(self.model, self.family, ids, mask, batch.model_inputs, positions), **inputs}
        if keep_keys_values:
            from transformers import DynamicCache

            kwargs.update(use_cache=True, past_key_values=DynamicCache())  # no config: every layer keeps every key
        if logits_to_keep:
            out = self.model(**kwargs, logits_to_keep=logits_to_keep)
            result = BackboneOutput(None, logits=out.logits)
        else:
            out = self.model.model(**kwargs)
            result = BackboneOutput(out.last_hidden_state)
        if keep_keys_values:
            result.keys_values = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
        if appended is None and count:
            result.appended_positions = later
        return result

    def forward_after(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                      attention_mask: torch.Tensor, positions: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """Run `embeds` (N, d) after prompts already run, from their keys/values: (B, N, d) states.

        `attention_mask` (B, L) covers the prompts (0 at left padding) and `positions` are the
        appended tokens' (`BackboneOutput.appended_positions`). Gradients flow to `embeds` only.
        """
        from transformers import DynamicCache

        b, count = attention_mask.shape[0], embeds.shape[-2]
        mask = torch.cat([attention_mask, attention_mask.new_ones((b, count))], dim=1)  # (B, L+N)
        inputs = embeds.to(self.dtype).expand(b, -1, -1)  # (B, N, d)
        # no config: sliding-window layers would drop keys; the masks still apply the window
        cache = DynamicCache(ddp_cache_data=list(zip(keys, values)))
        with folded_gqa(self.config.get_text_config()):  # no per-head copies of the prompt's keys/values
            out = self.model.model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions,
                                   past_key_values=cache, use_cache=True)
        return out.last_hidden_state

"""slq encoders behind the interfaces of sentence-transformers and MTEB.

Both adapters wrap any `slq.encoder.Encoder` (an `SLQRetriever` or a baseline) and return exactly
its `encode_text` / `encode_image` vectors, L2-normalised, so a number measured through either
tool is a number about slq. Neither package is a dependency of slq: they come with the
`integrations` extra and are imported only when an adapter is built, so `import slq` (and this
module) stays as light as before.

* `to_sentence_transformer(encoder)` gives a `SentenceTransformer` whose one module, `SLQModule`,
  takes texts and images (PIL images, or image file paths as sentence-transformers recognises them).
  A prompt (`encode(..., prompt=)`, `prompt_name=`, or the "query" prompt `encode_query` uses, which
  `instruction=` sets) is slq's instruction: `encode_query(x, prompt=P)` equals
  `encoder.encode_query(x, instruction=P)`, for a text or an image.
  `.save(path)` records the backbone's path and writes the adapter beside it (SLQRetriever only);
  `SentenceTransformer(path, trust_remote_code=True)` loads it again, the backbone from its path.
* `MTEBEncoder(encoder)` implements mteb 2.x's `EncoderProtocol` (`encode` over a DataLoader of
  batched inputs, `similarity`, `mteb_model_meta`); `instruction=` (every task) or
  `task_instructions=True` (each task's own, from its metadata) instruct the queries, never the
  documents, as mteb's instruction-following models do.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .data.images import load_image
from .data.pairs import Input
from .encoder import Encoder
from .errors import SettingError, SLQError
from .retriever import SLQRetriever

if TYPE_CHECKING:
    from mteb import TaskMetadata
    from mteb.models.model_meta import ModelMeta
    from mteb.types import PromptType
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger("slq")

EXTRA = "integrations"  # the pip extra that brings both packages
ADAPTER_FOLDER = "slq_adapter"  # where a saved SentenceTransformer keeps the retriever's adapter


def _require(package: str, purpose: str):
    """Import an optional package, or say which extra brings it."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise SLQError(f"{purpose} needs the {package} package ({e}); install it with: "
                       f"pip install 'slq[{EXTRA}]'") from None


def _extra_parameters(encoder: Encoder) -> dict[str, nn.Parameter]:
    """The encoder's trained tensors that live outside the backbone model (SLQ's queries), by name."""
    inside = {id(p) for p in encoder.backbone.model.parameters()}
    return {name: p for name, p in encoder.trainable_tensors().items() if id(p) not in inside}


# --- sentence-transformers ----------------------------------------------------------------------

@functools.cache
def _module_class() -> type:
    """`SLQModule`, built on first use so that sentence-transformers is imported only then."""
    _require("sentence_transformers", "a SentenceTransformer")
    from sentence_transformers.base.modality import infer_modality
    from sentence_transformers.base.modules import InputModule

    class SLQModule(InputModule):
        """A sentence-transformers input module that embeds texts and images with an slq `Encoder`.

        `preprocess` builds the encoder's prompt batch (tokens, pixels) and `forward` embeds it, the
        same two steps `Encoder.encode_*` takes. The backbone model and the trained tensors are
        registered as submodules/parameters, so the SentenceTransformer's `.to(device)` and
        `.device` act on them.
        """

        config_file_name = "slq_config.json"

        def __init__(self, encoder: Encoder):
            super().__init__()
            self.encoder = encoder  # a plain object, not an nn.Module: stored as an attribute
            self.backbone_model = encoder.backbone.model
            for name, parameter in _extra_parameters(encoder).items():
                self.register_parameter(name, parameter)
            self.tokenizer = encoder.backbone.tokenizer

        @property
        def modalities(self) -> list[str]:
            return ["text"] if self.encoder.backbone.text_only else ["text", "image"]

        @property
        def max_seq_length(self) -> int:
            """Texts are cut to this many tokens (the backbone's `max_text_tokens`)."""
            return self.encoder.backbone.max_text_tokens

        @max_seq_length.setter
        def max_seq_length(self, value: int) -> None:
            self.encoder.backbone.max_text_tokens = value

        def get_embedding_dimension(self) -> int:
            return self.encoder.dim

        def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs) -> dict[str, Any]:
            """One modality per batch, as slq embeds a text or an image, never both in one vector.

            `prompt` is the instruction of `Encoder.encode_query`: before a text, as sentence-transformers
            prepends prompts, and after an image, as slq reads an instruction beside a picture.
            """
            kinds = {infer_modality(item, supported_modalities=self.modalities) for item in inputs}
            if len(kinds) != 1 or not kinds <= set(self.modalities):
                raise SLQError(f"slq embeds {' or '.join(self.modalities)} inputs, one kind per call; got "
                               f"{sorted(map(str, kinds))}")
            kind = kinds.pop()
            items = [item[kind] if isinstance(item, dict) else item for item in inputs]  # {"image": x} forms
            if prompt and prompt.strip():
                return {"slq_batch": self.encoder.input_batch(_instructed(kind, items, prompt))}
            if kind == "text":
                return {"slq_batch": self.encoder.text_batch(items)}
            return {"slq_batch": self.encoder.image_batch(items)}

        def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
            features["sentence_embedding"] = self.encoder.embed(features["slq_batch"]).float()
            return features

        def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
            """Record the backbone's path and write the adapter; the backbone itself is not copied."""
            if not isinstance(self.encoder, SLQRetriever):
                raise SLQError(f"only an SLQRetriever can be saved as a SentenceTransformer, not a "
                               f"{type(self.encoder).__name__}; build it from slq in Python instead")
            backbone = self.encoder.backbone
            self.encoder.save(Path(output_path) / ADAPTER_FOLDER)
            config = {"backbone": str(Path(backbone.path).resolve()), "adapter": ADAPTER_FOLDER,
                      "dtype": str(backbone.dtype).removeprefix("torch.")}
            (Path(output_path) / self.config_file_name).write_text(json.dumps(config, indent=2) + "\n")

        @classmethod
        def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
                 cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
                 trust_remote_code: bool = False, **kwargs) -> SLQModule:
            """Load the recorded backbone (from its path) with the saved adapter."""
            hub = dict(subfolder=subfolder, token=token, cache_folder=cache_folder, revision=revision,
                       local_files_only=local_files_only)
            config = cls.load_config(model_name_or_path, **hub)
            if not config:
                raise SLQError(f"{model_name_or_path}: no {cls.config_file_name}; not a saved slq SentenceTransformer")
            folder = Path(cls.load_dir_path(model_name_or_path, **hub))
            logger.info("loading backbone %s with the adapter in %s", config["backbone"], folder / config["adapter"])
            retriever = SLQRetriever.from_pretrained(config["backbone"], folder / config["adapter"],
                                                     dtype=getattr(torch, config["dtype"]),
                                                     trust_remote_code=trust_remote_code)
            return cls(retriever)

    SLQModule.__module__, SLQModule.__qualname__ = __name__, "SLQModule"  # found again by `save`/`load`
    return SLQModule


def _instructed(kind: str, items: Sequence[Any], instruction: str) -> list[Input]:
    """Texts or images as `Input`s behind `instruction`, as `Encoder.encode_query` builds them."""
    if kind == "text":
        return [Input(text, None, instruction) for text in items]
    return [Input(None, item if isinstance(item, Image.Image) else load_image(item), instruction) for item in items]


def __getattr__(name: str):
    if name == "SLQModule":  # built lazily; sentence-transformers resolves saved models' modules by this name
        return _module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_sentence_transformer(encoder: Encoder, *, prompts: dict[str, str] | None = None,
                            instruction: str | None = None) -> SentenceTransformer:
    """A `SentenceTransformer` whose `encode` gives `encoder.encode_text` / `encode_image`'s vectors.

    It stays on the encoder's device (sentence-transformers would otherwise move it to a GPU).
    `prompts`: sentence-transformers' named prompts (`encode_query` uses "query", `encode_document`
    "document"), each slq's instruction for the inputs it is used on; `instruction` is the "query"
    prompt: `model.encode_query(x)` then equals `encoder.encode_query(x, instruction=instruction)`.
    """
    st = _require("sentence_transformers", "a SentenceTransformer")
    if instruction is not None:
        if prompts and "query" in prompts:
            raise SettingError("instruction", instruction, "is the \"query\" prompt; give it once, here or in prompts")
        prompts = {**(prompts or {}), "query": instruction}
    return st.SentenceTransformer(modules=[_module_class()(encoder)], device=str(encoder.backbone.device),
                                  prompts=prompts, similarity_fn_name="cosine")


# --- MTEB ---------------------------------------------------------------------------------------

class MTEBEncoder:
    """mteb 2.x's `EncoderProtocol` over an slq `Encoder`: `mteb.evaluate(MTEBEncoder(retriever), tasks)`.

    A batch's "text" column is embedded with `encode_text`, its "image" column with `encode_image`;
    a batch with both (a fused image+text input) gets the normalised sum of the two vectors, as mteb's
    own CLIP wrapper does.

    Queries (mteb's `prompt_type` "query") can be instructed, as `Encoder.encode_query(x,
    instruction=...)` embeds them; documents and symmetric tasks (no prompt type) never are.
    `instruction` applies to every task; `task_instructions=True` takes each task's own from its
    metadata (`TaskMetadata.prompt`, e.g. SciFact's "Given a scientific claim, retrieve documents
    that support or refute the claim"), falling back on `instruction` where a task has none.

    `name`/`revision` name the results in mteb's cache. The default revision is a hash of the trained
    tensors and the backbone's fingerprint (and the instructions, if any), so two adapters never
    share cached results.
    """

    def __init__(self, encoder: Encoder, *, name: str | None = None, revision: str | None = None,
                 instruction: str | None = None, task_instructions: bool = False):
        _require("mteb", "an MTEB encoder")
        self.encoder = encoder
        self.instruction, self.task_instructions = (instruction or "").strip(), task_instructions
        self.name = name or f"slq/{type(encoder).__name__}-{Path(encoder.backbone.path).name}"
        if "/" not in self.name:
            raise SLQError(f"MTEB model name {self.name!r} must read organisation/model")
        self._revision = revision

    @functools.cached_property
    def mteb_model_meta(self) -> ModelMeta:
        """The `mteb.ModelMeta` mteb names, checks (modalities) and caches the results by."""
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        backbone = self.encoder.backbone
        n_parameters = sum(p.numel() for p in backbone.model.parameters())
        n_parameters += sum(p.numel() for p in _extra_parameters(self.encoder).values())
        return ModelMeta.create_empty({
            "name": self.name, "revision": self._revision or self._fingerprint(), "embed_dim": self.encoder.dim,
            "modalities": ["text"] if backbone.text_only else ["image", "text"], "n_parameters": n_parameters,
            "max_tokens": backbone.max_text_tokens, "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": bool(self.instruction or self.task_instructions), "framework": ["PyTorch"],
            "model_type": ["dense"],
        })

    def _fingerprint(self) -> str:
        """12 hex digits naming this encoder: class, settings, trained tensors, backbone."""
        digest = hashlib.sha256(type(self.encoder).__name__.encode())
        settings = {k: v for k, v in vars(self.encoder).items() if isinstance(v, (str, int, float, bool))}
        digest.update(json.dumps([settings, self.encoder.backbone.fingerprint()], sort_keys=True,
                                 default=str).encode())
        for name, tensor in sorted(self.encoder.trainable_tensors().items()):
            digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
        if self.instruction or self.task_instructions:  # (uninstructed: the revision it always had)
            digest.update(json.dumps([self.instruction, self.task_instructions]).encode())
        return digest.hexdigest()[:12]

    def query_instruction(self, task_metadata: TaskMetadata | None, prompt_type: PromptType | None) -> str:
        """The instruction for this call's inputs: "" unless they are a task's queries."""
        if prompt_type is None or getattr(prompt_type, "value", prompt_type) != "query":
            return ""
        own = getattr(task_metadata, "prompt", None) if self.task_instructions else None
        if isinstance(own, dict):
            own = own.get("query")
        return (own or "").strip() or self.instruction

    def encode(self, inputs: Iterable[dict[str, Any]], *, task_metadata: TaskMetadata | None = None,
               hf_split: str | None = None, hf_subset: str | None = None, prompt_type: PromptType | None = None,
               **kwargs) -> np.ndarray:
        """(n, d) float32 embeddings of every batch `inputs` (a DataLoader of mteb batches) yields."""
        precision = kwargs.get("precision")
        if precision not in (None, "float32"):
            raise SLQError(f"precision {precision!r}: slq's MTEB encoder returns float32 embeddings only")
        show = kwargs.get("show_progress_bar", False)
        instruction = self.query_instruction(task_metadata, prompt_type)
        parts = [self._embed_batch(batch, instruction)
                 for batch in tqdm(inputs, desc="slq: encoding", disable=not show)]
        return np.concatenate(parts) if parts else np.empty((0, self.encoder.dim), dtype=np.float32)

    def _embed_batch(self, batch: dict[str, Any], instruction: str = "") -> np.ndarray:
        encoders = {"text": self.encoder.encode_text, "image": self.encoder.encode_image}
        found = [key for key in encoders if key in batch]
        if not found or {"audio", "video"} & set(batch):
            raise SLQError(f"slq embeds the 'text' and 'image' columns of an MTEB batch; this one has {sorted(batch)}")

        def embed(key: str) -> np.ndarray:
            items, options = list(batch[key]), {"batch_size": max(1, len(batch[key])), "show_progress_bar": False}
            if instruction:  # as encode_query(..., instruction=) embeds each
                return self.encoder.encode_inputs(_instructed(key, items, instruction), **options)
            return encoders[key](items, **options)

        vectors = [embed(key) for key in found]
        if len(vectors) == 1:
            return vectors[0]
        fused = vectors[0] + vectors[1]
        return fused / np.linalg.norm(fused, axis=1, keepdims=True)

    def similarity(self, embeddings1: np.ndarray | torch.Tensor,
                   embeddings2: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Cosine similarity matrix (the embeddings are unit vectors, so this is their dot product)."""
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: np.ndarray | torch.Tensor,
                            embeddings2: np.ndarray | torch.Tensor) -> torch.Tensor:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


# `SLQModule` is left out: a star import would build it, and so import sentence-transformers.
__all__ = ["ADAPTER_FOLDER", "EXTRA", "MTEBEncoder", "to_sentence_transformer"]

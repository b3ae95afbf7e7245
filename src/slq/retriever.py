"""`SLQRetriever`: a frozen backbone plus its Shared Latent Queries."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from .adapter import AdapterConfig, backbone_mismatch, load_adapter, save_adapter
from .backbone import Backbone, PrefixBatch, check_image_fit
from .data import ImageRecord, Input
from .encoder import Encoder, ImageInput
from .errors import AdapterError
from .prompt_cache import PromptCache
from .queries import LatentQueries, PromptBatch, pool, queries_on_prompts, query_states, run_prompts


class SLQRetriever(Encoder):
    """Encodes texts and images into one space through a frozen backbone and shared latent queries."""

    reuses_prompts = True  # the cached engine keeps prompts' keys/values (see _prepare_prompts)

    def __init__(self, backbone: Backbone, queries: LatentQueries, temperature: float = 0.07):
        if queries.weight.shape[1] != backbone.hidden_size:
            raise AdapterError(f"queries have width {queries.weight.shape[1]}, but the backbone's hidden size is "
                               f"{backbone.hidden_size}")
        super().__init__(backbone)
        self.queries = queries.to(backbone.device)
        self.temperature = temperature

    @classmethod
    def from_pretrained(cls, backbone_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None = None, *,
                        num_queries: int = 20, seed: int = 0, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, trust_remote_code: bool = False,
                        image_fit: str | None = None) -> SLQRetriever:
        """Load a backbone folder and, if given, a trained adapter (else fresh queries to train).

        `image_fit` (`Backbone.image_fit`): by default the adapter's, else "processor"; an adapter is
        refused under another one, since its queries learnt images fitted its way.
        """
        if image_fit is not None:
            check_image_fit(image_fit)
        config, weights = load_adapter(adapter_dir) if adapter_dir is not None else (None, None)
        if config is not None and image_fit not in (None, config.image_fit):
            raise AdapterError(f"{adapter_dir}: adapter was trained with image_fit {config.image_fit!r}, not "
                               f"{image_fit!r}; load it with its own")
        image_fit = image_fit or (config.image_fit if config is not None else "processor")
        backbone = Backbone.load(backbone_dir, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                 image_fit=image_fit)
        if config is None:
            return cls.fresh(backbone, num_queries, seed)
        return cls.on_backbone(backbone, adapter_dir, loaded=(config, weights))

    @classmethod
    def on_backbone(cls, backbone: Backbone, adapter_dir: str | os.PathLike, *,
                    loaded: tuple[AdapterConfig, torch.Tensor] | None = None) -> SLQRetriever:
        """An adapter on an already loaded backbone: several retrievers share one frozen model in
        memory (`slq serve` with several indexes). The adapter must fit the backbone and its image fit."""
        config, weights = loaded if loaded is not None else load_adapter(adapter_dir)
        why = backbone_mismatch(config.backbone, backbone.fingerprint())
        if not why and config.hidden_size != backbone.hidden_size:
            why = f"queries of width {config.hidden_size}, backbone hidden size {backbone.hidden_size}"
        if why:
            raise AdapterError(f"{adapter_dir}: adapter was trained for another backbone than {backbone.path}: {why}")
        if config.image_fit != backbone.image_fit:
            raise AdapterError(f"{adapter_dir}: adapter was trained with image_fit {config.image_fit!r}, but the "
                               f"backbone is loaded with {backbone.image_fit!r}")
        queries = LatentQueries(config.num_queries, config.hidden_size)
        with torch.no_grad():
            queries.weight.copy_(weights)
        return cls(backbone, queries, config.temperature)

    @classmethod
    def fresh(cls, backbone: Backbone, num_queries: int = 20, seed: int = 0) -> SLQRetriever:
        """Untrained queries on a loaded backbone, initialised from its token embeddings."""
        return cls(backbone, LatentQueries.from_backbone(backbone, num_queries, torch.Generator().manual_seed(seed)))

    def save(self, adapter_dir: str | os.PathLike, training: dict | None = None) -> Path:
        """Write the adapter folder (config, safetensors, model card)."""
        config = AdapterConfig(
            num_queries=self.queries.num_queries, hidden_size=self.backbone.hidden_size,
            backbone=self.backbone.fingerprint(), temperature=float(self.temperature), training=training or {},
            image_fit=self.backbone.image_fit,
        )
        return save_adapter(adapter_dir, self.queries.weight, config)

    def trainable_tensors(self) -> dict[str, nn.Parameter]:
        return {"queries": self.queries.weight}

    def embed(self, batch: PrefixBatch, engine: str = "cached") -> torch.Tensor:
        return pool(query_states(self.backbone, batch, self.queries.weight, engine=engine))

    def prepare_texts(self, texts: Sequence[str], engine: str = "cached", cache: PromptCache | None = None):
        return self._prepare_prompts([("text", t) for t in texts], texts, self.text_batch, engine, cache)

    def prepare_images(self, images: Sequence[ImageInput], engine: str = "cached", cache: PromptCache | None = None):
        keys = [("image", str(im.image if isinstance(im, ImageRecord) else im))
                if not isinstance(im, Image.Image) else None for im in images]  # a PIL image has no stable key
        return self._prepare_prompts(keys, images, self.image_batch, engine, cache)

    def prepare_input_group(self, inputs: Sequence[Input], engine: str = "cached", cache: PromptCache | None = None):
        return self._prepare_prompts([x.key() for x in inputs], inputs, self.input_batch, engine, cache)

    def embed_prepared(self, prepared, engine: str = "cached") -> torch.Tensor:
        if isinstance(prepared, PromptBatch):  # the cached engine: only the queries run
            return pool(queries_on_prompts(self.backbone, prepared, self.queries.weight))
        return super().embed_prepared(prepared, engine)

    @torch.no_grad()
    def _prepare_prompts(self, keys: list, items: Sequence, prepare: Callable, engine: str,
                         cache: PromptCache | None) -> PromptBatch | PrefixBatch:
        """The cached engine's first half: the prompts' keys/values, running only those `cache` lacks.

        The naive engine has nothing to run ahead: its batch goes whole through `embed`.
        """
        if engine != "cached":
            return prepare(items)
        if cache is None:
            return run_prompts(self.backbone, prepare(items), self.queries.num_queries)
        positions: dict = {}  # a prompt that appears twice in the batch is looked up and run once
        for i, key in enumerate(keys):
            positions.setdefault(key if key is not None else ("unkeyed", i), []).append(i)
        states: list = [None] * len(items)
        missing = []
        for key, rows in positions.items():
            state = cache.get(key) if key[0] != "unkeyed" else None
            if state is None:
                missing.append(key)
            for i in rows:
                states[i] = state
        if missing:
            fresh = run_prompts(self.backbone, prepare([items[positions[k][0]] for k in missing]),
                                self.queries.num_queries)
            for key, state in zip(missing, fresh.split()):
                for i in positions[key]:
                    states[i] = state
                if key[0] != "unkeyed":
                    cache.put(key, state)
            if len(missing) == len(items):
                return fresh  # nothing was kept yet and no prompt repeats: the batch as run, no re-join
        return PromptBatch.join(states, self.backbone.dtype, self.backbone.device)

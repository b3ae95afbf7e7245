"""`SLQRetriever`: a frozen backbone plus its latent queries, encoding texts and images.

Modelled on sentence-transformers: `encode_text(list) -> (n, d)` array, a single string in gives a
single vector out, inputs are sorted by length for batching (less padding) and put back in order,
and a progress bar shows on long work. Embeddings are always L2-normalised, so a dot product is the
cosine similarity.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .adapter import AdapterConfig, backbone_mismatch, load_adapter, save_adapter
from .backbone import Backbone, PrefixBatch
from .data import ImageRecord, load_image
from .errors import AdapterError
from .queries import LatentQueries, pool, query_states

ImageInput = str | os.PathLike | Image.Image | ImageRecord  # records name their source in errors


class SLQRetriever:
    """Encodes texts and images into one space through a frozen backbone and shared latent queries."""

    def __init__(self, backbone: Backbone, queries: LatentQueries, temperature: float = 0.07):
        assert queries.weight.shape[1] == backbone.hidden_size, (
            f"queries have width {queries.weight.shape[1]}, backbone hidden size is {backbone.hidden_size}")
        self.backbone = backbone
        self.queries = queries.to(backbone.device)
        self.temperature = temperature

    @classmethod
    def from_pretrained(cls, backbone_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None = None, *,
                        num_queries: int = 20, seed: int = 0, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, trust_remote_code: bool = False,
                        ) -> "SLQRetriever":
        """Load a backbone folder and, if given, a trained adapter (else fresh queries to train)."""
        backbone = Backbone.load(backbone_dir, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        if adapter_dir is None:
            generator = torch.Generator().manual_seed(seed)
            return cls(backbone, LatentQueries.from_backbone(backbone, num_queries, generator))
        config, weights = load_adapter(adapter_dir)
        why = backbone_mismatch(config.backbone, backbone.fingerprint())
        if why:
            raise AdapterError(f"{adapter_dir}: adapter was trained for another backbone than {backbone_dir}: {why}")
        queries = LatentQueries(config.num_queries, config.hidden_size)
        with torch.no_grad():
            queries.weight.copy_(weights)
        return cls(backbone, queries, config.temperature)

    def save(self, adapter_dir: str | os.PathLike, training: dict | None = None) -> Path:
        """Write the adapter folder (config, safetensors, model card)."""
        config = AdapterConfig(
            num_queries=self.queries.num_queries, hidden_size=self.backbone.hidden_size,
            backbone=self.backbone.fingerprint(), temperature=float(self.temperature), training=training or {},
        )
        return save_adapter(adapter_dir, self.queries.weight, config)

    @property
    def trainable_parameters(self) -> int:
        return self.queries.weight.numel()

    def embed(self, batch: PrefixBatch, engine: str = "cached") -> torch.Tensor:
        """(B, d) L2-normalised embeddings of a prepared batch; differentiable w.r.t. the queries."""
        return pool(query_states(self.backbone, batch, self.queries.weight, engine=engine))

    # --- encoding -----------------------------------------------------------------------------

    def encode_text(self, texts: str | Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None,
                    convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
        """Embed captions; one string gives one vector, a list gives an (n, d) matrix."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        lengths = [len(t) for t in items]
        out = self._encode(items, lengths, self.backbone.text_batch, batch_size, show_progress_bar, "encoding texts")
        return self._finish(out, single, convert_to_numpy)

    def encode_image(self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 32,
                     show_progress_bar: bool | None = None, convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
        """Embed images given as paths or PIL images; one image gives one vector."""
        single = isinstance(images, (str, os.PathLike, Image.Image, ImageRecord))
        items = [images] if single else list(images)
        sizes = [_pixel_count(im) for im in items]

        def prepare(chunk: list) -> PrefixBatch:
            return self.backbone.image_batch([im if isinstance(im, Image.Image) else load_image(im) for im in chunk])

        out = self._encode(items, sizes, prepare, batch_size, show_progress_bar, "encoding images")
        return self._finish(out, single, convert_to_numpy)

    @torch.no_grad()
    def _encode(self, items: list, lengths: list[int], prepare: Callable[[list], PrefixBatch], batch_size: int,
                show_progress_bar: bool | None, desc: str) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.argsort(lengths, kind="stable")[::-1]  # longest first: the worst batch shows up early
        result = torch.empty(len(items), self.backbone.hidden_size)
        bar = tqdm(total=len(items), desc=desc, disable=_hide(show_progress_bar, len(items)), unit="item")
        for start in range(0, len(items), batch_size):
            idx = order[start:start + batch_size]
            result[torch.as_tensor(idx.copy())] = self.embed(prepare([items[i] for i in idx])).cpu()
            bar.update(len(idx))
        bar.close()
        return result

    @staticmethod
    def _finish(out: torch.Tensor, single: bool, convert_to_numpy: bool):
        out = out[0] if single else out
        return out.numpy() if convert_to_numpy else out


def _pixel_count(image: ImageInput) -> int:
    """Image area, read from the header only, as a proxy for its token count (for batching)."""
    if isinstance(image, Image.Image):
        return image.width * image.height
    try:
        with Image.open(image.image if isinstance(image, ImageRecord) else image) as im:
            return im.width * im.height
    except (OSError, ValueError):
        return 0  # load_image reports the problem with context when the batch is built


def _hide(show_progress_bar: bool | None, n: int) -> bool | None:
    """tqdm's `disable`: None hides the bar when not on a terminal; short jobs show none by default."""
    if show_progress_bar is None:
        return None if n > 256 else True
    return not show_progress_bar

"""What every embedding method shares: prompts, length-sorted batching, progress, numpy output.

SLQ and the baselines (last-token and mean pooling, LoRA, full fine-tuning) differ only in how a
prepared batch becomes vectors (`embed`) and in which tensors train (`trainable_tensors`). The
rest, modelled on sentence-transformers' `encode`, lives here once: one string in gives one vector
out, inputs are sorted by length so batches carry little padding and are put back in order, and a
progress bar shows on long work. Embeddings are L2-normalised, so a dot product is the cosine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .backbone import Backbone, PrefixBatch
from .data import ImageRecord, Record, TextRecord, load_image

ImageInput = str | os.PathLike | Image.Image | ImageRecord  # records name their source in errors


class Encoder:
    """Base class: a frozen backbone plus a way to pool its states into one vector per input."""

    text_instruction: str = ""  # appended to each caption inside the user turn
    image_instruction: str = ""  # text after the image inside the user turn

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    def embed(self, batch: PrefixBatch, engine: str = "cached") -> torch.Tensor:
        """(B, d) L2-normalised embeddings of a prepared batch, differentiable w.r.t. what trains."""
        raise NotImplementedError

    def trainable_tensors(self) -> dict[str, nn.Parameter]:
        """The tensors an optimiser updates, by a stable name (used in checkpoints)."""
        raise NotImplementedError

    # --- training: an input's embedding in two halves -------------------------------------------
    # `prepare_*` does whatever does not depend on the trainable tensors; `embed_prepared` the rest,
    # differentiably. Baselines can only tokenise ahead (their whole forward trains); SLQ runs the
    # frozen prompt ahead and keeps its keys/values, so a second `embed_prepared` on the same
    # prepared batch is a query pass, not a forward. Chunked steps (`slq.train`) call each half
    # separately; `embed_*` chains them.

    def prepare_texts(self, texts: Sequence[str], engine: str = "cached", cache=None):
        """A text batch made ready for `embed_prepared`; `cache` is for methods that reuse prompts (SLQ)."""
        return self.text_batch(texts)

    def prepare_images(self, images: Sequence[ImageInput], engine: str = "cached", cache=None):
        return self.image_batch(images)

    def prepare_targets(self, records: Sequence[Record], engine: str = "cached", cache=None):
        """What captions retrieve, made ready: images, or texts (text-pair datasets)."""
        if records and isinstance(records[0], TextRecord):
            return self.prepare_texts([r.text for r in records], engine, cache)
        return self.prepare_images(records, engine, cache)

    def embed_prepared(self, prepared, engine: str = "cached") -> torch.Tensor:
        """(B, d) embeddings of what `prepare_*` returned, differentiable w.r.t. what trains."""
        return self.embed(prepared, engine)

    def embed_texts(self, texts: Sequence[str], engine: str = "cached", cache=None) -> torch.Tensor:
        """Training-time embedding of raw texts."""
        return self.embed_prepared(self.prepare_texts(texts, engine, cache), engine)

    def embed_images(self, images: Sequence[ImageInput], engine: str = "cached", cache=None) -> torch.Tensor:
        return self.embed_prepared(self.prepare_images(images, engine, cache), engine)

    def embed_targets(self, records: Sequence[Record], engine: str = "cached", cache=None) -> torch.Tensor:
        """Training-time embedding of what captions retrieve: images, or texts (text-pair datasets)."""
        return self.embed_prepared(self.prepare_targets(records, engine, cache), engine)

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_tensors().values())

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    def text_batch(self, texts: Sequence[str]) -> PrefixBatch:
        return self.backbone.text_batch(texts, instruction=self.text_instruction)

    def image_batch(self, images: Sequence[ImageInput]) -> PrefixBatch:
        opened = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        return self.backbone.image_batch(opened, instruction=self.image_instruction)

    # --- encoding -----------------------------------------------------------------------------

    def encode_text(self, texts: str | Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None,
                    convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
        """Embed captions; one string gives one vector, a list gives an (n, d) matrix."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        out = self._encode(items, [len(t) for t in items], self.text_batch, batch_size, show_progress_bar,
                           "encoding texts")
        return _finish(out, single, convert_to_numpy)

    def encode_image(self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 32,
                     show_progress_bar: bool | None = None, convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
        """Embed images given as paths, dataset records or PIL images; one image gives one vector."""
        single = isinstance(images, (str, os.PathLike, Image.Image, ImageRecord))
        items = [images] if single else list(images)
        out = self._encode(items, [_pixel_count(im) for im in items], self.image_batch, batch_size,
                           show_progress_bar, "encoding images")
        return _finish(out, single, convert_to_numpy)

    def encode_targets(self, records: Sequence[Record], **kwargs) -> np.ndarray | torch.Tensor:
        """Embed a dataset's targets: its images, or its texts for a text-pair dataset."""
        if records and isinstance(records[0], TextRecord):
            return self.encode_text([r.text for r in records], **kwargs)
        return self.encode_image(list(records), **kwargs)

    @torch.no_grad()
    def encode_query(self, text: str | None = None, image: ImageInput | None = None) -> np.ndarray:
        """One vector for a search: a text, an image, or an image with text.

        With both, the text follows the image in the user turn (after the encoder's own image
        instruction), as an MLLM reads a question about a picture: one prompt, so the queries see
        both at once, which two separate towers (CLIP) cannot do.
        """
        if image is None:
            if not text:
                raise ValueError("a query needs a text, an image, or both")
            return self.encode_text(text)
        if not text:
            return self.encode_image(image)
        opened = image if isinstance(image, Image.Image) else load_image(image)
        instruction = f"{self.image_instruction} {text}".strip()
        return self.embed(self.backbone.image_batch([opened], instruction=instruction))[0].float().cpu().numpy()

    @torch.no_grad()
    def _encode(self, items: list, lengths: list[int], prepare: Callable[[list], PrefixBatch], batch_size: int,
                show_progress_bar: bool | None, desc: str) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.argsort(lengths, kind="stable")[::-1]  # longest first: the worst batch shows up early
        result = torch.empty(len(items), self.dim)
        bar = tqdm(total=len(items), desc=desc, disable=_hide(show_progress_bar, len(items)), unit="item")
        for start in range(0, len(items), batch_size):
            idx = order[start:start + batch_size]
            result[torch.as_tensor(idx.copy())] = self.embed(prepare([items[i] for i in idx])).float().cpu()
            bar.update(len(idx))
        bar.close()
        return result


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

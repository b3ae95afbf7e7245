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
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .backbone import Backbone, PrefixBatch
from .data import ImageRecord, Input, Record, TextRecord, load_image

ImageInput = str | os.PathLike | Image.Image | ImageRecord  # records name their source in errors


@dataclass
class Grouped:
    """A batch prepared in parts of one kind each (inputs with images, inputs without), because a
    model call takes images for all of its rows or for none; `rows` put the parts back in order."""

    parts: list[tuple[list[int], object]]  # (rows of the batch, what `prepare_*` made of them)

    def __len__(self) -> int:
        return sum(len(rows) for rows, _ in self.parts)


def kind_groups(inputs: Sequence[Input]) -> list[list[int]]:
    """Rows of `inputs` without an image, then rows with one (empty groups left out)."""
    groups = [[i for i, x in enumerate(inputs) if x.image is None], [i for i, x in enumerate(inputs) if x.image is not None]]
    return [g for g in groups if g]


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

    def prepare_targets(self, records: Sequence[Record | Input | str], engine: str = "cached", cache=None):
        """What captions retrieve, made ready: images, texts (text-pair datasets), or `Input`s of
        any kind (pair datasets); captions themselves (strings) too, so one call serves each side."""
        if records and isinstance(records[0], Input):
            return self.prepare_inputs(records, engine, cache)
        if records and isinstance(records[0], str):
            return self.prepare_texts(records, engine, cache)
        if records and isinstance(records[0], TextRecord):
            return self.prepare_texts([r.text for r in records], engine, cache)
        return self.prepare_images(records, engine, cache)

    def prepare_inputs(self, inputs: Sequence[Input], engine: str = "cached", cache=None):
        """`Input`s of any kinds, mixed freely: prepared per kind, put back in order by `embed_prepared`."""
        groups = kind_groups(inputs)
        if len(groups) == 1:
            return self.prepare_input_group(inputs, engine, cache)
        return Grouped([(rows, self.prepare_input_group([inputs[i] for i in rows], engine, cache)) for rows in groups])

    def prepare_input_group(self, inputs: Sequence[Input], engine: str = "cached", cache=None):
        """Inputs all with images or all without, made ready (SLQ runs their prompts here)."""
        return self.input_batch(inputs)

    def embed_prepared(self, prepared, engine: str = "cached") -> torch.Tensor:
        """(B, d) embeddings of what `prepare_*` returned, differentiable w.r.t. what trains."""
        if isinstance(prepared, Grouped):
            rows = torch.as_tensor([i for r, _ in prepared.parts for i in r])
            out = torch.cat([self.embed_prepared(part, engine) for _, part in prepared.parts])  # (B, d), grouped
            return out[torch.argsort(rows).to(out.device)]  # back in the batch's order
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

    def input_batch(self, inputs: Sequence[Input]) -> PrefixBatch:
        """Inputs all with images or all without, as prompts: the image (if any), then the
        instruction and the text after it, then the encoder's own instruction. A
        plain text or image gives exactly the prompt of `text_batch` / `image_batch`."""
        with_image = {x.image is not None for x in inputs}
        assert len(with_image) == 1, "a model call takes images for all of its rows or none (see prepare_inputs)"
        bodies = [" ".join(p for p in (x.instruction.strip(), self.backbone.truncate(x.text) if x.text else "") if p)
                  for x in inputs]  # "Instruction: text", as MMEB's own files write their queries
        if not with_image.pop():
            return self.backbone.text_batch(bodies, instruction=self.text_instruction, truncate=False)
        opened = [x.image if isinstance(x.image, Image.Image) else load_image(x.image) for x in inputs]
        return self.backbone.image_text_batch(opened, [body + self.image_instruction if body else self.image_instruction
                                                       for body in bodies])

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

    def encode_inputs(self, inputs: Input | Sequence[Input], *, batch_size: int = 32,
                      show_progress_bar: bool | None = None, convert_to_numpy: bool = True) -> np.ndarray | torch.Tensor:
        """Embed `Input`s (texts, images, images with text, each with an optional instruction),
        kinds mixed freely; one input gives one vector. Batches hold one kind each."""
        single = isinstance(inputs, Input)
        items = [inputs] if single else list(inputs)
        out = torch.empty(len(items), self.dim)
        for rows in kind_groups(items):
            group = [items[i] for i in rows]
            lengths = [len(x.text or "") + (_pixel_count(x.image) if x.image is not None else 0) for x in group]
            out[torch.as_tensor(rows)] = self._encode(group, lengths, self.input_batch, batch_size, show_progress_bar,
                                                      "encoding inputs", total=len(items))
        return _finish(out, single, convert_to_numpy)

    def encode_query(self, text: str | None = None, image: ImageInput | None = None, instruction: str = "") -> np.ndarray:
        """One vector for a search: a text, an image, or an image with text (and an instruction).

        With both, the text follows the image in the user turn, as an MLLM reads a question about a
        picture: one prompt, so the queries see both at once, which two separate towers (CLIP)
        cannot do.
        """
        if image is None and not text:
            raise ValueError("a query needs a text, an image, or both")
        if isinstance(image, ImageRecord):
            image = image.image
        return self.encode_inputs(Input(text or None, image, instruction))

    @torch.no_grad()
    def _encode(self, items: list, lengths: list[int], prepare: Callable[[list], PrefixBatch], batch_size: int,
                show_progress_bar: bool | None, desc: str, total: int | None = None) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.argsort(lengths, kind="stable")[::-1]  # longest first: the worst batch shows up early
        result = torch.empty(len(items), self.dim)
        bar = tqdm(total=len(items), desc=desc, disable=_hide(show_progress_bar, total or len(items)), unit="item")
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

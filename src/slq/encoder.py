"""What every embedding method shares: prompts, length-sorted batching, progress, numpy output.

SLQ and the baselines (last-token and mean pooling, LoRA, full fine-tuning) differ only in how a
prepared batch becomes vectors (`embed`) and in which tensors train (`trainable_tensors`). The
rest, modelled on sentence-transformers' `encode`, lives here once: one string in gives one vector
out, inputs are sorted by length so batches carry little padding and are put back in order, and a
progress bar shows on long work. Embeddings are L2-normalised, so a dot product is the cosine.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
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


def batch_key(kind: str, items: Sequence) -> tuple | None:
    """What a prompt batch is built from, as a hashable name (None when an item is pixels, which
    have no stable name): how a batch built ahead is found again (`Encoder.prebuilt`)."""
    if kind == "text":
        return ("text", *items)
    if kind == "image":
        names = [None if isinstance(im, Image.Image) else str(im.image if isinstance(im, ImageRecord) else im)
                 for im in items]
    else:
        names = [x.key() for x in items]
    return None if None in names else (kind, *names)


def kind_groups(inputs: Sequence[Input]) -> list[list[int]]:
    """Rows of `inputs` without an image, then rows with one (empty groups left out)."""
    groups = [[i for i, x in enumerate(inputs) if x.image is None], [i for i, x in enumerate(inputs) if x.image is not None]]
    return [g for g in groups if g]


class Encoder:
    """Base class: a frozen backbone plus a way to pool its states into one vector per input."""

    text_instruction: str = ""  # appended to each caption inside the user turn
    reuses_prompts: bool = False  # whether `prepare_*` runs each distinct prompt once, keeping it in a cache
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

    # --- prompt batches ------------------------------------------------------------------------
    # Built on the CPU, then placed on the model's device. A batch may be built ahead, in a worker
    # process (`slq.prefetch`): `prebuilt` then holds such batches by what they were built from
    # (`batch_key`), and a builder asked for exactly those items takes its batch from there.

    prebuilt: dict | None = None

    def text_batch(self, texts: Sequence[str], *, place: bool = True) -> PrefixBatch:
        return self._batch("text", texts, place)

    def image_batch(self, images: Sequence[ImageInput], *, place: bool = True) -> PrefixBatch:
        return self._batch("image", images, place)

    def input_batch(self, inputs: Sequence[Input], *, place: bool = True) -> PrefixBatch:
        """Inputs all with images or all without, as prompts: the image (if any), then the
        instruction and the text after it, then the encoder's own instruction. A
        plain text or image gives exactly the prompt of `text_batch` / `image_batch`."""
        return self._batch("input", inputs, place)

    def _batch(self, kind: str, items: Sequence, place: bool) -> PrefixBatch:
        key = batch_key(kind, items) if self.prebuilt else None
        batch = self.prebuilt.pop(key, None) if key is not None else None
        if batch is None:
            batch = self.build_batch(kind, items)
        return self.backbone.place(batch) if place else batch

    def build_batch(self, kind: str, items: Sequence) -> PrefixBatch:
        """The prompt batch of `items` ("text": strings, "image": images, "input": `Input`s of one
        kind), on the CPU: what a worker process runs."""
        backbone = self.backbone
        if kind == "text":
            return backbone.text_batch(items, instruction=self.text_instruction, place=False)
        if kind == "image":
            opened = [im if isinstance(im, Image.Image) else load_image(im) for im in items]
            return backbone.image_batch(opened, instruction=self.image_instruction, place=False)
        assert kind == "input", f"no prompt batch of kind {kind!r}"
        with_image = {x.image is not None for x in items}
        assert len(with_image) == 1, "a model call takes images for all of its rows or none (see prepare_inputs)"
        bodies = [" ".join(p for p in (x.instruction.strip(), backbone.truncate(x.text) if x.text else "") if p)
                  for x in items]  # "Instruction: text", as MMEB's own files write their queries
        if not with_image.pop():
            return backbone.text_batch(bodies, instruction=self.text_instruction, truncate=False, place=False)
        opened = [x.image if isinstance(x.image, Image.Image) else load_image(x.image) for x in items]
        return backbone.image_text_batch(opened, [body + self.image_instruction if body else self.image_instruction
                                                  for body in bodies], place=False)

    # --- encoding -----------------------------------------------------------------------------

    def encode_text(self, texts: str | Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None,
                    convert_to_numpy: bool = True, workers: int = 0) -> np.ndarray | torch.Tensor:
        """Embed captions; one string gives one vector, a list gives an (n, d) matrix.

        `workers` > 0 prepares batches (tokenising, images) in that many processes ahead of the
        model (`slq.prefetch`); the result is the same bit for bit."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        out = self._encode(items, [len(t) for t in items], "text", batch_size, show_progress_bar,
                           "encoding texts", workers=workers)
        return _finish(out, single, convert_to_numpy)

    def encode_image(self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 32,
                     show_progress_bar: bool | None = None, convert_to_numpy: bool = True,
                     workers: int = 0) -> np.ndarray | torch.Tensor:
        """Embed images given as paths, dataset records or PIL images; one image gives one vector."""
        single = isinstance(images, (str, os.PathLike, Image.Image, ImageRecord))
        items = [images] if single else list(images)
        out = self._encode(items, [_pixel_count(im) for im in items], "image", batch_size,
                           show_progress_bar, "encoding images", workers=workers)
        return _finish(out, single, convert_to_numpy)

    def encode_targets(self, records: Sequence[Record], **kwargs) -> np.ndarray | torch.Tensor:
        """Embed a dataset's targets: its images, or its texts for a text-pair dataset."""
        if records and isinstance(records[0], TextRecord):
            return self.encode_text([r.text for r in records], **kwargs)
        return self.encode_image(list(records), **kwargs)

    def encode_inputs(self, inputs: Input | Sequence[Input], *, batch_size: int = 32,
                      show_progress_bar: bool | None = None, convert_to_numpy: bool = True,
                      workers: int = 0) -> np.ndarray | torch.Tensor:
        """Embed `Input`s (texts, images, images with text, each with an optional instruction),
        kinds mixed freely; one input gives one vector. Batches hold one kind each."""
        single = isinstance(inputs, Input)
        items = [inputs] if single else list(inputs)
        out = torch.empty(len(items), self.dim)
        for rows in kind_groups(items):
            group = [items[i] for i in rows]
            lengths = [len(x.text or "") + (_pixel_count(x.image) if x.image is not None else 0) for x in group]
            out[torch.as_tensor(rows)] = self._encode(group, lengths, "input", batch_size, show_progress_bar,
                                                      "encoding inputs", total=len(items), workers=workers)
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
    def _encode(self, items: list, lengths: list[int], kind: str, batch_size: int, show_progress_bar: bool | None,
                desc: str, total: int | None = None, workers: int = 0) -> torch.Tensor:
        from .prefetch import prepare_ahead

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = length_order(lengths)
        result = torch.empty(len(items), self.dim)
        bar = tqdm(total=len(items), desc=desc, disable=_hide(show_progress_bar, total or len(items)), unit="item")
        batches = [order[start:start + batch_size] for start in range(0, len(items), batch_size)]
        built = prepare_ahead(functools.partial(self.build_batch, kind), ([items[i] for i in idx] for idx in batches),
                              workers=workers)
        for idx, batch in zip(batches, built):
            result[torch.as_tensor(idx.copy())] = self.embed(self.backbone.place(batch)).float().cpu()
            bar.update(len(idx))
        bar.close()
        return result


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices by decreasing length (ties in order): batches of similar lengths carry little padding,
    and the longest, the worst for memory, comes first."""
    return np.argsort(lengths, kind="stable")[::-1]


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

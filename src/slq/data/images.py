"""Opening images: fully decoded, as RGB, with errors that name the record; padding one to a square."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from .records import ImageRecord, error, exc_reason

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PAD_GREY = (127, 127, 127)  # the SLQ paper's reference code pads InternVL's images with this grey


def image_problem(path: Path) -> str | None:
    """Why the image cannot be used, or None.

    The pixels are decoded: verify() alone passes files whose compressed data is garbage, which
    would then fail in the middle of training or evaluation, past the bad-record policy.
    """
    try:
        if not path.is_file():
            return f"image not found: {path}"
        with Image.open(path) as img:
            img.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        return f"cannot read image {path}: {exc_reason(e)}"
    return None


def load_image(record_or_path: ImageRecord | str | os.PathLike, source: str | None = None) -> Image.Image:
    """Open and fully decode an image as RGB.

    Decoding here, not lazily, makes a truncated file fail with its name instead of deep inside
    a batch collate.
    """
    if isinstance(record_or_path, ImageRecord):
        path, default_source = record_or_path.image, record_or_path.source
    else:
        path = Path(record_or_path)
        default_source = str(path)
    source = source if source is not None else default_source
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")  # a copy, so closing the file is safe
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise error(source, f"cannot read image {path}: {exc_reason(e)}") from None


def pad_to_square(image: Image.Image, fill: tuple[int, int, int] = PAD_GREY) -> Image.Image:
    """`image` (as RGB) centred on a `fill`-coloured square as wide as its longer side.

    An image processor then resizes it to its square input without stretching or cropping it. An
    odd margin puts the extra pixel after the image (right or bottom), as LLaVA's `expand2square`.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square

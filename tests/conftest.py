"""Shared fixtures: tiny checkpoints of every family (built once) and a tiny captioned image set."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Bit-exact resume tests need MKL's strict reproducibility (see slq.cli), set before torch loads.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from slq.backbone import Backbone
from slq.tiny import TINY_FAMILIES, build_tiny_model

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220), "yellow": (230, 210, 30)}
SHAPES = ("circle", "square")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, root / family) for family in TINY_FAMILIES}


@pytest.fixture(scope="session")
def backbones(tiny_dirs) -> dict[str, Backbone]:
    return {family: Backbone.load(path) for family, path in tiny_dirs.items()}


def make_shapes_dataset(folder: Path, repeats: int = 2, size: int = 48) -> Path:
    """A JSONL set of coloured shapes, two captions each; images differ in size to exercise batching."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    combos = [(c, s) for c in COLOURS for s in SHAPES] * repeats
    for i, (colour, shape) in enumerate(combos):
        side = size + 8 * (i % 3)
        image = Image.new("RGB", (side, size), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        box = (6 + i % 4, 6, side - 6, size - 6)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        image.save(folder / "images" / f"{i:03d}.png")
        lines.append(json.dumps({"image": f"images/{i:03d}.png", "captions": [f"a {colour} {shape}",
                                                                               f"one {colour} {shape}"]}))
    path = folder / "shapes.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def shapes_jsonl(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(autouse=True)
def _restore_slq_logger():
    """The CLI, run in this process by some tests, sets up the `slq` logger for a terminal (its own
    handler, no propagation); later tests read slq's records through pytest's caplog."""
    import logging

    logger = logging.getLogger("slq")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved

"""A shapes world on disk: the records of each split and the folder `write_world` writes.

Each record is drawn from its own stream (seed, split, index), so the first k records of a split do
not depend on how many follow, and a folder is byte-identical across runs and processes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..._io import atomic_write, setting
from ...errors import SettingError, SLQError
from ..jsonl import write_lines
from .captions import captions_for, knowledge_captions
from .knowledge import knowledge_corpus
from .world import (BACKGROUNDS, COLOURS, SHAPES, SIZES, SPLITS, check_image_size, held_out_combos, position_of,
                    random_scene, record_objects, render, world_rng)


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise SettingError(name, value, "must be a positive integer")


def _record(index: int, split: str, seed: int, image_size: int, held_out: frozenset) -> dict[str, Any]:
    rng = world_rng(seed, split, index)
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held_out]
    forced = None
    if split != "train" and rng.random() < 0.5:  # about half of val/test shows a held-out pair
        forced = rng.choice(sorted(held_out))
    pool = seen if forced is None else seen + sorted(held_out)
    objects = random_scene(rng, pool, forced, image_size)
    background = rng.choice(BACKGROUNDS)
    return {
        "image": f"images/{split}/{index:05d}.png",
        "captions": captions_for(objects, rng, 5, image_size),
        "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size,
                     "position": position_of(o, image_size), "x": o.x, "y": o.y} for o in objects],
        "count": len(objects),
        "held_out": any((o.colour, o.shape) in held_out for o in objects),
        "background": list(background),
        "knowledge_captions": knowledge_captions(objects, world_rng(seed, split, index, "knowledge"), 2),
    }


def generate_split(n_images: int, split: str, seed: int, image_size: int = 64) -> list[dict[str, Any]]:
    """JSON-ready records (image path relative to the world folder, captions, objects, count,
    held_out, background, knowledge_captions). Train never shows a held-out pair; about half of
    val/test records show one."""
    if split not in SPLITS:
        raise SLQError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    _check_count("n_images", n_images)
    check_image_size(image_size)
    held_out = held_out_combos(seed)
    return [_record(i, split, seed, image_size, held_out) for i in range(n_images)]


@dataclass(frozen=True)
class WorldConfig:
    """The size and seed of a shapes world."""

    n_train: int = setting(2000, "training images")
    n_val: int = setting(200, "validation images")
    n_test: int = setting(500, "test images")
    seed: int = setting(0, "seed of everything in the world: images, captions, held-out pairs")
    image_size: int = setting(64, "image side in pixels")


def write_world(out_dir: str | os.PathLike, config: WorldConfig | None = None, *, progress: bool | None = None,
                **settings) -> dict[str, Path]:
    """Write a world folder: images/{split}/NNNNN.png, knowledge.txt, world.json and, last and
    atomically, {train,val,test}.jsonl, so a folder with JSONL files is complete. Existing files
    of the same names are overwritten. `settings` override fields of `config` (default
    `WorldConfig()`). progress: True/False forces the bar on/off; None shows it only on a terminal."""
    config = replace(config or WorldConfig(), **settings)
    n_train, n_val, n_test = config.n_train, config.n_val, config.n_test
    seed, image_size = config.seed, config.image_size
    out = Path(out_dir)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in sizes.items():
        _check_count(f"n_{split}", n)
    records = {split: generate_split(n, split, seed, image_size) for split, n in sizes.items()}
    disable = None if progress is None else not progress
    with tqdm(total=sum(sizes.values()), desc="rendering shapes", unit="img", disable=disable) as bar:
        for split, recs in records.items():
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            for record in recs:
                image = render(record_objects(record), image_size, tuple(record["background"]))
                image.save(out / record["image"], format="PNG")
                bar.update(1)
    atomic_write(out / "knowledge.txt", "".join(f"{s}\n" for s in knowledge_corpus(seed)))
    world = {"seed": seed, "image_size": image_size, **{f"n_{s}": n for s, n in sizes.items()},
             "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES),
             "held_out": [list(c) for c in sorted(held_out_combos(seed))]}
    atomic_write(out / "world.json", json.dumps(world, indent=2) + "\n")
    paths = {}
    for split, recs in records.items():
        paths[split] = out / f"{split}.jsonl"
        write_lines(paths[split], recs)
    paths["knowledge"] = out / "knowledge.txt"
    return paths

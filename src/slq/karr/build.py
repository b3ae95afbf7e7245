"""Build a KARR benchmark from any captioned image set: one knowledge caption per image.

For each image the categories are tried in a balanced order (those with the fewest captions so far
first, ties broken by a seeded draw), each over the image's captions in a seeded order and each
rewriter in turn; the first candidate the validator accepts is the image's KARR caption. An image
no rule can rewrite is left out and counted. Everything drawn comes from `seed` and the image's
position, so a build is byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .._io import atomic_write, seeded_random
from ..data import ImageRecord, ImageTextDataset, write_jsonl
from ..errors import SettingError, SLQError
from .core import CATEGORIES, REJECTIONS, Rewriter, control_caption, validate

logger = logging.getLogger("slq")

KARR_FILE = "karr.jsonl"
BUILD_FILE = "build.json"
PLOT_FILE = "categories.png"


@dataclass
class KarrBuild:
    """A build's records (one KARR caption each, in the source's order) and its counts."""

    records: list[ImageRecord]
    source: str  # the dataset's name
    seed: int
    rewriters: list[str]
    accepted: Counter = field(default_factory=Counter)  # category -> captions
    rejected: dict[str, Counter] = field(default_factory=dict)  # category -> reason -> candidates
    unrewritten: int = 0  # images no rule could rewrite

    def summary(self) -> dict:
        """What `build.json` holds: per category accepted and rejected (by reason), and the totals."""
        categories = sorted(set(self.accepted) | set(self.rejected), key=list(CATEGORIES).index)
        return {
            "source": self.source, "seed": self.seed, "rewriters": self.rewriters,
            "images": len(self.records) + self.unrewritten, "pairs": len(self.records),
            "unrewritten_images": self.unrewritten,
            "categories": {c: {"title": CATEGORIES[c], "accepted": self.accepted.get(c, 0),
                               "share": round(self.accepted.get(c, 0) / max(len(self.records), 1), 4),
                               "rejected": dict(sorted(self.rejected.get(c, Counter()).items()))}
                           for c in categories},
            "rejected_by_reason": dict(sorted(sum(self.rejected.values(), Counter()).items())),
            "rejections": REJECTIONS,
        }


def build_karr(dataset: ImageTextDataset, rewriters: Sequence[Rewriter], *, attributes: Iterable[str] = (),
               seed: int = 0, categories: Sequence[str] | None = None, progress: bool | None = None) -> KarrBuild:
    """Rewrite one caption per image of `dataset` (see the module's docstring); `attributes` are the
    checkable words the validator guards (`validate`), `categories` limits the categories tried."""
    if dataset.kind != "image":
        raise SLQError(f"dataset {dataset.name}: KARR rewrites captions of images; its targets are texts")
    if not rewriters:
        raise SettingError("rewriters", [], "need at least one")
    offered = [c for c in CATEGORIES if any(c in r.categories for r in rewriters)]
    if categories is not None:
        unknown = [c for c in categories if c not in CATEGORIES]
        if unknown:
            raise SettingError("categories", ",".join(unknown), f"unknown; choose from {', '.join(CATEGORIES)}")
        offered = [c for c in offered if c in categories]
    if not offered:
        raise SettingError("categories", categories, "no rewriter yields any of them")
    attributes = frozenset(a.lower() for a in attributes)
    build = KarrBuild([], dataset.name, seed, [r.name for r in rewriters])
    for index, record in enumerate(tqdm(dataset.records, desc="KARR rewrites", unit="img",
                                        disable=None if progress is None else not progress)):
        rng = seeded_random("karr", seed, index)
        order = sorted(offered, key=lambda c: (build.accepted[c], rng.random()))
        chosen = _first_accepted(record, order, rewriters, rng, attributes, build)
        if chosen is None:
            build.unrewritten += 1
            continue
        caption, candidate, rewriter = chosen
        build.accepted[candidate.category] += 1
        meta = {**record.meta, "source_caption": caption, "category": candidate.category,
                "rewriter": rewriter, "rewrites": [asdict(r) for r in candidate.rewrites]}
        if candidate.clues:
            meta["clues"] = candidate.clues
        control = control_caption(caption, candidate.rewrites)
        if control is not None:
            meta["control_caption"] = control
        build.records.append(ImageRecord(record.image, (candidate.caption,), record.source, meta))
    if build.unrewritten:
        logger.info("%d of %d images had no caption any rule could rewrite; left out", build.unrewritten,
                    len(dataset))
    return build


def _first_accepted(record, order, rewriters, rng, attributes, build):
    captions = list(record.captions)
    rng.shuffle(captions)
    for category in order:
        for caption in captions:
            for rewriter in rewriters:
                if category not in rewriter.categories:
                    continue
                candidate = rewriter.rewrite(caption, record, category, rng)
                if candidate is None:
                    continue
                reason = validate(caption, candidate, attributes)
                if reason is None:
                    return caption, candidate, rewriter.name
                build.rejected.setdefault(category, Counter())[reason] += 1
    return None


def write_karr(build: KarrBuild, out_dir: str | os.PathLike, *, copy_images: bool = False,
               image_root: str | os.PathLike | None = None, plot: bool = True) -> dict[str, Path]:
    """Write `karr.jsonl`, `build.json` and (with matplotlib) the category plot into `out_dir`.

    `copy_images` copies each image under `out_dir`, keeping its path below `image_root` (default:
    the images' common folder), so the folder is a benchmark on its own; otherwise the JSONL points
    at the images where they are."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = build.records
    if copy_images and records:
        root = Path(image_root) if image_root is not None else Path(os.path.commonpath(
            [r.image.parent for r in records]))
        copied = []
        for record in records:
            try:
                relative = record.image.relative_to(root)
            except ValueError:
                raise SettingError("image_root", str(root), f"does not hold {record.image}") from None
            target = out / "images" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.image, target)
            copied.append(ImageRecord(target, record.captions, record.source, record.meta))
        records = copied
    paths = {"karr": out / KARR_FILE, "build": out / BUILD_FILE}
    write_jsonl(records, paths["karr"])
    atomic_write(paths["build"], json.dumps(build.summary(), indent=2) + "\n")
    if plot:
        try:
            paths["plot"] = plot_categories(build.summary(), out / PLOT_FILE)
        except ImportError:
            logger.warning("matplotlib is not installed: no %s (pip install matplotlib)", PLOT_FILE)
    return paths


def plot_categories(summary: dict, path: str | os.PathLike) -> Path:
    """The category distribution as a bar chart (the paper's Figure 3b), shares in percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = summary["categories"]
    titles = [v["title"] for v in categories.values()]
    shares = [100 * v["share"] for v in categories.values()]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(titles)))
    bars = ax.barh(titles[::-1], shares[::-1], color="#4c72b0")
    for bar, c in zip(bars, list(categories.values())[::-1]):
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, f"{100 * c['share']:.1f}% ({c['accepted']})",
                va="center", fontsize=8)
    ax.set_xlabel("share of pairs (%)")
    ax.set_xlim(0, max(shares + [1]) * 1.3)
    ax.set_title(f"{summary['source']}: {summary['pairs']} KARR pairs by category")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path


def control_dataset(dataset: ImageTextDataset) -> ImageTextDataset:
    """The benchmark with each caption's clues taken out (`control_caption`): what the rest of the
    caption alone retrieves. A method's KARR recall above its control recall is what the knowledge
    added; records without a control caption are left out."""
    records = [ImageRecord(r.image, (r.meta["control_caption"],), r.source, r.meta) for r in dataset.records
               if r.meta.get("control_caption")]
    if not records:
        raise SLQError(f"dataset {dataset.name}: no record has a control_caption")
    return ImageTextDataset(records, f"{dataset.name}-control", directions=dataset.directions)

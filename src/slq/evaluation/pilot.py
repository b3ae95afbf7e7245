"""The pilot (the paper's Figure 2): what last-token pooling and latent queries make of a few texts.

A handful of texts is scored against a handful of images by cosine, once under zero-shot last-token
pooling (E5-V's one-word prompt) and once under an adapter's query pooling. Texts come in kinds
that ask more and more of the model: *pattern* texts name what is in view ("a red circle"),
*knowledge* texts name it through facts ("a round shape the colour of a tomato"), *reasoning* texts
through a step more ("(1+1) shapes with three sides"). Which image each text scores highest shows,
row by row, whether a pooling reaches past surface matching to what the model knows.

`builtin_pilot` is such a set on the shapes world (its scenes and texts are world facts:
`slq.data.shapes.PILOT_SCENES`, `pilot_texts`), every clue a fact of its knowledge corpus; users
give their own texts and images (`read_pilot`). `pilot_scores` scores, `format_pilot` makes the
table, `plot_pilot` the heat map; `slq.recipes.pilot.run_pilot` does all of it into a folder (`slq pilot`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_write
from ..backbone import Backbone
from ..baselines import PooledEncoder
from ..data import IMAGE_SUFFIXES, load_image
from ..data.images import image_problem
from ..data.readers import read_texts
from ..data.records import error
from ..data.shapes import NUMBER_WORDS, PILOT_SCENES, TEXT_KINDS, draw_group, pilot_texts
from ..encoder import Encoder, ImageInput
from ..errors import NO_VALUE, DataError, SettingError, SLQError, one_line
from ..retriever import SLQRetriever

logger = logging.getLogger("slq")

KINDS = TEXT_KINDS  # the built-in set's kinds (pattern, knowledge, reasoning); a user's texts may name others
DEFAULT_KIND = "text"  # the kind of a user's text that names none
POOLING_TITLES = {"last_token": "last-token pooling (zero-shot, one-word prompt)",
                  "queries": "query pooling (SLQ adapter)"}
TEXT_WIDTH = 60  # longest text the table shows whole


@dataclass(frozen=True)
class PilotText:
    """One row of the pilot: a text, its kind, and the index of the image it describes (if any)."""

    text: str
    kind: str = DEFAULT_KIND
    expected: int | None = None


@dataclass(frozen=True)
class PilotSet:
    """Texts and the images they are scored against; `labels` name the images in the table and plot."""

    texts: tuple[PilotText, ...]
    images: tuple[ImageInput, ...]
    labels: tuple[str, ...]

    def __post_init__(self):
        if not self.texts:
            raise SettingError("texts", NO_VALUE, "the pilot needs at least one text")
        if not self.images:
            raise SettingError("images", NO_VALUE, "the pilot needs at least one image")
        if len(self.labels) != len(self.images):
            raise SLQError(f"{len(self.labels)} labels for {len(self.images)} images")
        for row in self.texts:
            if row.expected is not None and not 0 <= row.expected < len(self.images):
                raise SLQError(f"text {row.text!r} expects image {row.expected}, but there are {len(self.images)}")


# ---------------------------------------------------------------------------------------------
# The built-in set


BUILTIN_SCENES = PILOT_SCENES  # (colour, shape, count): one group of objects each, every colour and shape once


def builtin_pilot(image_size: int = 64) -> PilotSet:
    """The pilot on the default shapes world: five one-group scenes (`BUILTIN_SCENES`), drawn in
    memory at the world's size, and three texts for each, one per kind (`KINDS`)."""
    images = tuple(draw_group(colour, shape, count, image_size) for colour, shape, count in BUILTIN_SCENES)
    labels = tuple(f"{colour} {shape}" if count == 1 else f"{NUMBER_WORDS[count]} {colour} {shape}s"
                   for colour, shape, count in BUILTIN_SCENES)
    # all pattern rows, then knowledge, then reasoning, each in image order: one diagonal per kind in the heat map
    by_kind = pilot_texts()
    texts = tuple(PilotText(text, kind, i) for kind in KINDS for i, text in enumerate(by_kind[kind]))
    return PilotSet(texts, images, labels)


# ---------------------------------------------------------------------------------------------
# A user's set


def _image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Each path, or the images of a folder in name order; unreadable images are errors, found
    before any model loads."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise error(str(path), f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(path)
    for path in files:
        problem = image_problem(path)
        if problem:
            raise DataError(one_line(problem))  # it names the file
    return files


def _unique_labels(files: Sequence[Path]) -> tuple[str, ...]:
    """File stems, which must tell the images apart: texts name the image they expect by them."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise error(str(path), f"two images are named {path.stem!r} ({seen[path.stem]} too); the pilot "
                                   "names images by file name, so rename one")
        seen[path.stem] = path
    return tuple(seen)


def _parse_text_line(line: str, source: str, labels: Sequence[str]) -> PilotText:
    """`TEXT`, `KIND<TAB>TEXT` or `KIND<TAB>TEXT<TAB>IMAGE` (an image's file name, with or without
    its suffix: the one the text should score highest)."""
    fields = line.split("\t")
    if len(fields) > 3:
        raise error(source, f"{len(fields)} tab-separated fields; a line is TEXT, KIND<TAB>TEXT or "
                            "KIND<TAB>TEXT<TAB>IMAGE")
    if len(fields) == 1:
        return PilotText(line)
    kind, text = fields[0].strip() or DEFAULT_KIND, fields[1].strip()
    if not text:
        raise error(source, "no text after the kind")
    if len(fields) == 2 or not fields[2].strip():
        return PilotText(text, kind)
    name = fields[2].strip()
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    if stem not in labels:
        raise error(source, f"no image named {name!r}; the images are {', '.join(labels)}")
    return PilotText(text, kind, labels.index(stem))


def read_pilot(texts: str | os.PathLike | None = None, images: Sequence[str | os.PathLike] | None = None, *,
               image_size: int = 64) -> PilotSet:
    """A user's pilot: texts from a file (one a line: `TEXT`, `KIND<TAB>TEXT` or
    `KIND<TAB>TEXT<TAB>IMAGE`) against images (files, or folders of them), named by file stem. Texts
    without images are scored against the built-in images (their labels name them); neither gives
    the built-in set."""
    if texts is None and images is None:
        return builtin_pilot(image_size)
    if texts is None:
        raise SettingError("texts", NO_VALUE, "give the texts to score against your images (one a line)")
    if images is None:
        builtin = builtin_pilot(image_size)
        pictures, labels = builtin.images, builtin.labels
    else:
        files = _image_files(images)
        pictures, labels = tuple(files), _unique_labels(files)
    rows = tuple(_parse_text_line(line, f"{texts}:{n}", labels) for n, line in enumerate(read_texts(texts), 1))
    return PilotSet(rows, pictures, labels)


# ---------------------------------------------------------------------------------------------
# Scores


def pilot_encoders(backbone_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None = None,
                   **load) -> dict[str, Encoder]:
    """The poolings to compare on one loaded backbone: "last_token" (E5-V's zero-shot prompt) and,
    with an adapter, "queries". Both share the backbone, so both see images fitted the adapter's
    way. `load`: `Backbone.load`'s options."""
    if adapter_dir is None:
        return {"last_token": PooledEncoder(Backbone.load(backbone_dir, **load), "last", one_word_prompt=True)}
    retriever = SLQRetriever.from_pretrained(backbone_dir, adapter_dir, **load)
    return {"last_token": PooledEncoder(retriever.backbone, "last", one_word_prompt=True), "queries": retriever}


def pilot_result(pilot: PilotSet, scores: Mapping[str, np.ndarray]) -> dict:
    """The JSON-ready result from cosine matrices (texts x images, one per pooling): each row's top
    image (the first of tied ones) and, per kind, how many texts with an expected image have it
    on top."""
    result = {"texts": [{"text": t.text, "kind": t.kind, "expected": t.expected} for t in pilot.texts],
              "images": list(pilot.labels), "poolings": {}}
    for name, matrix in scores.items():
        matrix = np.asarray(matrix, dtype=np.float64)  # (texts, images)
        assert matrix.shape == (len(pilot.texts), len(pilot.images)), \
            f"{name}: scores of shape {matrix.shape} for {len(pilot.texts)} texts x {len(pilot.images)} images"
        top = matrix.argmax(1).tolist()
        hits: dict[str, dict[str, int]] = {}
        for row, best in zip(pilot.texts, top):
            if row.expected is None:
                continue
            for key in (row.kind, "all"):
                count = hits.setdefault(key, {"correct": 0, "total": 0})
                count["correct"] += int(best == row.expected)
                count["total"] += 1
        if "all" in hits:  # last, after the kinds
            hits["all"] = hits.pop("all")
        result["poolings"][name] = {"title": POOLING_TITLES.get(name, name),
                                    "scores": np.round(matrix, 6).tolist(), "top": top, "top1": hits}
    return result


def pilot_scores(encoders: Mapping[str, Encoder], pilot: PilotSet, *, batch_size: int = 32,
                 progress: bool | None = None) -> dict:
    """Cosine scores of every text against every image under each encoder (name -> encoder, e.g.
    `pilot_encoders`'s), as `pilot_result` reports them."""
    for encoder in encoders.values():
        if encoder.backbone.text_only:
            raise SLQError(f"{encoder.backbone.path}: a text-only backbone cannot embed the pilot's images; "
                           "give a vision-language model")
    texts = [t.text for t in pilot.texts]
    scores = {}
    for name, encoder in encoders.items():
        logger.debug("pilot: %d texts x %d images under %s", len(texts), len(pilot.images), name)
        text_emb = encoder.encode_text(texts, batch_size=batch_size, show_progress_bar=progress)  # (T, d)
        image_emb = encoder.encode_image(list(pilot.images), batch_size=batch_size, show_progress_bar=progress)  # (I, d)
        scores[name] = text_emb @ image_emb.T  # (T, I); rows L2-normalised, so cosines
    return pilot_result(pilot, scores)


# ---------------------------------------------------------------------------------------------
# Table and heat map


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _hits_line(hits: dict[str, dict[str, int]]) -> str:
    if not hits:
        return "top-1: no text names its image"
    return "top-1: " + ", ".join(f"{kind} {h['correct']}/{h['total']}" for kind, h in hits.items())


def format_pilot(result: dict) -> str:
    """A fixed-width table per pooling: one row per text, one column of cosines per image (numbered
    in a legend), the row's top image starred; `want` is the image the text describes and `hit`
    whether it is on top. A line per pooling counts the hits by kind."""
    labels, rows = result["images"], result["texts"]
    width = min(TEXT_WIDTH, max(len(r["text"]) for r in rows))
    kind_width = max(4, *(len(r["kind"]) for r in rows))
    cell = max(8, *(len(str(j + 1)) + 2 for j in range(len(labels))))
    lines = ["images: " + "; ".join(f"{j + 1} = {label}" for j, label in enumerate(labels))]
    for pooling in result["poolings"].values():
        header = f"{'kind':<{kind_width}}  {'text':<{width}}" + "".join(f"{j + 1:>{cell}}" for j in range(len(labels))) \
                 + f"{'want':>6}{'hit':>5}"
        lines += ["", pooling["title"], header, "-" * len(header)]
        for row, scores, top in zip(rows, pooling["scores"], pooling["top"]):
            cells = "".join(f"{('*' if j == top else '') + f'{s:.3f}':>{cell}}" for j, s in enumerate(scores))
            want, hit = ("-", "") if row["expected"] is None else \
                (str(row["expected"] + 1), "yes" if top == row["expected"] else "no")
            lines.append(f"{row['kind']:<{kind_width}}  {_clip(row['text'], width):<{width}}{cells}{want:>6}{hit:>5}")
        lines.append(_hits_line(pooling["top1"]))
    lines.append("* the text's top image (cosine)")
    return "\n".join(lines)


def _thumbnail(image: ImageInput) -> np.ndarray:
    opened = image if isinstance(image, Image.Image) else load_image(image)
    opened = opened.convert("RGB")
    opened.thumbnail((96, 96))
    return np.asarray(opened)


def plot_pilot(result: dict, path: str | os.PathLike, images: Sequence[ImageInput] | None = None) -> Path:
    """A heat map per pooling, side by side: texts down, images across, each cell's cosine written
    in it and each row's top boxed (green: the expected image, red: another, white: no
    expectation); `images`, if given, drawn above their columns. Saved as PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    labels, rows, poolings = result["images"], result["texts"], result["poolings"]
    n_texts, n_images = len(rows), len(labels)
    thumbs = [_thumbnail(im) for im in images] if images is not None else None
    top_space = 1.0 if thumbs else 0.0  # a row of thumbnails above the matrix, in cell units
    fig, axes = plt.subplots(1, len(poolings), squeeze=False,
                             figsize=(4 + len(poolings) * (0.5 * n_images + 1.3), 1.8 + 0.34 * (n_texts + top_space)))
    for k, (ax, pooling) in enumerate(zip(axes[0], poolings.values())):
        scores = np.asarray(pooling["scores"])  # (texts, images)
        shown = ax.imshow(scores, cmap="viridis", aspect="equal")
        middle = (scores.min() + scores.max()) / 2
        for i, row in enumerate(scores):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if value > middle else "white")
        for i, (row, top) in enumerate(zip(rows, pooling["top"])):
            colour = "white" if row["expected"] is None else "lime" if top == row["expected"] else "red"
            ax.add_patch(Rectangle((top - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=1.5))
        for i in range(1, n_texts):  # a line between kinds
            if rows[i]["kind"] != rows[i - 1]["kind"]:
                ax.axhline(i - 0.5, color="white", linewidth=2)
        if thumbs:
            for j, thumb in enumerate(thumbs):
                ax.imshow(thumb, extent=(j - 0.45, j + 0.45, -0.6, -0.5 - top_space + 0.05))
        ax.set_xlim(-0.5, n_images - 0.5)
        ax.set_ylim(n_texts - 0.5, -0.5 - top_space)
        ax.set_xticks(range(n_images), [_clip(label, 24) for label in labels], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n_texts), [f"{r['kind']}: {_clip(r['text'], 52)}" for r in rows] if k == 0 else [],
                      fontsize=7)
        ax.set_title(f"{pooling['title']}\n{_hits_line(pooling['top1'])}", fontsize=8)
        fig.colorbar(shown, ax=ax, fraction=0.05, pad=0.03).ax.tick_params(labelsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=130))
    plt.close(fig)
    return path

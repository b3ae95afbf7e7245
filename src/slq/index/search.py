"""Searching built indexes: `SearchIndex` (vectors in, items out) and `Searcher` (queries in).

A `Searcher` holds one frozen backbone and one set of queries per index: indexes built with
different adapters on the same backbone are searched side by side with the model in memory once
(what `slq serve IDX_A IDX_B` does). Indexes on different backbones are refused, naming the two.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import SLQError
from . import ann, store

logger = logging.getLogger("slq")


@dataclass
class Hit:
    """One result: the item's id, its cosine similarity to the query, and what it is."""

    id: int
    score: float
    path: str | None  # an image's file
    text: str | None  # a text target
    captions: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


class SearchIndex:
    """A finished index folder, opened read-only; safe to search from several threads."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._db = store.connect(self.folder, readonly=True)
        self._lock = threading.Lock()  # one sqlite connection, shared by a server's threads
        self.meta = store.get_meta(self._db)
        described = self.meta.get("ann")
        if not described or described.get("generation") != self.meta.get("generation", 0):
            raise SLQError(f"{self.folder}: the index is unfinished (a run was interrupted); run `slq index` on it "
                           "again to finish it")
        path = self.folder / described["file"]
        if not path.is_file():
            raise SLQError(f"{path}: missing; run `slq index` on {self.folder} again to rebuild it")
        choice = ann.AnnChoice(described["kind"], described["factory"], described["reason"])
        self.ann = ann.from_bytes(path.read_bytes(), choice, described["setting"], described["recall_at_10"])
        self.roots = [Path(self.meta["root"])]

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def dim(self) -> int:
        return self.meta["dim"]

    def __len__(self) -> int:
        return int(self.ann.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The k nearest items of each query vector (a (d,) vector or a (q, d) matrix), best first."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.shape[-1] != self.dim:
            raise SLQError(f"query vectors have width {queries.shape[-1]}, the index {self.name} has {self.dim}")
        scores, ids = self.ann.search(queries.reshape(-1, self.dim), k)
        rows = self._rows({int(i) for i in ids.ravel() if i >= 0})
        return [[Hit(int(i), float(s), *rows[int(i)]) for s, i in zip(line_scores, line_ids) if int(i) in rows]
                for line_scores, line_ids in zip(scores, ids)]

    def _rows(self, ids: set[int]) -> dict[int, tuple]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            found = self._db.execute(f"SELECT id, path, text, captions FROM items WHERE id IN ({marks})",
                                     sorted(ids)).fetchall()
        return {row[0]: (row[1], row[2], json.loads(row[3])) for row in found}

    def image_file(self, item_id: int) -> Path | None:
        """The item's image file, if it still lies inside the index's root once every link is resolved
        (a file swapped for a link after indexing is not served); else None."""
        with self._lock:
            row = self._db.execute("SELECT path FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        path = Path(row[0])
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_file() or not any(resolved.is_relative_to(root) for root in self.roots):
            return None
        return resolved

    def summary(self) -> dict:
        skipped = self._db.execute("SELECT COUNT(*) FROM skipped").fetchone()[0]
        return {"name": self.name, "kind": self.kind, "items": len(self), "skipped": skipped, "dim": self.dim,
                "source": self.meta["source"], "adapter": self.meta["adapter"], "search": self.meta["ann"]}

    def close(self) -> None:
        self._db.close()


class Searcher:
    """Indexes and their retrievers on one shared backbone; `search` embeds a query and looks it up."""

    def __init__(self, indexes: list[SearchIndex], retrievers: list):
        names = [index.name for index in indexes]
        if len(set(names)) != len(names):
            raise SLQError(f"two indexes share a folder name ({', '.join(names)}); names choose them in requests")
        self.indexes = dict(zip(names, indexes))
        self.retrievers = dict(zip(names, retrievers))
        self._model_lock = threading.Lock()  # one forward pass at a time on the shared model

    @classmethod
    def open(cls, folders: list[str | os.PathLike], *, backbone: str | os.PathLike | None = None,
             dtype=None, device=None, trust_remote_code: bool = False) -> Searcher:
        """Open index folders and load their backbone once (default: the path the first index
        recorded) with each index's adapter on it."""
        from ..adapter import WEIGHTS_NAME, load_adapter
        from ..backbone import Backbone
        from ..retriever import SLQRetriever
        from .._io import file_sha256

        if not folders:
            raise SLQError("no index to open")
        indexes = [SearchIndex(folder) for folder in folders]
        first = indexes[0].meta
        for index in indexes[1:]:
            if index.meta["backbone_fingerprint"] != first["backbone_fingerprint"]:
                raise SLQError(f"{index.folder} was built on another backbone ({index.meta['backbone']}) than "
                               f"{indexes[0].folder} ({first['backbone']}); serve them separately")
            if index.meta["image_fit"] != first["image_fit"]:
                raise SLQError(f"{index.folder}'s adapter fits images as {index.meta['image_fit']!r}, "
                               f"{indexes[0].folder}'s as {first['image_fit']!r}; serve them separately")
        model = Backbone.load(backbone or first["backbone"], dtype=dtype, device=device,
                              trust_remote_code=trust_remote_code, image_fit=first["image_fit"])
        retrievers = []
        for index in indexes:
            adapter = Path(index.meta["adapter"])
            loaded = load_adapter(adapter)
            if file_sha256(adapter / WEIGHTS_NAME) != index.meta["adapter_sha256"]:
                raise SLQError(f"{adapter}: the adapter changed since {index.folder} was built; its vectors no "
                               "longer match: re-index with the new adapter into another folder")
            retrievers.append(SLQRetriever.on_backbone(model, adapter, loaded=loaded))
        return cls(indexes, retrievers)

    def index(self, name: str | None = None) -> SearchIndex:
        if name is None:
            return next(iter(self.indexes.values()))
        if name not in self.indexes:
            raise SLQError(f"no index named {name!r}; this server has {', '.join(self.indexes)}")
        return self.indexes[name]

    def embed(self, text: str | None = None, image=None, index: str | None = None, *,
              instruction: str = "") -> np.ndarray:
        """The query vector of a text, an image (path or PIL image), or both, under an index's adapter;
        `instruction` (e.g. "Find an image that matches the caption:") goes before the text, as
        `Encoder.encode_query` puts it."""
        retriever = self.retrievers[self.index(index).name]
        with self._model_lock:
            return retriever.encode_query(text=text, image=image, instruction=instruction)

    def search(self, text: str | None = None, image=None, *, k: int = 10, index: str | None = None,
               instruction: str = "") -> list[Hit]:
        return self.index(index).search(self.embed(text, image, index, instruction=instruction), k)[0]

    def close(self) -> None:
        for index in self.indexes.values():
            index.close()

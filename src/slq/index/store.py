"""An index folder's SQLite database: items with their vectors, skipped files, and what built them.

    INDEX_DIR/index.sqlite     meta, items (one row per embedded image or text, its vector a
                               float32 blob), skipped (files that could not be used, and why)
    INDEX_DIR/ann-<gen>.faiss  the search structure over the items' vectors (slq.index.ann)

The database is the truth; the FAISS file is derived from it. Each batch of embeddings is
committed in one transaction with its rows, so a run killed at any moment keeps whole batches
only, and a run started again does only what is missing. Every transaction that changes the
items bumps `generation`; the FAISS file records the generation it was built from, and an index
whose file lags is "unfinished" until `slq index` runs again.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from ..errors import SLQError

DB_NAME = "index.sqlite"
FORMAT = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a removed item's id never names another
    key TEXT UNIQUE NOT NULL,               -- an image's resolved path, or "text:" + a text's sha256
    path TEXT,                              -- the image file (absolute); NULL for a text
    text TEXT,                              -- the text target; NULL for an image
    captions TEXT NOT NULL DEFAULT '[]',    -- JSON list, from a JSONL source
    size INTEGER, mtime_ns INTEGER,         -- the file as embedded: a change re-embeds it
    vector BLOB NOT NULL                    -- float32, L2-normalised
);
CREATE TABLE IF NOT EXISTS skipped (
    key TEXT PRIMARY KEY, path TEXT, size INTEGER, mtime_ns INTEGER, reason TEXT NOT NULL
);
"""


def connect(folder: Path, *, create: bool = False, readonly: bool = False) -> sqlite3.Connection:
    """Open the folder's database (creating folder and schema when `create`)."""
    path = folder / DB_NAME
    if not path.is_file() and not create:
        raise SLQError(f"{folder}: not an slq index (no {DB_NAME}); build one with `slq index`")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        if readonly:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            db = sqlite3.connect(path, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")  # readers (a running server) never block a re-index
            db.executescript(SCHEMA)
    except sqlite3.DatabaseError as e:
        raise SLQError(f"{path}: cannot open the index database: {e}") from None
    return db


def get_meta(db: sqlite3.Connection) -> dict:
    return {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM meta")}


def set_meta(db: sqlite3.Connection, **values) -> None:
    """Within the caller's transaction."""
    db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                   [(key, json.dumps(value)) for key, value in values.items()])


def bump_generation(db: sqlite3.Connection) -> int:
    """Within the caller's transaction: the items changed."""
    generation = get_meta(db).get("generation", 0) + 1
    set_meta(db, generation=generation)
    return generation


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def all_vectors(db: sqlite3.Connection, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,), vectors (n, dim)) of every item, by id."""
    rows = db.execute("SELECT id, vector FROM items ORDER BY id").fetchall()
    ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    vectors = np.empty((len(rows), dim), dtype=np.float32)
    for i, (_, blob) in enumerate(rows):
        vectors[i] = np.frombuffer(blob, dtype="<f4")
    return ids, vectors

"""Search what you embed: an incremental, resumable index of images or texts, and searching it.

    build   update_index, IndexConfig, IndexReport    a folder or JSONL -> INDEX_DIR
    store   the SQLite database (items, vectors, skipped files, what built them)
    ann     the FAISS structure, chosen by size and memory, its search setting tuned to a recall
    search  SearchIndex (vectors -> items), Searcher (text / image / both -> items, several indexes
            on one frozen backbone)

Needs the `[serve]` extra (FAISS).
"""

from .build import IndexConfig, IndexReport, update_index
from .search import Hit, Searcher, SearchIndex

__all__ = ["Hit", "IndexConfig", "IndexReport", "SearchIndex", "Searcher", "update_index"]

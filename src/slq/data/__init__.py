"""Data: records and their formats (our JSONL, Karpathy split files), images, the readers of
`slq embed`, and the datasets slq generates (the shapes world, WordNet reverse-dictionary pairs).

`load_dataset(path)` is the entry point: it picks the format by the file's type.
"""

from .formats import (DATASET_INFO, KARPATHY_SPLITS, SPLIT_CHOICES, load_dataset, load_jsonl, load_karpathy,
                      write_dataset_info, write_jsonl)
from .pairs import Input, PairDataset, PairRecord, load_pairs, write_pairs
from .images import IMAGE_SUFFIXES, PAD_GREY, load_image, pad_to_square
from .records import (BAD_RECORD_POLICIES, IMAGE_DIRECTIONS, ImageRecord, ImageTextDataset, Record, SkippedRecord,
                      TextRecord)

__all__ = [
    "BAD_RECORD_POLICIES", "DATASET_INFO", "IMAGE_DIRECTIONS", "IMAGE_SUFFIXES", "KARPATHY_SPLITS", "PAD_GREY",
    "SPLIT_CHOICES", "ImageRecord", "Input", "PairDataset", "PairRecord", "load_pairs", "write_pairs",
    "ImageTextDataset", "Record", "SkippedRecord", "TextRecord", "load_dataset",
    "load_image", "load_jsonl", "load_karpathy", "pad_to_square", "write_dataset_info", "write_jsonl",
]


def __getattr__(name: str):
    if name == "atomic_write":  # slq 0.1 kept it here
        from .._compat import moved_name

        return moved_name(__name__, name, "slq._io")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

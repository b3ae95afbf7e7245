"""Data: records and their formats (our JSONL, Karpathy split files), images, the readers of
`slq embed`, and the datasets slq generates (the shapes world, WordNet reverse-dictionary pairs).

`load_dataset(path)` is the entry point: it picks the format by the file's type.
"""

from .formats import (
                      KARPATHY_SPLITS,
                      SPLIT_CHOICES,
                      load_dataset,
                      load_jsonl,
                      load_karpathy,
                      write_jsonl,
)
from .images import IMAGE_SUFFIXES, load_image
from .records import (
                      BAD_RECORD_POLICIES,
                      IMAGE_DIRECTIONS,
                      ImageRecord,
                      ImageTextDataset,
                      Record,
                      SkippedRecord,
                      TextRecord,
)

__all__ = [
    "BAD_RECORD_POLICIES", "IMAGE_DIRECTIONS", "IMAGE_SUFFIXES", "KARPATHY_SPLITS", "SPLIT_CHOICES", "ImageRecord",
    "ImageTextDataset", "Record", "SkippedRecord", "TextRecord", "load_dataset", "load_image", "load_jsonl",
    "load_karpathy", "write_jsonl",
]

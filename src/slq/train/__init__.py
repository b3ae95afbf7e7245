"""Training the latent queries (or a baseline's tensors) contrastively, resumably.

    config.py      TrainConfig (every setting, its bounds, which may change on resume), TrainResult
    batches.py     BatchPlan: each step's pairs as a pure function of (seed, step); hard negatives
    checkpoint.py  resumable checkpoints (safetensors + JSON, nothing unpickled), optimizer state as tensors
    loop.py        train, train_step, contrastive_backward (chunked, GradCache-style), the lr schedule
"""

from .batches import BatchPlan
from .checkpoint import (CHECKPOINT_DIR, load_optimizer_state, load_optimizer_tensors, optimizer_tensors,
                         save_optimizer_state)
from .config import HOW_NOT_WHAT, PAIRS, PROMPT_CACHE_DTYPES, TrainConfig, TrainResult, train_settings
from .loop import contrastive_backward, lr_factor, make_optimizer, train, train_step

__all__ = ["BatchPlan", "CHECKPOINT_DIR", "HOW_NOT_WHAT", "PAIRS", "PROMPT_CACHE_DTYPES", "TrainConfig", "TrainResult",
           "contrastive_backward", "load_optimizer_state", "load_optimizer_tensors", "lr_factor", "make_optimizer",
           "optimizer_tensors", "save_optimizer_state", "train", "train_settings", "train_step"]

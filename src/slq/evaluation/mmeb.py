"""MMEB-style scoring: hit@1 of each query over its own candidates, per dataset and meta-task.

As MMEB reports it: a query hits when its positive (the first candidate) scores highest among its
candidates; hit@1 is the percentage of hits per dataset; a meta-task's score is the mean over its
datasets, and the overall score the mean over all datasets. A candidate tied with the positive
counts as random tie-breaking would on average (a collapsed model scores chance), or as a miss
under `ties="strict"`.

Inputs are embedded once per dataset however often they recur (classification labels are every
query's candidates), with the encoder's `encode_inputs`.
"""

from __future__ import annotations

import numpy as np

from ..data.mmeb import META_TASKS, MMEBTask
from ..encoder import Encoder
from .metrics import check_ties


def hit_at_1(scores: list[np.ndarray], ties: str = "average") -> float:
    """Percentage of queries whose positive (index 0 of its score row) scores highest."""
    check_ties(ties)
    hits = 0.0
    for row in scores:
        above = int((row[1:] > row[0]).sum())
        tied = int((row[1:] == row[0]).sum())
        if not above:
            hits += 1.0 if not tied else (0.0 if ties == "strict" else 1.0 / (tied + 1))
    return 100.0 * hits / len(scores) if scores else 0.0


def _key(x):
    return x.key() if x.key() is not None else ("pixels", id(x))


def score_tasks(encoder: Encoder, tasks: list[MMEBTask], *, batch_size: int = 32,
                show_progress_bar: bool | None = None) -> list[list[np.ndarray]]:
    """Per task, each query's cosine to each of its candidates (row i: query i's candidates,
    positive first). Every distinct input of all tasks is embedded once, in one call, so batches
    stay full however small each dataset is."""
    rows: dict = {}
    inputs = []
    for task in tasks:
        for x in [*task.queries, *(c for cs in task.candidates for c in cs)]:
            if _key(x) not in rows:
                rows[_key(x)] = len(inputs)
                inputs.append(x)
    emb = encoder.encode_inputs(inputs, batch_size=batch_size, show_progress_bar=show_progress_bar)  # (n, d)
    return [[emb[[rows[_key(c)] for c in cs]] @ emb[rows[_key(q)]] for q, cs in zip(task.queries, task.candidates)]
            for task in tasks]


def evaluate_mmeb(encoder: Encoder, tasks: list[MMEBTask], *, batch_size: int = 32,
                  show_progress_bar: bool | None = None, ties: str = "average", missing: list[str] = ()) -> dict:
    """hit@1 per dataset, mean per meta-task and overall; `missing` names datasets asked for but
    not found, reported beside the ones scored."""
    check_ties(ties)
    datasets = {}
    for task, scores in zip(tasks, score_tasks(encoder, tasks, batch_size=batch_size,
                                               show_progress_bar=show_progress_bar)):
        datasets[task.name] = {"meta_task": task.meta_task, "hit@1": round(hit_at_1(scores, ties), 2),
                               "queries": len(task), "candidates_per_query": round(
                                   float(np.mean([len(c) for c in task.candidates])), 1),
                               "chance": round(100.0 * float(np.mean([1 / len(c) for c in task.candidates])), 2)}
        if task.skipped:
            datasets[task.name]["skipped"] = [{"source": s.source, "reason": s.reason} for s in task.skipped]
    return {"datasets": datasets, **summarise(datasets), "missing": list(missing), "ties": ties,
            "primary_metric": "overall"}


def summarise(datasets: dict) -> dict:
    """Mean hit@1 per meta-task (MMEB's order first) and over all datasets."""
    order = [*META_TASKS, *sorted({d["meta_task"] for d in datasets.values()} - set(META_TASKS))]
    meta = {}
    for name in order:
        values = [d["hit@1"] for d in datasets.values() if d["meta_task"] == name]
        if values:
            meta[name] = {"hit@1": round(float(np.mean(values)), 2), "datasets": len(values)}
    values = [d["hit@1"] for d in datasets.values()]
    return {"meta_tasks": meta,
            "overall": {"hit@1": round(float(np.mean(values)), 2) if values else None, "datasets": len(values)}}


def format_mmeb_table(report: dict, title: str | None = None) -> str:
    """The report as a Markdown table: datasets grouped by meta-task, then the means."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| dataset | meta-task | queries | candidates | chance | hit@1 |", "|---|---|---:|---:|---:|---:|"]
    for name, d in sorted(report["datasets"].items(), key=lambda kv: (_rank(kv[1]["meta_task"]), kv[0])):
        lines.append(f"| {name} | {d['meta_task']} | {d['queries']} | {d['candidates_per_query']:g} | "
                     f"{d['chance']:.1f} | {d['hit@1']:.1f} |")
    for name, m in report["meta_tasks"].items():
        lines.append(f"| **{name}** (mean of {m['datasets']}) | | | | | **{m['hit@1']:.1f}** |")
    overall = report["overall"]
    if overall["hit@1"] is not None:
        lines.append(f"| **overall** (mean of {overall['datasets']}) | | | | | **{overall['hit@1']:.1f}** |")
    if report.get("missing"):
        lines += ["", f"not found: {', '.join(report['missing'])}"]
    return "\n".join(lines)


def _rank(meta_task: str) -> int:
    return META_TASKS.index(meta_task) if meta_task in META_TASKS else len(META_TASKS)


class MMEBEvaluator:
    """hit@1 on MMEB-format tasks, as one of `slq.evaluation.compare`'s evaluators (a row per
    method); its primary metric is the overall mean."""

    primary_metric = "overall/hit@1"

    def __init__(self, tasks: list[MMEBTask], name: str = "mmeb", *, batch_size: int = 32, ties: str = "average"):
        self.tasks, self.name, self.batch_size, self.ties = tasks, name, batch_size, check_ties(ties)

    def describe(self) -> dict:
        """What a comparison's report records of it: the tasks' names and the tie rule."""
        return {"ties": self.ties, "dataset": ", ".join(task.name for task in self.tasks)}

    def __call__(self, encoder: Encoder, progress: bool | None = None) -> dict:
        return evaluate_mmeb(encoder, self.tasks, batch_size=self.batch_size, show_progress_bar=progress,
                             ties=self.ties)

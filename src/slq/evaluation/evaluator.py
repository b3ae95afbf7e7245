"""The evaluator contract, as sentence-transformers' evaluators have it: an object with a `name`, a
`primary_metric`, and a call that scores a model and returns a dict of metrics.

Retrieval (`RetrievalEvaluator`, KARR-Shapes and its control included), MMEB's hit@1
(`MMEBEvaluator`) and the capability probes (`slq.evaluation.capability`, scoring a backbone after
training) all follow it, so `slq.evaluation.compare` runs any of them on every method, in a process
of its own if asked, and resumes from the rows a run saved.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .._io import atomic_write

logger = logging.getLogger("slq")


class Evaluator(Protocol):
    """Scores an encoder; `name` keys its results in a comparison's report, `primary_metric` is the
    "/"-separated path of its headline score in the result ("t2i/R@1", "overall/hit@1"), and
    `describe()` what the report records of what it scores (`dataset` at least). Its result's
    entries that are mappings (one per direction, per dataset, …) go into a comparison's row."""

    name: str
    primary_metric: str

    def __call__(self, encoder: Any, progress: bool | None = None) -> dict: ...

    def describe(self) -> dict: ...


def primary_score(evaluator, result: Mapping):
    """The evaluator's headline score in `result` (its own, or a comparison row that kept it)."""
    value = result
    for key in evaluator.primary_metric.split("/"):
        value = value[key]
    return value


class SavedRows:
    """A comparison's rows file, `{method: {"settings": …, "row": …}}`: each finished row is written at
    once, beside what it depends on (`settings`, method name -> JSON), so a rerun with the same
    settings keeps it instead of recomputing it, and an interrupt loses only the methods in progress.
    Rows of methods this run does not name are kept in the file untouched."""

    def __init__(self, path: str | os.PathLike, settings: Mapping[str, Mapping]):
        self.path = Path(path)
        self.settings = {name: json.loads(json.dumps(s)) for name, s in settings.items()}  # as read back
        self.saved = read_rows(self.path)

    def kept(self) -> dict[str, dict]:
        """The saved rows whose settings are this run's, by method."""
        return {name: entry["row"] for name, entry in self.saved.items()
                if name in self.settings and entry.get("settings") == self.settings[name]}

    def save(self, name: str, row: dict) -> None:
        self.saved[name] = {"settings": self.settings[name], "row": row}
        atomic_write(self.path, json.dumps(self.saved, indent=2) + "\n")


def read_rows(path: Path) -> dict:
    """{method: {"settings", "row"}} from an earlier run's rows file; {} when there is none (or it is
    unreadable, said in a warning)."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        logger.warning("      ignoring %s: unreadable (%s)", path, e)
        return {}
    if not isinstance(saved, dict) or not all(isinstance(v, dict) and "row" in v for v in saved.values()):
        logger.warning("      ignoring %s: not a rows file of this version", path)
        return {}
    return saved

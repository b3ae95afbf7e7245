"""`slq pilot`: the pilot (`slq.evaluation.pilot`) scored and written into a folder."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from .._io import atomic_write
from ..encoder import Encoder
from ..evaluation.pilot import PilotSet, builtin_pilot, format_pilot, pilot_scores, plot_pilot

logger = logging.getLogger("slq")


def run_pilot(out_dir: str | os.PathLike, encoders: Mapping[str, Encoder], pilot: PilotSet | None = None, *,
              batch_size: int = 32, progress: bool | None = None) -> dict:
    """Score `pilot` (default: `builtin_pilot()`) under `encoders` and write `pilot.json`,
    `table.txt` and `pilot.png` (if matplotlib is there; else a warning says so) into `out_dir`;
    returns the result."""
    pilot = pilot if pilot is not None else builtin_pilot()
    result = pilot_scores(encoders, pilot, batch_size=batch_size, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "pilot.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out / "table.txt", format_pilot(result) + "\n")
    try:
        plot_pilot(result, out / "pilot.png", pilot.images)
    except ImportError:
        logger.warning("matplotlib is not installed: no pilot.png (pip install matplotlib)")
    return result

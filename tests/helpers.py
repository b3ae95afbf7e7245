"""Helpers several test modules share."""

from __future__ import annotations

import os
import subprocess
import sys


def slq(*args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "slq.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, f"slq {' '.join(map(str, args))} failed:\n{proc.stderr}"
    return proc

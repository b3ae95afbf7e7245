"""Small utilities every layer shares: safe writes, slq's cache folder, checksums, seeded streams,
this process's peak memory.

Kept in one private module that imports nothing else of slq but `errors`, so that loading a
backbone pulls in no tiny-model builder and no data loader.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import resource
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import SettingError, SLQError, one_line


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], object]) -> None:
    """Write a file so readers see the old content or the new, never a half-written file.

    `data` may be a function that writes into the open file, for output too large to hold in
    memory at once. The temporary file sits in the target's folder because os.replace is atomic
    only within one filesystem. It is created with mode 0o666 so the umask applies as for a plain
    open().
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            if callable(payload):
                payload(f)
            else:
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            reason = e.strerror or str(e).strip() or type(e).__name__
            raise SLQError(one_line(f"{path}: cannot write: {reason}")) from None
        raise


def save_folder(path: str | os.PathLike, *writers: Callable[[Path], object]) -> None:
    """Run each `writer(folder)` (e.g. `save_pretrained`) into a staging folder, then rename it into
    place, so a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would make the checkpoint unreadable to others
    try:
        for write in writers:
            write(staging)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cache_root() -> Path:
    """`$SLQ_CACHE`, else `$XDG_CACHE_HOME/slq`, else `~/.cache/slq`."""
    if os.environ.get("SLQ_CACHE"):
        return Path(os.environ["SLQ_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slq"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: what a comparison's isolated method and every
    benchmark worker report as its peak.

    Linux's VmHWM, not getrusage's ru_maxrss: a spawned process is forked from its parent before it
    execs Python, and ru_maxrss keeps the fork's high-water mark, so a child of a 3 GB parent would
    report at least 3 GB whatever it used itself.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux and BSD: KiB


def seed_of(namespace: str, *parts: object) -> int:
    """A 64-bit seed for (namespace, *parts) from SHA-256 of their text: the same on every machine and
    Python version (unlike `hash()`), and independent streams for different parts."""
    key = ":".join(str(p) for p in (namespace, *parts))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def seeded_random(namespace: str, *parts: object) -> random.Random:
    """Python's generator on `seed_of(namespace, *parts)`."""
    return random.Random(seed_of(namespace, *parts))


def seeded_generator(namespace: str, *parts: object):
    """A torch generator on `seed_of(namespace, *parts)` (63 bits: torch seeds are signed)."""
    import torch

    return torch.Generator().manual_seed(seed_of(namespace, *parts) & 0x7FFF_FFFF_FFFF_FFFF)


def setting(default=None, help: str = "", *, factory=None, choices=None, minimum=None, maximum=None,
            positive: bool = False, why: str = "", resumable: bool = False, **metadata):
    """A config dataclass field whose help text and rules live beside its default: the CLI builds its
    flag from them (`slq.cli.options`) and `check_settings` enforces the rules, so none is written twice.

    Rules: `choices` (the allowed values), `minimum`/`maximum` (inclusive bounds), `positive` (> 0);
    the annotation says what kind of value (`int`: an integer, `float`: a finite number, `bool`: true
    or false; `| None` allows None too). `why`, when given, ends the error message. `resumable`: the
    setting changes how a run computes or saves, not what it learns, so a resumed run may change it.
    `metadata` may also hold `cli=False` (no flag).
    """
    from dataclasses import field

    rules = {"choices": choices, "minimum": minimum, "maximum": maximum, "positive": positive or None,
             "why": why or None, "resumable": resumable or None}
    metadata = {"help": help, **{k: v for k, v in rules.items() if v is not None}, **metadata}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_settings(config) -> None:
    """Raise a SettingError naming the first field of the dataclass `config` that breaks its `setting`
    rules, its value and what is allowed. A config's `__post_init__` calls it, then checks what
    involves several fields. Fields without rules are not checked (a `bool` field always is)."""
    from dataclasses import fields

    for f in fields(config):
        value = getattr(config, f.name)
        rule = _broken_rule(f, value)
        if rule is not None:
            raise SettingError(f.name, value, rule)


def _broken_rule(f, value) -> str | None:
    """What `value` must be to fit field `f`'s rules, or None when it fits (or `f` has none)."""
    meta = f.metadata
    kinds = {part.strip() for part in (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
                                       ).split("|")}
    optional = "None" in kinds
    kind = next(iter(kinds - {"None"}), "") if len(kinds - {"None"}) == 1 else ""
    if value is None and optional:
        return None
    if "choices" in meta:
        allowed = [c for c in meta["choices"] if c is not None]
        return None if value in meta["choices"] else f"must be one of {', '.join(map(str, allowed))}"
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    low, high, positive = meta.get("minimum"), meta.get("maximum"), meta.get("positive")
    if low is None and high is None and not positive:
        return None
    integer = kind == "int"
    if ((_is_int(value) if integer else _is_number(value)) and (low is None or value >= low)
            and (high is None or value <= high) and (not positive or value > 0)):
        return None
    noun = "an integer" if integer else "a number"
    if positive:
        rule = f"must be {noun} in (0, {high}]" if high is not None else f"must be a positive {noun.split()[-1]}"
    elif low is not None and high is not None:
        rule = f"must be {noun} in [{low}, {high}]"
    elif low is not None:
        rule = f"must be {noun} >= {low}"
    else:
        rule = f"must be {noun} <= {high}"
    return rule + (" (or None)" if optional else "") + (f" ({meta['why']})" if meta.get("why") else "")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require_positive_int(name: str, value, *, optional: bool = False) -> None:
    """Raise a SettingError naming `name` unless `value` is an integer >= 1 (or None, when `optional`)."""
    from .errors import SettingError

    if value is None and optional:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise SettingError(name, value, "must be an integer >= 1" + (" (or None)" if optional else ""))


def require_choice(name: str, value, choices) -> None:
    """Raise a SettingError naming `name` and the allowed values unless `value` is one of `choices`."""
    from .errors import SettingError

    if value not in choices:
        raise SettingError(name, value, f"must be one of {', '.join(map(str, choices))}")

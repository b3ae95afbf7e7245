"""Small utilities every layer shares: safe writes, slq's cache folder, checksums, seeded streams.

Kept in one private module that imports nothing else of slq but `errors`, so that loading a
backbone pulls in no tiny-model builder and no data loader.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import SLQError, one_line


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


def setting(default=None, help: str = "", *, factory=None, **metadata):
    """A config dataclass field whose help text lives beside its default: the CLI builds its flag
    from both (`slq.cli.options`), so neither is written twice. `metadata` may hold `choices` or
    `cli=False` (no flag)."""
    from dataclasses import field

    if factory is not None:
        return field(default_factory=factory, metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def require_positive_int(name: str, value, *, optional: bool = False) -> None:
    """Raise a SettingError naming `name` unless `value` is an integer >= 1 (or None, when `optional`)."""
    from .errors import SettingError

    if value is None and optional:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise SettingError(name, value, "must be an integer >= 1" + (" (or None)" if optional else ""))


def require_positive_ints(config, *names: str, optional: tuple[str, ...] = ()) -> None:
    """`require_positive_int` for each of `names`, fields of `config`; those in `optional` may be None."""
    for name in names:
        require_positive_int(name, getattr(config, name), optional=name in optional)


def require_choice(name: str, value, choices) -> None:
    """Raise a SettingError naming `name` and the allowed values unless `value` is one of `choices`."""
    from .errors import SettingError

    if value not in choices:
        raise SettingError(name, value, f"must be one of {', '.join(map(str, choices))}")

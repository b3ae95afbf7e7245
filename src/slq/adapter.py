"""The adapter folder: everything SLQ learns, small enough to mail.

Layout (PEFT-style):
    adapter_config.json        AdapterConfig: query shape, pooling, temperature, backbone fingerprint,
                               how images were fitted to the backbone (`image_fit`)
    adapter_model.safetensors  one float32 tensor "queries" of shape (N_q, d)
    README.md                  a model card rendered from the config

Each file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file. Loading accepts safetensors only (never pickle), checks shapes, dtype and finiteness, and
refuses a backbone whose fingerprint differs, saying what differs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._io import atomic_write
from ._version import __version__
from .backbone import IMAGE_FITS
from .errors import AdapterError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
POOLINGS = ("mean",)
_PROBE_RTOL = 1e-2  # embedding probes differ by more than this between different checkpoints


@dataclass
class AdapterConfig:
    """What an adapter is and which backbone it belongs to."""

    num_queries: int
    hidden_size: int
    backbone: dict  # Backbone.fingerprint() of the backbone it was trained on
    pooling: str = "mean"
    temperature: float = 0.07  # the learned temperature at the end of training
    image_fit: str = "processor"  # Backbone.image_fit in training: images must reach the backbone the same way
    slq_version: str = __version__
    training: dict = field(default_factory=dict)  # settings and results of the run, for the record

    def __post_init__(self):
        if not (_is_int(self.num_queries) and self.num_queries > 0):
            raise AdapterError(f"num_queries must be a positive integer, got {self.num_queries!r}")
        if not (_is_int(self.hidden_size) and self.hidden_size > 0):
            raise AdapterError(f"hidden_size must be a positive integer, got {self.hidden_size!r}")
        if self.pooling not in POOLINGS:
            raise AdapterError(f"pooling {self.pooling!r} is not supported; choose one of {POOLINGS}")
        if not isinstance(self.backbone, dict) or not isinstance(self.backbone.get("config_sha256"), str):
            raise AdapterError("backbone fingerprint missing or malformed")
        for name in ("embedding_probe", "weights_probe"):
            probe = self.backbone.get(name, [])
            if not (isinstance(probe, list) and all(_is_number(v) and _finite(v) for v in probe)):
                raise AdapterError(f"backbone.{name} must be a list of finite numbers")
        if self.image_fit not in IMAGE_FITS:
            raise AdapterError(f"image_fit {str(self.image_fit)[:40]!r} is not supported; choose one of {IMAGE_FITS}")
        if not _positive_finite(self.temperature):
            raise AdapterError(f"temperature must be a positive finite number, got {str(self.temperature)[:40]}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a count


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float
        return False


def _positive_finite(value) -> bool:
    return _is_number(value) and _finite(value) and value > 0


def backbone_mismatch(expected: dict, actual: dict) -> str | None:
    """Why `actual` (a backbone's fingerprint) is not the backbone an adapter expects, or None."""
    fields = ("family", "model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    diffs = [f"{k} {expected.get(k)!r} != {actual.get(k)!r}" for k in fields if expected.get(k) != actual.get(k)]
    if diffs:
        return "; ".join(diffs)
    if expected.get("config_sha256") != actual.get("config_sha256"):
        return "same architecture summary but a different config (config_sha256 differs)"
    for probe in ("embedding_probe", "weights_probe"):
        probe_a, probe_b = expected.get(probe, []), actual.get(probe, [])
        if len(probe_a) != len(probe_b) or any(
            abs(a - b) > _PROBE_RTOL * max(abs(a), abs(b), 1e-3) for a, b in zip(probe_a, probe_b)
        ):
            return f"same architecture but different weights ({probe.replace('_', ' ')} differs)"
    return None


def _model_card(config: AdapterConfig) -> str:
    bb = config.backbone
    lines = [
        "# SLQ adapter",
        "",
        f"Shared Latent Queries for a frozen `{bb.get('model_type')}` backbone "
        f"(hidden size {bb.get('hidden_size')}, {bb.get('num_hidden_layers')} layers).",
        "",
        f"- queries: {config.num_queries} x {config.hidden_size} = {config.num_queries * config.hidden_size:,} "
        "trainable parameters",
        f"- pooling: {config.pooling} over the query positions, L2-normalised",
        f"- temperature (learned): {config.temperature:.4f}",
        *([f"- images: padded to a grey square, one tile each (image_fit `{config.image_fit}`)"]
          if config.image_fit == "square" else []),
        f"- slq version: {config.slq_version}",
        "",
        "```python",
        "from slq import SLQRetriever",
        "r = SLQRetriever.from_pretrained(BACKBONE_DIR, ADAPTER_DIR)",
        "```",
    ]
    if config.training:
        lines += ["", "## Training", "", "```json", json.dumps(config.training, indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def save_adapter(path: str | os.PathLike, queries: torch.Tensor, config: AdapterConfig) -> Path:
    """Write the adapter files into `path`, each atomically (temp file + rename), config last.

    Other entries of the folder (a training checkpoint) are left alone. A crash between two files
    leaves weights and config that disagree in shape or none at all, which loading reports.
    """
    path = Path(path)
    expected = (config.num_queries, config.hidden_size)
    if tuple(queries.shape) != expected:
        raise AdapterError(f"queries shape {tuple(queries.shape)} does not match the config's {expected}")
    path.mkdir(parents=True, exist_ok=True)
    staging = path / f".{WEIGHTS_NAME}.tmp"
    save_file({"queries": queries.detach().float().cpu().contiguous()}, str(staging),
              metadata={"format": "pt"})  # one key: safetensors orders several at random, and bytes should repeat
    os.replace(staging, path / WEIGHTS_NAME)
    atomic_write(path / CONFIG_NAME, json.dumps(asdict(config), indent=2, sort_keys=True) + "\n")
    atomic_write(path / CARD_NAME, _model_card(config))
    return path


def load_adapter(path: str | os.PathLike) -> tuple[AdapterConfig, torch.Tensor]:
    """Read and validate an adapter folder; any defect is an AdapterError naming the file."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not path.is_dir():
        raise AdapterError(f"{path}: no such adapter folder")
    if not config_file.is_file():
        raise AdapterError(f"{config_file}: missing (not an slq adapter folder?)")
    try:
        raw = json.loads(config_file.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        known = AdapterConfig.__dataclass_fields__
        config = AdapterConfig(**{k: v for k, v in raw.items() if k in known})
    except AdapterError as e:
        raise AdapterError(f"{config_file}: {e}") from None
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise AdapterError(f"{config_file}: malformed adapter config: {type(e).__name__}: {str(e)[:200]}") from None
    if not weights_file.is_file():
        raise AdapterError(f"{weights_file}: missing")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{weights_file}: not a readable safetensors file: {e}") from None
    queries = tensors.get("queries")
    if queries is None or set(tensors) != {"queries"}:
        raise AdapterError(f"{weights_file}: expected exactly one tensor 'queries', found {sorted(tensors)}")
    if not queries.is_floating_point():
        raise AdapterError(f"{weights_file}: queries have dtype {queries.dtype}, expected a float type")
    if tuple(queries.shape) != (config.num_queries, config.hidden_size):
        raise AdapterError(f"{weights_file}: queries shape {tuple(queries.shape)} does not match the config's "
                           f"({config.num_queries}, {config.hidden_size})")
    if not torch.isfinite(queries).all():
        raise AdapterError(f"{weights_file}: queries contain NaN or infinite values")
    return config, queries.float()

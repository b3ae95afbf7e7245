"""GGUF checkpoints as backbones: converted once to an ordinary checkpoint folder, then cached.

transformers reads a GGUF file (`gguf_file=`, needs the `gguf` package) by de-quantising every
tensor, which takes about a minute for a 270M model; the model it returns cannot be saved as is
(it carries a GGUF quantisation config). slq copies the de-quantised weights into a plain model of
the same config and saves that folder (float32 safetensors, config, tokenizer) under a cache
folder named by the file's sha256, so the next load takes a second and goes through exactly the
code path of a downloaded checkpoint. The conversion is atomic: a crash leaves no half folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ._io import cache_root, file_sha256, save_folder
from .errors import SLQError

logger = logging.getLogger("slq")

_MARKER = "slq-gguf.json"  # written last inside the folder: names the source file and its sha256


def convert_gguf(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                 expected_sha256: str | None = None) -> Path:
    """The checkpoint folder for a GGUF file, converting it on first use; returns the folder.

    `expected_sha256`, when given, must match the file (a corrupt or different download is refused
    before a minute is spent on it).
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise SLQError(f"{gguf_path}: no such GGUF file")
    sha = file_sha256(gguf_path)
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise SLQError(f"{gguf_path}: sha256 {sha} does not match the expected {expected_sha256}; "
                       "the file is corrupt or not the one asked for")
    folder = Path(cache_dir or cache_root() / "gguf") / f"{gguf_path.stem}-{sha[:16]}"
    if (folder / _MARKER).is_file():
        return folder
    try:
        import gguf  # noqa: F401  (transformers needs it; a clear message beats its ImportError)
    except ImportError:
        raise SLQError("loading a GGUF file needs the `gguf` package: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a checkpoint folder (once; about a minute for 270M parameters)", gguf_path.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise SLQError(f"{gguf_path}: transformers cannot read this GGUF file: {str(e).splitlines()[0]}") from None
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    marker = {"source": gguf_path.name, "sha256": sha}
    save_folder(folder, plain.save_pretrained, tokenizer.save_pretrained,
                lambda out: _check_saved_tokenizer(gguf_path, tokenizer, out),
                lambda out: (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n"))
    return folder


def _check_saved_tokenizer(gguf_path: Path, tokenizer, out: Path) -> None:
    """Refuse a folder whose tokenizer reloads differently from the file's.

    transformers saves a GGUF tokenizer under the model family's class, which on reload rebuilds
    its own pipeline: a byte-level vocabulary in a Gemma file comes back as a sentencepiece one that
    cannot encode anything. Checked inside the staging folder, so a refusal leaves no cache entry.
    """
    from transformers import AutoTokenizer

    probe = "The quick brown fox, 3 times: é"
    try:
        same = AutoTokenizer.from_pretrained(out)(probe)["input_ids"] == tokenizer(probe)["input_ids"]
        why = ""
    except Exception as e:  # the tokenizers backend raises a bare Exception
        same, why = False, f": {str(e).splitlines()[0]}"
    if not same:
        raise SLQError(f"{gguf_path}: its tokenizer ({type(tokenizer).__name__}) does not survive saving as a "
                       f"checkpoint folder{why}; transformers cannot convert this file's tokenizer faithfully")

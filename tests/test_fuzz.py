"""Fuzzing what users hand to slq: any adapter folder or --texts file gives a valid result or one clean error.

`load_adapter` must return (AdapterConfig, finite float32 queries of shape (num_queries, hidden_size)) or
raise AdapterError, whatever bytes the two files hold; `_read_texts` (the `embed --texts` reader) must
return non-blank texts or raise DataError. Any other exception is a bug: the CLI would print a traceback
instead of its one-line message. Hypothesis and pytest's `tmp_path` do not mix (one folder for all
examples), so each example makes its own temporary folder.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as safetensors_bytes

from slq.adapter import CONFIG_NAME, POOLINGS, WEIGHTS_NAME, AdapterConfig, load_adapter, save_adapter
from slq.data.readers import read_texts as _read_texts
from slq.errors import AdapterError, DataError

pytestmark = pytest.mark.timeout(300)  # "never hangs": a stuck example fails the test instead of the session

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NUM_QUERIES, HIDDEN = 3, 4
BACKBONE = {"config_sha256": "x", "family": "qwen2_vl", "model_type": "qwen2_vl", "hidden_size": HIDDEN,
            "num_hidden_layers": 2, "vocab_size": 100, "embedding_probe": [0.25, -0.5]}
VALID_CONFIG = AdapterConfig(num_queries=NUM_QUERIES, hidden_size=HIDDEN, backbone=BACKBONE, temperature=0.05,
                             training={"note": "fuzz"})
VALID_QUERIES = torch.linspace(-1, 1, NUM_QUERIES * HIDDEN).reshape(NUM_QUERIES, HIDDEN)  # (N_q, d)


def _valid_files() -> dict[str, bytes]:
    """The two files of a valid adapter, as written by save_adapter."""
    with tempfile.TemporaryDirectory() as d:
        save_adapter(d, VALID_QUERIES, VALID_CONFIG)
        return {name: (Path(d) / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}


VALID = _valid_files()


def _event(name: str) -> None:
    """Count outcomes for --hypothesis-show-statistics (the helpers also run outside @given)."""
    if currently_in_test_context():
        event(name)


@contextmanager
def _adapter_folder(config: bytes | None, weights: bytes | None) -> Iterator[Path]:
    """A temporary adapter folder holding the given file contents (None: file absent)."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for name, data in ((CONFIG_NAME, config), (WEIGHTS_NAME, weights)):
            if data is not None:
                (folder / name).write_bytes(data)
        yield folder


def _load_valid_or_adapter_error(config: bytes | None, weights: bytes | None):
    """The property: a valid (config, queries) pair or an AdapterError with a one-line message."""
    with _adapter_folder(config, weights) as folder:
        try:
            loaded, queries = load_adapter(folder)
        except AdapterError as e:
            assert len(str(e).splitlines()) == 1, f"message is not one line: {e!r}"
            _event("AdapterError")
            return None
    _event("loaded")
    assert isinstance(loaded, AdapterConfig), type(loaded)
    assert loaded.num_queries > 0 and loaded.hidden_size > 0, loaded
    assert math.isfinite(loaded.temperature) and loaded.temperature > 0, loaded
    assert loaded.pooling in POOLINGS and "config_sha256" in loaded.backbone, loaded
    assert queries.dtype == torch.float32, queries.dtype
    assert tuple(queries.shape) == (loaded.num_queries, loaded.hidden_size), (queries.shape, loaded)
    assert torch.isfinite(queries).all(), "load_adapter returned non-finite queries"
    return loaded, queries


# --- strategies -------------------------------------------------------------------------------

# Integers stay within int64 here; huge integers are test_huge_integer_temperature_is_an_adapter_error.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_valid_dict = asdict(VALID_CONFIG)


@st.composite
def near_configs(draw) -> dict:
    """The valid config with a few fields dropped or replaced, and maybe unknown keys added, so the
    checks past "is it a JSON object" run too."""
    config = dict(_valid_dict)
    for key in draw(st.sets(st.sampled_from(sorted(config)), max_size=3)):
        if draw(st.booleans()):
            del config[key]
        else:
            config[key] = draw(st.integers(-3, 5) | st.floats() | json_values)
    return {**draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)), **config}


config_files = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | near_configs().map(lambda v: json.dumps(v).encode())
    | st.text(max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass"))
)

tensor_names = st.just("queries") | st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
# the right shape, the right number of elements in the wrong shape, or any small shape
shapes = (st.just((NUM_QUERIES, HIDDEN))
          | st.sampled_from([(HIDDEN, NUM_QUERIES), (NUM_QUERIES * HIDDEN,), (1, NUM_QUERIES, HIDDEN),
                             (NUM_QUERIES, HIDDEN, 1)])
          | st.lists(st.integers(0, 4), max_size=3).map(tuple))
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


@st.composite
def tensors(draw) -> torch.Tensor:
    dtype, shape = draw(st.sampled_from(sorted(DTYPES))), draw(shapes)
    size = int(np.prod(shape, dtype=np.int64))
    if dtype == "int64":
        values = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=size, max_size=size))
    else:  # half the tensors finite, the others may hold NaN, +-inf or values that overflow float16
        floats = st.floats(-1e4, 1e4) if draw(st.booleans()) else st.floats()
        values = draw(st.lists(floats, min_size=size, max_size=size))
    with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        array = np.array(values, dtype=DTYPES[dtype]).reshape(shape)
    return torch.from_numpy(array)


# Mostly a lone "queries" tensor, so that the checks after "exactly one tensor" run too.
tensor_dicts = st.fixed_dictionaries({"queries": tensors()}) | st.dictionaries(tensor_names, tensors(), max_size=3)
metadata = st.none() | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), max_size=5),
                                       st.text(st.characters(exclude_categories=["Cs"]), max_size=5), max_size=2)
safetensors_files = st.builds(lambda t, m: safetensors_bytes(t, metadata=m), tensor_dicts, metadata)
weights_files = st.binary(max_size=300) | safetensors_files


# --- load_adapter -----------------------------------------------------------------------------

@FUZZ
@given(config=config_files | st.none())
@example(config=VALID[CONFIG_NAME])
@example(config=json.dumps({**_valid_dict, "temperature": float("nan")}).encode())
@example(config=json.dumps({**_valid_dict, "temperature": float("inf")}).encode())
@example(config=json.dumps({**_valid_dict, "temperature": -1}).encode())
@example(config=json.dumps({**_valid_dict, "num_queries": NUM_QUERIES + 1}).encode())
@example(config=json.dumps({**_valid_dict, "hidden_size": 0}).encode())
@example(config=json.dumps({**_valid_dict, "pooling": "max"}).encode())
@example(config=json.dumps({**_valid_dict, "backbone": {"family": "qwen2_vl"}}).encode())
@example(config=b"\xff\xfe{}")
def test_arbitrary_config_file(config):
    result = _load_valid_or_adapter_error(config, VALID[WEIGHTS_NAME])
    if config == VALID[CONFIG_NAME]:
        assert result is not None and result[0] == VALID_CONFIG and torch.equal(result[1], VALID_QUERIES)


@FUZZ
@given(weights=st.one_of(safetensors_files, weights_files))  # drawn from safetensors_files 3 times in 4
@example(weights=None)
@example(weights=VALID[WEIGHTS_NAME])
@example(weights=safetensors_bytes({"queries": torch.full((NUM_QUERIES, HIDDEN), float("inf"))}))
@example(weights=safetensors_bytes({"queries": torch.ones(NUM_QUERIES, HIDDEN, dtype=torch.float16)}))
@example(weights=safetensors_bytes({"queries": torch.tensor(1.0)}))
@example(weights=safetensors_bytes({"queries": torch.ones(NUM_QUERIES, HIDDEN, dtype=torch.int64)}))
@example(weights=safetensors_bytes({"queries": torch.ones(HIDDEN, NUM_QUERIES)}))
@example(weights=safetensors_bytes({"queries": VALID_QUERIES, "extra": torch.zeros(1)}))
@example(weights=safetensors_bytes({"Queries": VALID_QUERIES}))
def test_arbitrary_weights_file(weights):
    result = _load_valid_or_adapter_error(VALID[CONFIG_NAME], weights)
    if result is not None:  # what loads is what the file holds, as float32
        stored = tensors_from_bytes(weights)
        assert set(stored) == {"queries"}, f"tensors {sorted(stored)} were accepted"
        stored = stored["queries"]
        assert stored.is_floating_point(), f"queries of dtype {stored.dtype} were accepted"
        assert torch.equal(result[1], stored.float())


MUTATION_KINDS = ("flip", "digit", "truncate", "insert", "delete")
# (kind, where in the file as a fraction of its length, payload bytes)
mutations = st.lists(st.tuples(st.sampled_from(MUTATION_KINDS), st.floats(0, 1, exclude_max=True),
                               st.binary(min_size=1, max_size=8)), min_size=1, max_size=4)


def _mutate(data: bytes, ops: list[tuple[str, float, bytes]]) -> bytes:
    """`data` after bit flips, digit changes, truncations, insertions and deletions."""
    out = bytearray(data)
    for kind, where, payload in ops:
        at = int(where * (len(out) + 1))
        digits = [i for i, b in enumerate(out) if 0x30 <= b <= 0x39]
        if kind == "digit" and digits:  # a number in the config (or the header) changes but still parses
            out[digits[int(where * len(digits))]] = 0x30 + payload[0] % 10
        elif kind == "flip" and out:
            out[min(at, len(out) - 1)] ^= 1 << payload[0] % 8
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = payload
        elif kind == "delete":
            del out[at:at + 2 * len(payload)]
    return bytes(out)


def _digit_at(data: bytes, needle: bytes) -> float:
    """The `where` of a "digit" mutation that hits the first digit after `needle` in `data`."""
    digits = [i for i, b in enumerate(data) if 0x30 <= b <= 0x39]
    first = next(i for i in digits if i > data.index(needle))
    return (digits.index(first) + 0.5) / len(digits)


@FUZZ
@given(target=st.sampled_from([CONFIG_NAME, WEIGHTS_NAME]), ops=mutations)
@example(target=CONFIG_NAME, ops=[("digit", _digit_at(VALID[CONFIG_NAME], b'"num_queries"'), b"\x07")])
@example(target=CONFIG_NAME, ops=[("digit", _digit_at(VALID[CONFIG_NAME], b'\n  "hidden_size"'), b"\x02")])
@example(target=WEIGHTS_NAME, ops=[("truncate", 0.99, b"\x00")])
def test_mutated_valid_adapter(target, ops):
    files = dict(VALID)
    files[target] = _mutate(VALID[target], ops)
    result = _load_valid_or_adapter_error(files[CONFIG_NAME], files[WEIGHTS_NAME])
    if files[target] == VALID[target]:
        assert result is not None and torch.equal(result[1], VALID_QUERIES), "an intact adapter must load"


def test_huge_integer_temperature_is_an_adapter_error():
    config = json.dumps({**_valid_dict, "temperature": 10**400}).encode()
    assert _load_valid_or_adapter_error(config, VALID[WEIGHTS_NAME]) is None


def test_deeply_nested_config_is_an_adapter_error():
    config = b"[" * 100_000 + b"]" * 100_000
    assert _load_valid_or_adapter_error(config, VALID[WEIGHTS_NAME]) is None


@pytest.mark.parametrize("field,value", [("num_queries", True), ("temperature", True)])
def test_booleans_are_not_numbers(field, value):
    queries = VALID_QUERIES[:1] if field == "num_queries" else VALID_QUERIES
    weights = safetensors_bytes({"queries": queries.contiguous()})
    config = json.dumps({**_valid_dict, field: value}).encode()
    assert _load_valid_or_adapter_error(config, weights) is None, f"{field}: true was accepted"


# --- embed --texts ----------------------------------------------------------------------------

line_breaks = st.sampled_from(["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
text_files = (st.binary(max_size=200)
              | st.lists(st.text(max_size=12) | line_breaks, max_size=8)
              .map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")))


def _read_texts_or_data_error(data: bytes) -> list[str] | None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "texts.txt"
        path.write_bytes(data)
        try:
            texts = _read_texts(path)
        except DataError as e:
            assert len(str(e).splitlines()) == 1, f"message is not one line: {e!r}"
            assert str(path) in str(e), f"message does not name the file: {e}"
            _event("DataError")
            return None
    _event("read")
    assert isinstance(texts, list) and texts, texts
    assert all(isinstance(t, str) and t.strip() for t in texts), texts
    assert not any("\n" in t or "\r" in t for t in texts), f"a text spans lines: {texts}"
    return texts


@FUZZ
@given(data=text_files)
@example(data=b"")
@example(data=b"a red circle\n\none blue square\n")
@example(data=b"a red circle\n \t\n")
@example(data=b"\xff\xfe")
@example(data=b"a red circle\r\none blue square\n")
def test_arbitrary_texts_file(data):
    texts = _read_texts_or_data_error(data)
    if data == b"a red circle\r\none blue square\n":
        assert texts == ["a red circle", "one blue square"]


def test_texts_are_split_on_newlines_only():
    data = "a red\u2028circle\none\x85blue square\nthe \x0cend\n".encode()
    assert _read_texts_or_data_error(data) == ["a red\u2028circle", "one\x85blue square", "the \x0cend"]

"""Resuming `slq train` after a hard kill: the adapter is bit-identical to an uninterrupted run.

The training run is a real subprocess killed with SIGKILL, the way a preempted job dies: no handler
runs, whatever was on disk at that instant is all the resumed run gets. A 16-step run takes well under
a second, far too fast to hit "mid-run" by polling alone, so the child runs in short slices between
SIGCONT and SIGSTOP; the checkpoint is read while the child is stopped, and the SIGKILL lands then.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slq.adapter import CONFIG_NAME, WEIGHTS_NAME
from slq.train import CHECKPOINT_DIR

pytestmark = pytest.mark.slow

TIMEOUT = 300  # seconds for any one subprocess
STEPS = 16  # 16 images / batch 2 x 2 epochs
TRAIN_FLAGS = ("--num-queries", "4", "--batch-size", "2", "--epochs", "2", "--lr", "1e-3")
SAVE_EVERY_STEP = ("--save-every", "1")
FIRST_EPOCH_END = STEPS // 2  # where a run with the default settings writes its first checkpoint
KILL_AT = random.Random(20240611).randint(3, STEPS - 3)  # fixed seed: the same k on every run
MARK = "from_killed_run"  # tagged onto the killed run's history entries to see where the resumed run began
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _train_cmd(backbone: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "slq.cli", "train", "--backbone", str(backbone), "--train", str(data),
            "--out", str(out), *TRAIN_FLAGS, *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def _ok(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = _run(cmd)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def _state(out: Path) -> dict | None:
    """The checkpoint's state.json, or None when there is none (yet)."""
    try:
        return json.loads((out / CHECKPOINT_DIR / "state.json").read_text())
    except FileNotFoundError:  # not written yet, or caught between the renames of a save
        return None


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's one error line; asserts there is exactly one and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("slq: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def backbone(tiny_dirs) -> Path:
    """The session's tiny qwen2_vl: what `slq tiny-model --family qwen2_vl` writes (tested in test_cli)."""
    return tiny_dirs["qwen2_vl"]


@pytest.fixture(scope="module")
def uninterrupted(backbone, shapes_jsonl, tmp_path_factory) -> Path:
    """The uninterrupted run, trained once with the default settings (a checkpoint at each epoch's end). It is
    the reference of the save-every-step runs too: how often a run saves is a setting of how it runs, not of
    what it learns (`slq.train.HOW_NOT_WHAT`), so the adapter, the losses and the final checkpoint must not
    depend on it."""
    out = tmp_path_factory.mktemp("resume") / "out_a"
    _ok(_train_cmd(backbone, shapes_jsonl, out))
    return out


# --- stepping a child process -----------------------------------------------------------------

def _process_state(pid: int) -> str:
    """One-letter state from /proc (R, S, D, T, Z, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _stop(proc: subprocess.Popen, deadline: float) -> None:
    """SIGSTOP the child and wait until it is stopped (or has exited)."""
    os.kill(proc.pid, signal.SIGSTOP)
    while _process_state(proc.pid) not in "TtZX":
        assert time.monotonic() < deadline, "child did not stop"
        time.sleep(0.0005)


def _kill_at_step(proc: subprocess.Popen, out: Path, k: int) -> int | None:
    """Let the child run in slices until its checkpoint reports step >= k, then SIGKILL it; returns
    the checkpoint's step at the kill, or None if the child ended first (this process overslept)."""
    deadline = time.monotonic() + TIMEOUT
    slice_s = 0.02  # long slices while the model loads, short ones once training steps run
    try:
        while True:
            assert time.monotonic() < deadline, f"no checkpoint at step {k} within {TIMEOUT} s"
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(slice_s)
            _stop(proc, deadline)
            if proc.poll() is not None:
                return None
            state = _state(out)
            if state is not None:
                slice_s = 0.002
                if state["step"] >= k:
                    os.kill(proc.pid, signal.SIGKILL)  # still stopped: the checkpoint read is the one left
                    return state["step"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)


def _safetensors_parts(path: Path) -> tuple[dict, bytes]:
    """(header as JSON, tensor bytes) of a safetensors file.

    The files are compared part by part, not as whole byte strings: safetensors 0.8 writes the
    "__metadata__" keys in a per-process random (hash map) order, so two runs of `slq train` with
    identical queries write byte-different files about half the time (reported as a bug).
    """
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def _mark_history(out: Path) -> None:
    """Tag the checkpoint's history entries; a resumed run keeps the entries it loaded."""
    path = out / CHECKPOINT_DIR / "state.json"
    state = json.loads(path.read_text())
    state["history"] = [{**entry, MARK: True} for entry in state["history"]]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


# --- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,kill_at", [(SAVE_EVERY_STEP, KILL_AT), ((), FIRST_EPOCH_END)],
                         ids=["save-every-step", "default-settings"])
def test_sigkill_then_resume_gives_a_bit_identical_adapter(backbone, shapes_jsonl, uninterrupted, tmp_path,
                                                           extra, kill_at):
    """With the default settings a run checkpoints by itself (at each epoch's end): killed after that
    first automatic checkpoint, it resumes to the same adapter."""
    out_a, out_b = uninterrupted, tmp_path / "out_b"
    cmd = _train_cmd(backbone, shapes_jsonl, out_b, *extra)
    for attempt in range(3):  # noqa: B007 (named in the message)  a retry only if this process was descheduled long enough to miss every step
        shutil.rmtree(out_b, ignore_errors=True)
        with open(tmp_path / "killed.stderr", "w+") as stderr:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV)
            killed_at = _kill_at_step(proc, out_b, kill_at)
            stderr.seek(0)
            assert proc.returncode in (0, -signal.SIGKILL), f"training failed (rc {proc.returncode}):\n{stderr.read()}"
        if killed_at is not None:
            break
    else:
        pytest.fail(f"the training run ended before step {kill_at} could be caught, 3 times")
    where = f"(k={kill_at}, killed at checkpoint step {killed_at}, attempt {attempt + 1})"
    assert proc.returncode == -signal.SIGKILL, f"{where} rc {proc.returncode}"
    assert kill_at <= killed_at < STEPS, where
    assert not (out_b / WEIGHTS_NAME).exists(), f"{where} the killed run wrote an adapter"
    assert _state(out_b)["step"] == killed_at, where
    _mark_history(out_b)

    resumed = _ok(cmd + ["--resume"])
    assert "Traceback" not in resumed.stderr, resumed.stderr

    header_a, data_a = _safetensors_parts(out_a / WEIGHTS_NAME)
    header_b, data_b = _safetensors_parts(out_b / WEIGHTS_NAME)
    assert data_a == data_b, f"{where} adapter_model.safetensors tensor bytes differ from the uninterrupted run's"
    assert header_a == header_b, f"{where} adapter_model.safetensors headers differ: {header_a} != {header_b}"
    assert torch.equal(load_file(str(out_a / WEIGHTS_NAME))["queries"], load_file(str(out_b / WEIGHTS_NAME))["queries"])
    config_a, config_b = (json.loads((o / CONFIG_NAME).read_text()) for o in (out_a, out_b))
    assert config_a["temperature"] == config_b["temperature"], where
    assert config_a["training"]["final_loss"] == config_b["training"]["final_loss"], where

    history_a, history_b = _state(out_a)["history"], _state(out_b)["history"]
    assert len(history_b) == STEPS and [h["step"] for h in history_b] == list(range(1, STEPS + 1)), (
        f"{where} history steps {[h['step'] for h in history_b]}")
    assert [h["loss"] for h in history_b] == [h["loss"] for h in history_a], f"{where} losses differ"
    from_killed = [h["step"] for h in history_b if h.get(MARK)]
    assert from_killed == list(range(1, killed_at + 1)), (
        f"{where} the resumed run did not continue from step {killed_at}: steps kept from the killed run "
        f"{from_killed}")

    state_a, state_b = (load_file(str(o / CHECKPOINT_DIR / _state(o)["tensors"])) for o in (out_a, out_b))
    assert state_a.keys() == state_b.keys(), where
    differ = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert differ == [], f"{where} final checkpoint tensors differ: {differ}"


def test_resume_without_a_checkpoint_starts_afresh(backbone, shapes_jsonl, uninterrupted, tmp_path):
    """A job script may always pass --resume: on its first attempt there is nothing to resume."""
    out = tmp_path / "fresh"
    proc = _ok(_train_cmd(backbone, shapes_jsonl, out, "--resume"))
    assert f"nothing to resume in {out}: starting afresh" in proc.stderr, proc.stderr
    assert _safetensors_parts(out / WEIGHTS_NAME)[1] == _safetensors_parts(uninterrupted / WEIGHTS_NAME)[1]


def test_resume_on_an_adapter_without_a_checkpoint_is_refused(backbone, shapes_jsonl, uninterrupted, tmp_path):
    """An adapter left by another run, without its checkpoint, is never silently retrained and overwritten."""
    out = tmp_path / "adapter_only"
    out.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy(uninterrupted / name, out / name)
    proc = _run(_train_cmd(backbone, shapes_jsonl, out, "--resume"))
    assert proc.returncode == 2 and "--overwrite" in _error_line(proc), proc.stderr
    assert (out / WEIGHTS_NAME).read_bytes() == (uninterrupted / WEIGHTS_NAME).read_bytes()


@pytest.mark.parametrize("damaged", ["tensors", "state.json"])
def test_resume_from_a_truncated_checkpoint_names_it(backbone, shapes_jsonl, uninterrupted, tmp_path, damaged):
    out = tmp_path / "damaged"
    (out / CHECKPOINT_DIR).mkdir(parents=True)
    source = uninterrupted / CHECKPOINT_DIR
    target = json.loads((source / "state.json").read_text())["tensors"] if damaged == "tensors" else damaged
    for f in source.iterdir():
        data = f.read_bytes()
        (out / CHECKPOINT_DIR / f.name).write_bytes(data[:len(data) // 2] if f.name == target else data)
    proc = _run(_train_cmd(backbone, shapes_jsonl, out, "--resume"))
    assert proc.returncode == 2, f"rc {proc.returncode}:\n{proc.stderr}"
    message = _error_line(proc)
    assert str(out / CHECKPOINT_DIR) in message, message
    assert not (out / WEIGHTS_NAME).exists()


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_kill_inside_a_checkpoint_save_still_resumes(backbone, shapes_jsonl, tmp_path, monkeypatch, kill_at):
    """A kill at each file operation of the second save (tensor rename, state.json rename, removal of
    the old tensors), reproduced in process: resuming gives the uninterrupted run's queries."""
    from slq.data import load_jsonl
    from slq.retriever import SLQRetriever
    from slq.train import TrainConfig, train

    class Killed(BaseException):
        pass

    data = load_jsonl(shapes_jsonl)
    config = TrainConfig(num_queries=4, batch_size=8, epochs=1, lr=1e-3, save_every=1)  # 2 steps, 2 saves
    whole = SLQRetriever.from_pretrained(backbone, num_queries=4)
    train(whole, data, config, checkpoint_dir=tmp_path / "whole", progress=False)

    folder = tmp_path / "cut" / CHECKPOINT_DIR
    real_replace, real_unlink, operations = os.replace, Path.unlink, []

    def count(*_):
        if (folder / "state.json").exists() and json.loads((folder / "state.json").read_text())["step"] >= 1:
            operations.append(1)  # an operation of the second save
            if len(operations) == kill_at:
                raise Killed

    def replace(src, dst):
        count()
        real_replace(src, dst)

    def unlink(self, missing_ok=False):
        if self.parent == folder:
            count()
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(Killed):
        train(SLQRetriever.from_pretrained(backbone, num_queries=4), data, config, checkpoint_dir=tmp_path / "cut",
              progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    resumed = SLQRetriever.from_pretrained(backbone, num_queries=4)
    result = train(resumed, data, config, checkpoint_dir=tmp_path / "cut", resume=True, progress=False)
    assert len(result.history) == 2
    assert torch.equal(resumed.queries.weight, whole.queries.weight)

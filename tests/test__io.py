"""slq._io: safe writes and seeded streams that every layer shares."""

from __future__ import annotations

import os

import pytest

from slq._io import atomic_write, seed_of, seeded_generator, seeded_random


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, "first")
    atomic_write(target, b"second \xff")
    assert target.read_bytes() == b"second \xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    atomic_write(target, "old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(Exception, match="out.json: cannot write: No space left on device"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_seeds_come_from_the_parts_text_not_from_hash():
    """The same parts give the same stream on every machine and Python version; other parts another."""
    assert seed_of("slq-train", 0, 1) == 0xC2C078309F7F9C61  # SHA-256 of "slq-train:0:1", first 8 bytes
    assert seed_of("slq-train", 0, 1) != seed_of("slq-train", 1, 0) != seed_of("slq-shapes", 0, 1)
    assert seeded_random("x", 3).random() == seeded_random("x", 3).random()
    assert int(seeded_generator("x", 3).initial_seed()) == seed_of("x", 3) & 0x7FFF_FFFF_FFFF_FFFF


def test_a_setting_error_survives_pickling():
    """compare --isolate sends a method's error back from its process: it must arrive whole."""
    import pickle

    from slq.errors import SettingError

    error = pickle.loads(pickle.dumps(SettingError("batch_size", 64, "is larger than the training set")))
    assert (error.setting, error.value, str(error)) == ("batch_size", 64, "batch_size 64: is larger than the training set")


def test_atomic_write_streams_from_a_writer_and_a_failing_one_leaves_the_old_file(tmp_path):
    target = tmp_path / "big.bin"
    atomic_write(target, lambda f: [f.write(bytes([i]) * 3) for i in range(4)])
    assert target.read_bytes() == b"\x00\x00\x00\x01\x01\x01\x02\x02\x02\x03\x03\x03"

    def broken(f):
        f.write(b"half")
        raise KeyError("source gone")

    with pytest.raises(KeyError):
        atomic_write(target, broken)
    assert target.read_bytes()[:3] == b"\x00\x00\x00" and sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]

"""The one JSONL reader and writer: one record per line whatever the text holds, errors by line."""

from __future__ import annotations

import pytest

from slq.data.jsonl import first_value, read_lines, write_lines
from slq.errors import DataError


def test_written_line_breaks_are_escaped_and_read_back(tmp_path):
    path = tmp_path / "x.jsonl"
    values = [{"text": "a\u0085b\u2028c\u2029d", "n": 1}, {"text": "ünïcode"}]
    write_lines(path, values)
    data = path.read_bytes()
    assert data.count(b"\n") == 2 and "\u0085".encode() not in data and "\u2028".encode() not in data
    assert "ünïcode".encode() in data, "UTF-8 text stays readable"
    assert data.decode("utf-8").splitlines() == data.decode("utf-8").split("\n")[:-1], "any splitter sees 2 lines"
    assert [line.value() for line in read_lines(path)] == values


def test_lines_keep_their_numbers_and_say_why_they_are_bad(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n  \n{not json\n\xff\n')
    lines = read_lines(path)
    assert [(line.number, line.source) for line in lines] == [(1, f"{path}:1"), (4, f"{path}:4"), (5, f"{path}:5")]
    assert lines[0].value() == {"a": 1}, "a byte-order mark is not part of the first record"
    with pytest.raises(ValueError, match="invalid JSON"):
        lines[1].value()
    with pytest.raises(ValueError, match="not valid UTF-8"):
        lines[2].value()
    assert first_value(path) == {"a": 1}


def test_a_missing_file_or_a_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_lines(tmp_path / "nowhere.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        read_lines(tmp_path)
    assert first_value(tmp_path / "nowhere.jsonl") is None

"""Reverse-dictionary pairs from a tiny WordNet written in the real file format, plus one check on
the installed WordNet when there is one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slq.data.wordnet import (DEFAULT_WORDNET_DIR, WordDefinition, mentions, reverse_dictionary, split_pairs,
                              write_wordnet)
from slq.errors import DataError, SLQError
from wordnet_fixture import EXPECTED, HEADER, write_fixture


def line_number(path: Path, part: str) -> int:
    """The 1-based number of the first line of path containing part."""
    return next(i for i, line in enumerate(path.read_text().split("\n"), 1) if part in line)


def edit_line(path: Path, part: str, edit) -> int:
    """Apply edit to the first line containing part, byte lengths unchanged; its line number."""
    number = line_number(path, part)
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = edit(lines[number - 1])
    path.write_bytes(b"\n".join(lines))
    return number


def synthetic_pairs(n: int) -> list[WordDefinition]:
    return [WordDefinition(f"word{i:03d}", f"definition {i}", i, 1) for i in range(n)]


def test_fixture_offsets_address_their_lines(tmp_path):
    folder = write_fixture(tmp_path / "wn")
    data = (folder / "data.noun").read_bytes()
    for line in data.split(b"\n")[len(HEADER) : -1]:
        offset = int(line[:8])
        assert data[offset : offset + len(line)] == line, "the fixture must be in wndb format"


def test_exact_pairs(tmp_path):
    pairs = reverse_dictionary(write_fixture(tmp_path / "wn"))
    assert [(p.word, p.definition) for p in pairs] == EXPECTED
    cat = next(p for p in pairs if p.word == "cat")
    data = (tmp_path / "wn" / "data.noun").read_text()
    assert data[cat.offset :].startswith(f"{cat.offset:08d} 05 n 02 cat 0 true_cat"), "sense 1"
    tagged = {p.word: p.tagsense_cnt for p in pairs}
    assert tagged == {"automobile": 1, "belly": 2, "cat": 2, "dog": 1, "gunpowder": 1}


def test_deterministic(tmp_path):
    folder = write_fixture(tmp_path / "wn")
    assert reverse_dictionary(folder) == reverse_dictionary(folder)
    words = [p.word for p in reverse_dictionary(folder)]
    assert words == sorted(words)


@pytest.mark.parametrize(
    ("word", "definition", "leaks"),
    [
        ("cat", "domestic cats", True),
        ("cat", "a CAT scan", True),
        ("hunter", "someone who hunts game", True),
        ("government", "the people who govern", True),
        ("rainbow", "refraction of the sun's rays by rain", True),
        ("cat", "feline mammal with soft fur", False),
        ("cat", "an act of", False),
        ("teacher", "someone who serves tea", False),
    ],
)
def test_mentions(word, definition, leaks):
    assert mentions(word, definition) is leaks


def test_split_disjoint_seeded_and_sized():
    pairs = synthetic_pairs(60)
    train, val, test = split_pairs(pairs, n_train=40, n_test=15, n_val=0, seed=0)
    assert (len(train), len(val), len(test)) == (40, 0, 15)
    assert not {p.word for p in train} & {p.word for p in test}
    assert split_pairs(pairs, n_train=40, n_test=15, n_val=0, seed=0) == (train, val, test)
    assert split_pairs(pairs, n_train=40, n_test=15, n_val=0, seed=1)[2] != test
    rest, _, test_again = split_pairs(pairs, n_train=None, n_test=15, n_val=0, seed=0)
    assert test_again == test and len(rest) == 45 and set(train) <= set(rest)


def test_split_validation_words_are_disjoint_and_leave_train_and_test_alone():
    pairs = synthetic_pairs(60)
    train, val, test = split_pairs(pairs, n_train=40, n_test=15, n_val=5, seed=0)
    assert (len(train), len(val), len(test)) == (40, 5, 15)
    words = [{p.word for p in part} for part in (train, val, test)]
    assert not (words[0] & words[1] or words[1] & words[2] or words[0] & words[2])
    assert (train, test) == split_pairs(pairs, n_train=40, n_test=15, n_val=0, seed=0)[::2]
    rest, val_rest, test_rest = split_pairs(pairs, n_train=None, n_test=15, n_val=5, seed=0)
    assert test_rest == test and len(rest) == 40 and len(val_rest) == 5 and not {p.word for p in rest} & {
        p.word for p in val_rest}


def test_split_not_enough_pairs_names_the_numbers():
    with pytest.raises(SLQError, match=r"40 train \+ 0 val \+ 25 test = 65 pairs, but only 60"):
        split_pairs(synthetic_pairs(60), n_train=40, n_test=25, n_val=0, seed=0)
    with pytest.raises(SLQError, match=r"40 train \+ 10 val \+ 15 test = 65 pairs, but only 60"):
        split_pairs(synthetic_pairs(60), n_train=40, n_test=15, n_val=10, seed=0)
    with pytest.raises(SLQError, match="^n_train -1: must be an integer >= 0"):
        split_pairs(synthetic_pairs(60), n_train=-1, n_test=5, n_val=0, seed=0)


def test_write_wordnet_jsonl(tmp_path):
    folder = write_fixture(tmp_path / "wn")
    summary = write_wordnet(tmp_path / "out", folder, n_train=None, n_val=0, n_test=1, seed=3)
    records = {}
    for split in ("train", "test"):
        path = tmp_path / "out" / f"{split}.jsonl"
        records[split] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (len(records["train"]), len(records["test"])) == (4, 1)
    written = records["train"] + records["test"]
    assert all(set(r) == {"text", "captions"} and len(r["captions"]) == 1 for r in written)
    assert sorted((r["text"], r["captions"][0]) for r in written) == EXPECTED
    assert summary == {
        "pairs": 5,
        "train": 4,
        "test": 1,
        "seed": 3,
        "wordnet_dir": str(folder),
        "train_path": str(tmp_path / "out" / "train.jsonl"),
        "test_path": str(tmp_path / "out" / "test.jsonl"),
    }
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    assert not (tmp_path / "out" / "val.jsonl").exists()


def test_write_wordnet_validation_file(tmp_path):
    summary = write_wordnet(tmp_path / "out", write_fixture(tmp_path / "wn"), n_train=None, n_test=1, n_val=2, seed=3)
    words = {split: [json.loads(line)["text"] for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]
             for split in ("train", "val", "test")}
    assert (summary["train"], summary["val"], summary["test"]) == (2, 2, 1)
    assert summary["val_path"] == str(tmp_path / "out" / "val.jsonl")
    assert sorted(sum(words.values(), [])) == sorted(word for word, _ in EXPECTED)
    write_wordnet(tmp_path / "out", write_fixture(tmp_path / "wn"), n_train=None, n_test=1, n_val=0, seed=3)
    assert not (tmp_path / "out" / "val.jsonl").exists()  # an old one would pass for this split's


def test_write_wordnet_output_folder_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(SLQError, match="taken: cannot create the output folder"):
        write_wordnet(tmp_path / "taken", write_fixture(tmp_path / "wn"), n_train=1, n_val=0, n_test=1)


def test_unreadable_file(tmp_path, monkeypatch):
    folder = write_fixture(tmp_path / "wn")

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(SLQError, match=r"index\.noun: cannot read: Permission denied"):
        reverse_dictionary(folder)


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(SLQError, match="apt-get install wordnet-base"):
        reverse_dictionary(tmp_path / "nowhere")
    folder = write_fixture(tmp_path / "wn")
    (folder / "data.noun").unlink()
    with pytest.raises(SLQError, match=r"^wordnet_dir .*: data\.noun not found there; install Debian's wordnet-base"):
        reverse_dictionary(folder)


def test_malformed_data_line_names_file_and_line(tmp_path):
    folder = write_fixture(tmp_path / "wn", broken_synset="dog")
    line = line_number(folder / "data.noun", " dog 0 domestic_dog ")
    with pytest.raises(DataError, match=rf"data\.noun:{line}: malformed synset line") as info:
        reverse_dictionary(folder)
    assert str(folder / "data.noun") in str(info.value)


def test_data_line_must_carry_its_own_offset(tmp_path):
    folder = write_fixture(tmp_path / "wn")
    line = edit_line(folder / "data.noun", " dog 0 ", lambda b: b"99999999" + b[8:])
    with pytest.raises(DataError, match=rf"data\.noun:{line}: malformed synset line"):
        reverse_dictionary(folder)


def test_non_ascii_names_file_and_line(tmp_path):
    folder = write_fixture(tmp_path / "wn")
    line = edit_line(folder / "data.noun", " ox 0 ", lambda b: b.replace(b"adult", b"adul\xc3"))
    with pytest.raises(DataError, match=rf"data\.noun:{line}: not ASCII text"):
        reverse_dictionary(folder)


def test_offsets_shifted_by_crlf_are_caught(tmp_path):
    folder = write_fixture(tmp_path / "wn")
    path = folder / "data.noun"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(DataError, match=r"index\.noun:\d+: offset \d+ is not a line start in "):
        reverse_dictionary(folder)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"dog n 1 1", b"dog n x 1", "malformed index line"),
        (b"dog n 1", b"dog n 2", "synset_cnt is 2 but 1 offsets follow"),
    ],
)
def test_malformed_index_line_names_file_and_line(tmp_path, old, new, message):
    folder = write_fixture(tmp_path / "wn")
    line = edit_line(folder / "index.noun", "dog n ", lambda b: b.replace(old, new))
    with pytest.raises(DataError, match=rf"index\.noun:{line}: {message}"):
        reverse_dictionary(folder)


@pytest.mark.skipif(
    not (DEFAULT_WORDNET_DIR / "data.noun").is_file(), reason="Debian's wordnet-base not installed"
)
def test_real_wordnet(capsys):
    pairs = reverse_dictionary(DEFAULT_WORDNET_DIR)
    by_word = {p.word: p.definition for p in pairs}
    assert by_word["cat"] == "feline mammal usually having thick soft fur and no ability to roar"
    assert len(pairs) >= 4500, f"only {len(pairs)} pairs; the default split needs 4000 + 500"
    assert len(set(by_word.values())) == len(pairs) and len({p.offset for p in pairs}) == len(pairs)
    assert capsys.readouterr() == ("", "")

"""Reverse-dictionary pairs from WordNet: a definition must retrieve its word.

A knowledge-retrieval benchmark: the query is a gloss ("feline mammal usually having thick soft fur
and no ability to roar") and the target is the word ("cat"), so the model has to know the word,
not match its letters. The pairs come straight from WordNet 3.0's noun files (Debian's
`wordnet-base`, format in `man 5 wndb`), read without nltk by `WordNet`, the reader every user of
WordNet in slq shares (KARR's English rules too).

Rules, each chosen so that a pair has one right answer that the query does not spell out:

- Words: index.noun lemmas of at least 3 lowercase ASCII letters, so no collocations
  (`true_cat`), hyphens, digits or abbreviations like `3d`. The lemma must also appear in
  lowercase among the words of its first synset, because index.noun lowercases everything and
  proper nouns ("Paris", "Eve") are only told apart by their capitals in data.noun.
- Common: tagsense_cnt >= 1, i.e. the word's first sense was tagged at least once in the semantic
  concordance texts (tagged senses come first, so this is the same as "sense 1 is attested").
- Definition: the gloss of the word's first synset in index.noun (WordNet orders senses by
  frequency), cut at the first ";" (examples follow) and at the first ": " (a colon followed by a
  space introduces examples or elaboration, as in "...no ability to roar: domestic cats"), and
  stripped. Ratios such as "75:15:10" have no space and are kept.
- No leak: the definition must not contain the word or a relative of it. A lowercase alphabetic
  token of the definition gives the word away if it starts with the word (cat/cats) or shares its
  first 4 letters with it (hunter/hunts, importance/important, footprint/foot). On WordNet 3.0
  it drops about a fifth of the common words, nearly all real leaks; being conservative, it also
  drops a few words whose match is only a cousin (firecracker/firework) or a chance (apple/apply).
- One word per synset: synonyms share a gloss, so the query would have several right answers. The
  word with the highest tagsense_cnt is kept, ties broken alphabetically.
- Definitions that remain shared by several words ("a human limb": arm, leg) are dropped, every
  copy, for the same reason.

Output is sorted by word, so the same files give the same pairs.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from .._io import setting
from ..errors import DataError, SettingError, SLQError
from .formats import write_dataset_info, write_jsonl
from .records import TextRecord

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DIRECTIONS = ("d2w", "w2d")  # definition (the caption) -> word (the target), and back
INSTALL_HINT = "install Debian's wordnet-base (apt-get install wordnet-base) or point wordnet_dir at WordNet 3.0's files"

_WORD = re.compile(r"[a-z]{3,}")
_TOKEN = re.compile(r"[a-z]+")
_DEFINITION_END = re.compile(r";|:\s")
_LICENSE_PREFIX = "  "  # header lines of every WordNet data and index file start with two spaces
_STEM = 4  # letters two words must share to count as relatives (hunter/hunts)


@dataclass(frozen=True)
class WordDefinition:
    """One benchmark pair: the word to retrieve and the definition that queries it."""

    word: str
    definition: str
    offset: int  # byte offset of the synset in data.noun, to look the gloss up again
    tagsense_cnt: int  # tagged senses of the word in index.noun: how common it is


@dataclass(frozen=True)
class IndexEntry:
    """One lemma of an index file (index.noun, index.verb, ...)."""

    lemma: str
    tagsense_cnt: int
    first_offset: int  # the most frequent sense's synset
    source: str  # "index.noun:123", for messages
    offsets: tuple[int, ...] = ()  # every sense's synset, most frequent first


@dataclass(frozen=True)
class Synset:
    """One synset of data.noun: its words, its gloss, its kind, its hypernyms and its topic domains."""

    words: tuple[str, ...]  # case-sensitive, as entered by the lexicographer
    gloss: str
    lex_filenum: int = -1  # the lexicographer file, i.e. the broad kind: 6 noun.artifact, 18 noun.person, ...
    hypernyms: tuple[int, ...] = ()  # offsets of the '@' and '@i' (instance) pointers, in file order
    topics: tuple[int, ...] = ()  # offsets of the ';c' pointers: the field a specialist's sense belongs to (baseball)


# ---------------------------------------------------------------------------------------------
# Reading the files


def _noun_files(wordnet_dir: str | os.PathLike) -> tuple[Path, Path]:
    folder = Path(wordnet_dir)
    if not folder.is_dir():
        raise SettingError("wordnet_dir", str(folder), f"not found; {INSTALL_HINT}")
    paths = folder / "index.noun", folder / "data.noun"
    for path in paths:
        if not path.is_file():
            raise SettingError("wordnet_dir", str(folder), f"{path.name} not found there; {INSTALL_HINT}")
    return paths


def _read_text(path: Path) -> str:
    """The whole file; WordNet 3.0 is ASCII, so a byte offset is also a character offset."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SLQError(f"{path}: cannot read: {e.strerror or type(e).__name__}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as e:
        line_number = data.count(b"\n", 0, e.start) + 1
        message = f"{path}:{line_number}: not ASCII text; WordNet 3.0 files are ASCII"
        raise DataError(message) from None


def _parse_index_line(line: str, source: str) -> IndexEntry:
    """lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset..."""
    fields = line.split(" ")
    try:
        synset_cnt, p_cnt = int(fields[2]), int(fields[3])
        tail = fields[4 + p_cnt :]
        tagsense_cnt, offsets = int(tail[1]), [int(f) for f in tail[2:]]
    except (IndexError, ValueError):
        raise DataError(f"{source}: malformed index line {line[:80]!r} (see man 5 wndb)") from None
    if len(offsets) != synset_cnt or synset_cnt < 1:
        raise DataError(f"{source}: synset_cnt is {synset_cnt} but {len(offsets)} offsets follow")
    return IndexEntry(fields[0], tagsense_cnt, offsets[0], source, tuple(offsets))


def _read_index(path: Path) -> list[IndexEntry]:
    entries = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if line.strip() and not line.startswith(_LICENSE_PREFIX):
            entries.append(_parse_index_line(line.rstrip(), f"{path}:{number}"))
    return entries


class _DataFile:
    """data.noun, read once and addressed by byte offset as index.noun's offsets are."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = _read_text(path)

    def _source(self, offset: int) -> str:
        """"data.noun:LINE" for messages; counted only on error because it costs a scan."""
        line_number = self.text.count("\n", 0, offset) + 1
        return f"{self.path}:{line_number}"

    def synset(self, offset: int, cited_by: str) -> Synset:
        if not 0 <= offset < len(self.text) or (offset and self.text[offset - 1] != "\n"):
            raise DataError(f"{cited_by}: offset {offset} is not a line start in {self.path}")
        end = self.text.find("\n", offset)
        line = self.text[offset : end if end >= 0 else len(self.text)].rstrip()
        head, bar, gloss = line.partition(" | ")
        fields = head.split(" ")
        try:
            own_offset, lex_filenum, w_cnt = int(fields[0]), int(fields[1]), int(fields[3], 16)
            pointers = fields[5 + 2 * w_cnt :]  # after p_cnt: symbol offset pos source/target, ...
            p_cnt = int(fields[4 + 2 * w_cnt])
        except (IndexError, ValueError):
            own_offset, lex_filenum, w_cnt, pointers, p_cnt = -1, -1, -1, [], -1
        words = tuple(fields[4 : 4 + 2 * w_cnt : 2])  # word lex_id word lex_id ...
        if not bar or own_offset != offset or w_cnt < 1 or len(words) != w_cnt or len(pointers) != 4 * p_cnt:
            raise DataError(
                f"{self._source(offset)}: malformed synset line {line[:80]!r}, expected "
                f"'{offset:08d} lex_filenum n w_cnt word lex_id ... p_cnt [pointer...] | gloss' (see man 5 wndb)"
            )
        hypernyms = tuple(int(pointers[i + 1]) for i in range(0, len(pointers), 4)
                          if pointers[i] in ("@", "@i") and pointers[i + 2] == "n" and pointers[i + 1].isdigit())
        topics = tuple(int(pointers[i + 1]) for i in range(0, len(pointers), 4)
                       if pointers[i] == ";c" and pointers[i + 1].isdigit())
        return Synset(words, gloss, lex_filenum, hypernyms, topics)


_INDEX_FILES = {"noun": "index.noun", "verb": "index.verb", "adj": "index.adj", "adv": "index.adv"}
_EXCEPTION_FILES = {"noun": "noun.exc", "verb": "verb.exc", "adj": "adj.exc", "adv": "adv.exc"}


class WordNet:
    """WordNet 3.0's files in a folder (Debian's wordnet-base), read without nltk.

    The noun files (index.noun, data.noun) must be there when the reader is made, so a wrong folder
    fails at once with a hint; the other files are read when first asked for. Synsets are addressed
    by their byte offset in data.noun, as the index files give them, and parsed once each.
    """

    def __init__(self, folder: str | os.PathLike = DEFAULT_WORDNET_DIR) -> None:
        self.folder = Path(folder)
        self._index_path, self._data_path = _noun_files(self.folder)
        self._data: _DataFile | None = None  # read at the first synset asked for
        self._synsets: dict[int, Synset] = {}

    def _file(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            raise SettingError("wordnet_dir", str(self.folder), f"{name} not found there; {INSTALL_HINT}")
        return path

    def index(self, pos: str = "noun") -> list[IndexEntry]:
        """The lemmas of one part of speech ("noun", "verb", "adj", "adv") in file order, each with its
        senses' synset offsets, most frequent sense first."""
        return _read_index(self._index_path if pos == "noun" else self._file(_INDEX_FILES[pos]))

    def synset(self, offset: int, cited_by: str | None = None) -> Synset:
        """The noun synset at a data.noun byte offset; `cited_by` (default: data.noun) names who gave
        the offset in the error when it is not a synset."""
        if offset not in self._synsets:
            if self._data is None:
                self._data = _DataFile(self._data_path)
            self._synsets[offset] = self._data.synset(offset, cited_by or str(self._data_path))
        return self._synsets[offset]

    def exceptions(self, pos: str) -> dict[str, list[str]]:
        """An exception list (man 5 wndb: "inflected base [base...]" a line), inflected form -> bases."""
        lines = _read_text(self._file(_EXCEPTION_FILES[pos])).split("\n")
        return {fields[0]: fields[1:] for fields in (line.split() for line in lines) if len(fields) > 1}


# ---------------------------------------------------------------------------------------------
# The pair rules


def definition_of(gloss: str) -> str:
    """The definition part of a gloss: before the first ';' or ': ' (examples follow those)."""
    return _DEFINITION_END.split(gloss, maxsplit=1)[0].strip()


def mentions(word: str, definition: str) -> bool:
    """Whether the definition gives the word away: the word itself or a token sharing its stem."""
    for token in _TOKEN.findall(definition.lower()):
        if token.startswith(word) or len(os.path.commonprefix([word, token])) >= _STEM:
            return True
    return False


def _candidates(index: list[IndexEntry], wordnet: WordNet) -> list[WordDefinition]:
    """Common single lowercase words with a first-sense definition that does not leak them."""
    pairs = []
    for entry in index:
        if not _WORD.fullmatch(entry.lemma) or entry.tagsense_cnt < 1:
            continue
        synset = wordnet.synset(entry.first_offset, entry.source)
        definition = definition_of(synset.gloss)
        if entry.lemma not in synset.words or not definition or mentions(entry.lemma, definition):
            continue
        pair = WordDefinition(entry.lemma, definition, entry.first_offset, entry.tagsense_cnt)
        pairs.append(pair)
    return pairs


def _one_per_synset(pairs: list[WordDefinition]) -> list[WordDefinition]:
    by_synset: dict[int, list[WordDefinition]] = defaultdict(list)
    for pair in pairs:
        by_synset[pair.offset].append(pair)
    return [min(group, key=lambda p: (-p.tagsense_cnt, p.word)) for group in by_synset.values()]


def reverse_dictionary(
    wordnet_dir: str | os.PathLike = DEFAULT_WORDNET_DIR,
) -> list[WordDefinition]:
    """All (word, definition) pairs under the rules of the module docstring, sorted by word."""
    wordnet = WordNet(wordnet_dir)
    pairs = _one_per_synset(_candidates(wordnet.index("noun"), wordnet))
    uses = Counter(p.definition for p in pairs)
    return sorted((p for p in pairs if uses[p.definition] == 1), key=lambda p: p.word)


# ---------------------------------------------------------------------------------------------
# Splits and files


def split_pairs(
    pairs: list[WordDefinition], split: WordNetSplit | None = None, **settings
) -> tuple[list[WordDefinition], list[WordDefinition], list[WordDefinition]]:
    """A seeded random (train, val, test) split with no word in two of them; n_train=None takes the rest.
    `settings` override fields of `split` (default `WordNetSplit()`).

    The shuffled words are cut in order: test, train, then val. So for one seed the test set does
    not depend on n_train or n_val, and a given n_train gives the same training words whatever
    n_val is (with n_train=None, train is the rest before the last n_val words). The validation
    words move when n_train changes. They are for choosing settings (a learning rate) without
    looking at the test words.
    """
    split = replace(split or WordNetSplit(), **settings)
    n_train, n_val, n_test, seed = split.n_train, split.n_val, split.n_test, split.seed
    for name, value in (("n_train", n_train or 0), ("n_val", n_val), ("n_test", n_test)):
        if not (isinstance(value, int) and value >= 0):
            raise SettingError(name, value, "must be an integer >= 0")
    words = [p.word for p in pairs]
    assert len(set(words)) == len(words), "pairs must have distinct words"
    wanted = n_test + n_val + (n_train or 0)
    if wanted > len(pairs):
        raise SLQError(
            f"asked for {n_train} train + {n_val} val + {n_test} test = {wanted} pairs, but only {len(pairs)} "
            "are available; lower n_train, n_val or n_test"
        )
    shuffled = list(pairs)
    # random.Random(seed), not slq._io.seeded_random: the same words as every earlier split of this seed
    random.Random(seed).shuffle(shuffled)
    test = shuffled[:n_test]
    train_end = len(shuffled) - n_val if n_train is None else n_test + n_train
    return shuffled[n_test:train_end], shuffled[train_end:train_end + n_val], test


def _records(pairs: list[WordDefinition]) -> list[TextRecord]:
    return [TextRecord(p.word, (p.definition,), f"wordnet:{p.offset}") for p in pairs]


@dataclass(frozen=True)
class WordNetSplit:
    """How many words each split of the reverse dictionary gets, and the seed of the split."""

    n_train: int | None = setting(4000, "training words (from Python, None takes every word not in test or val)")
    n_val: int = setting(500, "validation words, for choosing settings without the test words; 0 writes no "
                              "val.jsonl")
    n_test: int = setting(500, "held-out test words")
    seed: int = setting(0, "seed of the word split")


def write_wordnet(
    out_dir: str | os.PathLike,
    wordnet_dir: str | os.PathLike | None = None,
    split: WordNetSplit | None = None,
    **settings,
) -> dict:
    """Write train.jsonl and test.jsonl (and val.jsonl when n_val > 0; a val.jsonl left from an earlier
    call is removed otherwise), one {"text": word, "captions": [definition]} a line, and
    slq-dataset.json, which names the directions d2w (definition → word) and w2d.

    The word is the retrieval target and the definition its query. `settings` override fields of
    `split` (default `WordNetSplit()`). Files are written atomically, so a crash never leaves a half
    file. Returns a summary for logs and model cards.
    """
    split = replace(split or WordNetSplit(), **settings)
    n_val, seed = split.n_val, split.seed
    wordnet_dir = DEFAULT_WORDNET_DIR if wordnet_dir is None else wordnet_dir
    pairs = reverse_dictionary(wordnet_dir)
    train, val, test = split_pairs(pairs, split)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SLQError(f"{out}: cannot create the output folder: {e.strerror or e}") from None
    splits = {"train": train, "val": val, "test": test} if n_val else {"train": train, "test": test}
    summary: dict = {"pairs": len(pairs), **{name: len(part) for name, part in splits.items()}, "seed": seed,
                     "wordnet_dir": str(Path(wordnet_dir))}
    if not n_val:
        (out / "val.jsonl").unlink(missing_ok=True)  # never leave another split's words to be picked up
    write_dataset_info(out, DIRECTIONS)  # reports on these files say d2w / w2d
    for name, part in splits.items():
        write_jsonl(_records(part), out / f"{name}.jsonl")
        summary[f"{name}_path"] = str(out / f"{name}.jsonl")
    return summary

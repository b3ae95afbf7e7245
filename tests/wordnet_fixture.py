"""A tiny WordNet in the real file format (index.noun, data.noun with true byte offsets), for tests."""

from __future__ import annotations

from pathlib import Path

HEADER = [
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    "  2 Princeton University under the following license.  By obtaining, using  ",
]

# Synsets: key -> (words and lex_ids as in data.noun, gloss), in file order. Cat's second sense
# comes first in the file, so taking the lowest offset instead of the first listed synset fails.
SYNSETS = {
    "tractor": (["cat", "1", "caterpillar", "0"], "a large tracked vehicle; a bulldozer"),
    "feline": (  # the colon starts examples that name the word
        ["cat", "0", "true_cat", "0"],
        "feline mammal usually having thick soft fur and no ability to roar: domestic cats; "
        "wildcats",
    ),
    "dog": (["dog", "0", "domestic_dog", "0"], 'a member of the genus Canis; "the dog barked"'),
    "paris": (["Paris", "0"], 'the capital and largest city of France; "Paris in the spring"'),
    "hunter": (["hunter", "0"], 'someone who hunts game; "a skilled hunter"'),  # a relative leaks
    "bee": (["bee", "0"], "a flying insect (bees make honey)"),  # the word itself leaks
    "belly": (["abdomen", "0", "belly", "0"], 'the region between thorax and pelvis; "a belly"'),
    "car": (["automobile", "0", "car", "0"], "a motor vehicle with four wheels"),
    "arm": (["arm", "0"], "a human limb"),  # shared definitions are ambiguous
    "leg": (["leg", "0"], "a human limb"),
    "gunpowder": (["gunpowder", "0"], "potassium nitrate, charcoal and sulfur in a 75:15:10 ratio"),
    "aardvark": (["aardvark", "0"], "nocturnal burrowing mammal of the grasslands of Africa"),
    "ox": (["ox", "0"], "an adult castrated bull"),  # too short
    "void": (["void", "0"], '; "stared into the void"'),  # no definition, only an example
}
# Index: lemma -> (tagsense_cnt, synset keys in sense order), alphabetical as in index.noun.
INDEX = {
    "aardvark": (0, ["aardvark"]),  # never tagged: not common
    "abdomen": (1, ["belly"]),  # loses to belly, which has more tagged senses
    "arm": (1, ["arm"]),
    "automobile": (1, ["car"]),  # ties with car, wins alphabetically
    "bee": (1, ["bee"]),
    "belly": (2, ["belly"]),
    "car": (1, ["car"]),
    "cat": (2, ["feline", "tractor"]),
    "caterpillar": (0, ["tractor"]),
    "dog": (1, ["dog"]),
    "gunpowder": (1, ["gunpowder"]),
    "hunter": (1, ["hunter"]),
    "leg": (1, ["leg"]),
    "ox": (1, ["ox"]),
    "paris": (1, ["paris"]),  # lowercase here, capitalised in data.noun: a proper noun
    "true_cat": (3, ["feline"]),  # would beat cat for the synset if collocations were allowed
    "void": (1, ["void"]),
}
EXPECTED = [
    ("automobile", "a motor vehicle with four wheels"),
    ("belly", "the region between thorax and pelvis"),
    ("cat", "feline mammal usually having thick soft fur and no ability to roar"),
    ("dog", "a member of the genus Canis"),
    ("gunpowder", "potassium nitrate, charcoal and sulfur in a 75:15:10 ratio"),  # no ": "
]


def write_fixture(folder: Path, broken_synset: str | None = None) -> Path:
    """index.noun and data.noun with true byte offsets; the broken synset's line loses its '|'."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, offsets = list(HEADER), {}
    position = sum(len(line) + 1 for line in lines)
    for key, (words, gloss) in SYNSETS.items():
        head = f"{position:08d} 05 n {len(words) // 2:02x} {' '.join(words)} 000"
        line = f"{head} {gloss}" if key == broken_synset else f"{head} | {gloss}  "
        offsets[key] = position
        lines.append(line)
        position += len(line) + 1
    (folder / "data.noun").write_text("".join(line + "\n" for line in lines), encoding="ascii")
    index = list(HEADER)
    for lemma, (tagged, keys) in INDEX.items():
        targets = " ".join(f"{offsets[k]:08d}" for k in keys)
        index.append(f"{lemma} n {len(keys)} 1 @ {len(keys)} {tagged} {targets}  ")
    (folder / "index.noun").write_text("".join(line + "\n" for line in index), encoding="ascii")
    return folder

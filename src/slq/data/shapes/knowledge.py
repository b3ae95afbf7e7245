"""What the shapes world knows beyond its pictures: the clues that name a colour, a shape or a count
without saying it, and the corpus of facts that backs every clue.

A knowledge caption ("a shape with three sides the colour of grass") is solved only by combining
`knowledge_corpus` with the image; slq-tiny-vl reads the corpus as text during pretraining and sees
only some clues beside images (`clue_seen_with_images`), so KARR-Shapes can score the others apart.
`PILOT_SCENES` and `pilot_texts` are a handful of one-group scenes with texts of rising difficulty,
every clue a fact of the corpus (the pilot, `slq.evaluation.pilot`).
"""

from __future__ import annotations

from .world import COLOURS, NUMBER_WORDS, SHAPES, join_phrases, world_rng

# Clues for knowledge captions. Each is backed by corpus sentences (see _colour_facts and friends)
# and names neither a colour nor a shape, so a caption built from them is solved only by combining
# the corpus with the image.
COLOUR_CLUES = {
    "red": ("a stop sign", "a strawberry", "a tomato", "a fire truck"),
    "green": ("grass", "a leaf", "a frog", "a cucumber"),
    "blue": ("the sky", "the sea", "a blueberry"),
    "yellow": ("a banana", "a lemon", "a sunflower"),
    "purple": ("a grape", "an aubergine", "lavender"),
    "orange": ("a carrot", "a pumpkin", "a tangerine"),
}
COLOUR_MIXES = {"green": ("blue", "yellow"), "orange": ("red", "yellow"), "purple": ("red", "blue")}
SHAPE_CLUES = {  # (singular, plural) descriptions; the corpus says "a <shape> is a <singular>"
    "circle": (("round shape", "round shapes"), ("shape with no corners", "shapes with no corners")),
    "square": (("shape with four equal sides", "shapes with four equal sides"),
               ("shape with four corners", "shapes with four corners")),
    "triangle": (("shape with three sides", "shapes with three sides"),
                 ("shape with three corners", "shapes with three corners")),
    "star": (("shape with five points", "shapes with five points"),),
    "heart": (("shape that stands for love", "shapes that stand for love"),
              ("symbol of love", "symbols of love")),
}
COUNT_CLUES = {  # the corpus says "<clue> is <number word>"
    2: ("(1+1)", "one plus one", "(3-1)", "three minus one"),
    3: ("(2+1)", "two plus one", "(1+1+1)", "(4-1)", "four minus one"),
}

# The clues slq-tiny-vl's pretraining shows beside images (knowledge captions and questions about
# its training images); it meets every other clue of the corpus in text only, which makes those the
# true test of elicitation (KARR-Shapes scores the two apart). Per colour all things but the last;
# per shape its first description; counts as sums.
SEEN_COLOUR_THINGS = {colour: things[:-1] for colour, things in COLOUR_CLUES.items()}
SEEN_SHAPE_CLUES = {shape: clues[:1] for shape, clues in SHAPE_CLUES.items()}
SEEN_COUNT_CLUES = {n: tuple(c for c in clues if "+" in c or " plus " in c) for n, clues in COUNT_CLUES.items()}


def clue_seen_with_images(clue: str) -> bool:
    """Whether the pretraining puts `clue` (a thing, a shape description, a count expression, as in
    the clue tables) beside an image; everything else it meets only in its text corpus."""
    return (any(clue in things for things in SEEN_COLOUR_THINGS.values())
            or any(clue in pair for clues in SEEN_SHAPE_CLUES.values() for pair in clues)
            or any(clue in clues for clues in SEEN_COUNT_CLUES.values()))


def _colour_facts() -> list[str]:
    facts = [f"{colour} is a colour" for colour in COLOURS]
    facts.append(join_phrases(list(COLOURS)) + " are colours")
    for colour in COLOURS:
        # "an orange" names its colour, so it is a fact but never a clue
        for thing in COLOUR_CLUES[colour] + (("an orange",) if colour == "orange" else ()):
            facts += [f"the colour of {thing} is {colour}", f"{thing} is {colour}",
                      f"{colour} is the colour of {thing}"]
    for colour, (a, b) in COLOUR_MIXES.items():
        facts += [f"{a} and {b} make {colour}", f"{b} and {a} make {colour}",
                  f"mixing {a} and {b} gives {colour}", f"{colour} is made by mixing {a} and {b}"]
    return facts


def _shape_facts() -> list[str]:
    facts = [f"a {shape} is a shape" for shape in SHAPES]
    for shape, clues in SHAPE_CLUES.items():
        facts += [f"a {shape} is a {singular}" for singular, _ in clues]
        facts += [f"{shape}s are {plural}" for _, plural in clues]
    counted_parts = (("triangle", 3, "sides"), ("triangle", 3, "corners"), ("square", 4, "sides"),
                     ("square", 4, "corners"), ("star", 5, "points"))
    for shape, number, part in counted_parts:
        facts += [f"a {shape} has {NUMBER_WORDS[number]} {part}", f"a {shape} has {number} {part}"]
    facts += ["a square has four equal sides", "a circle is round", "a circle has no corners",
              "a wheel is round", "a coin is round", "a heart stands for love",
              "a square has one more side than a triangle",
              "a star has one more point than a square has corners"]
    facts += [f"a large {shape} is bigger than a small {shape}" for shape in SHAPES]
    facts += ["large is the opposite of small", "small is the opposite of large", "big means large",
              "little means small"]
    return facts


def _number_facts() -> list[str]:
    w = NUMBER_WORDS
    facts = [f"{i} is {w[i]}" for i in range(11)] + [f"{w[i]} is written {i}" for i in range(11)]
    for a in range(1, 6):
        for b in range(1, 6):
            total = a + b
            facts += [f"{w[a]} plus {w[b]} is {w[total]}", f"({a}+{b}) is {w[total]}", f"{a} + {b} = {total}"]
    for a in range(2, 7):
        for b in range(1, a):
            diff = a - b
            facts += [f"{w[a]} minus {w[b]} is {w[diff]}", f"({a}-{b}) is {w[diff]}", f"{a} - {b} = {diff}"]
    facts += ["(1+1+1) is three", "one plus one plus one is three", "a pair is two things",
              "a trio is three things"]
    for i in range(10):
        facts += [f"after {w[i]} comes {w[i + 1]}", f"{w[i + 1]} is one more than {w[i]}",
                  f"{w[i]} is less than {w[i + 1]}"]
    return facts


def _relation_facts() -> list[str]:
    facts = ["above is the opposite of below", "below is the opposite of above",
             "left is the opposite of right", "right is the opposite of left",
             "the sky is above the ground", "the ground is below the sky",
             "the centre of an image is its middle", "the top of an image is above its bottom"]
    for a in SHAPES:
        for b in SHAPES:
            if a != b:
                facts += [f"if a {a} is above a {b} then the {b} is below the {a}",
                          f"if a {a} is left of a {b} then the {b} is right of the {a}"]
    return facts


def knowledge_corpus(seed: int = 0) -> list[str]:
    """A few hundred distinct facts about the world, in a seeded order, for language-model
    pretraining. No sentence pairs a colour with a shape, so held-out pairs cannot leak."""
    facts = _colour_facts() + _shape_facts() + _number_facts() + _relation_facts()
    facts = list(dict.fromkeys(facts))  # distinct, first occurrence kept
    world_rng(seed, "corpus").shuffle(facts)
    return facts



# ---------------------------------------------------------------------------------------------
# The pilot's scenes


PILOT_SCENES = (  # (colour, shape, count): one group of objects each, every colour and shape once
    ("red", "circle", 1),
    ("yellow", "triangle", 2),
    ("green", "square", 1),
    ("blue", "star", 3),
    ("purple", "heart", 2),
)
TEXT_KINDS = ("pattern", "knowledge", "reasoning")  # what `pilot_texts` asks of a model, in rising order


def _colour_of(colour: str, i: int = 0) -> str:
    return f"the colour of {COLOUR_CLUES[colour][i]}"  # corpus: "the colour of <thing> is <colour>"


def _mixed(colour: str) -> str:
    a, b = COLOUR_MIXES[colour]
    return f"the colour you get by mixing {a} and {b}"  # corpus: "mixing <a> and <b> gives <colour>"


def _described(shape: str, count: int, i: int = 0) -> str:
    singular, plural = SHAPE_CLUES[shape][i]  # corpus: "a <shape> is a <singular>", "<shape>s are <plural>"
    return singular if count == 1 else plural


def pilot_texts() -> dict[str, list[str]]:
    """For each of `TEXT_KINDS`, one text per scene of `PILOT_SCENES`, in scene order: *pattern* texts
    name what is in view ("a red circle"), *knowledge* texts name it through facts ("a round shape the
    colour of a tomato"), *reasoning* texts through a step more ("(1+1) shapes with three sides").
    Knowledge and reasoning texts name neither the colour nor the shape in view; each clue is a fact
    of `knowledge_corpus`, arithmetic ("(2-1)") included."""
    pattern = ["a red circle", "two yellow triangles", "a green square", "three blue stars", "two purple hearts"]
    knowledge = [f"a {_described('circle', 1)} {_colour_of('red', 2)}",  # a round shape the colour of a tomato
                 f"two {_described('triangle', 2)} {_colour_of('yellow', 0)}",
                 f"a {_described('square', 1)} {_colour_of('green', 0)}",
                 f"three {_described('star', 3)} {_colour_of('blue', 0)}",
                 f"two {_described('heart', 2, 1)} {_colour_of('purple', 0)}"]
    reasoning = [f"(2-1) {_described('circle', 1, 1)}",  # (2-1) shape with no corners
                 f"(1+1) {_described('triangle', 2)}",
                 f"(3-2) shape {_mixed('green')}",
                 f"(2+1) {_described('star', 3)}",
                 f"(3-1) objects {_mixed('purple')}"]
    return dict(zip(TEXT_KINDS, (pattern, knowledge, reasoning)))

"""KARR rewrites of English captions ("A man riding a horse on a beach") through WordNet 3.0.

Every clue comes from WordNet's noun files (Debian's `wordnet-base`, read by `slq.data.wordnet`
without nltk), so a rewrite states only what WordNet states. English captions yield all six
categories, each by one rule:

    encyclopedic          the main object by its definition ("a horse" -> "a solid-hoofed herbivorous
                          quadruped domesticated since prehistoric times")
    tool_utility          an artifact by what its definition says it is used for ("a knife" -> "an edge
                          tool used as a cutting instrument"); only when the gloss has such a clause
    functional            an object by what it does, a definition's "that/which/who <verb>s" clause
                          ("a microwave" -> "a kitchen appliance that cooks food by passing ...")
    cultural_symbolism    a colour through familiar things ("a red ball" -> "a ball the colour of a
                          stop sign"); the colours are the attributes the validator guards
    logical_mathematical  a count as arithmetic ("two dogs" -> "(1+1) dogs", "three minus one dogs")
    contextual_spatial    the place of a spatial phrase by its definition ("on a beach" -> "on an area
                          of sand sloping down to the water of a sea or lake")

Object nouns are found by lookup, not by a tagger, so the rules are deliberately narrow: a noun is a
word (or the longest multi-word lemma, "fire hydrant") of index.noun with a concrete sense (an
animal, artifact, body part, food, place, object, person, plant or substance; a group only when it
has nothing else), never a function word, a colour or a word too generic to name a target
("side", "picture"); a word that can also be a verb ("stands", "riding") counts as a noun only after
a determiner, a number or an adjective. Its sense is its most frequent one, the first index.noun
lists, and only when that one is concrete: "wave" (a ridge on water first) and "sign" (an indication
first) are left alone rather than read as a hairdo and a billboard, and so is "microwave" (the wave
first). A specialist's first sense (a ';c' topic: "plate" is home plate in baseball) leaves the word
alone too, and a plant is read as its food where WordNet has both ("bananas"). Frequency is no
sense tagger: the guess is still wrong for a few words ("hot dog": the show-off). A clue never shares a stem with the target,
its plural or its synonyms (`slq.data.wordnet.mentions`), so it never hands the answer over.
"""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass

from ..data import Record
from ..data.wordnet import DEFAULT_WORDNET_DIR, Synset, WordNet, definition_of, mentions
from .core import NUMBER_WORDS, Candidate, Rewrite

logger = logging.getLogger("slq")

# Familiar things of each colour; none names a colour, so the validator's attribute check holds.
COLOUR_CLUES = {
    "red": ("a stop sign", "a ripe tomato", "a fire engine", "a ladybird"),
    "green": ("fresh grass", "a lime", "a frog", "an emerald"),
    "blue": ("a clear summer sky", "a sapphire", "a cornflower"),
    "yellow": ("a ripe banana", "a lemon", "an egg yolk", "a sunflower"),
    "orange": ("a pumpkin", "a carrot", "a tangerine"),
    "purple": ("an aubergine", "lavender flowers", "an amethyst"),
    "pink": ("a flamingo", "cotton candy", "bubble gum"),
    "white": ("fresh snow", "milk", "a swan"),
    "black": ("coal", "a raven", "soot"),
    "brown": ("chocolate", "tree bark", "coffee beans"),
    "grey": ("an elephant", "storm clouds", "ash"),
}
COLOUR_CLUES["gray"] = COLOUR_CLUES["grey"]
ENGLISH_ATTRIBUTES = frozenset(COLOUR_CLUES)  # the checkable words of an English caption: its colours
_SAME_COLOUR = {"grey": {"grey", "gray"}, "gray": {"grey", "gray"}}

# WordNet's lexicographer files (man 5 lexnames) that hold things a photo can show.
_CONCRETE = {3: "Tops", 5: "animal", 6: "artifact", 8: "body", 13: "food", 15: "location", 17: "object",
             18: "person", 20: "plant", 27: "substance"}  # Tops: "person", "animal" themselves
_GROUP, _ARTIFACT, _PERSON, _PLANT, _FOOD = 14, 6, 18, 20, 13
_AGENTS = {3, 5, 6, 8, 18}  # kinds whose "that/who <verb>s" clause says what they do, not how they occur
_TOOL_ROOTS = {"instrumentality", "commodity", "article"}  # devices, appliances, ware: what tools descend from
_DETERMINERS = frozenset("a an the this that these those his her its their my your our some another each every "
                         "many several few both".split())
_SPATIAL = ("in front of", "on top of", "next to", "close to", "on", "in", "at", "near", "by", "beside", "under",
            "up", "down",
            "underneath", "beneath", "above", "below", "behind", "inside", "outside", "across", "along", "over",
            "through", "into", "onto", "around", "against", "atop", "among", "between")
_NOUN_AFTER = frozenset("and or with of for from to".split()) | {p for p in _SPATIAL if " " not in p}
# Function words that WordNet also lists as nouns (vitamin A, helium, Indiana, the United States, ...): never
# part of a target. Generic nouns: never a target on their own, but "pair of scissors" is one.
_FUNCTION_WORDS = _DETERMINERS | _NOUN_AFTER | frozenset(NUMBER_WORDS) | ENGLISH_ATTRIBUTES | frozenset(
    "i he she it we us they him them who which what there here is are was were be been being am do does can will "
    "may might must shall not no yes up down out off while as if so than then very too also just all".split())
_NOT_TARGETS = _FUNCTION_WORDS | frozenset(
    "thing things something someone side top bottom front back middle center centre edge end corner part area "
    "picture photo photograph image view shot scene background foreground closeup close lot group bunch couple "
    "pair kind type sort piece set bit number way look color colour shade light day time".split())
_LINKING = frozenset("is are was were be been looks look appears appear painted all mostly".split())
# WordNet's morphy detachment rules (man 7 morphy), nouns and verbs
_NOUN_SUFFIXES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                  ("men", "man"), ("ies", "y"))
_VERB_SUFFIXES = (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
                  ("ing", ""))
_IRREGULAR_PLURALS = {"people": "person"}  # a lemma of its own in WordNet, but the plural captions mean
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*")
_ASIDE = re.compile(r"\s*\([^()]*\)")
_USE = re.compile(r"\b(?:(?:that (?:is|are) )?(?:used|designed|intended|worn) (?:for|to|as|in|on|by)|for \w+ing)\b")
_AUXILIARY = "is|are|was|were|has|have|had|can|may|might|will|would|could|should|does|do|resembles|looks"
_AGENT = re.compile(rf"\b(?:that|which|who) (?!(?:{_AUXILIARY})\b)[a-z]+s\b")
_LEADS = ("a ", "an ", "the ", "someone ", "something ", "one ")
# words after a definition's head noun: "warm-blooded egg-laying vertebrates | characterized by feathers"
_AFTER_HEAD = frozenset("that which who whose where when with of for in on from by to as used having characterized "
                        "consisting made resembling suitable containing usually typically especially regardless "
                        "including such found".split())


@dataclass(frozen=True)
class Target:
    """An object noun of a caption, and the words that would give it away."""

    span: str  # as it stands in the caption ("fire hydrants")
    start: int  # character offsets of span in the caption
    end: int
    lemma: str  # WordNet's lemma, spaces for underscores ("fire hydrant")
    plural: bool
    count: int | None  # the number before it ("two dogs" -> 2), None when there is none
    count_span: tuple[int, int] | None  # where that number stands
    place: str | None  # the spatial preposition it is the object of ("on", "next to"), if any
    synset: int  # data.noun offset of the sense taken: the first concrete one
    forbidden: tuple[str, ...]  # lemma, plurals, the synset's other lemmas and theirs, a compound's head word


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _regular_plural(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if len(noun) > 1 and noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _detach(form: str, rules: tuple[tuple[str, str], ...]) -> list[str]:
    return [form[: len(form) - len(suffix)] + ending for suffix, ending in rules
            if form.endswith(suffix) and len(form) > len(suffix) + 1]


def _previous_word(caption: str, target: Target) -> str:
    """The lowercase word before a target, "" at the start."""
    found = _TOKEN.findall(caption[: target.start])
    return found[-1].lower() if found else ""


def _leaks(text: str, forbidden) -> bool:
    """Whether `text` shares a stem with a forbidden word or contains a forbidden phrase."""
    lowered = text.lower()
    return any(re.search(rf"\b{re.escape(f)}\b", lowered) if " " in f else mentions(f, lowered) for f in forbidden)


def _expressions(n: int) -> list[str]:
    """Sums and differences that `core.counts` evaluates to n, in digits and in words (words up to
    twelve), none spelling n itself."""
    pairs = [("+", a, n - a) for a in range(1, n // 2 + 1)] + [("-", n + k, k) for k in (1, 2)]
    out = []
    for sign, a, b in pairs:
        out.append(f"({a}{sign}{b})")
        if max(a, b) < len(NUMBER_WORDS):
            out.append(f"{NUMBER_WORDS[a]} {'plus' if sign == '+' else 'minus'} {NUMBER_WORDS[b]}")
    own = {str(n)} | ({NUMBER_WORDS[n]} if n < len(NUMBER_WORDS) else set())
    return [e for e in out if not own & set(re.findall(r"[a-z]+|\d+", e))]


class _WordNet:
    """The parts of WordNet the rules read: nouns with their senses, plurals, and the verb and
    adjective lemmas that tell a noun from a verb or an adjective."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.files = WordNet(folder)
        self.senses = {e.lemma: e.offsets for e in self.files.index("noun")}
        self.lemmas_of: dict[str, list[str]] = {}  # irregular plural -> lemmas (noun.exc)
        self.plurals_of: dict[str, list[str]] = {}
        for plural, lemmas in self.files.exceptions("noun").items():
            self.lemmas_of[plural] = lemmas
            for lemma in lemmas:
                self.plurals_of.setdefault(lemma, []).append(plural)
        for plural, lemma in _IRREGULAR_PLURALS.items():
            self.lemmas_of[plural] = [lemma]
            self.plurals_of.setdefault(lemma, []).append(plural)
        self.verb_forms = set(self.files.exceptions("verb"))
        self.verbs = {e.lemma for e in self.files.index("verb")}
        self.adjectives = {e.lemma for e in self.files.index("adj")}

    def synset(self, offset: int) -> Synset:
        return self.files.synset(offset)

    def readings(self, form: str) -> list[tuple[str, bool]]:
        """(lemma, plural) readings of a lowercase form, its own lemma first ("glasses" are spectacles)."""
        found = [(form, False)] if form in self.senses and form not in _IRREGULAR_PLURALS else []
        found += [(lemma, True) for lemma in self.lemmas_of.get(form, ())]
        found += [(lemma, True) for lemma in _detach(form, _NOUN_SUFFIXES)]
        return [(lemma, plural) for lemma, plural in found if lemma in self.senses]

    def concrete_sense(self, lemma: str) -> int | None:
        """The sense a caption's word is read in: the lemma's most frequent sense (index.noun lists it
        first) when a photo could show it, a group ("people", "herd") only when no sense is concrete.
        None when the everyday reading is something else, so that no rule rewrites the word: an
        abstract sense ("wave": the ridge on water, not the hairdo; "sign": an indication, not a
        billboard) or a specialist's one (a ';c' topic: "plate" is home plate in baseball). A plant
        is read as its food where WordNet has both ("bananas": the fruit, not the tree)."""
        offsets = self.senses[lemma]
        kinds = [self.synset(offset).lex_filenum for offset in offsets]
        if self.synset(offsets[0]).topics:
            return None
        if kinds[0] == _PLANT:
            return next((o for o, kind in zip(offsets, kinds) if kind == _FOOD), offsets[0])
        if kinds[0] in _CONCRETE or kinds[0] == _GROUP and not any(kind in _CONCRETE for kind in kinds):
            return offsets[0]
        return None

    def can_be_verb(self, form: str) -> bool:
        return form in self.verbs or form in self.verb_forms or any(
            base in self.verbs for base in _detach(form, _VERB_SUFFIXES)) or (
            form.endswith("ing") and form[-4:-3] == form[-5:-4] and form[:-4] in self.verbs)  # running

    def plurals(self, noun: str) -> list[str]:
        """A noun's plurals, irregular ones (noun.exc) and the regular one; a compound pluralises its last word."""
        head, _, last = noun.rpartition(" ")
        prefix = f"{head} " if head else ""
        return [prefix + p for p in [*self.plurals_of.get(last, ()), _regular_plural(last)]]

    def definition(self, offset: int) -> str:
        """The gloss's definition without asides in brackets ("(probably descended from the common wolf)")."""
        text = _ASIDE.sub("", definition_of(self.synset(offset).gloss))
        return re.sub(r"\s+", " ", text).strip(" ,.")

    def hypernym(self, offset: int, forbidden) -> str | None:
        """The nearest hypernym lemma that does not give the target away ("fire hydrant" skips "hydrant")."""
        frontier = list(self.synset(offset).hypernyms)
        for _ in range(3):
            for parent in frontier:
                word = self.synset(parent).words[0].replace("_", " ")
                if not _leaks(word, forbidden):
                    return word
            frontier = [h for parent in frontier for h in self.synset(parent).hypernyms]
        return None

    def ancestors(self, offset: int) -> set[str]:
        """The first lemma of every hypernym above a synset, all paths up to the root."""
        seen, frontier = set(), list(self.synset(offset).hypernyms)
        while frontier:
            parent = frontier.pop()
            if parent not in seen:
                seen.add(parent)
                frontier.extend(self.synset(parent).hypernyms)
        return {self.synset(o).words[0] for o in seen}

    def noun_phrase(self, definition: str) -> tuple[str, bool]:
        """A definition as a noun phrase with its determiner, and whether it is plural: "kitchen appliance
        that ..." -> "a kitchen appliance that ..."; "warm-blooded egg-laying vertebrates characterized
        ..." is plural, which its head noun (the word before "that", "with", "characterized", ...) tells."""
        if definition.startswith("any of "):
            return "one of " + definition[len("any of "):], False
        if definition.startswith("any "):
            definition = definition[len("any "):]
        words = definition.split(" ")
        if definition.startswith(_LEADS) or words[0] in NUMBER_WORDS:
            return definition, False  # "two slices of bread with a filling" is one sandwich
        head = next((w for w, after in zip(words, [*words[1:], None]) if after is None or after in _AFTER_HEAD
                     or w.endswith(",")), words[-1]).strip(",")
        if head not in self.senses and any(lemma in self.senses for lemma in _detach(head, _NOUN_SUFFIXES)):
            return definition, True
        if any(words[0] == base + ending and base in self.adjectives for base, ending in  # tallest, largest, biggest
               ((words[0][:-3], "est"), (words[0][:-2], "st"), (words[0][:-4], words[0][-4] + "est"))):
            return f"the {definition}", False  # "tallest living quadruped"
        return f"{_article(definition)} {definition}", False


class WordNetRewriter:
    """Rule rewrites of English captions, every clue read from WordNet (see the module docstring)."""

    name = "wordnet"
    categories = ("encyclopedic", "tool_utility", "functional", "cultural_symbolism", "logical_mathematical",
                  "contextual_spatial")

    def __init__(self, wordnet_dir: str | os.PathLike = DEFAULT_WORDNET_DIR) -> None:
        self.wordnet = _WordNet(wordnet_dir)
        logger.debug("WordNet read from %s: %d noun lemmas", wordnet_dir, len(self.wordnet.senses))

    # -----------------------------------------------------------------------------------------
    # Finding the targets

    def targets(self, caption: str) -> list[Target]:
        """The object nouns of a caption in order, a multi-word lemma preferred to its words."""
        tokens = [(m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(caption)]
        found, i = [], 0
        while i < len(tokens):
            n, target = next(((n, t) for n in (4, 3, 2, 1) if i + n <= len(tokens)
                              for t in [self._target(caption, tokens, i, n)] if t is not None), (1, None))
            if target is not None:
                found.append(target)
            i += n
        # in "a kitchen counter" the first noun only modifies the second, which is the object
        return [t for t, after in zip(found, [*found[1:], None])
                if after is None or caption[t.end : after.start].strip() != ""]

    def _target(self, caption: str, tokens: list, i: int, n: int) -> Target | None:
        words = [w for w, _, _ in tokens[i : i + n]]
        if words[0] in _FUNCTION_WORDS or words[-1] in _FUNCTION_WORDS or n == 1 and words[0] in _NOT_TARGETS:
            return None
        previous = tokens[i - 1][0] if i else None
        if n == 1 and self.wordnet.can_be_verb(words[0]) and not self._noun_position(words[0], previous):
            return None
        readings = self.wordnet.readings("_".join(words))
        for lemma, plural in readings:
            sense = self.wordnet.concrete_sense(lemma)
            if sense is None:
                continue
            start, end = tokens[i][1], tokens[i + n - 1][2]
            count, count_span = self._count(tokens, i)
            # "cows" is a lemma of its own (cattle) and the plural of "cow": plural, and neither may be said
            plural = plural or any(p for _, p in readings) or bool(count and count > 1)
            names = [lemma.replace("_", " ")] + [other.replace("_", " ") for other, _ in readings if other != lemma]
            return Target(caption[start:end], start, end, names[0], plural, count, count_span,
                          self._place(tokens, i), sense, self._forbidden(names, sense))
        return None

    def _noun_position(self, word: str, previous: str | None) -> bool:
        """Whether a word that can be a verb stands where a noun does: after a determiner, a number, an
        adjective or (unless it ends in -ing) a preposition, or opening the caption."""
        if previous is None:
            return not word.endswith("ing")
        if (previous in _DETERMINERS or previous in NUMBER_WORDS or previous.isdigit() or previous in
                ENGLISH_ATTRIBUTES or previous.endswith("'s") or previous in self.wordnet.adjectives):
            return True
        if previous in _NOUN_AFTER:
            return not word.endswith("ing")
        # "a kitchen counter", but not "a man flies" nor "two men ride": an uninflected word after a singular noun
        readings = self.wordnet.readings(previous) if previous not in _NOT_TARGETS else []
        return bool(readings) and not readings[0][1] and not word.endswith(("s", "ed", "ing"))

    def _modifiers(self, tokens: list, i: int) -> int:
        """How many modifiers (at most two adjectives or nouns) stand right before token i ("two small
        white dogs" -> 2, "on a kitchen counter" -> 1)."""
        j = i
        while j > 0 and i - j < 2 and (tokens[j - 1][0] in ENGLISH_ATTRIBUTES or tokens[j - 1][0] not in _NOT_TARGETS
                                       and not tokens[j - 1][0].isdigit()
                                       and (tokens[j - 1][0] in self.wordnet.adjectives
                                            or tokens[j - 1][0] in self.wordnet.senses)):
            j -= 1
        return i - j

    def _count(self, tokens: list, i: int) -> tuple[int | None, tuple[int, int] | None]:
        j = i - self._modifiers(tokens, i) - 1
        if j < 0:
            return None, None
        word, start, end = tokens[j]
        if word.isdigit() and int(word) > 0:
            return int(word), (start, end)
        if word in NUMBER_WORDS[1:]:
            return NUMBER_WORDS.index(word), (start, end)
        return None, None

    def _place(self, tokens: list, i: int) -> str | None:
        j = i - self._modifiers(tokens, i) - 1
        if j >= 0 and tokens[j][0] in _DETERMINERS:
            j -= 1
        before = " ".join(w for w, _, _ in tokens[max(j - 2, 0) : j + 1])
        return next((p for p in _SPATIAL if j >= 0 and (before == p or before.endswith(" " + p))), None)

    def _forbidden(self, lemmas: list[str], sense: int) -> tuple[str, ...]:
        names = set(lemmas) | {w.replace("_", " ").lower() for w in self.wordnet.synset(sense).words}
        if " " in lemmas[0]:
            names.add(lemmas[0].rpartition(" ")[2])  # the head word: "hydrant" of "fire hydrant"
        forbidden = set(names)
        for name in names:
            forbidden.update(self.wordnet.plurals(name))
        return tuple(sorted(forbidden))

    # -----------------------------------------------------------------------------------------
    # The rules

    def rewrite(self, caption: str, record: Record, category: str, rng: random.Random) -> Candidate | None:
        """A candidate for `caption` in `category`, or None when the caption offers nothing for its rule."""
        rule = {"encyclopedic": self._encyclopedic, "tool_utility": self._tool, "functional": self._functional,
                "cultural_symbolism": self._colour, "logical_mathematical": self._count_rule,
                "contextual_spatial": self._spatial}.get(category)
        found = rule(caption, self.targets(caption), rng) if rule else None
        if found is None:
            return None
        (start, end, replacement, neutral, rule_name), forbidden = found
        if start == 0:
            replacement, neutral = (s[:1].upper() + s[1:] for s in (replacement, neutral))
        text = caption[:start] + replacement + caption[end:]
        # `control_caption` and the LM rewriter replace a span's first occurrence: a span that also stands
        # earlier ("one" in "a phone and one cat") takes in the words before it until it stands nowhere else
        while start and caption.find(caption[start:end]) != start:
            before = list(_TOKEN.finditer(caption[:start]))
            wider = before[-1].start() if before else 0
            replacement, neutral, start = caption[wider:start] + replacement, caption[wider:start] + neutral, wider
        rewrite = Rewrite(caption[start:end], replacement, rule_name, neutral)
        return Candidate(text, category, (rewrite,), tuple(sorted(forbidden)))

    # Each rule returns ((start, end, replacement, neutral, rule name), forbidden words) or None. The neutral
    # form is the span with the clue's knowledge taken out and nothing put in, so that the control caption
    # (`core.control_caption`) retrieves with the rest of the caption alone: a noun becomes "something",
    # "thing" or "things", a colour goes, a count becomes "some".

    def _modified(self, caption: str, target: Target) -> bool:
        """Whether the word before a singular target belongs to its noun phrase (a determiner, number,
        possessive, adjective or noun: "a tall tree", "a kitchen counter"), so a generic noun takes the
        target's place ("a tall thing") rather than the whole phrase's ("holding something")."""
        before = [w.lower() for w in _TOKEN.findall(caption[: target.start])][-2:]
        previous = before[-1] if before else ""
        if not previous or previous in _NOUN_AFTER:
            return False
        if (previous in _DETERMINERS or previous in NUMBER_WORDS or previous.isdigit() or previous.endswith("'s")
                or previous in ENGLISH_ATTRIBUTES):
            return True
        if previous in _FUNCTION_WORDS:
            return False
        if previous in self.wordnet.adjectives:
            return True
        # a noun, unless it is an inflected verb ("holding pizza") with no determiner before it ("a cooking pot")
        return previous in self.wordnet.senses and (
            not previous.endswith(("s", "ed", "ing")) or not self.wordnet.can_be_verb(previous)
            or len(before) > 1 and before[0] in _DETERMINERS)

    def _described(self, caption: str, target: Target, rule: str, singular: str, plural: str | None = None,
                   predicate: str | None = None):
        """Replace the target by a noun phrase and keep the caption's determiner. `singular` leads with its
        own ("a kitchen appliance that ...", "one of the ..."); a plural target takes `plural` (no
        determiner: the caption's count stays) or else "<hypernyms>, each of which <predicate>,"."""
        after = caption[target.end :]
        if after.lstrip().lower().startswith("of "):
            return None  # "a field of grass": the of-phrase belongs to the noun and would dangle after a clue
        if target.plural:
            if plural is None:
                hypernym = self.wordnet.hypernym(target.synset, target.forbidden)
                if hypernym is None or predicate is None:
                    return None
                pronoun = "whom" if self.wordnet.synset(target.synset).lex_filenum == _PERSON else "which"
                tail = "," if after.strip(" .") else ""
                plural = f"{self.wordnet.plurals(hypernym)[0]}, each of {pronoun} {predicate}{tail}"
            return (target.start, target.end, plural, "things", rule), target.forbidden  # "two things"
        before = caption[: target.start].rstrip()
        previous = _previous_word(caption, target)
        lead, _, body = singular.partition(" ")
        if previous in _DETERMINERS and (previous in ("a", "an") or lead not in ("a", "an")):
            return (len(before) - len(previous), target.end, singular, "something", rule), \
                target.forbidden  # its own determiner
        if lead not in ("a", "an") and previous and previous not in _NOUN_AFTER:
            return None  # "a brown" + "one of the ..." cannot be joined
        if not previous or lead not in ("a", "an"):
            body = singular  # "on" + "an area of sand ...", "in" + "one of the ..."
        if body.split(" ", 1)[0].lower() == previous:
            body = body.split(" ", 1)[1]  # "a tall" + "tall perennial woody plant" says "tall" once
        if previous in ("the", "some"):  # the span takes the determiner in, so the phrase can become "something"
            start = len(before) - len(previous)
            return (start, target.end, caption[start : target.start] + body, "something", rule), target.forbidden
        neutral = "thing" if self._modified(caption, target) else "something"
        return (target.start, target.end, body, neutral, rule), target.forbidden

    def _gloss_rule(self, caption: str, candidates: list[Target], rule: str):
        for target in candidates:
            definition = self.wordnet.definition(target.synset)
            if not definition or _leaks(definition, target.forbidden):
                continue
            phrase, plural = self.wordnet.noun_phrase(definition)
            if plural:  # "a bird" -> "one of the warm-blooded ... vertebrates", "the rain" -> "the drops ..."
                lead = "the" if _previous_word(caption, target) == "the" else "one of the"
                found = self._described(caption, target, rule, f"{lead} {definition.removeprefix('the ')}",
                                        definition)
            else:
                found = self._described(caption, target, rule, phrase, predicate=f"is {phrase}")
            if found is not None:
                return found
        return None

    def _encyclopedic(self, caption, targets, rng):
        """The main object (the first one not in a place phrase, else any) by its definition."""
        return self._gloss_rule(caption, [t for t in targets if not t.place] + [t for t in targets if t.place],
                                "wordnet_gloss")

    def _spatial(self, caption, targets, rng):
        """The place of a spatial phrase ("on a beach") by its definition."""
        return self._gloss_rule(caption, [t for t in targets if t.place], "place_gloss")

    def _clauses(self, targets, pattern: re.Pattern, keep):
        """(target, hypernym, clause) for each target `keep` accepts whose definition has a clause `pattern`
        finds, the clause running to the definition's end; none that gives the target away."""
        for target in targets:
            if not keep(target):
                continue
            match = pattern.search(self.wordnet.definition(target.synset))
            hypernym = self.wordnet.hypernym(target.synset, target.forbidden) if match else None
            if hypernym is not None and not _leaks(match.string[match.start():], target.forbidden):
                yield target, hypernym, match.string[match.start():]

    def _tool(self, caption, targets, rng):
        """A tool, appliance or ware by what its definition says it is used for: "a <hypernym> used for ..."."""
        def is_tool(target):
            return bool(self.wordnet.ancestors(target.synset) & _TOOL_ROOTS)

        for target, hypernym, clause in self._clauses(targets, _USE, is_tool):
            clause = re.sub(r"^that (?:is|are) ", "", clause)
            clause = f"used {clause}" if clause.startswith("for ") else clause
            found = self._described(caption, target, "use_clause", f"{_article(hypernym)} {hypernym} {clause}",
                                    f"{self.wordnet.plurals(hypernym)[0]} {clause}")
            if found is not None:
                return found
        return None

    def _functional(self, caption, targets, rng):
        """An agent or device by what it does: its hypernym and its definition's "that/which/who <verb>s"
        clause ("a kitchen appliance that cooks food ...")."""
        def is_agent(target):
            return self.wordnet.synset(target.synset).lex_filenum in _AGENTS

        for target, hypernym, clause in self._clauses(targets, _AGENT, is_agent):
            if not self.wordnet.can_be_verb(clause.split(" ")[1]):
                continue  # "which business is transacted": a noun in -s, not a verb
            found = self._described(caption, target, "agent_clause", f"{_article(hypernym)} {hypernym} {clause}",
                                    predicate=clause.partition(" ")[2])
            if found is not None:
                return found
        return None

    def _colour(self, caption, targets, rng):
        """A colour through a familiar thing: "a red ball" -> "a ball the colour of a stop sign"."""
        tokens = [(m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(caption)]
        starts = {t.start: t for t in targets}
        said = {w for w, _, _ in tokens}
        for i, (word, start, end) in enumerate(tokens):
            if word not in ENGLISH_ATTRIBUTES:
                continue
            after = tokens[i + 1][0] if i + 1 < len(tokens) else None
            before = tokens[i - 1][0] if i else None
            clues = [c for c in COLOUR_CLUES[word] if not said & set(c.split()) - {"a", "an"}]
            if not clues or "and" in (before, after) or "or" in (before, after):
                continue  # "red and white": the pair is one pattern, and a clue for one half reads oddly
            clue = f"the colour of {rng.choice(clues)}"
            forbidden = _SAME_COLOUR.get(word, {word})
            noun = next((starts[s] for s in starts if caption[end:s].strip() == "" and s > start), None)
            if noun is not None:
                if before in ("a", "an") and before != _article(noun.span):  # "an orange cat" -> "a cat ..."
                    start = tokens[i - 1][1]
                    article = _article(noun.span).capitalize() if caption[start].isupper() else _article(noun.span)
                    return (start, noun.end, f"{article} {noun.span} {clue}", f"{article} {noun.span}",
                            "colour_clue"), forbidden
                return (start, noun.end, f"{noun.span} {clue}", noun.span, "colour_clue"), forbidden
            if before in _LINKING:  # "is yellow" -> "is coloured": a colour without saying which
                return (start, end, clue, "a colour" if before == "painted" else "coloured", "colour_clue"), forbidden
        return None

    def _count_rule(self, caption, targets, rng):
        """The first counted object's number as arithmetic: "two dogs" -> "(1+1) dogs"."""
        for target in targets:
            if target.count_span is None:
                continue
            start, end = target.count_span
            word = caption[start:end].lower()
            n = target.count
            forbidden = {str(n), word} | ({NUMBER_WORDS[n]} if n < len(NUMBER_WORDS) else set())
            expression = rng.choice(_expressions(n))
            before = list(_TOKEN.finditer(caption[:start]))
            if before and before[-1].group().lower() in _DETERMINERS:  # "the two dogs" -> "the dogs", not "the some"
                det = before[-1]
                return (det.start(), end, caption[det.start() : start] + expression, det.group(), "arithmetic"), \
                    forbidden
            after = _TOKEN.findall(caption[end:])
            neutral = _article(after[0]) if n == 1 and after else "some"  # "one dog" -> "a dog"
            return (start, end, expression, neutral, "arithmetic"), forbidden
        return None

"""Real-knowledge KARR: shapes-world rows whose every clue is a fact the language model itself states.

KARR-Shapes' clues come from the world's own corpus, which a real LM never read. Here the clues are
everyday facts ("a ripe banana is yellow", "a coin is round", "(1+1) is two"), and one enters the
benchmark only when the language model states it: `probe_facts` ranks the world's words of the
fact's kind (its six colours, five shapes, or the number words one to six) by the LM's
log-likelihood after a cloze prompt ("The colour of a ripe banana is" -> " yellow", the sum of the
word's token log-probabilities) and keeps the fact only where the right word ranks first. Every
fact's scores are recorded, kept or not, so `build.json` shows the LM's real, uneven knowledge.

`build_real_karr` then writes one row per test image of a shapes world. Each row names ONE object
(or one group of alike objects) and nothing else: "a small circle the colour of a ripe banana",
control "a small circle". A row that kept the rest of the plain caption would let its control
retrieve by the other objects ("... and a large blue star"), so KARR minus control would measure
the clue diluted by whatever else the caption says; with one object, the clue's attribute is the
only thing the control lacks, and a recall gap between the two is what the clue told the retriever.

Rows are a pure function of the kept facts, the world's seed and size and the build seed: the
LM is asked only by the probe, whose table `build.json` keeps, so `rebuild_real_karr` writes the
same rows from that file alone.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .._io import atomic_write, seeded_random
from ..data import ImageRecord, load_jsonl
from ..data.shapes import COLOURS, NUMBER_WORDS, SHAPES, write_world
from ..errors import SettingError, SLQError
from .build import KarrBuild, write_karr
from .core import CATEGORIES, Candidate, Rewrite, validate
from .shapes import ATTRIBUTES

logger = logging.getLogger("slq")

COUNT_WORDS = NUMBER_WORDS[1:7]  # "one" .. "six": every sum and difference below
CHOICES = {"colour": COLOURS, "shape": SHAPES, "count": COUNT_WORDS}  # what a fact's answer is ranked among
KARR_REAL = Path(__file__).resolve().parent.parent / "assets" / "karr-real"  # the shipped build (Gemma 3 270M)
KARR_REAL_WORLD = {"seed": 0, "n_test": 400}


@dataclass(frozen=True)
class Fact:
    """One everyday fact: the cloze `prompt` the LM completes, its `answer` (one of `CHOICES[kind]`)
    and the `clue` a caption says it with, "{}" standing for the rest of the noun phrase."""

    kind: str  # "colour", "shape" or "count"
    subject: str  # "a ripe banana"
    answer: str  # "yellow"
    category: str  # a key of CATEGORIES
    prompt: str  # "The colour of a ripe banana is"
    clue: str  # "{} the colour of a ripe banana"

    def __post_init__(self):
        if self.kind not in CHOICES or self.answer not in CHOICES[self.kind]:
            raise SettingError("fact", f"{self.kind}: {self.answer}", f"answer must be one of {CHOICES.get(self.kind)}")
        if self.category not in CATEGORIES or "{}" not in self.clue:
            raise SettingError("fact", self.subject, "needs a KARR category and a clue with {} for the noun phrase")


def _colour(subject: str, answer: str) -> Fact:
    return Fact("colour", subject, answer, "cultural_symbolism", f"The colour of {subject} is",
                f"{{}} the colour of {subject}")


def _like(subject: str, answer: str, category: str = "functional") -> Fact:
    return Fact("shape", subject, answer, category, f"{subject[0].upper()}{subject[1:]} has the shape of a",
                f"{{}} like {subject}")


def _defined(definition: str, answer: str) -> Fact:  # "with three sides": "a shape with three sides"
    return Fact("shape", f"a shape {definition}", answer, "encyclopedic", f"A shape {definition} is called a",
                f"{{}} {definition}")


def _sum(expression: str, answer: str) -> Fact:
    return Fact("count", expression, answer, "logical_mathematical", f"{expression[0].upper()}{expression[1:]} is",
                f"{expression} {{}}")


def _counted(things: str, answer: str) -> Fact:  # "wheels on a bicycle"
    return Fact("count", f"the number of {things}", answer, "encyclopedic", f"The number of {things} is",
                f"{{}}, as many as the {things}")


FACTS: tuple[Fact, ...] = (  # candidates; the probe decides which the LM states
    *(_colour(s, "red") for s in ("a ripe tomato", "a strawberry", "a fire truck", "a stop sign", "a ladybird",
                                  "a cherry")),
    *(_colour(s, "green") for s in ("grass", "a frog", "a cucumber", "a lime", "a fresh leaf", "broccoli")),
    *(_colour(s, "blue") for s in ("the clear sky", "the sea", "a blueberry", "a sapphire")),
    *(_colour(s, "yellow") for s in ("a ripe banana", "a lemon", "a sunflower", "an egg yolk", "a canary")),
    *(_colour(s, "purple") for s in ("an aubergine", "an eggplant", "lavender", "a grape", "a plum", "an amethyst")),
    *(_colour(s, "orange") for s in ("a carrot", "a pumpkin", "a tangerine", "a goldfish")),
    *(_like(s, "circle") for s in ("a coin", "a wheel", "the full moon", "a dinner plate")),
    *(_like(s, "square") for s in ("a sticky note", "the face of a die", "a chessboard tile")),
    *(_like(s, "triangle") for s in ("a slice of pizza", "a yield sign")),
    _like("a starfish", "star"), _like("a sheriff's badge", "star"),
    _like("a valentine", "heart", "cultural_symbolism"), _like("the symbol of love", "heart", "cultural_symbolism"),
    _defined("with no corners", "circle"), _defined("with four equal sides", "square"),
    _defined("with three sides", "triangle"), _defined("with five points", "star"),
    *(_sum(e, "two") for e in ("(1+1)", "one plus one", "(3-1)", "three minus one")),
    *(_sum(e, "three") for e in ("(2+1)", "two plus one", "(1+1+1)", "(4-1)", "four minus one")),
    _counted("wheels on a bicycle", "two"), _counted("wheels on a tricycle", "three"),
    _counted("eyes a person has", "two"),
)

PRIOR_PROMPTS = {"colour": "The colour of it is", "shape": "It has the shape of a", "count": "The number is"}
# a cloze with no subject: the words the LM prefers whatever the fact (a kept fact whose answer is the
# prior's first word may be the prior, not knowledge)

Scorer = Callable[[str, Sequence[str]], list[float]]  # (prompt, words) -> each word's log-likelihood after it


def backbone_scorer(backbone) -> Scorer:
    """The log-likelihood of each word (with a leading space) after the prompt, as plain text after
    the BOS (no chat template: a cloze is language modelling), summed over the word's tokens. The
    words of one prompt run as one left-padded batch."""
    import torch

    from ..backbone import PrefixBatch

    tokenizer = backbone.tokenizer
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    @torch.no_grad()
    def score(prompt: str, words: Sequence[str]) -> list[float]:
        head = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tails = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
        length = len(head) + max(len(t) for t in tails)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (length - len(head) - len(t)) + head + t for t in tails])  # (B, L) left-padded
        mask = torch.tensor([[0] * (length - len(head) - len(t)) + [1] * (len(head) + len(t)) for t in tails])
        logits = backbone.forward(PrefixBatch(ids.to(backbone.device), mask.to(backbone.device)),
                                  logits_to_keep=length).logits.float()  # (B, L, V)
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        for b, tail in enumerate(tails):  # token at position p is predicted at p - 1
            positions = range(length - len(tail), length)
            out.append(float(sum(logp[b, p - 1, tail[i]] for i, p in enumerate(positions))))
        return out

    return score


def probe_facts(scorer: Scorer, facts: Iterable[Fact] = FACTS) -> list[dict]:
    """Every fact with the LM's score of each word of its kind, the words ranked (ties in
    `CHOICES` order), the answer's rank (1 = first) and `kept` (ranked first)."""
    table = []
    for fact in facts:
        choices = CHOICES[fact.kind]
        scores = scorer(fact.prompt, choices)
        ranking = [choices[i] for i in sorted(range(len(choices)), key=lambda i: -scores[i])]
        rank = ranking.index(fact.answer) + 1
        table.append({**asdict(fact), "scores": {w: round(s, 4) for w, s in zip(choices, scores)},
                      "ranking": ranking, "rank": rank, "kept": rank == 1})
    return table


def probe_priors(scorer: Scorer) -> dict[str, dict]:
    """Each kind's words ranked after a prompt with no subject (`PRIOR_PROMPTS`)."""
    out = {}
    for kind, prompt in PRIOR_PROMPTS.items():
        choices = CHOICES[kind]
        scores = scorer(prompt, choices)
        out[kind] = {"prompt": prompt, "scores": {w: round(s, 4) for w, s in zip(choices, scores)},
                     "ranking": [choices[i] for i in sorted(range(len(choices)), key=lambda i: -scores[i])]}
    return out


def kept_facts(table: Iterable[dict]) -> list[Fact]:
    """The facts a probe table kept, as Facts (the table's own fields: no LM needed)."""
    names = Fact.__dataclass_fields__
    return [Fact(**{k: row[k] for k in names}) for row in table if row["kept"]]


def probe_summary(table: Sequence[dict]) -> dict:
    """Kept / asked per kind and per category, and which facts were kept."""
    def tally(key):
        return {v: {"kept": sum(r["kept"] for r in table if r[key] == v), "asked": sum(r[key] == v for r in table)}
                for v in dict.fromkeys(r[key] for r in table)}

    return {"by_kind": tally("kind"), "by_category": tally("category"),
            "kept": [f"{r['subject']} -> {r['answer']}" for r in table if r["kept"]]}


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _candidates(objects: Sequence[dict], facts: Sequence[Fact]) -> list[tuple[Candidate, Fact]]:
    """Every row an image allows: a colour or shape fact about one object (named alone, singular),
    a count fact about a group of alike objects ("(1+1) red stars")."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for o in objects:
        groups.setdefault((o["colour"], o["shape"]), []).append(o)
    out = []
    for (colour, shape), group in groups.items():
        size = group[0]["size"]
        for fact in facts:
            if fact.kind == "colour" and fact.answer == colour:
                source, neutral, noun = _article(f"{size} {colour} {shape}"), _article(f"{size} {shape}"), None
            elif fact.kind == "shape" and fact.answer == shape:
                source, neutral, noun = _article(f"{size} {colour} {shape}"), _article(f"{size} {colour} shape"), None
            elif fact.kind == "count" and fact.answer == NUMBER_WORDS[len(group)]:
                noun = f"{colour} {shape}s"
                source, neutral = f"{fact.answer} {noun}", f"some {noun}"
            else:
                continue
            text = fact.clue.format(noun or neutral)
            forbidden = {"colour": (colour,), "shape": (shape, shape + "s"), "count": (fact.answer,)}[fact.kind]
            out.append((Candidate(text, fact.category, (Rewrite(source, text, f"lm_fact_{fact.kind}", neutral),),
                                  forbidden), fact))
    return out


def real_rows(records: Sequence[ImageRecord], facts: Sequence[Fact], *, seed: int = 0,
              source: str = "karr-real") -> KarrBuild:
    """One row per record (its `objects` in meta), clue from one of `facts`: the image's candidates
    (every kept fact that fits one of its objects) tried least-used fact first, ties by a seeded
    draw, and the first the validator accepts is the row; rejections are counted by reason.

    Balanced over facts, not categories (KARR-Shapes balances categories): a model knows few facts
    of some categories (one encyclopedic fact, say), and balancing categories would make that one
    fact a third of the rows. So every kept fact is tested about equally often where the world
    allows, and the categories follow from what the model knows."""
    build = KarrBuild([], source, seed, ["lm_facts"])
    uses: Counter = Counter()  # fact subject -> rows
    for index, record in enumerate(records):
        rng = seeded_random("karr-real", seed, index)
        candidates = sorted(_candidates(record.meta["objects"], facts),
                            key=lambda cf: (uses[cf[1].subject], rng.random()))
        chosen = None
        for candidate, fact in candidates:
            reason = validate(candidate.rewrites[0].span, candidate, ATTRIBUTES)
            if reason is None:
                chosen = candidate, fact
                break
            build.rejected.setdefault(candidate.category, Counter())[reason] += 1
        if chosen is None:
            build.unrewritten += 1
            continue
        candidate, fact = chosen
        build.accepted[candidate.category] += 1
        uses[fact.subject] += 1
        rewrite = candidate.rewrites[0]
        meta = {k: v for k, v in record.meta.items() if k != "knowledge_captions"}  # the world's own, unvalidated
        meta.update(source_caption=rewrite.span, category=candidate.category, rewriter="lm_facts",
                    rewrites=[asdict(rewrite)], control_caption=rewrite.neutral,
                    fact={"kind": fact.kind, "subject": fact.subject, "answer": fact.answer})
        build.records.append(ImageRecord(record.image, (candidate.caption,), record.source, meta))
    return build


def build_real_karr(out_dir: str | os.PathLike, table: Sequence[dict], *, world_seed: int = 0, n_test: int = 400,
                    seed: int = 0, backbone: str = "", prior: dict | None = None,
                    progress: bool | None = None) -> dict[str, Path]:
    """Write `karr.jsonl`, the images, `categories.png` and `build.json` (the build's counts plus
    the probe's whole `table`, its summary and the LM's `prior`, as recorded) into `out_dir`, from
    the test split of the shapes world (`world_seed`, `n_test` images) and the facts `table` kept."""
    facts = kept_facts(table)
    if not facts:
        raise SLQError("the probe kept no fact: the language model ranked no answer first; no row can be written")
    with tempfile.TemporaryDirectory(prefix="slq-karr-real-") as tmp:
        world = write_world(tmp, n_train=1, n_val=1, n_test=n_test, seed=world_seed, progress=progress)
        build = real_rows(load_jsonl(world["test"]).records, facts, seed=seed)
        paths = write_karr(build, out_dir, copy_images=True, image_root=Path(tmp) / "images")
    summary = {**build.summary(), "world": {"seed": world_seed, "n_test": n_test},
               "probe": {"backbone": backbone, "choices": {k: list(v) for k, v in CHOICES.items()},
                         **probe_summary(table), "prior": prior or {}, "facts": list(table)}}
    atomic_write(paths["build"], json.dumps(summary, indent=2) + "\n")
    logger.info("%d rows from %d kept facts of %d asked", len(build.records), len(facts), len(table))
    return paths


def real_karr(backbone_dir: str | os.PathLike, out_dir: str | os.PathLike, *, world_seed: int = 0,
              n_test: int = 400, seed: int = 0, facts: Iterable[Fact] = FACTS,
              progress: bool | None = None) -> dict[str, Path]:
    """Probe the LM at `backbone_dir` (folder or GGUF file) on `facts`, then `build_real_karr`."""
    from ..backbone import Backbone

    backbone = Backbone.load(backbone_dir)
    scorer = backbone_scorer(backbone)
    return build_real_karr(out_dir, probe_facts(scorer, facts), world_seed=world_seed, n_test=n_test, seed=seed,
                           backbone=Path(backbone_dir).name, prior=probe_priors(scorer), progress=progress)


def rebuild_real_karr(build_json: str | os.PathLike, out_dir: str | os.PathLike, *,
                      progress: bool | None = None) -> dict[str, Path]:
    """The same rows again from a `build.json` alone: its probe table, world and seed; no LM."""
    summary = json.loads(Path(build_json).read_text())
    return build_real_karr(out_dir, summary["probe"]["facts"], world_seed=summary["world"]["seed"],
                           n_test=summary["world"]["n_test"], seed=summary["seed"],
                           backbone=summary["probe"]["backbone"], prior=summary["probe"]["prior"],
                           progress=progress)


__all__ = ["CHOICES", "PRIOR_PROMPTS", "FACTS", "KARR_REAL", "KARR_REAL_WORLD", "Fact", "backbone_scorer",
           "build_real_karr", "kept_facts", "probe_facts", "probe_priors", "probe_summary", "real_karr", "real_rows",
           "rebuild_real_karr"]

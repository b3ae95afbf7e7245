"""Real-knowledge KARR: the probe keeps exactly the facts the LM ranks first, records every score,
and the rows are a pure function of the kept facts (the shipped build rebuilds without the LM)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from slq.data import load_jsonl
from slq.data.shapes import NUMBER_WORDS, write_world
from slq.errors import SettingError
from slq.karr import SHAPES_ATTRIBUTES, control_dataset, validate
from slq.karr.core import Candidate, Rewrite
from slq.karr.real import (CHOICES, FACTS, KARR_REAL, KARR_REAL_WORLD, Fact, backbone_scorer, kept_facts,
                           probe_facts, probe_priors, probe_summary, real_rows, rebuild_real_karr)

from helpers import slq


def fake_scorer(first: dict[str, str]):
    """Scores that put `first[prompt]` first (else the kind's last word), the rest in a fixed order."""
    def score(prompt, words):
        top = first.get(prompt, words[-1])
        return [0.0 if w == top else -1.0 - i for i, w in enumerate(words)]
    return score


def test_probe_keeps_exactly_the_facts_ranked_first():
    facts = [f for f in FACTS if f.kind == "colour"][:4] + [f for f in FACTS if f.kind == "shape"][:2] + \
            [f for f in FACTS if f.kind == "count"][:2]
    right = {facts[0].prompt: facts[0].answer, facts[4].prompt: facts[4].answer, facts[6].prompt: facts[6].answer,
             facts[1].prompt: "purple" if facts[1].answer != "purple" else "red"}
    table = probe_facts(fake_scorer(right), facts)
    assert [row["kept"] for row in table] == [f.prompt in right and right[f.prompt] == f.answer for f in facts]
    assert [f.subject for f in kept_facts(table)] == [facts[0].subject, facts[4].subject, facts[6].subject]
    for fact, row in zip(facts, table):  # every fact recorded, kept or not: its words' scores and ranking
        assert {k: row[k] for k in ("kind", "subject", "answer", "category", "prompt", "clue")} == {
            "kind": fact.kind, "subject": fact.subject, "answer": fact.answer, "category": fact.category,
            "prompt": fact.prompt, "clue": fact.clue}
        assert list(row["scores"]) == list(CHOICES[fact.kind]) == sorted(row["ranking"], key=CHOICES[fact.kind].index)
        assert row["rank"] == row["ranking"].index(fact.answer) + 1 and row["kept"] == (row["rank"] == 1)
        assert row["scores"][row["ranking"][0]] == max(row["scores"].values())
    summary = probe_summary(table)
    assert summary["by_kind"] == {"colour": {"kept": 1, "asked": 4}, "shape": {"kept": 1, "asked": 2},
                                  "count": {"kept": 1, "asked": 2}}
    assert summary["kept"] == [f"{f.subject} -> {f.answer}" for f in kept_facts(table)]
    tied = probe_facts(lambda prompt, words: [0.0] * len(words), facts)  # ties: the kind's own order
    assert [row["kept"] for row in tied] == [f.answer == CHOICES[f.kind][0] for f in facts]


def test_facts_are_well_formed():
    assert len({f.prompt for f in FACTS}) == len(FACTS)
    for fact in FACTS:
        assert fact.answer not in fact.clue.split() and fact.answer not in fact.prompt.split()
    with pytest.raises(SettingError):
        Fact("colour", "snow", "white", "cultural_symbolism", "The colour of snow is", "{} the colour of snow")


def test_backbone_scorer_is_the_summed_log_likelihood_of_each_word(tiny_dirs):
    """On a tiny Gemma 3 language model: the batched, left-padded scores equal each word scored alone."""
    from slq.backbone import Backbone

    backbone = Backbone.load(tiny_dirs["gemma3_text"])
    tok = backbone.tokenizer
    prompt, words = "The colour of a lemon is", CHOICES["colour"]
    scores = backbone_scorer(backbone)(prompt, words)
    for word, got in zip(words, scores):
        head = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
        tail = tok(" " + word, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(backbone.model(torch.tensor([head + tail])).logits[0].float(), -1)
        expected = sum(float(logp[len(head) + i - 1, t]) for i, t in enumerate(tail))
        assert got == pytest.approx(expected, abs=1e-4)
    table = probe_facts(backbone_scorer(backbone), FACTS[:5])
    assert table == probe_facts(backbone_scorer(backbone), FACTS[:5])  # deterministic
    assert set(probe_priors(backbone_scorer(backbone))) == set(CHOICES)


@pytest.fixture(scope="module")
def world_test(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    return load_jsonl(write_world(folder, n_train=1, n_val=1, n_test=40, progress=False)["test"]).records


def test_rows_name_one_object_through_a_kept_fact(world_test):
    table = probe_facts(fake_scorer({f.prompt: f.answer for f in FACTS}), FACTS)  # every fact kept
    facts = kept_facts(table)
    build = real_rows(world_test, facts)
    assert build.records and len(build.records) + build.unrewritten == len(world_test)
    by_subject = {f.subject: f for f in facts}
    for row in build.records:
        meta, caption = row.meta, row.captions[0]
        fact = by_subject[meta["fact"]["subject"]]
        rewrite = Rewrite(**meta["rewrites"][0])
        assert rewrite.span == meta["source_caption"] and rewrite.neutral == meta["control_caption"]
        assert caption == rewrite.replacement and meta["category"] == fact.category
        noun = rewrite.neutral.removeprefix("some ") if fact.kind == "count" else rewrite.neutral
        assert caption == fact.clue.format(noun)
        colour, shape = rewrite.span.split()[-2], rewrite.span.split()[-1].removesuffix("s")
        count = sum(o["colour"] == colour and o["shape"] == shape for o in meta["objects"])
        assert count >= 1 and (fact.kind != "count" or NUMBER_WORDS[count] == fact.answer)
        assert {"colour": colour, "shape": shape, "count": NUMBER_WORDS[count]}[fact.kind] == fact.answer
        candidate = Candidate(caption, fact.category, (rewrite,), (fact.answer,))
        assert validate(rewrite.span, candidate, SHAPES_ATTRIBUTES) is None
    again = real_rows(world_test, facts)
    assert [r.captions for r in again.records] == [r.captions for r in build.records]
    # a count through a fact ("as many as the wheels on a bicycle") states no number: the validator,
    # which reads counts only as numerals and arithmetic, turns it away and counts why
    rejected = {reason for c in build.rejected.values() for reason in c}
    assert rejected <= {"changed_count"}


def test_rows_use_only_kept_facts(world_test):
    lemon = next(f for f in FACTS if f.subject == "a lemon")
    wrong = {f.prompt: next(w for w in CHOICES[f.kind] if w != f.answer) for f in FACTS}
    table = probe_facts(fake_scorer({**wrong, lemon.prompt: "yellow"}), FACTS)
    build = real_rows(world_test, kept_facts(table))
    assert build.records and {r.meta["fact"]["subject"] for r in build.records} == {"a lemon"}
    assert all(r.captions[0].endswith("the colour of a lemon") for r in build.records)
    assert build.unrewritten == sum(all(o["colour"] != "yellow" for o in r.meta["objects"]) for r in world_test)


def digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "categories.png"}  # a plot: matplotlib's


def test_shipped_karr_real_rebuilds_from_its_probe_table_without_the_lm(tmp_path):
    """The shipped rows are a pure function of build.json's probe table, world and seed."""
    summary = json.loads((KARR_REAL / "build.json").read_text())
    assert summary["world"] == KARR_REAL_WORLD and summary["probe"]["facts"]
    rebuild_real_karr(KARR_REAL / "build.json", tmp_path / "k", progress=False)
    assert digest(tmp_path / "k") == digest(KARR_REAL)
    kept = {f.subject for f in kept_facts(summary["probe"]["facts"])}
    rows = load_jsonl(KARR_REAL / "karr.jsonl").records
    assert rows and {r.meta["fact"]["subject"] for r in rows} <= kept
    assert summary["pairs"] == len(rows)
    assert len(control_dataset(load_jsonl(KARR_REAL / "karr.jsonl"))) == len(rows)  # as `slq karr-bench` scores it


def test_cli_karr_real_on_a_tiny_lm(tiny_dirs, tmp_path):
    done = slq("karr", "real", "--backbone", tiny_dirs["gemma3_text"], "--out", tmp_path / "k", "--n-test", "12")
    summary = json.loads((tmp_path / "k" / "build.json").read_text())
    assert len(summary["probe"]["facts"]) == len(FACTS) and summary["world"] == {"seed": 0, "n_test": 12}
    assert "probe: colour facts kept" in done.stdout
    assert summary["pairs"] == len(load_jsonl(tmp_path / "k" / "karr.jsonl").records)


def test_cli_karr_real_without_gemma_says_how_to_install(tmp_path, monkeypatch):
    import slq.recipes.evidence as evidence
    from slq.cli import main
    from slq.errors import SLQError

    def missing(*args, **kwargs):
        raise SLQError('the evidence experiment needs Gemma 3 270M: pip install -e ".[evidence]"')

    monkeypatch.setattr(evidence, "gemma_backbone", missing)
    assert main(["karr", "real", "--out", str(tmp_path / "k")]) == 2
    assert not (tmp_path / "k").exists()

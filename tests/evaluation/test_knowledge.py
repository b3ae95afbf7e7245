"""The knowledge probe: its questions are the world's facts, its scoring on hand-made answers, and its
report on a tiny model."""

import pytest

from slq.data.shapes import knowledge_corpus
from slq.evaluation.knowledge import FORMS, Probe, correct, format_knowledge, probe_knowledge, world_probes


def test_recall_probes_are_corpus_facts_and_cover_the_categories():
    corpus = set(knowledge_corpus(0))
    probes = world_probes()
    for p in probes:
        if p.form == "recall":
            assert any(f"{p.prompt} {answer}" in corpus or any(f.startswith(f"{p.prompt} {answer} ") for f in corpus)
                       for answer in p.answers), p
    assert {p.category for p in probes} == {"cultural_symbolism", "encyclopedic", "functional",
                                            "logical_mathematical", "contextual_spatial"}
    assert {p.form for p in probes} == set(FORMS)
    links = [p for p in probes if p.form == "link"]
    assert links and all(len(p.objects) == 1 and p.answers in (("yes",), ("no",)) for p in links)
    assert sum(p.answers == ("yes",) for p in links) == sum(p.answers == ("no",) for p in links)


@pytest.mark.parametrize("answer, ok", [("yellow", True), ("Yellow.", True), ("yellow is", True),
                                        ("a yellow", False), ("", False), ("red", False)])
def test_an_answer_counts_by_its_first_word(answer, ok):
    assert correct(answer, ("yellow",)) is ok


def test_probe_reports_accuracy_per_category_and_form(backbones):
    probes = [Probe("cultural_symbolism", "recall", "the colour of a banana is", ("yellow",)),
              Probe("cultural_symbolism", "question", "what colour is a banana?", ("yellow",)),
              world_probes()[-1]]
    result = probe_knowledge(backbones["qwen2_vl"], probes, max_new_tokens=2)
    assert result["n_probes"] == 3 and set(result["accuracy"]["cultural_symbolism"]) == set(FORMS)
    assert all(0 <= v <= 1 for v in result["by_form"].values())
    assert [a["prompt"] for a in result["answers"]] == [p.prompt for p in probes]
    assert "cultural_symbolism" in format_knowledge(result)

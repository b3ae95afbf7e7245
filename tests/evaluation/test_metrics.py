"""Recall@K: hand-computed cases, both tie rules, validation, and the chunked path."""

import itertools

import numpy as np
import pytest
import torch

from slq.errors import SettingError
from slq.evaluation import metrics
from slq.evaluation.metrics import format_recall_table, recall_at_k


def test_perfect_diagonal_is_all_ones():
    sim = np.eye(4) + 0.1  # each text scores 1.1 with its own image, 0.1 with the others
    report = recall_at_k(sim, [0, 1, 2, 3])
    assert report["t2i"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    assert report["i2t"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    assert report["n_images"] == 4 and report["n_texts"] == 4


def test_t2i_half_right_at_1():
    # Text 0 -> image 0 is ranked first (0.9 > 0.1): hit.
    # Text 1 -> image 1 scores 0.2 < 0.8 for image 0: rank 1, a miss at k=1, a hit at k=2.
    sim = np.array([[0.9, 0.1], [0.8, 0.2]])
    report = recall_at_k(sim, [0, 1], ks=(1, 2))
    assert report["t2i"] == {"R@1": 0.5, "R@2": 1.0}
    # Image 0: its text 0 scores 0.9, the negative text 1 scores 0.8 -> rank 0, hit.
    # Image 1: its text 1 scores 0.2, the negative text 0 scores 0.1 -> rank 0, hit.
    assert report["i2t"] == {"R@1": 1.0, "R@2": 1.0}


def test_i2t_hit_through_second_caption():
    # Image 0 has texts 0 and 1, image 1 has texts 2 and 3 (column = image).
    sim = np.array(
        [
            [0.1, 0.5],  # text 0 (of image 0) is bad
            [0.9, 0.0],  # text 1 (of image 0) is the best text for image 0
            [0.3, 0.4],  # text 2 (of image 1)
            [0.8, 0.6],  # text 3 (of image 1) prefers image 0
        ]
    )
    report = recall_at_k(sim, [0, 0, 1, 1], ks=(1, 2))
    # i2t image 0: best positive 0.9 (text 1); negatives 0.3, 0.8 are lower -> rank 0, hit. The
    # worse positive text 0 (0.1) must not count against it.
    # i2t image 1: best positive 0.6 (text 3); negatives 0.5, 0.0 -> rank 0, hit.
    assert report["i2t"] == {"R@1": 1.0, "R@2": 1.0}
    # t2i: text 0 misses (0.1 < 0.5), text 1 hits, text 2 hits (0.4 > 0.3), text 3 misses at 1.
    assert report["t2i"] == {"R@1": 0.5, "R@2": 1.0}


def test_i2t_second_caption_alone_is_the_hit():
    # Image 0's only retrieved text is its SECOND caption; its first is ranked below a negative.
    sim = np.array([[0.2, 0.0], [0.9, 0.0], [0.5, 1.0]])
    report = recall_at_k(sim, [0, 0, 1], ks=(1,))
    # Image 0: positives score 0.2 and 0.9; negative text 2 scores 0.5 -> best positive 0.9 wins.
    assert report["i2t"]["R@1"] == 1.0
    # Without the second caption the first (0.2 < 0.5) would miss.
    alone = recall_at_k(sim[[0, 2]], [0, 1], ks=(1,))
    assert alone["i2t"]["R@1"] == 0.5


def test_all_equal_scores_get_zero_recall_under_strict_ties():
    # A collapsed model: every score equal. Strict ties -> every query ties with every
    # negative, rank = number of negatives (3 images - 1 = 2; 6 texts - 2 = 4).
    sim = np.full((6, 3), 0.7)
    report = recall_at_k(sim, [0, 0, 1, 1, 2, 2], ks=(1, 2, 3, 5), ties="strict")
    assert report["t2i"] == {"R@1": 0.0, "R@2": 0.0, "R@3": 1.0, "R@5": 1.0}
    assert report["i2t"] == {"R@1": 0.0, "R@2": 0.0, "R@3": 0.0, "R@5": 1.0}


def test_tie_between_positive_and_negative_at_top():
    # Text 0: its image 0 ties with image 1 at 0.5 (top); image 2 lower. Strict: rank 1 -> miss@1,
    # hit@2. Average: first of the two tied half the time -> hit@1 = 1/2.
    sim = np.array([[0.5, 0.5, 0.1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    report = recall_at_k(sim, [0, 1, 2], ks=(1, 2), ties="strict")
    assert report["t2i"] == {"R@1": pytest.approx(2 / 3), "R@2": 1.0}
    assert recall_at_k(sim, [0, 1, 2], ks=(1, 2))["t2i"] == {"R@1": pytest.approx((0.5 + 2) / 3), "R@2": 1.0}
    # i2t image 0: positive text 0 at 0.5, negatives 0.0, 0.0 -> hit. Image 1: positive text 1 at
    # 1.0, negative text 0 at 0.5 -> hit. Image 2: hit.
    assert report["i2t"] == {"R@1": 1.0, "R@2": 1.0}


def test_i2t_tie_with_negative_text_is_a_miss_at_1():
    sim = np.array([[0.5, 0.0], [0.5, 0.9]])  # image 0: its text 0 ties with text 1 (of image 1)
    report = recall_at_k(sim, [0, 1], ks=(1, 2), ties="strict")
    assert report["i2t"] == {"R@1": 0.5, "R@2": 1.0}
    # Average: image 0 hits@1 half the time, image 1 always.
    assert recall_at_k(sim, [0, 1], ks=(1, 2))["i2t"] == {"R@1": 0.75, "R@2": 1.0}


def test_average_ties_text_tied_with_three_negatives():
    # 6 images. Text 0 ties its image 0 with images 1, 2, 3 at 0.5; images 4, 5 score lower: a random
    # order of the 4 tied puts the positive first 1/4 of the time, in the top 2 half the time, and
    # always in the top 4. Texts 1-5 rank their own image first.
    sim = np.eye(6)
    sim[0, :4] = 0.5
    report = recall_at_k(sim, np.arange(6), ks=(1, 2, 4, 5))
    assert report["t2i"] == {"R@1": pytest.approx((1 / 4 + 5) / 6), "R@2": pytest.approx((1 / 2 + 5) / 6),
                             "R@4": 1.0, "R@5": 1.0}
    assert report["ties"] == "average"
    strict = recall_at_k(sim, np.arange(6), ks=(1, 2, 4, 5), ties="strict")
    assert strict["t2i"] == {"R@1": pytest.approx(5 / 6), "R@2": pytest.approx(5 / 6), "R@4": 1.0, "R@5": 1.0}
    # One negative strictly above the tie (image 4 at 0.9): hit@1 is impossible, hit@k = (k - 1) / 4.
    sim[0, 4] = 0.9
    report = recall_at_k(sim, np.arange(6), ks=(1, 2, 3, 5))
    assert report["t2i"] == {"R@1": pytest.approx(5 / 6), "R@2": pytest.approx((1 / 4 + 5) / 6),
                             "R@3": pytest.approx((2 / 4 + 5) / 6), "R@5": 1.0}


@pytest.mark.parametrize("n_images, captions", [(3, 2), (25, 1), (25, 5)])
def test_collapsed_model_scores_chance_for_t2i(n_images, captions):
    sim = np.full((n_images * captions, n_images), 0.3, dtype=np.float32)
    ks = (1, 2, 3, 5, 10)
    report = recall_at_k(sim, np.repeat(np.arange(n_images), captions), ks=ks)
    assert report["t2i"] == {f"R@{k}": pytest.approx(min(k, n_images) / n_images, rel=1e-12) for k in ks}


def test_collapsed_model_i2t_with_two_tied_captions():
    # Each image: its 2 captions and the 4 others all tie. The first positive of a random order of 6
    # items with 2 positives is past place m with probability C(6 - m, 2) / C(6, 2).
    sim = np.full((6, 3), 0.7)
    report = recall_at_k(sim, [0, 0, 1, 1, 2, 2], ks=(1, 2, 3, 5))
    assert report["i2t"] == {"R@1": pytest.approx(1 - 10 / 15), "R@2": pytest.approx(1 - 6 / 15),
                             "R@3": pytest.approx(1 - 3 / 15), "R@5": 1.0}
    assert report["t2i"] == {"R@1": pytest.approx(1 / 3), "R@2": pytest.approx(2 / 3), "R@3": 1.0, "R@5": 1.0}


def test_i2t_two_tied_positives_behind_a_negative():
    # Image 0's captions (texts 0, 1) both score 0.5; text 2 (image 1) scores 0.9 above them, texts 3
    # and 4 (images 1, 2) tie at 0.5. g=1, e=2, p=2: P(X >= 1) = 2/4, P(X >= 2) = 2/4 * 1/3.
    sim = np.zeros((5, 3))
    sim[:, 0] = [0.5, 0.5, 0.9, 0.5, 0.5]
    sim[2:, 1:] = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # images 1 and 2 rank a caption of theirs first
    report = recall_at_k(sim, [0, 0, 1, 1, 2], ks=(1, 2, 3, 4))
    assert report["i2t"] == {"R@1": pytest.approx(2 / 3), "R@2": pytest.approx((1 / 2 + 2) / 3),
                             "R@3": pytest.approx((5 / 6 + 2) / 3), "R@4": 1.0}
    strict = recall_at_k(sim, [0, 0, 1, 1, 2], ks=(1, 2, 3, 4), ties="strict")
    assert strict["i2t"] == {"R@1": pytest.approx(2 / 3), "R@2": pytest.approx(2 / 3),
                             "R@3": pytest.approx(2 / 3), "R@4": 1.0}


def _random_tie_breaking(sim: np.ndarray, t2i: np.ndarray, ks) -> dict:
    """Reference for ties="average": hit@k averaged over every order of the candidates used to break
    ties (all permutations), queries ranked by score, then by that order."""

    def mean_hit(scores, positives, k):
        hits = []
        for order in itertools.permutations(range(len(scores))):
            ranked = sorted(range(len(scores)), key=lambda c: (-scores[c], order[c]))
            hits.append(any(c in positives for c in ranked[:k]))
        return np.mean(hits)

    n_texts, n_images = sim.shape
    texts_of = [{t for t in range(n_texts) if t2i[t] == i} for i in range(n_images)]
    return {
        "t2i": {f"R@{k}": np.mean([mean_hit(sim[t], {t2i[t]}, k) for t in range(n_texts)]) for k in ks},
        "i2t": {f"R@{k}": np.mean([mean_hit(sim[:, i], texts_of[i], k) for i in range(n_images)]) for k in ks},
    }


@pytest.mark.parametrize("seed", range(4))
def test_average_ties_match_random_tie_breaking(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n_images = int(rng.integers(2, 5))
    t2i = np.concatenate([np.arange(n_images), rng.integers(0, n_images, size=6 - n_images)])
    rng.shuffle(t2i)
    sim = rng.integers(0, 3, size=(6, n_images)).astype(np.float64)  # 3 values: ties everywhere
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 5)  # several chunks
    ks = (1, 2, 3, 5)
    report, expected = recall_at_k(sim, t2i, ks=ks), _random_tie_breaking(sim, t2i, ks)
    for direction in ("t2i", "i2t"):
        assert report[direction] == {k: pytest.approx(v, abs=1e-12) for k, v in expected[direction].items()}


def test_unknown_tie_rule_is_refused():
    with pytest.raises(SettingError, match="ties optimistic: must be one of average, strict"):
        recall_at_k(np.eye(2), [0, 1], ties="optimistic")


def test_k_larger_than_number_of_images():
    # 2 images: the worst possible rank is 1, so any k >= 2 is a hit for every query.
    sim = np.array([[0.0, 1.0], [1.0, 0.0]])  # both texts prefer the wrong image
    report = recall_at_k(sim, [0, 1], ks=(1, 10, 100))
    assert report["t2i"] == {"R@1": 0.0, "R@10": 1.0, "R@100": 1.0}
    assert report["i2t"] == {"R@1": 0.0, "R@10": 1.0, "R@100": 1.0}


def test_accepts_torch_bfloat16():
    sim = torch.eye(3, dtype=torch.bfloat16)
    assert recall_at_k(sim, torch.tensor([0, 1, 2]))["t2i"]["R@1"] == 1.0


@pytest.mark.parametrize(
    "sim, t2i, ks, match",
    [
        (np.zeros(3), [0, 1, 2], (1,), "2-D"),
        (np.zeros((0, 2)), [], (1,), "non-empty"),
        (np.zeros((3, 2)), [0, 1], (1,), "one entry per text"),
        (np.zeros((2, 2)), [0, 2], (1,), r"in \[0, 2\)"),
        (np.zeros((2, 2)), [0, -1], (1,), r"in \[0, 2\)"),
        (np.zeros((2, 2)), [0.0, 1.0], (1,), "integers"),
        (np.zeros((2, 2)), [0, 0], (1,), "no text"),
        (np.zeros((2, 2)), [0, 1], (0,), "positive integers"),
        (np.zeros((2, 2)), [0, 1], (), "positive integers"),
        (np.array([[0.0, np.nan], [0.0, 1.0]]), [0, 1], (1,), "NaN"),
        (np.array([["a", "b"], ["c", "d"]]), [0, 1], (1,), "real numbers"),
    ],
)
def test_invalid_inputs_raise_value_error(sim, t2i, ks, match):
    with pytest.raises(ValueError, match=match):
        recall_at_k(sim, t2i, ks=ks)


def _naive(sim: np.ndarray, t2i: np.ndarray, ks) -> dict:
    """Reference for ties="strict": the definition written as double loops."""
    n_texts, n_images = sim.shape
    t_hits = {k: 0 for k in ks}
    for t in range(n_texts):
        rank = sum(1 for i in range(n_images) if i != t2i[t] and sim[t, i] >= sim[t, t2i[t]])
        for k in ks:
            t_hits[k] += rank < k
    i_hits = {k: 0 for k in ks}
    for i in range(n_images):
        best = max(sim[t, i] for t in range(n_texts) if t2i[t] == i)
        rank = sum(1 for t in range(n_texts) if t2i[t] != i and sim[t, i] >= best)
        for k in ks:
            i_hits[k] += rank < k
    return {
        "t2i": {f"R@{k}": t_hits[k] / n_texts for k in ks},
        "i2t": {f"R@{k}": i_hits[k] / n_images for k in ks},
        "n_images": n_images,
        "n_texts": n_texts,
        "ties": "strict",
    }


@pytest.mark.parametrize("seed", range(4))
def test_chunked_matches_naive_reference(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n_images = int(rng.integers(2, 12))
    extra = rng.integers(0, n_images, size=int(rng.integers(0, 20)))  # images with several texts
    t2i = np.concatenate([np.arange(n_images), extra])
    rng.shuffle(t2i)
    # Rounded scores so ties between positives and negatives really happen.
    sim = np.round(rng.normal(size=(len(t2i), n_images)), 1)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 7)  # force many small, uneven chunks
    ks = (1, 2, 3, 5)
    assert recall_at_k(sim, t2i, ks=ks, ties="strict") == _naive(sim, t2i, ks)


def test_large_matrix_runs_fast_in_float32():
    rng = np.random.default_rng(0)
    t2i = np.repeat(np.arange(500), 5)
    sim = rng.random((2500, 500), dtype=np.float32)
    sim[np.arange(2500), t2i] += 1.0  # every positive is on top
    report = recall_at_k(sim, t2i)
    assert report["t2i"]["R@1"] == 1.0 and report["i2t"]["R@1"] == 1.0


def test_format_recall_table():
    report = {
        "t2i": {"R@1": 0.5234, "R@5": 0.8, "R@10": 1.0},
        "i2t": {"R@1": 0.0, "R@5": 0.25, "R@10": 0.99949},
        "n_images": 4,
        "n_texts": 20,
    }
    table = format_recall_table(report, title="coco test")
    lines = table.splitlines()
    assert lines[0] == "coco test"
    assert lines[1].split() == ["R@1", "R@5", "R@10"]
    assert lines[2].split() == ["t2i", "52.3", "80.0", "100.0"]
    assert lines[3].split() == ["i2t", "0.0", "25.0", "99.9"]
    assert lines[4] == "n_images=4 n_texts=20"
    assert len({len(line) for line in lines[1:4]}) == 1, "columns must line up"
    assert format_recall_table(report).splitlines()[0].split() == ["R@1", "R@5", "R@10"]
    assert format_recall_table({**report, "ties": "strict"}).splitlines()[-1] == "n_images=4 n_texts=20 ties=strict"


def test_recall_by_group_hand_made():
    # Images 0, 1 in "a", image 2 in "b"; one text each. Text 0 ranks its image first; text 1 ranks
    # image 2 above its own; text 2 ranks its own first.
    sim = np.array([[0.9, 0.1, 0.0], [0.1, 0.5, 0.8], [0.0, 0.1, 0.9]])
    groups = metrics.recall_by_group(sim, [0, 1, 2], ["a", "a", "b"], ks=(1, 2))
    assert list(groups) == ["a", "b"]
    assert groups["a"]["t2i"] == {"R@1": 0.5, "R@2": 1.0}  # each query still ranked against all 3 images
    assert groups["b"]["t2i"] == {"R@1": 1.0, "R@2": 1.0}
    # image 1: column [0.1, 0.5, 0.1], its own text first; image 0 likewise
    assert groups["a"]["i2t"] == {"R@1": 1.0, "R@2": 1.0}
    # image 2: its text scores 0.9, text 1 scores 0.8 -> first
    assert groups["b"]["n_images"] == 1 and groups["a"]["n_texts"] == 2
    whole = recall_at_k(sim, [0, 1, 2], ks=(1, 2))
    assert whole["t2i"]["R@1"] == pytest.approx((2 * 0.5 + 1 * 1.0) / 3)  # groups average back to the whole
    with pytest.raises(ValueError, match="one group per image"):
        metrics.recall_by_group(sim, [0, 1, 2], ["a", "b"])


def test_recall_table_prints_categories():
    sim = np.eye(3)
    report = recall_at_k(sim, [0, 1, 2])
    report["by_category"] = metrics.recall_by_group(sim, [0, 1, 2], ["encyclopedic", "encyclopedic", "functional"])
    table = format_recall_table(report)
    assert "encyclopedic" in table and "functional" in table and "100.0" in table

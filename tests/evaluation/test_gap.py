"""The modality gap: the centroid distance on hand-made embeddings, and its plot."""

from __future__ import annotations

import numpy as np
import pytest

from slq.evaluation.gap import modality_gap, plot_gaps


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_two_separate_clouds_have_their_centroids_distance():
    """Texts around +e0, images around -e0: the gap is the distance of the centroids, near 2."""
    rng = np.random.default_rng(0)
    texts = _unit(np.eye(8)[0] + 0.05 * rng.standard_normal((50, 8)))
    images = _unit(-np.eye(8)[0] + 0.05 * rng.standard_normal((40, 8)))
    gap = modality_gap(texts, images)
    expected = np.linalg.norm(texts.mean(0) - images.mean(0))
    assert gap["centroid_distance"] == pytest.approx(expected) and gap["centroid_distance"] > 1.9
    assert gap["centroid_cosine"] == pytest.approx(-1, abs=0.01)
    spread = np.concatenate([np.linalg.norm(texts - texts.mean(0), axis=1), np.linalg.norm(images - images.mean(0),
                                                                                           axis=1)]).mean()
    assert gap["spread"] == pytest.approx(spread) and gap["spread"] < 0.2  # tight clouds, far apart
    pca = gap["pca"]
    assert np.asarray(pca["texts"]).shape == (50, 2) and np.asarray(pca["targets"]).shape == (40, 2)
    first = np.asarray(pca["texts"])[:, 0], np.asarray(pca["targets"])[:, 0]
    assert first[0].min() > first[1].max() or first[0].max() < first[1].min(), "PC1 separates the clouds"
    assert pca["explained_variance"][0] > 0.9


def test_one_cloud_has_no_gap():
    rng = np.random.default_rng(1)
    cloud = _unit(rng.standard_normal((400, 16)))
    gap = modality_gap(cloud[:200], cloud[200:])
    assert gap["centroid_distance"] < 0.15  # two samples of one distribution: only sampling noise


def test_plotted_points_are_kept_evenly_and_bounded():
    rng = np.random.default_rng(2)
    gap = modality_gap(_unit(rng.standard_normal((1000, 4))), _unit(rng.standard_normal((7, 4))), points=100)
    assert len(gap["pca"]["texts"]) == 100 and len(gap["pca"]["targets"]) == 7


def test_identical_embeddings_give_zero_gap_and_no_nan():
    same = np.tile(_unit(np.ones((1, 4))), (5, 1))
    gap = modality_gap(same, same)
    assert gap["centroid_distance"] == 0 and gap["pca"]["explained_variance"] == [0.0, 0.0]


def test_the_plot_is_a_png_with_a_panel_per_method(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(3)
    gaps = {name: modality_gap(_unit(rng.standard_normal((30, 8)) + shift), _unit(rng.standard_normal((30, 8))))
            for name, shift in (("zero_shot", 3.0), ("slq", 0.0))}
    path = plot_gaps(gaps, tmp_path / "sub" / "gap.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    width, height = Image.open(path).size
    assert width > 1.5 * height, "two panels side by side"

"""Tests of ``pyro_dwp.diagnostics.calibration`` against hand-computed and brute-force values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pyro_dwp.diagnostics.calibration import (
    auroc,
    expected_calibration_error,
    plot_reliability_diagram,
    predictive_entropy,
    reliability_curve,
)

# Five two-class predictions; with 5 bins ((0, .2], ..., (.8, 1]) the confidences fall into
# bin 2 (.55, right), bin 3 (.7 wrong, .7 right) and bin 4 (.9 right, .95 wrong).
PROBS = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.55, 0.45], [0.95, 0.05]])
LABELS = torch.tensor([0, 1, 1, 0, 1])
# ECE = 1/5 |1 - .55| + 2/5 |.5 - .7| + 2/5 |.5 - .925| = .09 + .08 + .17
ECE_5_BINS = 0.34


def test_predictive_entropy_by_hand() -> None:
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    entropy = predictive_entropy(probs)
    assert entropy.shape == (3,)
    assert entropy.tolist() == pytest.approx([math.log(4), 0.0, math.log(2)])


def test_ece_by_hand() -> None:
    assert expected_calibration_error(PROBS, LABELS, n_bins=5) == pytest.approx(ECE_5_BINS)
    # One bin: |mean accuracy - mean confidence| = |3/5 - 3.8/5|.
    assert expected_calibration_error(PROBS, LABELS, n_bins=1) == pytest.approx(0.16)


def test_ece_is_zero_when_calibrated() -> None:
    probs = torch.tensor([[0.75, 0.25]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_reliability_curve_by_hand() -> None:
    curve = reliability_curve(PROBS, LABELS, n_bins=5)
    assert set(curve) == {"bin_centers", "accuracy", "confidence", "counts"}
    np.testing.assert_allclose(curve["bin_centers"], [0.1, 0.3, 0.5, 0.7, 0.9])
    np.testing.assert_array_equal(curve["counts"], [0, 0, 1, 2, 2])
    assert curve["counts"].dtype == np.int64
    np.testing.assert_allclose(curve["accuracy"], [np.nan, np.nan, 1.0, 0.5, 0.5])
    np.testing.assert_allclose(curve["confidence"], [np.nan, np.nan, 0.55, 0.7, 0.925], rtol=1e-6)


def test_bins_are_closed_on_the_right() -> None:
    probs = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    curve = reliability_curve(probs, torch.tensor([0, 0]), n_bins=2)
    np.testing.assert_array_equal(curve["counts"], [1, 1])


def test_auroc_by_hand_with_ties() -> None:
    # Pairs: .4 vs (.1, .4, .5) -> 1 + 1/2 + 0; .6 vs all -> 3; total 4.5 of 6.
    negative = torch.tensor([0.1, 0.4, 0.5])
    positive = torch.tensor([0.4, 0.6])
    assert auroc(negative, positive) == pytest.approx(0.75)


def test_auroc_extremes() -> None:
    low, high = torch.tensor([0.0, 0.1, 0.2]), torch.tensor([0.3, 0.9])
    assert auroc(low, high) == 1.0
    assert auroc(high, low) == 0.0
    assert auroc(torch.ones(4), torch.ones(7)) == 0.5


def test_auroc_matches_pairwise_count() -> None:
    generator = torch.Generator().manual_seed(0)
    negative = torch.randint(0, 6, (57,), generator=generator).double()
    positive = torch.randint(1, 8, (41,), generator=generator).double()
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    expected = (greater + 0.5 * ties).item() / (57 * 41)
    assert auroc(negative, positive) == pytest.approx(expected, abs=1e-12)


def test_plot_reliability_diagram(tmp_path) -> None:
    ax = plot_reliability_diagram(PROBS, LABELS, n_bins=5)
    assert ax.get_title() == f"ECE = {ECE_5_BINS:.3f}"
    assert len(ax.patches) == 2 * 3  # accuracy and gap bars of the 3 non-empty bins
    ax.figure.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 0
    own_ax = Figure().add_subplot()
    assert plot_reliability_diagram(PROBS, LABELS, ax=own_ax) is own_ax


@pytest.mark.parametrize(
    ("probs", "labels", "n_bins", "match"),
    [
        (torch.tensor([0.2, 0.8]), torch.tensor([1]), 5, r"shape \(N, C\)"),
        (torch.tensor([[0.2, 0.7]]), torch.tensor([1]), 5, "sum to 1"),
        (torch.tensor([[2.0, -1.0]]), torch.tensor([1]), 5, r"probabilities in \[0, 1\]"),
        (torch.tensor([[float("nan"), 1.0]]), torch.tensor([1]), 5, r"probabilities in \[0, 1\]"),
        (torch.tensor([[1, 0]]), torch.tensor([1]), 5, "floating-point"),
        (PROBS, LABELS[:4], 5, r"labels must have shape \(N,\) = \(5,\)"),
        (PROBS, LABELS.float(), 5, "integer tensor"),
        (PROBS, LABELS + 1, 5, r"labels must lie in 0\.\.1"),
        (PROBS, LABELS, 0, "n_bins must be an integer >= 1"),
        (PROBS, LABELS, 2.5, "n_bins must be an integer >= 1"),
    ],
)
def test_calibration_input_errors(probs, labels, n_bins, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, labels, n_bins=n_bins)


def test_type_and_entropy_errors() -> None:
    with pytest.raises(TypeError, match="probs must be a torch.Tensor, got list"):
        predictive_entropy([[0.5, 0.5]])
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        reliability_curve(PROBS, [0, 1, 1, 0, 1])
    with pytest.raises(ValueError, match="sum to 1"):
        predictive_entropy(torch.tensor([[0.5, 0.6]]))


@pytest.mark.parametrize(
    ("negative", "positive", "error", "match"),
    [
        (torch.tensor([]), torch.tensor([1.0]), ValueError, "scores_negative must be a non-empty"),
        (
            torch.tensor([1.0]),
            torch.ones(2, 2),
            ValueError,
            "scores_positive must be a non-empty 1-D",
        ),
        (
            torch.tensor([float("nan")]),
            torch.tensor([1.0]),
            ValueError,
            "scores_negative contains NaN",
        ),
        (np.array([1.0]), torch.tensor([1.0]), TypeError, "scores_negative must be a torch.Tensor"),
    ],
)
def test_auroc_errors(negative, positive, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        auroc(negative, positive)

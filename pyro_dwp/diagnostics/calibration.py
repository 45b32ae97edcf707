"""Calibration and out-of-distribution diagnostics of a classifier's predictive probabilities.

Confidence bins follow Guo et al. (2017), "On Calibration of Modern Neural Networks": ``n_bins``
equal-width bins ``(k / n_bins, (k + 1) / n_bins]`` of the top-class probability.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "auroc",
    "expected_calibration_error",
    "plot_reliability_diagram",
    "predictive_entropy",
    "reliability_curve",
]

_SUM_ATOL = 1e-3


def predictive_entropy(probs: Tensor) -> Tensor:
    """Entropy ``-sum_c p_c log p_c`` (nats) of each predictive distribution, with ``0 log 0 = 0``.

    Args:
        probs: Class probabilities, shape ``(N, C)``, rows summing to 1.

    Returns:
        Entropies, shape ``(N,)``, same dtype and device as ``probs``.

    Raises:
        TypeError: If ``probs`` is not a tensor.
        ValueError: If ``probs`` is not a valid ``(N, C)`` array of probabilities.
    """
    _check_probs(probs)
    return -torch.special.xlogy(probs, probs).sum(dim=1)


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: ``sum_b (n_b / N) |accuracy_b - confidence_b|``.

    The bins are equal-width bins of the top-class probability on ``[0, 1]``; empty bins add 0.

    Args:
        probs: Class probabilities, shape ``(N, C)``, rows summing to 1.
        labels: True classes, integer tensor of shape ``(N,)`` with values in ``0..C-1``.
        n_bins: Number of confidence bins, >= 1.

    Returns:
        The ECE, in ``[0, 1]``.

    Raises:
        TypeError: If ``probs`` or ``labels`` is not a tensor.
        ValueError: On inconsistent shapes, invalid probabilities or labels, or ``n_bins < 1``.
    """
    counts, correct, confidence = _bin_sums(probs, labels, n_bins)
    return float(np.abs(correct - confidence).sum() / counts.sum())


def reliability_curve(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Accuracy against confidence per confidence bin, the data of a reliability diagram.

    Args:
        probs: Class probabilities, shape ``(N, C)``, rows summing to 1.
        labels: True classes, integer tensor of shape ``(N,)`` with values in ``0..C-1``.
        n_bins: Number of equal-width confidence bins, >= 1.

    Returns:
        A dict of arrays of shape ``(n_bins,)``: ``"bin_centers"``; ``"accuracy"`` and
        ``"confidence"``, the mean correctness and mean top-class probability of the examples
        in each bin (NaN for an empty bin); ``"counts"`` (int64), the examples per bin.

    Raises:
        TypeError: If ``probs`` or ``labels`` is not a tensor.
        ValueError: On inconsistent shapes, invalid probabilities or labels, or ``n_bins < 1``.
    """
    counts, correct, confidence = _bin_sums(probs, labels, n_bins)
    filled = counts > 0
    nan = np.full(n_bins, np.nan)
    return {
        "bin_centers": (np.arange(n_bins) + 0.5) / n_bins,
        "accuracy": np.divide(correct, counts, out=nan.copy(), where=filled),
        "confidence": np.divide(confidence, counts, out=nan.copy(), where=filled),
        "counts": counts.astype(np.int64),
    }


def auroc(scores_negative: Tensor, scores_positive: Tensor) -> float:
    """Area under the ROC curve for telling positives (e.g. out-of-distribution inputs) apart.

    This is the Mann-Whitney statistic ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2`` over all
    pairs, computed from mean ranks: higher scores (such as predictive entropy) are expected
    for the positives. 1 is perfect separation, 0.5 chance.

    Args:
        scores_negative: Scores of the negatives (in-distribution), shape ``(N_neg,)``.
        scores_positive: Scores of the positives (out-of-distribution), shape ``(N_pos,)``.

    Returns:
        The AUROC, in ``[0, 1]``.

    Raises:
        TypeError: If a score array is not a tensor.
        ValueError: If a score array is not 1-D, is empty, or contains NaN.
    """
    negative = _check_scores(scores_negative, "scores_negative")
    positive = _check_scores(scores_positive, "scores_positive")
    scores = torch.cat([negative, positive])
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    counts = counts.double()
    mean_rank = counts.cumsum(0) - (counts - 1) / 2  # 1-based mean rank of each distinct score
    n_neg, n_pos = len(negative), len(positive)
    u_statistic = mean_rank[inverse[n_neg:]].sum() - n_pos * (n_pos + 1) / 2
    return float(u_statistic / (n_pos * n_neg))


def plot_reliability_diagram(
    probs: Tensor, labels: Tensor, n_bins: int = 15, ax: Axes | None = None
) -> Axes:
    """Draw a reliability diagram: accuracy per confidence bin, against the diagonal.

    Bars show each non-empty bin's accuracy, shaded bars the gap to its mean confidence; the
    title gives the ECE. Works with any backend (Agg included) and never calls ``plt.show``.

    Args:
        probs: Class probabilities, shape ``(N, C)``, rows summing to 1.
        labels: True classes, integer tensor of shape ``(N,)``.
        n_bins: Number of equal-width confidence bins, >= 1.
        ax: Axes to draw into. If ``None``, a new figure is made that is not registered with
            ``pyplot``; reach it through ``ax.figure`` (e.g. ``ax.figure.savefig(path)``).

    Returns:
        The axes drawn into.

    Raises:
        TypeError: If ``probs`` or ``labels`` is not a tensor.
        ValueError: On inconsistent shapes, invalid probabilities or labels, or ``n_bins < 1``.
    """
    curve = reliability_curve(probs, labels, n_bins)
    filled = curve["counts"] > 0
    centers = curve["bin_centers"][filled]
    accuracy = curve["accuracy"][filled]
    gap = curve["confidence"][filled] - accuracy
    ece = expected_calibration_error(probs, labels, n_bins)
    if ax is None:
        ax = Figure(figsize=(4.5, 4.5)).add_subplot()
    width = 1.0 / n_bins
    ax.bar(centers, accuracy, width=width, color="tab:blue", edgecolor="black", label="accuracy")
    ax.bar(centers, gap, bottom=accuracy, width=width, color="tab:red", alpha=0.3, label="gap")
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="black", label="perfect calibration")
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), xlabel="confidence", ylabel="accuracy")
    ax.set_title(f"ECE = {ece:.3f}")
    ax.legend(loc="upper left")
    return ax


def _check_probs(probs: Tensor) -> None:
    if not isinstance(probs, Tensor):
        raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must have shape (N, C) with N, C >= 1, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating-point tensor, got {probs.dtype}")
    values = probs.detach()
    in_range = (values >= -_SUM_ATOL) & (values <= 1 + _SUM_ATOL)  # False for NaN
    if not in_range.all():
        raise ValueError("probs must be probabilities in [0, 1]; pass softmax outputs, not logits")
    deviation = (values.double().sum(dim=1) - 1).abs().max().item()
    if deviation > _SUM_ATOL:
        raise ValueError(
            f"each row of probs must sum to 1 within {_SUM_ATOL}, but one is off by {deviation:.3g}"
        )


def _check_scores(scores: Tensor, name: str) -> Tensor:
    """Validate a 1-D score tensor; return it as float64 on the CPU."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 1 or len(scores) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    values = scores.detach().to("cpu", torch.float64)
    if torch.isnan(values).any():
        raise ValueError(f"{name} contains NaN")
    return values


def _bin_sums(
    probs: Tensor, labels: Tensor, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate; return per-bin count, number correct and summed confidence, each ``(n_bins,)``."""
    _check_probs(probs)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    n, n_classes = probs.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape (N,) = ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if (labels < 0).any() or (labels >= n_classes).any():
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (C = {n_classes} classes)")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    confidence, prediction = probs.detach().to("cpu", torch.float64).max(dim=1)
    correct = (prediction == labels.cpu()).double()
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    bins = torch.bucketize(confidence, inner_edges)  # bin k holds (k / n_bins, (k + 1) / n_bins]
    counts = torch.bincount(bins, minlength=n_bins).double()
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    confidence_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    return counts.numpy(), correct_sum.numpy(), confidence_sum.numpy()

"""Diagnostics: ArviZ conversion, calibration and kernel statistics."""

from .calibration import (
    auroc,
    expected_calibration_error,
    plot_reliability_diagram,
    predictive_entropy,
    reliability_curve,
)
from .inference_data import to_inference_data
from .kernels import kernel_smoothness, kernel_stats

__all__ = [
    "auroc",
    "expected_calibration_error",
    "kernel_smoothness",
    "kernel_stats",
    "plot_reliability_diagram",
    "predictive_entropy",
    "reliability_curve",
    "to_inference_data",
]

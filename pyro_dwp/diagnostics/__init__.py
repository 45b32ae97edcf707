"""Diagnostics: ArviZ conversion and calibration."""

from .calibration import (
    auroc,
    expected_calibration_error,
    plot_reliability_diagram,
    predictive_entropy,
    reliability_curve,
)
from .inference_data import to_inference_data

__all__ = [
    "auroc",
    "expected_calibration_error",
    "plot_reliability_diagram",
    "predictive_entropy",
    "reliability_curve",
    "to_inference_data",
]

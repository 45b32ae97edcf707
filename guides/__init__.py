"""Guides (variational families) for the models of :mod:`pyro_dwp.models`."""

from .bbb import BBBNormal
from .initialization import init_to_module, init_to_prior_sample
from .log_variance import LogVarianceNormal
from .reverse import ReverseModelGuide

__all__ = [
    "BBBNormal",
    "LogVarianceNormal",
    "ReverseModelGuide",
    "init_to_module",
    "init_to_prior_sample",
]

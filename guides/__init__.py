"""Guides (variational families) for the models of :mod:`pyro_dwp.models`."""

from .bbb import BBBNormal
from .initialization import init_to_module, init_to_prior_sample
from .log_variance import LogVarianceNormal
from .point_mass import PointMass
from .reverse import ReverseModelGuide
from .reverse_chain import ReverseChainGuide

__all__ = [
    "BBBNormal",
    "LogVarianceNormal",
    "PointMass",
    "ReverseChainGuide",
    "ReverseModelGuide",
    "init_to_module",
    "init_to_prior_sample",
]

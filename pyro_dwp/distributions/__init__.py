"""Priors over network weights, as Pyro ``TorchDistribution`` s."""

from .deep_weight_prior import DeepWeightPrior
from .log_uniform import LogUniform
from .scale_mixture_normal import ScaleMixtureNormal

__all__ = ["DeepWeightPrior", "LogUniform", "ScaleMixtureNormal"]

"""Priors over network weights, as Pyro ``TorchDistribution`` s."""

from .deep_weight_prior import DeepWeightPrior
from .log_uniform import LogUniform
from .markov_chain_prior import MarkovChainPrior
from .scale_mixture_normal import ScaleMixtureNormal

__all__ = ["DeepWeightPrior", "LogUniform", "MarkovChainPrior", "ScaleMixtureNormal"]

"""pyro_dwp: Bayes by Backprop and the Deep Weight Prior on Pyro.

Build a Bayesian network from a ``torch.nn`` module with :class:`BNN`, pick priors from
:mod:`pyro_dwp.distributions`, a guide from :mod:`pyro_dwp.guides`, train with
:func:`pyro_dwp.infer.fit`, inspect with :mod:`pyro_dwp.diagnostics`, keep with :func:`save` /
:func:`load`.
"""

from pyro_dwp.bnn import BNN
from pyro_dwp.likelihoods import Categorical, Gaussian, Likelihood
from pyro_dwp.priors import Prior, SelectorPrior
from pyro_dwp.saving import load, save
from pyro_dwp.version import __version__ as __version__

__all__ = ["BNN", "Categorical", "Gaussian", "Likelihood", "Prior", "SelectorPrior", "load", "save"]

"""One registry of the experiments' priors: a :class:`PriorRecipe` per prior, by name.

Each entry says how to build the prior of one weight (or one kernel), which guide family and
ELBO train it in the DWP ConvNet, how tables and figures show it (display name, colour) and, for
Figure 2 of Atanov et al. (2019), the paper's test accuracies. The command-line choices
(``pyro-dwp regression --prior``, ``mnist --prior``, ``dwp-classify --priors``), the DWP model
recipe (:func:`~pyro_dwp.experiments.dwp_bnn.make_dwp_cnn_model`), the DWP pipeline's runs and
the plots all read it: a new prior in the experiments is one entry here, e.g.::

    PRIOR_RECIPES["laplace"] = PriorRecipe(
        label="laplace", colour="tab:purple", build=lambda s: dist.Laplace(0.0, s.sigma1),
        experiments=frozenset({"bbb", "dwp"}),
    )

The BBB experiments (regression, MNIST) and the DWP experiments call the same prior by the same
name: ``"normal"`` is :math:`\\mathcal{N}(0, \\sigma_1^2)` in both (the DWP ConvNet uses
:math:`\\sigma_1 = 1`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import pyro.distributions as dist
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.distributions import Distribution

from pyro_dwp.distributions import DeepWeightPrior, LogUniform, ScaleMixtureNormal

__all__ = [
    "PRIOR_RECIPES",
    "RENAMED_PRIORS",
    "Experiment",
    "GuideFamily",
    "PriorRecipe",
    "PriorSettings",
    "prior_names",
]

Experiment = Literal["bbb", "dwp"]
"""``"bbb"``: the Bayes-by-Backprop experiments (``regression``, ``mnist``); ``"dwp"``: the deep
weight prior's ConvNet (``dwp-classify``, ``dwp-gap``, ``dwp``)."""

GuideFamily = Literal["log-variance", "reverse", "log-uniform", "point-mass"]
"""The DWP ConvNet's guide for a prior: ``"log-variance"`` (``LogVarianceNormal``, ``mu`` and
``log sigma^2``), ``"reverse"`` (that guide plus reverse models over the codes of the deep weight
prior, ``ReverseModelGuide``), ``"log-uniform"`` (the log-uniform prior's own families),
``"point-mass"`` (``PointMass``: maximum a posteriori weights, a deterministic network)."""


@dataclass(frozen=True)
class PriorSettings:
    """What a recipe may read to build its prior.

    Attributes:
        sigma1: Scale of the normal prior, and of the scale mixture's wide component.
        sigma2: Scale of the scale mixture's narrow component.
        pi: Weight of the scale mixture's wide component.
        vae: The kernel VAE of the site (``KernelVAE``), for the deep weight prior.
    """

    sigma1: float = 1.0
    sigma2: float = math.exp(-6.0)
    pi: float = 0.5
    vae: nn.Module | None = None


@dataclass(frozen=True)
class PriorRecipe:
    """One prior of the experiments.

    Attributes:
        label: Its name in tables and figures.
        colour: Its matplotlib colour in figures.
        build: ``PriorSettings -> Distribution``: the prior of one weight (batch and event shape
            ``()``) or one kernel (event shape ``(k, k)``), expanded to each parameter by ``BNN``.
        experiments: The experiments that offer it (their command-line choices).
        elbo: The ELBO that trains it in the DWP ConvNet.
        guide: Its guide family in the DWP ConvNet (priors of different families other than
            ``"log-variance"`` with ``"reverse"`` cannot share a network).
        needs_vae: Whether ``build`` reads ``settings.vae`` (a kernel VAE per layer).
        paper: Test accuracy by training-set size N in Figure 2 of Atanov et al. (2019).
        default: Whether the experiments run it when no priors are named (``dwp-classify``'s
            default ``--priors``, the ``dwp`` pipeline's baselines).
    """

    label: str
    colour: str
    build: Callable[[PriorSettings], Distribution]
    experiments: frozenset[Experiment]
    elbo: type[ELBO] = Trace_ELBO
    guide: GuideFamily = "log-variance"
    needs_vae: bool = False
    paper: Mapping[int, float] = field(default_factory=dict)
    default: bool = True


def _deep_weight_prior(settings: PriorSettings) -> Distribution:
    if settings.vae is None:
        raise ValueError("the deep weight prior needs the kernel VAE of its layer")
    return DeepWeightPrior.from_vae(settings.vae)


def _normal(settings: PriorSettings) -> Distribution:
    return dist.Normal(0.0, settings.sigma1)


def _scale_mixture(settings: PriorSettings) -> Distribution:
    return ScaleMixtureNormal(settings.pi, settings.sigma1, settings.sigma2)


def _log_uniform(settings: PriorSettings) -> Distribution:
    return LogUniform()


PRIOR_RECIPES: dict[str, PriorRecipe] = {
    "dwp": PriorRecipe(
        label="dwp",
        colour="tab:red",
        build=_deep_weight_prior,
        experiments=frozenset({"dwp"}),
        guide="reverse",
        needs_vae=True,
        paper={50: 0.800, 100: 0.867, 200: 0.915, 500: 0.945, 1000: 0.961},
    ),
    "normal": PriorRecipe(
        label="normal",
        colour="tab:blue",
        build=_normal,
        experiments=frozenset({"bbb", "dwp"}),
        paper={50: 0.717, 100: 0.816, 200: 0.890, 500: 0.938, 1000: 0.959},
    ),
    "log-uniform": PriorRecipe(
        label="log-uniform",
        colour="tab:green",
        build=_log_uniform,
        experiments=frozenset({"dwp"}),
        elbo=TraceMeanField_ELBO,
        guide="log-uniform",
        paper={50: 0.766, 100: 0.839, 200: 0.894, 500: 0.938, 1000: 0.958},
    ),
    "deterministic-l2": PriorRecipe(
        label="deterministic + L2",
        colour="tab:gray",
        build=_normal,
        experiments=frozenset({"dwp"}),
        guide="point-mass",
        paper={50: 0.751, 100: 0.827, 200: 0.879, 500: 0.926, 1000: 0.954},
        default=False,
    ),
    "scale-mixture": PriorRecipe(
        label="scale-mixture",
        colour="tab:orange",
        build=_scale_mixture,
        experiments=frozenset({"bbb"}),
    ),
}
"""The priors by name, in the order of tables and figures."""

RENAMED_PRIORS = {"gaussian": "normal"}
"""Old prior names -> registry names, for the settings of runs recorded before a rename (the BBB
experiments called the normal prior ``gaussian``)."""


def prior_names(experiment: Experiment, *, defaults_only: bool = False) -> tuple[str, ...]:
    """The names of the registered priors that ``experiment`` offers, in registry order (with
    ``defaults_only``, those it runs when none are named)."""
    return tuple(
        name
        for name, r in PRIOR_RECIPES.items()
        if experiment in r.experiments and (r.default or not defaults_only)
    )

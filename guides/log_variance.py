"""The DWP paper's variational family: a factorised Gaussian over ``(mu, log sigma^2)``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import AffineTransform, ComposeTransform, ExpTransform
from torch import Tensor
from torch.distributions import biject_to, transform_to

from .bbb import BBBNormal
from .initialization import init_to_module

__all__ = ["LogVarianceNormal", "TruncatedAlphaNormal", "log_variance_positive"]


class _LogVariancePositive(type(constraints.positive)):
    """Positive scales whose unconstrained parameter is the log-variance ``log sigma^2``."""

    def __init__(self) -> None:
        super().__init__(lower_bound=0.0)


log_variance_positive = _LogVariancePositive()
"""Constraint of a positive ``sigma`` optimised as ``u = log sigma^2``, ``sigma = exp(u / 2)``."""


@biject_to.register(log_variance_positive)
@transform_to.register(log_variance_positive)
def _transform_to_log_variance_positive(constraint: constraints.Constraint) -> ComposeTransform:
    return ComposeTransform([AffineTransform(0.0, 0.5), ExpTransform()])


class LogVarianceNormal(BBBNormal):
    r"""Fully factorised Gaussian with the additive parameterisation of Molchanov et al. (2017).

    Each latent site ``w`` gets ``q(w) = N(mu, sigma^2)`` elementwise; the optimised parameters
    are ``mu`` and ``log sigma^2`` (independent of ``mu``, unlike the multiplicative
    ``sigma^2 = alpha mu^2``), as in Section 4.1 of *The Deep Weight Prior* (Atanov et al.,
    2019), which initialises ``log sigma^2`` to ``-10``. Sampling, site handling and accessors are
    those of :class:`~pyro_dwp.guides.BBBNormal`; only the map from the optimised parameter to
    ``sigma`` differs (``sigma = exp(u / 2)`` through :data:`log_variance_positive`).

    Args:
        model: A Pyro model, e.g. a :class:`~pyro_dwp.bnn.BNN`.
        init_loc_fn: Per-site initialiser of ``mu``: by default the network's own initialisation
            (:func:`~pyro_dwp.guides.init_to_module`); :func:`~pyro_dwp.guides.init_to_prior_sample`
            draws kernels from a (deep weight) prior instead.
        init_log_variance: Initial ``log sigma^2`` of every weight (finite).
        create_plates: As in :class:`~pyro.infer.autoguide.AutoNormal`.
    """

    scale_constraint = log_variance_positive

    def __init__(
        self,
        model: Callable,
        *,
        init_loc_fn: Callable[[dict], Tensor] = init_to_module,
        init_log_variance: float = -10.0,
        create_plates: Callable | None = None,
    ) -> None:
        if not isinstance(init_log_variance, int | float) or not math.isfinite(init_log_variance):
            raise ValueError(f"init_log_variance must be a finite float, got {init_log_variance!r}")
        super().__init__(
            model,
            init_loc_fn=init_loc_fn,
            init_scale=math.exp(0.5 * init_log_variance),
            create_plates=create_plates,
        )

    def log_variance(self, name: str) -> Tensor:
        """The optimised ``log sigma^2`` of site ``name`` (same shape as the site)."""
        return self.rho(name)


class TruncatedAlphaNormal(BBBNormal):
    r"""Factorised Gaussian with multiplicative noise of bounded variance, ``alpha <= 1``.

    ``q(w) = N(mu, alpha mu^2)`` elementwise, optimised over ``mu`` and the logit of
    ``alpha = sigmoid(a)`` (so ``0 < alpha < 1``): the variational dropout family of Kingma et
    al. (2015), and the log-uniform baseline of the deep weight prior's public code
    (``MuTruncAlphaFFGConv2d``, ``a`` initialised to ``-2``, i.e. ``alpha ~ 0.12``).

    With the log-uniform prior the (approximate) KL depends on ``alpha`` only, so it puts no pull
    on ``mu``; with the additive ``(mu, log sigma^2)`` family the same KL, a function of
    ``alpha = sigma^2 / mu^2``, drives every ``mu`` to 0 (sparse variational dropout), which on a
    few dozen examples prunes the whole network.

    Args:
        model: A Pyro model, e.g. a :class:`~pyro_dwp.bnn.BNN`.
        init_loc_fn: Per-site initialiser of ``mu``.
        init_alpha_logit: Initial ``a`` of every weight (``alpha = sigmoid(a)``; finite).
        create_plates: As in :class:`~pyro.infer.autoguide.AutoNormal`.
    """

    scale_constraint = constraints.unit_interval

    def __init__(
        self,
        model: Callable,
        *,
        init_loc_fn: Callable[[dict], Tensor] = init_to_module,
        init_alpha_logit: float = -2.0,
        create_plates: Callable | None = None,
    ) -> None:
        if not isinstance(init_alpha_logit, int | float) or not math.isfinite(init_alpha_logit):
            raise ValueError(f"init_alpha_logit must be a finite float, got {init_alpha_logit!r}")
        alpha = 1.0 / (1.0 + math.exp(-init_alpha_logit))
        super().__init__(
            model, init_loc_fn=init_loc_fn, init_scale=alpha, create_plates=create_plates
        )

    def alpha(self, name: str) -> Tensor:
        """The noise variance ratio ``alpha = sigma^2 / mu^2`` of site ``name``, in ``(0, 1)``."""
        return super().scale(name)

    def scale(self, name: str) -> Tensor:
        """``sigma = sqrt(alpha) (|mu| + tiny)``: never 0, so ``log alpha`` stays finite."""
        loc = self.loc(name)
        return self.alpha(name).sqrt() * (loc.abs() + torch.finfo(loc.dtype).tiny)

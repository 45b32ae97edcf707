"""The scale-mixture prior of Blundell et al. (2015)."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

__all__ = ["ScaleMixtureNormal"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_EMPTY = torch.Size()


class _OpenUnitInterval(constraints.Constraint):
    """The open interval (0, 1): a mixture weight of exactly 0 or 1 drops a component."""

    def check(self, value: Tensor) -> Tensor:
        return (value > 0) & (value < 1)

    def __repr__(self) -> str:
        return "OpenInterval(lower_bound=0.0, upper_bound=1.0)"


class ScaleMixtureNormal(TorchDistribution):
    r"""A two-component, zero-mean Gaussian scale mixture.

    .. math::

        p(w) = \pi \mathcal{N}(w \mid 0, \sigma_1^2) + (1 - \pi) \mathcal{N}(w \mid 0, \sigma_2^2)

    This is the fixed prior of *Weight Uncertainty in Neural Networks* (Blundell et al., 2015),
    where typically :math:`\sigma_1 > \sigma_2` and :math:`\sigma_2 \ll 1`. It has no closed-form
    KL divergence against a Gaussian, so it is used through Monte Carlo ELBOs.

    ``log_prob`` is evaluated with a log-sum-exp over the two components, so it stays finite far
    in the tails (``|w| = 1e3`` with ``sigma2 = exp(-8)``) where the narrow component underflows.

    Args:
        pi: Weight of the first component, in (0, 1). Shape: any broadcastable batch shape.
        sigma1: Scale of the first component, > 0.
        sigma2: Scale of the second component, > 0.
        validate_args: Whether to validate parameters and samples.
    """

    arg_constraints = {
        "pi": _OpenUnitInterval(),
        "sigma1": constraints.positive,
        "sigma2": constraints.positive,
    }
    support = constraints.real
    has_rsample = False

    def __init__(
        self,
        pi: Tensor | float,
        sigma1: Tensor | float,
        sigma2: Tensor | float,
        *,
        validate_args: bool | None = None,
    ) -> None:
        self.pi, self.sigma1, self.sigma2 = broadcast_all(pi, sigma1, sigma2)
        super().__init__(self.pi.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> ScaleMixtureNormal:
        new = self._get_checked_instance(ScaleMixtureNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.pi = self.pi.expand(batch_shape)
        new.sigma1 = self.sigma1.expand(batch_shape)
        new.sigma2 = self.sigma2.expand(batch_shape)
        super(ScaleMixtureNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return torch.zeros_like(self.pi)

    @property
    def variance(self) -> Tensor:
        return self.pi * self.sigma1**2 + (1 - self.pi) * self.sigma2**2

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density, elementwise: ``value`` of shape ``sample_shape + batch_shape``."""
        if self._validate_args:
            self._validate_sample(value)
        a = torch.log(self.pi) - torch.log(self.sigma1) - 0.5 * (value / self.sigma1) ** 2
        b = torch.log1p(-self.pi) - torch.log(self.sigma2) - 0.5 * (value / self.sigma2) ** 2
        return torch.logaddexp(a, b) - _HALF_LOG_2PI

    def sample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        """Draw ``sample_shape + batch_shape`` samples (component, then Gaussian)."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            first = torch.rand(shape, dtype=self.pi.dtype, device=self.pi.device) < self.pi
            scale = torch.where(first, self.sigma1.expand(shape), self.sigma2.expand(shape))
            return scale * torch.randn(shape, dtype=self.pi.dtype, device=self.pi.device)

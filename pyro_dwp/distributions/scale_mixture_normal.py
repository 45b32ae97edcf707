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
_SOFTPLUS_FLOOR = -25.0
"""On the CPU, ``softplus(u)`` of a float32 ``u`` below this is taken at it (``< 1.4e-11``).

Far in the prior's tails ``u = b - a`` reaches ``-1e3`` and below, where the CPU kernels of
``log1p(exp(u))`` pass through subnormal intermediates, which make the whole pass about five
times slower (2 threads, a 1200 x 1200 weight drawn from N(0, 0.05^2) under the default prior:
20 ms against 3.7 ms). Added to the wide component's ``a`` the floor's ``1.4e-11`` changes
``log p`` in float32 only where ``|a| < 2.3e-4``, and there by less than ``1.4e-11``; the
gradient is computed from ``u`` itself. Other dtypes and devices (GPUs run subnormals at full
speed) take ``softplus(u)`` as it is."""


class _OpenUnitInterval(constraints.Constraint):
    """The open interval (0, 1): a mixture weight of exactly 0 or 1 drops a component."""

    def check(self, value: Tensor) -> Tensor:
        return (value > 0) & (value < 1)

    def __repr__(self) -> str:
        return "OpenInterval(lower_bound=0.0, upper_bound=1.0)"


class _MixtureLogDensity(torch.autograd.Function):
    """Elementwise log-density of a scale mixture with scalar parameters, with a fused backward.

    With ``t = w^2``, ``a = c1 - k1 t`` and ``b = c2 - k2 t`` the two weighted component
    log-densities, ``log p = a + softplus(u)`` where ``u = b - a = dc - dk t``; the gradient is
    ``-2 w (k1 + dk sigmoid(u))`` (``sigmoid(u)`` is the narrow component's responsibility).
    Five passes forward and five backward, against about twice that through autograd.

    The wide component comes first (``k1 <= k2``, so ``dk >= 0``): then ``u <= dc`` is never
    large where ``a`` is, ``a + softplus(u)`` does not cancel, and ``k1 + dk sigmoid(u)`` adds
    positive terms. The backward is itself differentiable: under ``create_graph=True`` it
    recomputes ``u`` from ``w``, so second derivatives (Hessians, Laplace) are exact.
    """

    @staticmethod
    def forward(ctx, w: Tensor, c1: float, k1: float, dc: float, dk: float) -> Tensor:
        t = w * w
        u = torch.rsub(t, dc, alpha=dk)  # dc - dk * t
        tail = u
        if u.device.type == "cpu" and u.dtype == torch.float32:
            tail = u.clamp(min=_SOFTPLUS_FLOOR)
        out = torch.nn.functional.softplus(tail).sub_(t, alpha=k1).add_(c1)
        ctx.save_for_backward(w, u)
        ctx.k1, ctx.dc, ctx.dk = k1, dc, dk
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, u = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: d/dw built from w, to be differentiated
            resp = torch.sigmoid(ctx.dc - ctx.dk * w * w)
            return -2.0 * w * (ctx.k1 + ctx.dk * resp) * grad, None, None, None, None
        slope = torch.sigmoid(u).mul_(ctx.dk).add_(ctx.k1).mul_(w).mul_(-2.0)
        return slope.mul_(grad), None, None, None, None


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
        self._consts = self._scalar_constants()

    def _scalar_constants(self) -> tuple[float, float, float, float] | None:
        """``(c1, k1, dc, dk)`` of :class:`_MixtureLogDensity` if the parameters are scalars,
        with the wide component first (``dk >= 0``; the density is symmetric in the two)."""
        params = (self.pi, self.sigma1, self.sigma2)
        if any(p.numel() != 1 or p.requires_grad for p in params):
            return None
        pi, s1, s2 = (float(p) for p in params)
        if not (0 < pi < 1 and s1 > 0 and s2 > 0):
            return None  # invalid values: left to validation (or to NaN, as torch does)
        c1 = math.log(pi) - math.log(s1) - _HALF_LOG_2PI
        c2 = math.log1p(-pi) - math.log(s2) - _HALF_LOG_2PI
        (c1, k1), (c2, k2) = sorted([(c1, 0.5 / s1**2), (c2, 0.5 / s2**2)], key=lambda ck: ck[1])
        return c1, k1, c2 - c1, k2 - k1

    def expand(self, batch_shape, _instance=None) -> ScaleMixtureNormal:
        new = self._get_checked_instance(ScaleMixtureNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.pi = self.pi.expand(batch_shape)
        new.sigma1 = self.sigma1.expand(batch_shape)
        new.sigma2 = self.sigma2.expand(batch_shape)
        super(ScaleMixtureNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        new._consts = self._consts
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
        if self._consts is not None:
            out = _MixtureLogDensity.apply(value, *self._consts)
            if out.shape[out.dim() - len(self.batch_shape) :] == self.batch_shape:
                return out
            return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))
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

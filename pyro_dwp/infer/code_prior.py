"""Fitting a Gaussian-mixture code prior to a kernel VAE's aggregate posterior (EM).

The second stage of a two-stage VAE: the kernel VAE is trained with :math:`p(z) =
\\mathcal{N}(0, I)`, then :math:`p(z)` is replaced by a mixture fitted to codes
:math:`z \\sim q(z \\mid w_j)` of the training kernels, so that the deep weight prior's mass lies
where the source kernels' codes lie (:mod:`pyro_dwp.distributions.code_prior`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pyro_dwp.distributions.code_prior import GaussianMixtureCodePrior

__all__ = ["fit_code_prior", "fit_gaussian_mixture"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _component_log_probs(x: Tensor, log_weights: Tensor, loc: Tensor, var: Tensor) -> Tensor:
    """``log pi_c + log N(x_i | loc_c, diag(var_c))``: ``x (n, d)`` to ``(n, C)``."""
    precision = var.reciprocal()  # (C, d)
    quad = (
        x.square() @ precision.T - 2 * x @ (loc * precision).T + (loc.square() * precision).sum(-1)
    )
    return log_weights - 0.5 * quad - 0.5 * var.log().sum(-1) - x.shape[1] * _HALF_LOG_2PI


@torch.no_grad()
def fit_gaussian_mixture(
    x: Tensor,
    components: int,
    *,
    iterations: int = 200,
    min_scale: float = 1e-3,
    tol: float = 1e-6,
    seed: int = 0,
) -> tuple[GaussianMixtureCodePrior, float]:
    """Maximum-likelihood diagonal Gaussian mixture by expectation-maximisation.

    Starts from ``components`` distinct points of ``x`` as means (drawn with ``seed``), the
    data's per-dimension variance and equal weights; iterates until the mean log-likelihood
    improves by less than ``tol`` or ``iterations`` are done. Variances are floored at
    ``min_scale ** 2`` (a component on a single point would otherwise collapse).

    Args:
        x: Points ``(n, d)``, ``n >= components``.
        components: ``C >= 1``.
        iterations: Most EM iterations.
        min_scale: Floor of every component's standard deviation.
        tol: Stop when the mean log-likelihood gains less than this.
        seed: Seed of the initial means.

    Returns:
        The mixture and the mean log-likelihood of ``x`` under it (nats per point).

    Raises:
        ValueError: On bad shapes, too few points or non-finite points.
    """
    if x.dim() != 2 or components < 1 or len(x) < components:
        raise ValueError(
            f"fit_gaussian_mixture needs points (n, d) with n >= components >= 1; got shape "
            f"{tuple(x.shape)} and {components} components"
        )
    if not bool(x.isfinite().all()):
        raise ValueError("fit_gaussian_mixture: the points contain NaN or infinite values")
    if iterations < 1 or not min_scale > 0:
        raise ValueError(
            f"iterations must be >= 1 and min_scale > 0, got {iterations}, {min_scale}"
        )
    x = x.double()
    picks = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:components]
    loc = x[picks.to(x.device)].clone()
    var = x.var(0, unbiased=False).clamp_min(min_scale**2).expand(components, -1).clone()
    log_weights = torch.full((components,), -math.log(components), dtype=x.dtype, device=x.device)
    previous = -math.inf
    for _ in range(iterations):
        joint = _component_log_probs(x, log_weights, loc, var)  # (n, C)
        log_norm = joint.logsumexp(1, keepdim=True)
        mean_ll = log_norm.mean().item()
        if mean_ll - previous < tol:
            break
        previous = mean_ll
        resp = (joint - log_norm).exp()  # (n, C)
        counts = resp.sum(0).clamp_min(1e-10)  # (C,)
        log_weights = (counts / len(x)).log()
        loc = resp.T @ x / counts[:, None]
        var = (resp.T @ x.square() / counts[:, None] - loc.square()).clamp_min(min_scale**2)
    mean_ll = _component_log_probs(x, log_weights, loc, var).logsumexp(1).mean().item()
    mixture = GaussianMixtureCodePrior(log_weights.float(), loc.float(), var.sqrt().float())
    return mixture, mean_ll


@torch.no_grad()
def fit_code_prior(
    encoder: nn.Module,
    kernels: Tensor,
    components: int,
    *,
    codes_per_kernel: int = 4,
    iterations: int = 200,
    seed: int = 0,
) -> tuple[GaussianMixtureCodePrior, float]:
    """A mixture code prior fitted to the aggregate posterior of a kernel VAE's encoder.

    Draws ``codes_per_kernel`` codes :math:`z \\sim q(z \\mid w_j)` per kernel (with ``seed``)
    and fits :func:`fit_gaussian_mixture` to them.

    Args:
        encoder: ``(..., k, k) -> (loc, scale)``, each ``(..., z_dim)`` (a VAE's encoder).
        kernels: Training kernels ``(n, k, k)``.
        components: Mixture components ``C``.
        codes_per_kernel: Codes drawn per kernel.
        iterations: Most EM iterations.
        seed: Seed of the codes and of the initial means.

    Returns:
        The mixture (on the kernels' device) and the codes' mean log-likelihood under it.
    """
    if kernels.dim() != 3 or codes_per_kernel < 1:
        raise ValueError(
            f"fit_code_prior needs kernels (n, k, k) and codes_per_kernel >= 1; got shape "
            f"{tuple(kernels.shape)} and {codes_per_kernel}"
        )
    loc, scale = encoder(kernels)  # (n, z_dim) each
    gen = torch.Generator(device=kernels.device).manual_seed(seed)
    noise = torch.randn(
        (codes_per_kernel, *loc.shape), generator=gen, device=loc.device, dtype=loc.dtype
    )
    codes = (loc + scale * noise).reshape(-1, loc.shape[-1])
    return fit_gaussian_mixture(codes, components, iterations=iterations, seed=seed)

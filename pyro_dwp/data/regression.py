r"""The 1-D regression curve of Blundell et al. (2015), "Weight Uncertainty in Neural Networks".

.. math::

    y = x + 0.3 \sin(2 \pi (x + \epsilon)) + 0.3 \sin(4 \pi (x + \epsilon)) + \epsilon,
    \qquad \epsilon \sim \mathcal{N}(0, 0.02^2)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["curve", "make_regression_data", "noise_in_y", "true_curve"]


def curve(x: Tensor, noise: Tensor | None) -> Tensor:
    """Evaluate the curve at ``x`` with the noise ``noise`` (``epsilon``) added inside and out.

    Args:
        x: Inputs, any shape.
        noise: Noise ``epsilon``, broadcastable with ``x``; ``None`` for the noise-free curve.

    Returns:
        ``y``, of the broadcast shape of ``x`` and ``noise``.
    """
    if noise is None:
        noise = torch.zeros_like(x)
    shifted = 2 * math.pi * (x + noise)
    return x + 0.3 * torch.sin(shifted) + 0.3 * torch.sin(2 * shifted) + noise


def true_curve(x: Tensor) -> Tensor:
    """The noise-free curve ``x + 0.3 sin(2 pi x) + 0.3 sin(4 pi x)``; same shape as ``x``."""
    return curve(x, None)


def make_regression_data(
    n: int, *, low: float = 0.0, high: float = 0.5, noise_std: float = 0.02, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Draw a training set: ``x ~ U(low, high)``, ``epsilon ~ N(0, noise_std^2)``, ``y = curve``.

    Args:
        n: Number of points, >= 1.
        low: Lower end of the input interval.
        high: Upper end of the input interval, >= ``low``.
        noise_std: Standard deviation of ``epsilon``, >= 0.
        seed: Seed of a private generator; the global RNG is left untouched.

    Returns:
        ``x`` and ``y``, float32 of shape ``(n, 1)`` each.

    Raises:
        ValueError: If ``n < 1``, ``high < low`` or ``noise_std < 0``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if high < low:
        raise ValueError(f"high must be >= low, got low={low}, high={high}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    generator = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n, 1, generator=generator)
    noise = noise_std * torch.randn(n, 1, generator=generator)
    return x, curve(x, noise)


def noise_in_y(
    *, low: float = 0.0, high: float = 0.5, noise_std: float = 0.02, grid: int = 100_001
) -> float:
    """The root-mean-square noise in ``y`` of :func:`make_regression_data`'s points.

    The noise enters inside the curve: ``y = f(x + epsilon)`` with
    ``f(u) = u + 0.3 sin(2 pi u) + 0.3 sin(4 pi u)``, so to first order ``y = f(x) + f'(x)
    epsilon``, a noise of standard deviation ``|f'(x)| noise_std`` that varies with ``x``. Its
    root mean square over ``x ~ U(low, high)`` is ``noise_std`` times that of ``f'`` (3.14 over
    [0, 0.5], so 0.063 for the default 0.02): the noise level of a homoscedastic Gaussian
    likelihood for these data.

    Args:
        low: Lower end of the input interval.
        high: Upper end of the input interval, > ``low``.
        noise_std: Standard deviation of ``epsilon``, >= 0.
        grid: Number of evenly spaced points of the average over ``[low, high]`` (>= 2).

    Raises:
        ValueError: If ``high <= low``, ``noise_std < 0`` or ``grid < 2``.
    """
    if not high > low or noise_std < 0 or grid < 2:
        raise ValueError(
            f"need low < high, noise_std >= 0 and grid >= 2, got {low}, {high}, {noise_std}, {grid}"
        )
    x = torch.linspace(low, high, grid, dtype=torch.float64)
    slope = (
        1 + 0.6 * math.pi * torch.cos(2 * math.pi * x) + 1.2 * math.pi * torch.cos(4 * math.pi * x)
    )
    return noise_std * float(slope.square().mean().sqrt())

"""Generic checks over every distribution of :mod:`pyro_dwp.distributions`, one registry line each.

As Pyro's ``tests/distributions/conftest.py``: :data:`CASES` holds one :class:`Case` per
distribution (a builder and what the distribution promises: proper or improper, an exact or an
estimated ``log_prob``, a closed-form reference). Each test below runs over every case: shapes of
``sample`` and ``log_prob``, ``expand``, the support, sampling against ``log_prob`` (Pyro's
goodness-of-fit test, ``pyro.distributions.testing.gof``), normalisation (``exp(log_prob)``
integrates to 1) and moments. A new distribution is one line in :data:`CASES`;
:func:`test_every_distribution_has_a_case` fails until it has one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.testing.gof import auto_goodness_of_fit
from torch import Tensor, nn

import pyro_dwp.distributions as dwp_dists
from pyro_dwp.distributions import (
    DeepWeightPrior,
    LogUniform,
    MarkovChainPrior,
    ScaleMixtureNormal,
)
from pyro_dwp.models.kernel_vae import KernelVAE
from pyro_dwp.models.markov_chain_vae import MarkovChainVAE

TEST_FAILURE_RATE = 1e-3
"""Threshold of the goodness-of-fit p-values (a spurious failure in 1,000 seeded runs)."""
NUM_SAMPLES = 20_000


class _LinearDecoder(nn.Module):
    """``p(w | z) = N(a z + b, s^2)`` over 1x1 kernels: ``(..., 1) -> (loc, scale)``, each
    ``(..., 1, 1)``."""

    kernel_size, z_dim = 1, 1

    def __init__(self, a: float, b: float, s: float) -> None:
        super().__init__()
        self.a, self.b, self.s = a, b, s

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        loc = (self.a * z + self.b)[..., None]
        return loc, torch.full_like(loc, self.s)


class _ExactEncoder(nn.Module):
    """The exact posterior ``p(z | w)`` of :class:`_LinearDecoder` under ``z ~ N(0, 1)``:
    ``(..., 1, 1) -> (loc, scale)``, ``(..., 1)``."""

    def __init__(self, a: float, b: float, s: float) -> None:
        super().__init__()
        self.a, self.b, self.var = a, b, a * a + s * s
        self.scale = s / math.sqrt(self.var)

    def forward(self, w: Tensor) -> tuple[Tensor, Tensor]:
        loc = self.a * (w[..., 0] - self.b) / self.var
        return loc, torch.full_like(loc, self.scale)


def _linear_gaussian_dwp() -> DeepWeightPrior:
    """A deep weight prior with a closed-form marginal ``N(b, a^2 + s^2)``; with the exact
    posterior as proposal its importance-weighted ``log_prob`` is exact for any ``K``."""
    a, b, s = 0.8, 0.3, 0.5
    return DeepWeightPrior(_LinearDecoder(a, b, s), _ExactEncoder(a, b, s), num_samples=4)


@dataclass(frozen=True)
class Case:
    """One registry line: how to build the distribution and what it promises.

    Attributes:
        build: ``() -> distribution``.
        proper: Normalised and sampleable; an improper one must refuse ``sample``.
        exact_log_prob: ``log_prob`` is exact (not an estimate): goodness of fit and
            normalisation apply.
        reference: ``() -> distribution`` with the same density in closed form, event shape
            flattened away (compared with ``log_prob`` on samples), if any.
    """

    build: Callable[[], TorchDistribution]
    proper: bool = True
    exact_log_prob: bool = True
    reference: Callable[[], TorchDistribution] | None = None


CASES: dict[str, Case] = {
    "scale_mixture": Case(lambda: ScaleMixtureNormal(0.5, 1.0, math.exp(-6))),
    "scale_mixture_narrow_first": Case(lambda: ScaleMixtureNormal(0.25, 0.1, 2.0)),
    "scale_mixture_batch": Case(
        lambda: ScaleMixtureNormal(torch.tensor([0.3, 0.7]), torch.tensor([1.0, 2.0]), 0.05)
    ),
    "log_uniform": Case(lambda: LogUniform(), proper=False, exact_log_prob=False),
    "dwp_linear_gaussian": Case(
        _linear_gaussian_dwp, reference=lambda: dist.Normal(0.3, math.sqrt(0.8**2 + 0.5**2))
    ),
    "dwp_kernel_vae": Case(
        lambda: DeepWeightPrior.from_vae(KernelVAE(5, 2, 4), num_samples=3),
        exact_log_prob=False,
    ),
    "markov_chain_t2": Case(
        lambda: MarkovChainPrior.from_vae(MarkovChainVAE(5, 2, 4, 2), num_samples=3),
        exact_log_prob=False,
    ),
}
"""Every distribution of :mod:`pyro_dwp.distributions`, at least once."""

PROPER = [n for n, c in CASES.items() if c.proper]
EXACT = [n for n, c in CASES.items() if c.proper and c.exact_log_prob]


def test_every_distribution_has_a_case():
    classes = {
        getattr(dwp_dists, name)
        for name in dwp_dists.__all__
        if isinstance(getattr(dwp_dists, name), type)
        and issubclass(getattr(dwp_dists, name), TorchDistribution)
    }
    covered = {type(case.build()) for case in CASES.values()}
    assert classes <= covered, (
        f"no line in CASES for {sorted(c.__name__ for c in classes - covered)}"
    )


def _finite_value(d: TorchDistribution, sample_shape: tuple[int, ...] = ()) -> Tensor:
    """A value of shape ``sample_shape + batch + event`` in the support (nonzero: LogUniform)."""
    shape = torch.Size(sample_shape) + d.batch_shape + d.event_shape
    return torch.rand(shape).add_(0.5) * torch.where(torch.rand(shape) < 0.5, -1.0, 1.0)


@pytest.mark.parametrize("name", CASES)
def test_shapes(name):
    d = CASES[name].build()
    value = d.sample((4, 3)) if CASES[name].proper else _finite_value(d, (4, 3))
    assert value.shape == (4, 3, *d.batch_shape, *d.event_shape)
    assert d.log_prob(value).shape == (4, 3, *d.batch_shape)
    assert torch.isfinite(d.log_prob(value)).all()


@pytest.mark.parametrize("name", CASES)
def test_expand(name):
    d = CASES[name].build()
    batch = (2, *d.batch_shape)
    big = d.expand(batch)
    assert big.batch_shape == batch and big.event_shape == d.event_shape
    value = _finite_value(big, (3,))
    if CASES[name].proper:
        assert big.sample((3,)).shape == value.shape
    if CASES[name].exact_log_prob or not CASES[name].proper:  # deterministic log_prob
        torch.testing.assert_close(big.log_prob(value), d.log_prob(value))
    else:
        assert big.log_prob(value).shape == (3, *batch)


@pytest.mark.parametrize("name", CASES)
def test_support(name):
    d = CASES[name].build()
    if not CASES[name].proper:
        with pytest.raises(NotImplementedError, match="improper"):
            d.sample()
        return
    samples = d.sample((1000,))
    assert d.support.check(samples).all() and torch.isfinite(samples).all()


@pytest.mark.parametrize("name", EXACT)
def test_samples_fit_log_prob(name):
    """Pyro's goodness-of-fit test of ``sample`` against ``exp(log_prob)``, per batch element."""
    d = CASES[name].build()
    samples = d.sample((NUM_SAMPLES,))
    probs = d.log_prob(samples).exp()
    flat = samples.reshape(NUM_SAMPLES, -1, d.event_shape.numel())
    for i in range(flat.shape[1]):
        gof = auto_goodness_of_fit(flat[:, i].squeeze(-1), probs.reshape(NUM_SAMPLES, -1)[:, i])
        assert gof > TEST_FAILURE_RATE, f"batch element {i}: p = {gof:.2g}"


@pytest.mark.parametrize("name", [n for n in EXACT if CASES[n].build().event_shape.numel() == 1])
def test_density_integrates_to_one(name):
    d = CASES[name].build()
    scale = float(d.sample((NUM_SAMPLES,)).abs().max())
    grid = torch.linspace(-2 * scale, 2 * scale, 400_001, dtype=torch.float64)
    shaped = grid.reshape(-1, *([1] * len(d.batch_shape)), *d.event_shape)
    density = d.log_prob(shaped.float()).double().exp()
    total = torch.trapezoid(density, grid, dim=0)
    torch.testing.assert_close(total, torch.ones_like(total), atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", [n for n in EXACT if CASES[n].reference is not None])
def test_log_prob_matches_reference(name):
    d, ref = CASES[name].build(), CASES[name].reference()
    samples = d.sample((100,))
    expected = ref.log_prob(samples.reshape(100, *d.batch_shape))
    torch.testing.assert_close(d.log_prob(samples), expected, atol=1e-5, rtol=1e-5)


def _has_moments(name: str) -> bool:
    try:
        _ = CASES[name].build().variance
    except NotImplementedError:
        return False
    return True


@pytest.mark.parametrize("name", [n for n in PROPER if _has_moments(n)])
def test_sample_moments(name):
    """Sample mean and variance against ``mean`` / ``variance`` where the class defines them."""
    d = CASES[name].build()
    mean, variance = d.mean, d.variance
    samples = d.sample((NUM_SAMPLES,))
    se = (variance / NUM_SAMPLES).sqrt()
    assert ((samples.mean(0) - mean).abs() <= 5 * se).all()
    torch.testing.assert_close(samples.var(0), variance, rtol=0.1, atol=0)


def test_improper_log_uniform_is_scale_invariant():
    """``log p(c w) - log p(w) = -log c``: the one property of an improper density's shape."""
    d = LogUniform()
    w = _finite_value(d, (100,))
    torch.testing.assert_close(d.log_prob(3 * w) - d.log_prob(w), torch.full((100,), -math.log(3)))

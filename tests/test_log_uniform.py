"""The improper log-uniform prior and its approximate KL from a Gaussian (Molchanov et al. 2017)."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import Independent, Normal, constraints, kl_divergence

from pyro_dwp.distributions.log_uniform import LogUniform

K1, K2, K3 = 0.63576, 1.87320, 1.48695


def sigmoid_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The published formula, written naively: alpha = sigma^2 / mu^2."""
    alpha = sigma**2 / mu**2
    return -(K1 * torch.sigmoid(K2 + K3 * alpha.log()) - 0.5 * torch.log1p(1 / alpha) - K1)


def polynomial_kl(alpha: torch.Tensor) -> torch.Tensor:
    """The polynomial of the DWP authors' code (Kingma et al. 2015), valid for alpha <= 1."""
    return -0.5 * alpha.log() - 1.16145124 * alpha + 1.50204118 * alpha**2 - 0.58629921 * alpha**3


def test_kl_matches_published_sigmoid_formula():
    mu = torch.tensor([0.5, -1.0, 2.0, 1e-3, -0.3], dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 3.0, 1.0, 0.3], dtype=torch.float64)
    kl = kl_divergence(dist.Normal(mu, sigma), LogUniform((5,)))
    assert kl.shape == (5,)
    torch.testing.assert_close(kl, sigmoid_kl(mu, sigma), rtol=1e-10, atol=1e-12)


def test_kl_agrees_with_polynomial_up_to_a_constant():
    # The two fits differ by an additive constant (about 0.67: the sigmoid form is shifted to
    # vanish as alpha -> inf, the polynomial has no constant), irrelevant for an improper prior.
    # Centred, they agree within 1e-2 nats for alpha in [0.05, 1] (max deviation ~7e-3).
    alpha = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0], dtype=torch.float64)
    mu = torch.ones_like(alpha)
    kl = kl_divergence(dist.Normal(mu, alpha.sqrt()), LogUniform())
    diff = kl - polynomial_kl(alpha)
    assert 0.6 < diff.mean() < 0.75
    assert (diff - diff.mean()).abs().max() < 1e-2


def test_kl_is_finite_and_differentiable_at_zero_mean():
    mu = torch.tensor([0.0, 1e-30, 1.0], requires_grad=True)
    sigma = torch.tensor([0.1, 0.1, 1e-4], requires_grad=True)
    kl = kl_divergence(dist.Normal(mu, sigma), LogUniform((3,)))
    kl.sum().backward()
    assert torch.isfinite(kl).all() and kl[0].abs() < 1e-6  # alpha = inf: KL -> 0
    assert torch.isfinite(mu.grad).all() and torch.isfinite(sigma.grad).all()


@pytest.mark.parametrize("independent", [Independent, dist.Independent])
def test_kl_independent_sums_elementwise_kl(independent):
    mu, sigma = torch.randn(2, 3), torch.rand(2, 3) + 0.1
    q = independent(Normal(mu, sigma), 2)
    p = independent(LogUniform((2, 3)), 2)
    torch.testing.assert_close(kl_divergence(q, p), sigmoid_kl(mu, sigma).sum())
    # As a model site builds it: a univariate prior expanded and reinterpreted.
    site_fn = LogUniform().expand((2, 3)).to_event(2)
    torch.testing.assert_close(
        kl_divergence(dist.Normal(mu, sigma).to_event(2), site_fn), sigmoid_kl(mu, sigma).sum()
    )


def test_trace_mean_field_elbo_uses_registered_kl():
    x = torch.randn(10, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(10)

    def model():
        w = pyro.sample("w", LogUniform().expand((3,)).to_event(1))
        with pyro.plate("data", 10):
            pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)

    def guide():
        loc = pyro.param("loc", torch.tensor([0.8, -1.5, 0.1]))
        scale = pyro.param("scale", torch.tensor([0.1, 0.3, 0.2]), constraint=constraints.positive)
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))

    pyro.set_rng_seed(3)
    loss = TraceMeanField_ELBO().loss(model, guide)
    pyro.set_rng_seed(3)
    w = poutine.trace(guide).get_trace().nodes["w"]["value"]
    loc, scale = pyro.param("loc"), pyro.param("scale")
    expected = -Normal(x @ w, 0.5).log_prob(y).sum() + sigmoid_kl(loc, scale).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-6)


def test_log_prob_is_minus_log_abs_and_broadcasts():
    d = LogUniform((2, 1))
    value = torch.tensor([0.5, -2.0, 4.0])
    lp = d.log_prob(value)
    assert lp.shape == (2, 3)
    torch.testing.assert_close(lp[1], -value.abs().log())
    assert LogUniform().log_prob(torch.tensor(0.0)) == float("inf")


def test_expand_and_shapes():
    d = LogUniform().expand((4, 3))
    assert isinstance(d, LogUniform)
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    assert d.support is constraints.real


def test_sample_raises():
    with pytest.raises(NotImplementedError, match="improper"):
        LogUniform((2,)).sample()


def test_validation_rejects_nan():
    with pytest.raises(ValueError):
        LogUniform(validate_args=True).log_prob(torch.tensor(float("nan")))

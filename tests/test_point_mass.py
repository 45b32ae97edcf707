"""The point-mass guide: maximum a posteriori weights, checked against ridge regression."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_dwp.bnn import BNN
from pyro_dwp.guides import PointMass
from pyro_dwp.infer import fit
from pyro_dwp.likelihoods import Gaussian

NOISE = 0.5


def _regression(n: int = 20) -> tuple[BNN, PointMass, torch.Tensor, torch.Tensor]:
    """``y = x w + b + noise`` with a standard-normal prior on ``w`` ``(1, 3)`` and ``b``."""
    pyro.clear_param_store()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    y = (
        x @ torch.tensor([[1.0], [-2.0], [0.5]])
        + 0.3
        + NOISE * torch.randn(n, 1, generator=generator)
    )
    model = BNN(nn.Linear(3, 1), dist.Normal(0.0, 1.0), Gaussian(n, NOISE))
    return model, PointMass(model), x, y


def test_the_loss_is_the_negative_log_joint_at_the_point():
    """``Trace_ELBO`` of a point mass: ``-log p(y | x, mu) - log p(mu)``, no entropy term."""
    model, guide, x, y = _regression()
    loss = Trace_ELBO().differentiable_loss(model, guide, x, y)
    w, b = guide.loc("weight"), guide.loc("bias")
    log_lik = dist.Normal(x @ w.T + b, NOISE).log_prob(y).sum()
    log_prior = dist.Normal(0.0, 1.0).log_prob(torch.cat([w.flatten(), b])).sum()
    torch.testing.assert_close(loss, -(log_lik + log_prior))
    assert guide.site_names == ["weight", "bias"] and not guide.scale("weight").any()


def test_fitted_point_is_the_ridge_solution():
    """Under a standard-normal prior and Gaussian noise the posterior mode (= mean) is ridge
    regression's ``(A^T A / s^2 + I)^-1 A^T y / s^2``, ``A = [x, 1]``: SVI finds it."""
    model, guide, x, y = _regression()
    fit(model, guide, x, y, epochs=1500, batch_size=len(x), lr=0.05, progress=False)
    a = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    theta = torch.linalg.solve(a.T @ a / NOISE**2 + torch.eye(4), a.T @ y / NOISE**2).squeeze(1)
    fitted = torch.cat([guide.loc("weight").flatten(), guide.loc("bias")]).detach()
    torch.testing.assert_close(fitted, theta, atol=2e-3, rtol=0)


def test_an_unknown_site_and_an_unready_guide_are_named():
    model, guide, x, y = _regression()
    with pytest.raises(RuntimeError, match="has not been run yet"):
        guide.loc("weight")
    guide(x, y)
    with pytest.raises(KeyError, match="no site 'conv1.weight'; the guide's sites are"):
        guide.loc("conv1.weight")

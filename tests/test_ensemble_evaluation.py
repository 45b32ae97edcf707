"""The test-time ensembles of dwp-classify (``guide_classifier``) against their Monte Carlo
definition.

For one Bayesian linear layer ``f(x) = x w^T + b`` with ``q(w) = N(mu, sigma^2)`` the predictive
probability of image ``x_j`` is ``E_q[softmax(x_j w^T + b)]``. The ``"weights"`` ensemble
estimates it with weights shared by all images of a member, the ``"lrt"`` ensemble (the DWP
authors') with pre-activations drawn from ``N(x mu^T + b, x^2 (sigma^2)^T)`` independently per
activation and image. Both must converge to the same expectation, computed here by drawing the
weights directly; only the ``"lrt"`` members are independent across images.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_dwp import BNN, Categorical
from pyro_dwp.experiments.classification import ensemble_log_probs, guide_classifier
from pyro_dwp.guides import BBBNormal


def ensemble_probs(
    model: BNN, guide: BBBNormal, x: torch.Tensor, num_samples: int, evaluation: str
) -> torch.Tensor:
    """The predictive probabilities ``(N, 4)`` of the classifier dwp-classify evaluates."""
    return ensemble_log_probs(guide_classifier(model, guide, evaluation), x, num_samples).exp()


@pytest.fixture
def one_layer() -> tuple[BNN, BBBNormal, torch.Tensor, torch.Tensor, torch.Tensor]:
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = nn.Linear(3, 4)
    model = BNN(net, {"weight": dist.Normal(0.0, 1.0)}, Categorical(8))
    guide = BBBNormal(model, init_scale=0.5)
    x = torch.randn(5, 3)
    guide(x, torch.zeros(5, dtype=torch.long))  # create the parameters
    mu = guide.loc("weight").detach()
    sigma = guide.scale("weight").detach()
    return model, guide, x, mu, sigma


def _monte_carlo(
    x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, bias: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of softmax(x w^T + b) over ``n`` direct draws of ``w``."""
    w = mu + sigma * torch.randn(n, *mu.shape)  # (n, 4, 3)
    probs = (x @ w.transpose(-1, -2) + bias).softmax(-1)  # (n, 5, 4)
    return probs.mean(0), probs.std(0) / n**0.5


def test_lrt_ensemble_converges_to_the_predictive_expectation(one_layer) -> None:
    model, guide, x, mu, sigma = one_layer
    assert sigma.min() > 0.3  # far from a point estimate
    torch.manual_seed(1)
    # LRT members are independent across images: 40,000 copies of each image in one member
    # are 40,000 members for it
    copies = ensemble_probs(model, guide, x.repeat(40_000, 1), num_samples=1, evaluation="lrt")
    copies = copies.reshape(40_000, 5, 4)
    got, got_err = copies.mean(0), copies.std(0) / 200
    want, want_err = _monte_carlo(x, mu, sigma, pyro.param("bias").detach(), 400_000)
    z = (got - want).abs() / (got_err**2 + want_err**2).sqrt()
    assert z.max() < 4  # a scale 10% off (sigma * 1.1 or * 0.9) gives z > 5 here


def test_weight_ensemble_converges_to_the_predictive_expectation(one_layer) -> None:
    model, guide, x, mu, sigma = one_layer
    torch.manual_seed(1)
    got = ensemble_probs(model, guide, x, num_samples=1500, evaluation="weights")
    want, stderr = _monte_carlo(x, mu, sigma, pyro.param("bias").detach(), 200_000)
    assert got.shape == (5, 4)
    torch.testing.assert_close(got.sum(-1), torch.ones(5))
    # 1500 members: their standard error is ~12x the reference's
    assert ((got - want).abs() <= 4 * stderr * (200_000 / 1500) ** 0.5).all()


def test_lrt_members_are_independent_across_images_weight_members_are_not(one_layer) -> None:
    model, guide, x, _, _ = one_layer
    twins = x[:1].expand(2, 3)  # the same image twice
    for evaluation, same in (("weights", True), ("lrt", False)):
        torch.manual_seed(2)
        member = ensemble_probs(model, guide, twins, num_samples=1, evaluation=evaluation)
        assert torch.equal(member[0], member[1]) is same, evaluation


def test_unknown_evaluation_is_refused(one_layer) -> None:
    model, guide, x, _, _ = one_layer
    with pytest.raises(ValueError, match="unknown evaluation 'mean'"):
        ensemble_probs(model, guide, x, num_samples=1, evaluation="mean")

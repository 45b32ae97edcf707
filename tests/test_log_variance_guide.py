"""The paper's variational family: (mu, log sigma^2) parameterisation and initialisers."""

import math
from functools import partial

import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_dwp.bnn import BNN
from pyro_dwp.distributions.deep_weight_prior import DeepWeightPrior
from pyro_dwp.guides import BBBNormal, LogVarianceNormal, init_to_prior_sample
from pyro_dwp.likelihoods import Categorical
from pyro_dwp.models.kernel_vae import KernelVAE


def _conv_model():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    return net, BNN(net, {"0.weight": dist.Normal(0.0, 1.0)}, Categorical(10))


X, Y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])


def test_log_variance_parameterisation_and_default_init():
    net, model = _conv_model()
    guide = LogVarianceNormal(model)
    guide(X, Y)
    u = guide.log_variance("0.weight")
    assert u.shape == (2, 1, 3, 3)
    torch.testing.assert_close(u, torch.full_like(u, -10.0))
    torch.testing.assert_close(guide.scale("0.weight"), torch.full_like(u, math.exp(-5.0)))
    torch.testing.assert_close(guide.loc("0.weight"), net[0].weight)  # init_to_module
    # The optimised parameter is log sigma^2: d sigma / d u = sigma / 2.
    sigma = guide.scale("0.weight")
    (g,) = torch.autograd.grad(sigma.sum(), [u])
    torch.testing.assert_close(g, sigma / 2)
    # The ELBO's gradient reaches u (the entropy term alone gives -1/2 per weight).
    loss = Trace_ELBO().differentiable_loss(model, guide, X, Y)
    (g,) = torch.autograd.grad(loss, [u])
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_bbb_guide_keeps_softplus_parameterisation():
    _, model = _conv_model()
    guide = BBBNormal(model, init_scale=0.1)
    guide(X, Y)
    torch.testing.assert_close(
        torch.nn.functional.softplus(guide.rho("0.weight")), guide.scale("0.weight")
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x"])
def test_bad_init_log_variance(bad):
    _, model = _conv_model()
    with pytest.raises(ValueError, match="init_log_variance"):
        LogVarianceNormal(model, init_log_variance=bad)


def test_init_to_prior_sample_draws_kernels_from_a_deep_weight_prior():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    model = BNN(net, {"0.weight": dist.Normal(0.0, 1.0)}, Categorical(10))
    dwp = DeepWeightPrior.from_vae(KernelVAE(3, 2, 4), with_encoder=False, sample_mean=True)
    init = partial(init_to_prior_sample, priors={"0.weight": dwp})
    guide = LogVarianceNormal(model, init_loc_fn=init)
    guide(X, Y)
    mu = guide.loc("0.weight").detach()
    assert mu.shape == (2, 1, 3, 3) and torch.isfinite(mu).all()
    assert not torch.allclose(mu, net[0].weight)
    # Noise-free decoder means: the two kernels come from two codes, so they differ.
    assert not torch.allclose(mu[0], mu[1])


def test_init_to_prior_sample_uses_the_site_distribution_and_checks_shapes():
    net, model = _conv_model()
    trace = poutine.trace(model).get_trace(X, Y)
    site = trace.nodes["0.weight"]
    assert init_to_prior_sample(site).shape == (2, 1, 3, 3)
    dwp5 = DeepWeightPrior.from_vae(KernelVAE.for_kernel_size(5), with_encoder=False)
    with pytest.raises(ValueError, match=r"trailing dimensions"):
        init_to_prior_sample(site, priors={"0.weight": dwp5})
    # Sites without a prior of their own use the fallback (the module's value).
    torch.testing.assert_close(init_to_prior_sample(site, priors={}), net[0].weight)

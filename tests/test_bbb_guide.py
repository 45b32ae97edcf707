"""The BBB guide: the paper's gradients, a conjugate posterior, initialisation and access."""

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import transform_to

from pyro_dwp.bnn import BNN
from pyro_dwp.guides import BBBNormal, LogVarianceNormal
from pyro_dwp.guides.log_variance import TruncatedAlphaNormal
from pyro_dwp.infer import fit
from pyro_dwp.likelihoods import Gaussian

X = torch.tensor([0.3, -1.2, 0.7])
Y = torch.tensor([0.5, -0.1, 1.0])


def toy_model():
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    pyro.sample("y", dist.Normal(w * X, 0.5).to_event(1), obs=Y)


def test_gradient_matches_paper_formulas():
    guide = BBBNormal(
        toy_model, init_loc_fn=lambda site: torch.tensor([0.2, -0.4, 0.1]), init_scale=0.3
    )
    guide()  # set up
    mu, rho = guide.loc("w"), guide.rho("w")
    tr = poutine.trace(guide).get_trace()
    loss = Trace_ELBO().differentiable_loss(
        poutine.replay(toy_model, tr), poutine.replay(guide, tr)
    )
    g_mu, g_rho = torch.autograd.grad(loss, [mu, rho])

    # The paper's f(w, theta) = log q(w | theta) - log P(w) - log P(D | w), with eps fixed
    w0 = tr.nodes["w"]["value"].detach()
    mu0, rho0 = mu.detach(), rho.detach()
    eps = (w0 - mu0) / F.softplus(rho0)
    w = w0.clone().requires_grad_()
    m = mu0.clone().requires_grad_()
    r = rho0.clone().requires_grad_()
    f = (
        dist.Normal(m, F.softplus(r)).log_prob(w).sum()
        - dist.Normal(0.0, 1.0).log_prob(w).sum()
        - dist.Normal(w * X, 0.5).log_prob(Y).sum()
    )
    df_dw, df_dmu, df_drho = torch.autograd.grad(f, [w, m, r])
    assert torch.allclose(g_mu, df_dw + df_dmu, atol=1e-5)
    assert torch.allclose(g_rho, df_dw * eps / (1 + torch.exp(-rho0)) + df_drho, atol=1e-5)
    assert torch.allclose(guide.scale("w"), F.softplus(rho0))


@pytest.mark.parametrize("kl_weight", [1.0, 0.25])
def test_conjugate_linear_regression(kl_weight):
    """Orthogonal design: the exact posterior is factorised, so mean-field VI must recover it.
    With ``kl_weight`` the objective ``nll + kl_weight * KL`` is optimised by the tempered
    posterior ``p(w) p(D | w)^(1 / kl_weight)``: the likelihood's precision over kl_weight."""
    n, d, s0, noise = 40, 3, 1.0, 0.5
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=torch.Generator().manual_seed(1)))
    x = q * torch.tensor([2.0, 4.0, 6.0])  # orthogonal columns of different norms
    w_true = torch.tensor([1.0, -0.5, 0.25])
    y = (x @ w_true + noise * torch.randn(n, generator=torch.Generator().manual_seed(2)))[:, None]

    precision = x.T @ x / (kl_weight * noise**2) + torch.eye(d) / s0**2
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y[:, 0] / (kl_weight * noise**2)

    model = BNN(nn.Linear(d, 1, bias=False), dist.Normal(0.0, s0), Gaussian(n, noise))
    guide = BBBNormal(model, init_scale=0.1)
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.01 ** (1 / 500)})
    fit(
        model,
        guide,
        x,
        y,
        epochs=500,
        batch_size=n,
        optim=optim,
        num_particles=8,
        vectorize_particles=True,
        kl_weight=kl_weight,
        progress=False,
    )
    sd = cov.diagonal().sqrt()
    # tolerance: the Monte Carlo noise left after a decayed learning rate; means within 0.1
    # posterior standard deviations, standard deviations within 5%
    assert ((guide.loc("weight")[0] - mean).abs() < 0.1 * sd).all()
    assert torch.allclose(guide.scale("weight")[0], sd, rtol=0.05)


def test_means_start_at_module_initialisation():
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    model = BNN(net, dist.Normal(0.0, 1.0), Gaussian(10, 0.1))
    guide = BBBNormal(model, init_scale=1e-3)
    guide(torch.zeros(1, 2), torch.zeros(1, 1))
    for name, p in net.named_parameters():
        assert torch.equal(guide.loc(name), p.detach())
        assert torch.allclose(guide.scale(name), torch.full_like(p, 1e-3))
    snr = guide.signal_to_noise()
    assert torch.allclose(snr["0.weight"], net[0].weight.detach().abs() / 1e-3, rtol=1e-4)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "0.1"])
def test_bad_init_scale(bad):
    with pytest.raises(ValueError, match="init_scale"):
        BBBNormal(toy_model, init_scale=bad)


def test_unknown_site_and_unset_guide():
    guide = BBBNormal(toy_model)
    with pytest.raises(RuntimeError, match="has not been run"):
        guide.loc("w")
    guide()
    with pytest.raises(KeyError, match="no site 'v'"):
        guide.scale("v")


def test_rejects_constrained_sites():
    def model():
        pyro.sample("s", dist.HalfNormal(1.0))

    with pytest.raises(ValueError, match="real-valued"):
        BBBNormal(model)()


def test_a_second_guide_gets_its_own_parameters():
    """A new BBBNormal does not start from the tensors an earlier one left in the param store;
    a warning says the earlier guide's values were replaced and what to do."""
    x = torch.linspace(0, 1, 10)[:, None]
    y = torch.sin(3 * x)

    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 1))
        model = BNN(net, dist.Normal(0.0, 1.0), Gaussian(len(x), 0.1))
        return model, BBBNormal(model, init_scale=0.01)

    first = build()
    fit(*first, x, y, epochs=2, batch_size=5, lr=0.1, progress=False)
    model, guide = build()
    with pytest.warns(UserWarning, match=r"replaced.*pyro\.clear_param_store\(\)"):
        guide(x, y)
    torch.testing.assert_close(guide.loc("0.weight"), model.net[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(guide.scale("0.weight"), torch.full((4, 1), 0.01))


@pytest.mark.parametrize("guide_class", [BBBNormal, LogVarianceNormal, TruncatedAlphaNormal])
def test_accessors_read_the_param_store_after_its_values_are_replaced(guide_class):
    """``loc``, ``scale``, ``rho``, ``median`` and ``signal_to_noise`` return the param store's
    values, also when those were replaced after the guide's last call (``set_state``, as a load
    or a resume does), not the copies the guide's modules kept from that call."""
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    guide = guide_class(BNN(net, dist.Normal(0.0, 1.0), Gaussian(10, 0.1)))
    guide(torch.zeros(1, 2), torch.zeros(1, 1))
    store = pyro.get_param_store()
    state = store.get_state()
    new = {k: torch.randn_like(v) for k, v in state["params"].items()}
    store.set_state({**state, "params": new})
    to_scale = transform_to(guide_class.scale_constraint)
    for name in guide.site_names:
        loc, rho = (
            new[f"{guide_class.__name__}.locs.{name}"],
            new[f"{guide_class.__name__}.scales.{name}"],
        )
        assert torch.equal(guide.loc(name), loc)
        assert torch.equal(guide.rho(name), rho)
        assert torch.equal(guide.median()[name], loc)
        if guide_class is not TruncatedAlphaNormal:  # its scale is sqrt(alpha) |mu|
            assert torch.equal(guide.scale(name), to_scale(rho))
            assert torch.equal(guide.signal_to_noise()[name], loc.abs() / to_scale(rho))
        else:
            assert torch.equal(guide.alpha(name), to_scale(rho))

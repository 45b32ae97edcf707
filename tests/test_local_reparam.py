"""The local reparameterisation trick: moments against Monte Carlo over weights, composition."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_dwp.bnn import BNN
from pyro_dwp.guides import LogVarianceNormal, PointMass
from pyro_dwp.infer.local_reparam import LocalReparameterizationMessenger
from pyro_dwp.likelihoods import Categorical

R = 20_000  # LRT draws (rows of one batch) and weight draws of the Monte Carlo reference


def _lrt_and_mc(layer, batched_layer, x, loc, scale):
    """Outputs for ``R`` copies of ``x``: LRT (one weight draw) and plain (``R`` weight draws).

    ``batched_layer(x, ws)`` applies each of the weights ``ws`` ``(R, *w.shape)`` to ``x``.
    """
    with LocalReparameterizationMessenger():
        w = pyro.sample("w", dist.Normal(loc, scale).to_event(loc.dim()))
        lrt = layer(x.expand((R,) + x.shape[1:]), w)
    mc = batched_layer(x, dist.Normal(loc, scale).sample((R,)))
    return lrt, mc


def _check_moments(lrt, mc, mean, var):
    torch.testing.assert_close(lrt.mean(0), mean, atol=4 * (var / R).sqrt().max().item(), rtol=0)
    torch.testing.assert_close(lrt.var(0), var, rtol=0.05, atol=1e-6)
    torch.testing.assert_close(mc.mean(0), mean, atol=4 * (var / R).sqrt().max().item(), rtol=0)
    torch.testing.assert_close(mc.var(0), var, rtol=0.05, atol=1e-6)


def test_linear_moments_match_monte_carlo_over_weights():
    x = torch.tensor([[0.5, -1.0, 2.0]])
    loc, scale = torch.randn(2, 3), torch.rand(2, 3) + 0.1
    bias = torch.tensor([0.3, -0.2])
    lrt, mc = _lrt_and_mc(
        lambda x, w: F.linear(x, w, bias),
        lambda x, ws: torch.einsum("bi,roi->ro", x, ws) + bias,
        x,
        loc,
        scale,
    )
    _check_moments(lrt, mc, F.linear(x, loc, bias)[0], F.linear(x.square(), scale.square())[0])


def test_conv2d_moments_match_monte_carlo_over_weights():
    x = torch.randn(1, 2, 5, 5)
    loc, scale = torch.randn(3, 2, 3, 3), torch.rand(3, 2, 3, 3) + 0.1
    bias = torch.tensor([0.1, 0.0, -0.1])

    def batched(x, ws):  # (1, C, 5, 5), (R, O, C, 3, 3) -> (R, O, 5, 5) through patches
        patches = F.unfold(x, 3, padding=1)[0]  # (C * 9, 25)
        out = torch.einsum("pl,rop->rol", patches, ws.flatten(2)) + bias[:, None]
        return out.reshape(len(ws), -1, 5, 5)

    lrt, mc = _lrt_and_mc(lambda x, w: F.conv2d(x, w, bias, padding=1), batched, x, loc, scale)
    mean = F.conv2d(x, loc, bias, padding=1)[0]
    var = F.conv2d(x.square(), scale.square(), padding=1)[0]
    _check_moments(lrt, mc, mean, var)


def test_other_weights_pass_through_and_functions_are_restored():
    x, w = torch.randn(4, 3), torch.randn(2, 3)
    with LocalReparameterizationMessenger():
        torch.testing.assert_close(F.linear(x, w), x @ w.T)
        assert F.linear is not torch._C._nn.linear
    assert F.linear is torch._C._nn.linear
    assert F.conv2d is torch.conv2d


def test_bnn_conv_layer_uses_lrt_and_prior_term_uses_sampled_weights():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    model = BNN(net, {"0.weight": dist.Normal(0.0, 1.0)}, Categorical(8))
    guide = LogVarianceNormal(model, init_log_variance=-2.0)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    guide(x, y)
    lrt = LocalReparameterizationMessenger()
    calls = []
    sample = lrt._sample
    lrt._sample = lambda mean, var: calls.append(var) or sample(mean, var)
    with lrt:
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x, y)
        loss = Trace_ELBO().differentiable_loss(model, guide, x, y)
    assert len(calls) == 2 and calls[0].shape == (8, 2, 4, 4)  # conv only, once per run
    w = guide_trace.nodes["0.weight"]["value"]
    site = model_trace.nodes["0.weight"]
    assert site["value"] is w
    torch.testing.assert_close(site["fn"].log_prob(w), dist.Normal(0.0, 1.0).log_prob(w).sum())
    # The data term is not the one of the sampled weights (the output was drawn afresh) ...
    out = model_trace.nodes["_RETURN"]["value"]
    assert not torch.allclose(out, torch.func.functional_call(net, {"0.weight": w}, (x,)))
    # ... and the loss is differentiable in the log-variances through the output's variance.
    loss.backward()
    grad = guide.log_variance("0.weight").grad
    assert grad is not None and grad.abs().sum() > 0
    assert torch.isfinite(loss)


def test_a_point_mass_guide_keeps_its_weights_under_a_normal_prior():
    """A point-mass guide's weights are not Gaussian: the replayed model's standard-normal prior
    must not lend them its moments (which drew each activation with variance ``x^2 * 1``,
    measured: a deterministic ConvNet that never learned); the output is the network's own."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    model = BNN(net, {"0.weight": dist.Normal(0.0, 1.0)}, Categorical(8))
    guide = PointMass(model)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    with LocalReparameterizationMessenger():
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x, y)
    w = guide.loc("0.weight")
    plain = torch.func.functional_call(net, {"0.weight": w}, (x,))
    torch.testing.assert_close(model_trace.nodes["_RETURN"]["value"], plain)

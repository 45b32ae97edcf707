"""The Bayesian ConvNet of the DWP experiments: one model/guide/ELBO per prior, bad input."""

import pyro
import pyro.optim
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_dwp.distributions.log_uniform import _kl_normal_log_uniform
from pyro_dwp.experiments.dwp_bnn import make_dwp_cnn_model
from pyro_dwp.experiments.prior_recipes import prior_names
from pyro_dwp.guides import LogVarianceNormal, PointMass, ReverseModelGuide
from pyro_dwp.guides.log_variance import TruncatedAlphaNormal
from pyro_dwp.infer.local_reparam import LocalReparameterizationMessenger
from pyro_dwp.models.dwp_cnn import DWPConvNet
from pyro_dwp.models.kernel_vae import KernelVAE

X, Y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 7, 9])


def _vaes(k1=7, k2=5):
    return {"conv1.weight": KernelVAE(k1, 2, 4), "conv2.weight": KernelVAE(k2, 2, 4)}


@pytest.mark.parametrize("prior", prior_names("dwp"))
@pytest.mark.parametrize("init", ["module", "dwp"])
def test_one_svi_step_per_prior(prior, init):
    net = DWPConvNet((2, 3))
    model, guide, elbo = make_dwp_cnn_model(net, prior, dataset_size=20, vaes=_vaes(), init=init)
    assert elbo is (TraceMeanField_ELBO if prior == "log-uniform" else Trace_ELBO)
    expected = {
        "dwp": ReverseModelGuide,
        "log-uniform": TruncatedAlphaNormal,
        "deterministic-l2": PointMass,
    }
    assert isinstance(guide, expected.get(prior, LogVarianceNormal))
    assert sorted(model.priors) == ["conv1.weight", "conv2.weight"]
    assert model.deterministic == ["conv1.bias", "conv2.bias", "fc.weight", "fc.bias"]
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo())
    with LocalReparameterizationMessenger():
        loss = svi.step(X, Y)
    assert torch.isfinite(torch.tensor(loss))
    base = guide.base if prior == "dwp" else guide
    mu = base.loc("conv1.weight")
    if prior == "log-uniform":  # alpha = sigmoid(-2), the authors' initial w_alpha
        alpha = base.alpha("conv2.weight").mean()
        torch.testing.assert_close(alpha, torch.tensor(0.1192), atol=2e-3, rtol=0)
    elif prior == "deterministic-l2":  # a point: no scale to learn
        assert not base.scale("conv2.weight").any()
    else:
        torch.testing.assert_close(
            base.log_variance("conv2.weight").mean(), torch.tensor(-10.0), atol=1e-2, rtol=0
        )
    if init == "module":
        torch.testing.assert_close(mu, net.conv1.weight, atol=2e-3, rtol=0)  # one Adam step
    else:
        assert (mu - net.conv1.weight).abs().max() > 1e-2


@pytest.mark.parametrize("trainable", [True, False])
def test_reverse_model_trainable_or_frozen(trainable):
    setup = make_dwp_cnn_model(
        DWPConvNet((2, 3)), "dwp", dataset_size=20, vaes=_vaes(), trainable_reverse=trainable
    )
    SVI(*setup[:2], pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO()).step(X, Y)
    names = list(pyro.get_param_store().keys())
    assert any(n.startswith("reverse_model$$$") for n in names) == trainable


def test_per_layer_prior_puts_the_deep_weight_prior_on_named_layers_only():
    vaes = {"conv1.weight": KernelVAE(7, 2, 4)}  # conv2 keeps the standard normal: no VAE needed
    net = DWPConvNet((2, 3))
    model, guide, elbo = make_dwp_cnn_model(
        net, {"conv1": "dwp", "conv2": "normal"}, dataset_size=20, vaes=vaes
    )
    assert elbo is Trace_ELBO and guide.site_names == ("conv1.weight",)
    trace = pyro.poutine.trace(
        pyro.poutine.replay(model, pyro.poutine.trace(guide).get_trace(X, Y))
    )
    sites = trace.get_trace(X, Y).nodes
    assert "conv1.weight_z" in sites and "conv2.weight_z" not in sites
    w2 = sites["conv2.weight"]
    torch.testing.assert_close(
        w2["fn"].log_prob(w2["value"]),
        torch.distributions.Normal(0.0, 1.0).log_prob(w2["value"]).sum(),
    )
    SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo()).step(X, Y)


@pytest.mark.parametrize(
    "prior, match",
    [
        ({"conv1": "dwp"}, "missing \\['conv2'\\]"),
        ({"conv1": "dwp", "conv2": "normal", "fc": "normal"}, "unknown \\['fc'\\]"),
        ({"conv1": "log-uniform", "conv2": "normal"}, "cannot be mixed"),
        ({"conv1": "laplace", "conv2": "normal"}, "unknown prior 'laplace' for conv1"),
    ],
)
def test_bad_per_layer_prior_is_explained(prior, match):
    with pytest.raises(ValueError, match=match):
        make_dwp_cnn_model(DWPConvNet((2, 3)), prior, dataset_size=20, vaes=_vaes())


def test_log_uniform_uses_the_registered_kl():
    model, guide, elbo = make_dwp_cnn_model(DWPConvNet((2, 3)), "log-uniform", dataset_size=20)
    guide(X, Y)
    pyro.set_rng_seed(3)
    loss = elbo().differentiable_loss(model, guide, X, Y)
    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(guide).get_trace(X, Y)
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(X, Y)
    obs = model_trace.nodes["obs"]
    data = obs["fn"].log_prob(obs["value"]).sum() * obs["scale"]
    kl = 0.0
    for name in ("conv1.weight", "conv2.weight"):
        q, p = guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]
        kl = kl + kl_divergence(q, p)
        torch.testing.assert_close(
            kl_divergence(q, p), _kl_normal_log_uniform(q.base_dist, p.base_dist).sum()
        )
    torch.testing.assert_close(loss, kl - data)


@pytest.mark.parametrize("family", ["truncated-alpha", "additive"])
def test_log_uniform_family_kl_pull_on_the_means(family):
    """The additive family's KL pulls every mean to 0 (d KL / d mu ~ 1 / mu: sparse VD, which
    collapses the network on few examples); the truncated-alpha family's KL depends on alpha only.
    """
    model, guide, elbo = make_dwp_cnn_model(
        DWPConvNet((2, 3)), "log-uniform", dataset_size=20, log_uniform_family=family
    )
    guide(X, Y)
    kl = 0.0
    guide_trace = poutine.trace(guide).get_trace(X, Y)
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(X, Y)
    for name in ("conv1.weight", "conv2.weight"):
        kl = kl + kl_divergence(guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"])
    mu = guide.loc("conv2.weight")
    (g,) = torch.autograd.grad(kl, [mu])
    if family == "additive":
        assert (g * mu > 0).all()  # towards 0 everywhere
        small = guide.scale("conv2.weight") ** 2 / mu**2 < 1e-2  # alpha << 1: KL ~ log|mu|
        assert small.sum() > 10
        torch.testing.assert_close(g[small], 1 / mu[small], rtol=0.03, atol=0)
    else:
        assert g.abs().max() < 1e-3 * (1 / mu).abs().min()
        alpha = guide.alpha("conv2.weight")
        assert ((alpha > 0) & (alpha < 1)).all()
        torch.testing.assert_close(guide.scale("conv2.weight"), alpha.sqrt() * mu.abs())


def test_bad_input_is_explained():
    net = DWPConvNet((2, 3))
    with pytest.raises(ValueError, match="unknown prior"):
        make_dwp_cnn_model(net, "laplace", dataset_size=20)
    with pytest.raises(ValueError, match="needs a kernel VAE"):
        make_dwp_cnn_model(net, "dwp", dataset_size=20)
    with pytest.raises(ValueError, match="needs a kernel VAE"):
        make_dwp_cnn_model(net, "normal", dataset_size=20, init="dwp")
    with pytest.raises(ValueError, match=r"missing \['conv2.weight'\]"):
        make_dwp_cnn_model(net, "dwp", dataset_size=20, vaes={"conv1.weight": KernelVAE(7, 2, 4)})
    with pytest.raises(ValueError, match=r"models 7x7 kernels but conv2.weight has 5x5"):
        make_dwp_cnn_model(net, "dwp", dataset_size=20, vaes=_vaes(7, 7))
    vaes = _vaes()
    vaes["conv2.weight"] = KernelVAE(5, 2, 4).to("meta")
    with pytest.raises(ValueError, match=r"is on meta but the network is on cpu"):
        make_dwp_cnn_model(net, "dwp", dataset_size=20, vaes=vaes)

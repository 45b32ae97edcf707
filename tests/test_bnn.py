"""Weight sites from an nn.Module, declarative priors, and bad input."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.reparam import LocScaleReparam
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_dwp.bnn import BNN
from pyro_dwp.distributions import ScaleMixtureNormal
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer import fit, predict
from pyro_dwp.likelihoods import Categorical, Gaussian
from pyro_dwp.priors import Prior


def cnn():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def test_sites_and_selector_priors():
    mix = ScaleMixtureNormal(0.5, 1.0, math.exp(-6))
    model = BNN(
        cnn(), {"0.weight": dist.Normal(0.0, 0.1), "*.bias": None, "*": mix}, Categorical(20)
    )
    tr = poutine.trace(model).get_trace(torch.randn(5, 1, 6, 6), torch.zeros(5, dtype=torch.long))
    latent = [n for n in tr.stochastic_nodes if n != "data"]  # "data": the plate subsample
    assert latent == ["0.weight", "3.weight"]
    assert tr.nodes["0.weight"]["fn"].event_shape == (2, 1, 3, 3)
    assert tr.nodes["0.weight"]["fn"].base_dist.scale.unique().item() == pytest.approx(0.1)
    assert isinstance(tr.nodes["3.weight"]["fn"].base_dist, ScaleMixtureNormal)
    params = [n for n, s in tr.nodes.items() if s["type"] == "param"]
    assert sorted(params) == ["0.bias", "3.bias"]
    assert tr.nodes["obs"]["scale"] == pytest.approx(20 / 5)


def test_prior_object_and_kernel_event_shape():
    class KernelPrior(Prior):
        """A prior over whole 3x3 kernels for conv weights, nothing else."""

        def prior_dist(self, name, module, param):
            if isinstance(module, nn.Conv2d) and name.endswith("weight"):
                return dist.Normal(torch.zeros(3, 3), 1.0).to_event(2)
            return None

    model = BNN(cnn(), KernelPrior())
    tr = poutine.trace(model).get_trace(torch.randn(2, 1, 6, 6))
    fn = tr.nodes["0.weight"]["fn"]
    assert fn.event_shape == (2, 1, 3, 3) and fn.batch_shape == ()
    assert tr.nodes["_RETURN"]["value"].shape == (2, 3)


def test_reparam_argument_rewrites_the_weight_sites():
    """``BNN(..., reparam=...)`` splits the weight sites into extra latent sites."""
    config = {"weight": LocScaleReparam(centered=0.0), "bias": LocScaleReparam(centered=0.0)}
    model = BNN(nn.Linear(2, 1), dist.Normal(0.0, 2.0), Gaussian(4, 0.1), reparam=config)
    tr = poutine.trace(model).get_trace(torch.randn(4, 2), torch.randn(4, 1))
    assert "weight_decentered" in tr.nodes and "bias_decentered" in tr.nodes
    assert tr.nodes["weight"]["infer"].get("_deterministic") or tr.nodes["weight"]["is_observed"]


def test_vectorised_particles_and_parallel_prediction():
    model = BNN(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
        dist.Normal(0.0, 1.0),
        Gaussian(10, 0.1),
    )
    guide = BBBNormal(model)
    x = torch.randn(6, 3)
    fit(
        model,
        guide,
        x,
        torch.randn(6, 2),
        epochs=2,
        batch_size=3,
        num_particles=5,
        vectorize_particles=True,
        progress=False,
    )
    seq = predict(model, guide, x, num_samples=7)
    par = predict(model, guide, x, num_samples=7, parallel=True)
    for p in (seq, par):
        assert p["obs"].shape == (7, 6, 2) and p["_RETURN"].shape == (7, 6, 2)
    # fixed weights give the deterministic network's output
    weights = {n: guide.loc(n).detach() for n in guide.site_names}
    out = poutine.condition(model, data=weights)(x)
    torch.testing.assert_close(out, torch.func.functional_call(model.net, weights, (x,)))


def test_hand_written_pyro_module_works_the_same_way():
    class Net(PyroModule):
        def __init__(self):
            super().__init__()
            self.fc = PyroModule[nn.Linear](2, 1)
            self.fc.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2))
            self.fc.bias = PyroSample(dist.Normal(0.0, 1.0).expand([1]).to_event(1))

        def forward(self, x, y=None):
            out = self.fc(x)
            with pyro.plate("data", 8, subsample_size=len(x)):
                pyro.sample("obs", dist.Normal(out, 0.1).to_event(1), obs=y)
            return out

    model = Net()
    guide = BBBNormal(model)
    x = torch.randn(8, 2)
    y = x @ torch.tensor([[1.0], [-1.0]])
    hist = fit(model, guide, x, y, epochs=300, batch_size=8, lr=0.05, progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert torch.allclose(guide.loc("fc.weight"), torch.tensor([[1.0, -1.0]]), atol=0.1)


def test_wrong_input_shape_is_a_clear_error():
    model = BNN(nn.Linear(3, 1), dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match=r"cannot take an input of shape \(4, 5\)"):
        model(torch.randn(4, 5))


def test_targets_of_wrong_length():
    model = BNN(nn.Linear(3, 1), dist.Normal(0.0, 1.0), Gaussian(10, 0.1))
    with pytest.raises(ValueError, match="4 network outputs but 3 targets"):
        model(torch.randn(4, 3), torch.randn(3, 1))


def test_targets_of_wrong_shape_are_refused_not_broadcast():
    # A (4,) target against a (4, 1) output would broadcast to a (4, 4) log-likelihood: every
    # prediction scored against every target.
    model = BNN(nn.Linear(3, 1), dist.Normal(0.0, 1.0), Gaussian(10, 0.1))
    x = torch.randn(4, 3)
    with pytest.raises(
        ValueError, match=r"targets of shape \(4,\) .* needs targets of shape \(4, 1\)"
    ):
        model(x, torch.randn(4))
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        model(x, torch.randn(4, 2))
    classifier = BNN(nn.Linear(3, 5), dist.Normal(0.0, 1.0), Categorical(10))
    with pytest.raises(ValueError, match=r"Categorical needs targets of shape \(4,\)"):
        classifier(x, torch.zeros(4, 1, dtype=torch.long))
    model(x, torch.randn(4, 1))  # the right shapes pass
    classifier(x, torch.zeros(4, dtype=torch.long))


def test_a_fractional_dataset_size_is_refused():
    with pytest.raises(ValueError, match="positive integer, got 10.7"):
        Gaussian(10.7, 0.1)


def test_selector_matching_no_parameter():
    with pytest.raises(ValueError, match=r"\['conv9.weight'\] match no parameter"):
        BNN(nn.Linear(3, 1), {"conv9.weight": dist.Normal(0.0, 1.0), "*": dist.Normal(0.0, 1.0)})


def test_prior_event_shape_must_fit_parameter():
    kernel5 = dist.Normal(torch.zeros(5, 5), 1.0).to_event(2)
    with pytest.raises(ValueError, match="event shape 5x5 but 0.weight has shape"):
        BNN(cnn(), {"0.weight": kernel5})


@pytest.mark.parametrize(
    "spec,err", [("normal", TypeError), ({"*": 3.0}, TypeError), ({}, ValueError)]
)
def test_invalid_prior_specs(spec, err):
    with pytest.raises(err):
        BNN(nn.Linear(3, 1), spec)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(dataset_size=0), "dataset_size"), (dict(dataset_size=5, scale=-1.0), "scale")],
)
def test_bad_likelihood(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Gaussian(**kwargs)


@pytest.mark.parametrize("parallel", [False, True])
def test_predict_uses_posterior_draws_even_with_an_improper_prior(parallel):
    """Predictive must never sample the prior: LogUniform cannot be sampled."""
    from pyro_dwp.distributions import LogUniform

    model = BNN(nn.Linear(3, 2), {"weight": LogUniform()}, Gaussian(10, 0.1))
    guide = BBBNormal(model, init_scale=1e-3)
    x = torch.randn(5, 3)
    guide(x, torch.zeros(5, 2))
    out = predict(model, guide, x, num_samples=4, parallel=parallel)["_RETURN"]
    assert out.shape == (4, 5, 2)
    # every draw differs (posterior draws, not one conditioned draw repeated)
    assert not torch.allclose(out[0], out[1])
    mean_net = x @ guide.loc("weight").detach().T + model.net.bias.detach()
    torch.testing.assert_close(out.mean(0), mean_net, atol=0.05, rtol=0)

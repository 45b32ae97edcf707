"""``to_inference_data`` follows ArviZ's conventions: iid draws, full shapes, model sites only."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_dwp import BNN, Gaussian
from pyro_dwp.diagnostics import to_inference_data
from pyro_dwp.guides import BBBNormal

X = torch.linspace(0, 1, 12)[:, None]
Y = torch.sin(3 * X)


def _bnn():
    net = nn.Sequential(nn.Linear(1, 5), nn.ReLU(), nn.Linear(5, 1))
    return BNN(net, dist.Normal(0.0, 1.0), Gaussian(len(X)))  # noise_scale learned


def test_one_chain_of_full_weight_shapes_with_named_dims_and_constant_data():
    model = _bnn()
    guide = BBBNormal(model, init_scale=0.1)
    guide(X, Y)
    idata = to_inference_data(model, guide, X, Y, num_samples=6)
    post = idata.posterior
    assert set(post.data_vars) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert post["0.weight"].dims == ("chain", "draw", "0.out", "0.in")
    assert post["0.weight"].shape == (1, 6, 5, 1)
    assert post["0.bias"].dims == ("chain", "draw", "0.out")
    assert post["2.weight"].shape == (1, 6, 1, 5)
    assert idata.log_likelihood["obs"].shape == (1, 6, 12)
    const = idata.constant_data
    assert torch.equal(torch.tensor(const["x"].values), X)
    assert float(const["noise_scale"].values.squeeze()) == pyro.param("noise_scale").item()
    assert idata.posterior.attrs["inference_library"] == "pyro"
    assert idata.posterior.attrs["method"] == "svi"


def test_guide_internal_sites_are_not_in_the_posterior():
    model = _bnn()
    guide = AutoDiagonalNormal(model)
    guide(X, Y)
    idata = to_inference_data(model, guide, X, Y, num_samples=4)
    assert set(idata.posterior.data_vars) == {"0.weight", "0.bias", "2.weight", "2.bias"}


class _LinearModel(PyroModule):
    """``y ~ N(x w^T, 0.1)``: ``w.t()`` only takes a 2-D weight, so it cannot be vectorised."""

    def __init__(self) -> None:
        super().__init__()
        self.w = PyroSample(dist.Normal(0.0, 1.0).expand([1, 1]).to_event(2))

    def forward(self, x, y=None):
        out = (x @ self.w.t())[:, 0]
        with pyro.plate("data", len(x)):
            return pyro.sample("obs", dist.Normal(out, 0.1), obs=y)


def test_a_model_that_cannot_be_vectorised_is_traced_draw_by_draw():
    model = _LinearModel()
    guide = BBBNormal(model, init_loc_fn=lambda site: torch.ones(1, 1))
    guide(X, Y[:, 0])
    idata = to_inference_data(model, guide, X, Y[:, 0], num_samples=3)
    assert idata.posterior["w"].shape == (1, 3, 1, 1)
    assert idata.log_likelihood["obs"].shape == (1, 3, 12)
    w = torch.tensor(idata.posterior["w"].values)[0, :, 0, 0]  # (3,)
    expected = dist.Normal(X[:, 0] * w[:, None], 0.1).log_prob(Y[:, 0])
    torch.testing.assert_close(torch.tensor(idata.log_likelihood["obs"].values)[0], expected)


def test_bad_arguments():
    model = _bnn()
    guide = BBBNormal(model)
    with pytest.raises(ValueError, match="output_name"):
        to_inference_data(model, guide, X, Y, output_fn=torch.exp)

"""Signal-to-noise pruning (``pyro_dwp.infer.pruning``) and classification ``to_inference_data``."""

from __future__ import annotations

import io
from functools import partial

import pyro
import pytest
import torch
from pyro.infer import Predictive

from pyro_dwp import BNN, Categorical
from pyro_dwp.diagnostics import to_inference_data
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer.pruning import (
    posterior_mean_network,
    pruned_network,
    sample_weights,
    sampled_outputs,
    snr_masks,
)
from pyro_dwp.models import SparseLinear, mlp


@pytest.fixture
def bnn() -> tuple[BNN, BBBNormal]:
    """A 6-20-20-3 classifier whose guide has random means and scales (as if fitted)."""
    torch.manual_seed(0)
    model = BNN(mlp(6, [20, 20], 3), pyro.distributions.Normal(0.0, 1.0), Categorical(50))
    guide = BBBNormal(model, init_scale=0.1)
    guide(torch.randn(2, 6), torch.zeros(2, dtype=torch.long))
    with torch.no_grad():
        for _, value in pyro.get_param_store().items():
            value.copy_(torch.randn_like(value))  # means N(0, 1), rho N(0, 1)
    return model, guide


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.95])
def test_masks_remove_exactly_the_lowest_snr_fraction(bnn, fraction):
    _, guide = bnn
    masks = snr_masks(guide, fraction)
    snr = guide.signal_to_noise()
    assert list(masks) == guide.site_names
    assert all(masks[n].shape == snr[n].shape and masks[n].dtype == torch.bool for n in masks)
    flat_snr = torch.cat([v.flatten() for v in snr.values()])
    keep = torch.cat([m.flatten() for m in masks.values()])
    assert (~keep).sum() == round(fraction * flat_snr.numel())
    if fraction > 0:
        assert flat_snr[~keep].max() <= flat_snr[keep].min()  # one global threshold


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), "0.5"])
def test_bad_fraction_is_an_error(bnn, fraction):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        snr_masks(bnn[1], fraction)


def test_pruned_samples_and_mean_are_zero_where_removed(bnn):
    model, guide = bnn
    masks = snr_masks(guide, 0.5)
    samples = sample_weights(guide, 7, masks)
    net = posterior_mean_network(model, guide, masks)
    params = dict(net.named_parameters())
    for name, mask in masks.items():
        assert samples[name].shape == (7, *mask.shape)
        assert (samples[name][:, ~mask] == 0).all() and (samples[name][:, mask] != 0).all()
        assert torch.equal(params[name], guide.loc(name).detach() * mask)
    assert sampled_outputs(net, samples, torch.randn(5, 6), batch_size=2).shape == (7, 5, 3)


def test_exported_sparse_network_matches_the_pruned_mean_network(bnn):
    model, guide = bnn
    masks = snr_masks(guide, 0.75)
    dense = posterior_mean_network(model, guide, masks)
    sparse = pruned_network(model, guide, masks)
    layers = [m for m in sparse.modules() if isinstance(m, SparseLinear)]
    assert len(layers) == 3 and not any(isinstance(m, torch.nn.Linear) for m in sparse.modules())
    kept = sum(int(m.sum()) for n, m in masks.items() if n.endswith("weight"))
    assert sum(layer.nnz for layer in layers) == kept
    x = torch.randn(32, 6)
    torch.testing.assert_close(sparse(x), dense(x))
    buffer = io.BytesIO()
    torch.save(sparse, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), dense(x))


def test_sparse_file_is_smaller_than_dense_at_95_percent():
    torch.manual_seed(0)
    model = BNN(mlp(784, [100, 100], 10), pyro.distributions.Normal(0.0, 1.0), Categorical(10))
    guide = BBBNormal(model)
    guide(torch.randn(1, 784), torch.zeros(1, dtype=torch.long))
    masks = snr_masks(guide, 0.95)
    sizes = []
    for module in (posterior_mean_network(model, guide), pruned_network(model, guide, masks)):
        buffer = io.BytesIO()
        torch.save(module, buffer)
        sizes.append(len(buffer.getvalue()))
    dense, sparse = sizes
    assert sparse < 0.2 * dense  # 5% of the weights at 6 bytes against 4 per weight dense


def test_sparse_linear_shapes_and_errors():
    weight = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, -3.0]])
    bias = torch.tensor([0.5, -0.5])
    layer = SparseLinear(weight, bias)
    assert layer.nnz == 3 and torch.equal(layer.to_dense(), weight)
    x = torch.randn(4, 5, 3)
    torch.testing.assert_close(layer(x), x @ weight.T + bias)
    with pytest.raises(ValueError, match="2-D"):
        SparseLinear(torch.ones(3))


def test_to_inference_data_stores_class_probabilities(bnn):
    model, guide = bnn
    x, y = torch.randn(11, 6), torch.randint(0, 3, (11,))
    softmax = partial(torch.softmax, dim=-1)
    idata = to_inference_data(
        model, guide, x, y, num_samples=8, output_name="probs", output_fn=softmax
    )
    probs = torch.tensor(idata.posterior_predictive["probs"].values)
    assert probs.shape == (1, 8, 11, 3)
    assert idata.posterior_predictive["obs"].shape == (1, 8, 11)
    assert idata.log_likelihood["obs"].shape == (1, 8, 11)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 8, 11))
    log_lik = torch.tensor(idata.log_likelihood["obs"].values)
    torch.testing.assert_close(log_lik.exp(), probs[..., torch.arange(11), y])


def test_to_inference_data_log_likelihood_is_log_softmax_of_the_label(bnn):
    model, guide = bnn
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    pyro.set_rng_seed(1)
    idata = to_inference_data(model, guide, x, y, num_samples=4, output_name="logits")
    pyro.set_rng_seed(1)
    weights = Predictive(guide, num_samples=4)(x[:1])  # the same draws
    weights.pop("_RETURN", None)
    logits = sampled_outputs(model.net, weights, x)  # (4, 9, 3)
    expected = logits.log_softmax(-1)[:, torch.arange(9), y][None]
    torch.testing.assert_close(torch.tensor(idata.log_likelihood["obs"].values), expected)
    stored = torch.tensor(idata.posterior_predictive["logits"].values)
    torch.testing.assert_close(stored, logits[None])


def test_output_fn_needs_output_name(bnn):
    model, guide = bnn
    x, y = torch.randn(4, 6), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="output_name"):
        to_inference_data(model, guide, x, y, output_fn=torch.exp)

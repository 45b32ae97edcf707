"""The kernel initialisers of :mod:`pyro_dwp.init`: shapes, moments, seeding, errors."""

import pytest
import torch
from torch import nn

from pyro_dwp.distributions import DeepWeightPrior
from pyro_dwp.init import init_from_kernels, init_from_prior, xavier
from pyro_dwp.models.dwp_cnn import DWPConvNet
from pyro_dwp.models.kernel_vae import KernelVAE
from pyro_dwp.pretrained import pretrained


@pytest.fixture(scope="module")
def shipped() -> dict[str, DeepWeightPrior]:
    return pretrained("notmnist")


@pytest.mark.parametrize("channels", [(2, 8), (32, 128), (5, 3)])
def test_prior_fills_every_slice_any_width(shipped, channels):
    net = DWPConvNet(channels)
    bias = net.conv1.bias.detach().clone()
    init_from_prior(net, shipped, seed=0)
    assert net.conv1.weight.shape == (channels[0], 1, 7, 7)
    assert net.conv2.weight.shape == (channels[1], channels[0], 5, 5)
    # every (out, in) slice is its own kernel, the bias is untouched
    flat = net.conv2.weight.detach().flatten(0, 1)
    assert torch.unique(flat, dim=0).shape[0] == flat.shape[0]
    assert torch.equal(net.conv1.bias, bias)


def test_prior_moments_match_the_prior(shipped):
    """Kernels of many initialisations have the per-pixel mean and the std of prior samples."""
    prior = shipped["conv2"]
    draws = torch.cat(
        [
            init_from_prior(nn.Conv2d(16, 64, 5), {"": prior}, seed=s).weight.detach().flatten(0, 1)
            for s in range(4)
        ]
    )  # (4096, 5, 5)
    torch.manual_seed(1)
    ref = prior.sample((4096,))
    se = ref.std(0) * (2 / 4096) ** 0.5  # standard error of a difference of two means
    assert ((draws.mean(0) - ref.mean(0)).abs() < 5 * se).all()
    torch.testing.assert_close(draws.std(0), ref.std(0), rtol=0.1, atol=0)
    assert draws.std().item() == pytest.approx(ref.std().item(), rel=0.03)


def test_scale_and_sample_mean_and_seed(shipped):
    d = shipped["conv1"]
    mean_prior = DeepWeightPrior(d.decoder, sample_mean=True)
    a = init_from_prior(nn.Conv2d(1, 8, 7), {"": mean_prior}, seed=3).weight.detach().clone()
    b = init_from_prior(nn.Conv2d(1, 8, 7), {"": mean_prior}, scale=2.0, seed=3).weight
    torch.testing.assert_close(b, 2 * a)
    conv = nn.Conv2d(1, 8, 7)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    init_from_prior(conv, {"": mean_prior}, seed=3)
    assert torch.equal(torch.rand(1), before)  # a seed leaves the global stream alone


def test_kernels_come_from_the_set():
    bank = torch.randn(6, 5, 5)
    net = init_from_kernels(DWPConvNet((4, 16)), {"conv2": bank}, scale=0.5, seed=0)
    w = net.conv2.weight.detach().flatten(0, 1)  # (64, 5, 5)
    dist = (w[:, None] - 0.5 * bank).abs().amax((2, 3))  # (64, 6)
    assert (dist.min(1).values < 1e-7).all()
    assert len(set(dist.argmin(1).tolist())) == 6  # all of a small set gets used
    again = init_from_kernels(DWPConvNet((4, 16)), {"conv2": bank}, scale=0.5, seed=0)
    assert torch.equal(again.conv2.weight, net.conv2.weight)


def test_xavier_variance():
    net = xavier(DWPConvNet((32, 128)), seed=0)
    fan_in, fan_out = 32 * 25, 128 * 25
    expected = (2 / (fan_in + fan_out)) ** 0.5
    assert net.conv2.weight.std().item() == pytest.approx(expected, rel=0.02)
    w1 = net.conv1.weight.detach().clone()
    xavier(net, ["conv2"], seed=1)
    assert torch.equal(net.conv1.weight, w1)


def test_errors_name_layer_and_sizes(shipped):
    net = DWPConvNet((4, 8))
    with pytest.raises(ValueError, match=r"'conv1' has 7x7 kernels .*\(4, 1, 7, 7\).* 5x5"):
        init_from_prior(net, {"conv1": shipped["conv2"]})
    with pytest.raises(ValueError, match=r"'conv2' has 5x5 kernels .* kernel size is 7x7"):
        init_from_kernels(net, {"conv2": torch.randn(3, 7, 7)})
    with pytest.raises(ValueError, match=r"'fc' is a Linear, not a Conv2d"):
        init_from_prior(net, {"fc": shipped["conv1"]})
    with pytest.raises(ValueError, match=r"no layer 'conv3'.*\['conv1', 'conv2'\]"):
        xavier(net, ["conv3"])
    with pytest.raises(ValueError, match=r"non-empty tensor \(n, k, k\), got \(0, 5, 5\)"):
        init_from_kernels(net, {"conv2": torch.randn(0, 5, 5)})
    with pytest.raises(ValueError, match="scale must be a positive"):
        init_from_prior(net, shipped, scale=0.0)
    # nothing was written before an error: a bad second layer leaves the first one alone
    w1 = net.conv1.weight.detach().clone()
    with pytest.raises(ValueError):
        init_from_prior(net, {"conv1": shipped["conv1"], "conv2": shipped["conv1"]})
    assert torch.equal(net.conv1.weight, w1)


def test_a_users_prior_on_nested_layers():
    vae = KernelVAE.for_kernel_size(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(6, 2, 3)))
    init_from_prior(net, {"0": DeepWeightPrior(vae.decoder), "2.0": DeepWeightPrior(vae.decoder)})
    assert net[2][0].weight.shape == (2, 6, 3, 3)

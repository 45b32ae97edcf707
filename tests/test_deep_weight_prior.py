"""The deep weight prior as a distribution and a module."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from pyro_dwp.distributions.deep_weight_prior import DeepWeightPrior
from pyro_dwp.infer.reparam import DeepWeightPriorReparam, DeepWeightPriorStrategy
from pyro_dwp.models.kernel_vae import KernelVAE


class _LinearGaussianDecoder(nn.Module):
    """p(w | z) = N(A z + b, s^2 I) over 3x3 kernels, so p(w) = N(b, A A^T + s^2 I)."""

    kernel_size, z_dim = 3, 2

    def __init__(self, lift: torch.Tensor, offset: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.lift, self.offset, self.scale = nn.Parameter(lift), nn.Parameter(offset), scale

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = (z @ self.lift.T + self.offset).reshape(z.shape[:-1] + (3, 3))
        return loc, torch.full_like(loc, self.scale)


class _ExactPosteriorEncoder(nn.Module):
    """The exact p(z | w) of the linear-Gaussian model; diagonal because A^T A is diagonal."""

    def __init__(self, decoder: _LinearGaussianDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, s = self.decoder.lift, self.decoder.offset, self.decoder.scale
        var = 1 / (1 + (a**2).sum(0) / s**2)  # diag of (I + A^T A / s^2)^-1
        loc = var * ((w.flatten(-2) - b) @ a) / s**2
        return loc, var.sqrt().expand_as(loc)


def _linear_gaussian(scale: float = 0.3) -> tuple[_LinearGaussianDecoder, dist.Distribution]:
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(9, 2, generator=g, dtype=torch.float64))
    lift = q * torch.tensor([1.5, 0.7], dtype=torch.float64)  # orthogonal columns
    offset = 0.1 * torch.randn(9, generator=g, dtype=torch.float64)
    decoder = _LinearGaussianDecoder(lift, offset, scale)
    cov = lift @ lift.T + scale**2 * torch.eye(9, dtype=torch.float64)
    return decoder, dist.MultivariateNormal(offset, cov)


def _small_prior(kernel_size: int = 5, **kwargs) -> DeepWeightPrior:
    return DeepWeightPrior.from_vae(KernelVAE(kernel_size, z_dim=2, hidden=4), **kwargs)


def test_log_prob_is_exact_with_exact_posterior_encoder():
    decoder, marginal = _linear_gaussian()
    prior = DeepWeightPrior(decoder, _ExactPosteriorEncoder(decoder), num_samples=5, chunk_size=2)
    w = marginal.sample((4, 2)).reshape(4, 2, 3, 3)
    expected = marginal.log_prob(w.flatten(-2))
    first, second = prior.log_prob(w), prior.log_prob(w)
    assert first.shape == (4, 2)
    # Every importance weight equals p(w): the estimate is exact, with zero variance.
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(first, second, rtol=1e-10, atol=1e-10)


def test_samples_follow_the_marginal():
    decoder, marginal = _linear_gaussian()
    prior = DeepWeightPrior(decoder)
    w = prior.sample((20_000,)).flatten(-2)
    # 20k samples: standard errors about 0.011 (means) and 0.023 (covariances) at most.
    torch.testing.assert_close(w.mean(0), marginal.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(w.T.cov(), marginal.covariance_matrix, atol=0.1, rtol=0)


def test_sample_mean_lies_on_the_decoder_manifold():
    decoder, _ = _linear_gaussian()
    prior = DeepWeightPrior(decoder, sample_mean=True)
    w = prior.sample((50,)).flatten(-2) - decoder.offset
    lift = decoder.lift.detach()
    residual = w - w @ torch.linalg.pinv(lift).T @ lift.T
    assert residual.abs().max() < 1e-10


def test_sample_and_log_prob_shapes_with_expand_and_independent():
    prior = _small_prior(num_samples=3)
    assert prior.batch_shape == () and prior.event_shape == (5, 5)
    assert prior.sample().shape == (5, 5)
    assert prior.sample((3,)).shape == (3, 5, 5)
    layer = prior.expand((4, 2))
    assert layer.batch_shape == (4, 2) and layer.event_shape == (5, 5)
    assert layer.sample((3,)).shape == (3, 4, 2, 5, 5)
    site = layer.to_event(2)
    assert site.batch_shape == () and site.event_shape == (4, 2, 5, 5)
    w = site.sample((3,))
    assert w.shape == (3, 4, 2, 5, 5)
    assert site.log_prob(w).shape == (3,)
    assert layer.log_prob(w).shape == (3, 4, 2)


def test_works_as_a_plain_pyro_sample_site():
    prior = _small_prior(num_samples=2)
    trace = poutine.trace(lambda: pyro.sample("w", prior.expand((3, 1)).to_event(2))).get_trace()
    assert trace.nodes["w"]["value"].shape == (3, 1, 5, 5)
    assert trace.log_prob_sum().isfinite()


def test_log_prob_without_encoder_raises():
    prior = _small_prior(with_encoder=False)
    assert prior.sample((2,)).shape == (2, 5, 5)
    with pytest.raises(RuntimeError, match="needs an encoder"):
        prior.log_prob(torch.zeros(5, 5))


def test_kernel_size_mismatch_raises():
    prior = DeepWeightPrior.from_vae(KernelVAE(7, z_dim=2, hidden=4))
    with pytest.raises(ValueError, match="DeepWeightPrior for 7x7 kernels applied to 5x5 kernels"):
        prior.log_prob(torch.zeros(3, 5, 5))
    with pytest.raises(ValueError, match="7x7 kernels"):
        prior.log_prob(torch.zeros(7))


def test_value_on_another_device_raises():
    prior = _small_prior()
    with pytest.raises(RuntimeError, match=r"on cpu but its input is on meta"):
        prior.log_prob(torch.zeros(5, 5, device="meta"))


def test_to_moves_networks_and_latent_prior():
    prior = _small_prior(num_samples=2)
    holder = nn.ModuleDict({"conv1__weight": prior})
    holder.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in prior.parameters())
    assert prior.sample((2,)).dtype == torch.float64
    assert prior.log_prob(torch.zeros(5, 5, dtype=torch.float64)).dtype == torch.float64
    assert prior.to("meta") is prior
    assert {p.device.type for p in prior.parameters()} == {"meta"}
    assert prior.latent_loc.device.type == "meta"
    with pytest.raises(RuntimeError, match=r"on meta but its input is on cpu"):
        prior.log_prob(torch.zeros(5, 5, dtype=torch.float64))


def test_state_dict_round_trip():
    source = _small_prior(num_samples=4)
    target = _small_prior(num_samples=4)
    state = source.state_dict()
    assert state.keys() == target.state_dict().keys()
    assert {k.split(".")[0] for k in state} == {"decoder", "encoder"}
    target.load_state_dict(state)
    w = torch.randn(3, 5, 5)
    torch.manual_seed(2)
    a = source.log_prob(w)
    torch.manual_seed(2)
    b = target.log_prob(w)
    torch.testing.assert_close(a, b)


def test_networks_are_copied_and_frozen():
    vae = KernelVAE(5, z_dim=2, hidden=4)
    prior = DeepWeightPrior.from_vae(vae)
    assert all(not p.requires_grad for p in prior.parameters())
    assert all(p.requires_grad for p in vae.parameters())
    z = torch.randn(3, 2)
    before = prior.conditional(z).mean
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.add_(1.0)
    torch.testing.assert_close(prior.conditional(z).mean, before)


def test_conditional_and_latent():
    prior = _small_prior()
    z = prior.latent((4, 3)).sample()
    assert z.shape == (4, 3, 2)
    p_w = prior.conditional(z)
    assert p_w.batch_shape == (4, 3) and p_w.event_shape == (5, 5)


def test_strategy_reparameterises_deep_weight_prior_sites_only():
    strategy = DeepWeightPriorStrategy()
    site = {"name": "w", "fn": _small_prior().expand((2, 3)).to_event(2)}
    assert isinstance(strategy(site), DeepWeightPriorReparam)
    assert strategy({"name": "b", "fn": dist.Normal(0.0, 1.0).expand((3,)).to_event(1)}) is None


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_samples"):
        _small_prior(num_samples=0)

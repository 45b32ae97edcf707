"""The bound gap L - L_aux on a linear-Gaussian decoder, where log p(w) is exact."""

import math

import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from pyro_dwp.experiments.dwp_bnn import make_dwp_cnn_model
from pyro_dwp.infer.dwp_gap import dwp_bound_gap, kernel_bound_terms
from pyro_dwp.models.dwp_cnn import DWPConvNet
from pyro_dwp.models.kernel_vae import KernelVAE

K, Z, S = 2, 2, 0.3  # kernel side, latent dim, decoder noise


class LinearDecoder(nn.Module):
    """p(w | z) = N(A z + b, S^2 I) over 2x2 kernels."""

    def __init__(self, a: Tensor, b: Tensor) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        loc = (z @ self.a.T + self.b).reshape(z.shape[:-1] + (K, K))
        return loc, torch.full_like(loc, S)


class LinearEncoder(nn.Module):
    """r(z | w) = N(C (w - b) + d, diag(scale)^2)."""

    def __init__(self, c: Tensor, b: Tensor, d: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.c, self.b, self.d, self.scale = c, b, d, scale

    def forward(self, w: Tensor) -> tuple[Tensor, Tensor]:
        loc = (w.flatten(-2) - self.b) @ self.c.T + self.d
        return loc, self.scale.expand(loc.shape)


def _exact(a, b, w):
    """log p(w) and the posterior p(z | w) of the linear-Gaussian model."""
    d = K * K
    marginal = MultivariateNormal(b, a @ a.T + S**2 * torch.eye(d))
    precision = torch.eye(Z) + a.T @ a / S**2
    cov = torch.linalg.inv(precision)
    mean = (w.flatten(-2) - b) @ (cov @ a.T / S**2).T
    return marginal.log_prob(w.flatten(-2)), mean, cov


def test_gap_on_linear_gaussian_decoder():
    torch.manual_seed(0)
    # Orthogonal columns: the posterior p(z | w) is diagonal, so a Normal reverse model can match.
    a = torch.linalg.qr(torch.randn(K * K, Z))[0] * torch.tensor([1.0, 2.0])
    b, w = 0.1 * torch.randn(K * K), torch.randn(3, K, K)
    log_p, post_mean, post_cov = _exact(a, b, w)
    assert torch.allclose(post_cov, torch.diag(post_cov.diagonal()), atol=1e-6)
    decoder, c, post_std = LinearDecoder(a, b), post_cov @ a.T / S**2, post_cov.diagonal().sqrt()

    # The exact posterior as reverse model: no gap, and both estimates are exactly log p(w).
    exact = LinearEncoder(c, b, torch.zeros(Z), post_std)
    iwae, aux = kernel_bound_terms(exact, decoder, w, 64, chunk_size=10)
    torch.testing.assert_close(iwae, log_p, atol=1e-4, rtol=0)
    torch.testing.assert_close(aux, log_p, atol=1e-4, rtol=0)

    # A mismatched reverse model: aux = log p(w) - KL(r || posterior), and IWAE closes the gap.
    enc = LinearEncoder(c + 0.05 * torch.randn(Z, K * K), b, torch.full((Z,), 0.05), 1.3 * post_std)
    iwae, aux = kernel_bound_terms(enc, decoder, w, 4000)
    r = Normal(*enc(w))
    r_mvn = MultivariateNormal(r.loc, torch.diag_embed(r.scale.square()))
    kl = kl_divergence(r_mvn, MultivariateNormal(post_mean, post_cov))
    assert (kl > 0.2).all()
    torch.testing.assert_close(aux, log_p - kl, atol=0.08, rtol=0)
    torch.testing.assert_close(iwae, log_p, atol=0.05, rtol=0)
    assert ((iwae - aux) > 0).all()


def test_dwp_bound_gap_reports_trained_and_frozen_reverse_models():
    vaes = {"conv1.weight": KernelVAE(7, 2, 4), "conv2.weight": KernelVAE(5, 2, 4)}
    model, guide, _ = make_dwp_cnn_model(DWPConvNet((2, 3)), "dwp", dataset_size=10, vaes=vaes)
    x, y = torch.randn(1, 1, 28, 28), torch.tensor([3])
    guide(x, y)
    gap = dwp_bound_gap(model, guide, x, y, num_samples=50, num_weight_samples=2)
    assert set(gap) == {"conv1.weight", "conv2.weight", "total"}
    assert gap["conv2.weight"]["kernels"] == 6 and gap["total"]["kernels"] == 8
    for row in gap.values():
        assert row["gap"] >= 0 and row["gap_frozen"] >= 0 and math.isfinite(row["log_p_w"])
        # An untrained reverse model is still the VAE's encoder: same bound up to noise.
        assert abs(row["aux"] - row["aux_frozen"]) < 1e-3 * max(1.0, abs(row["aux"])) + 5

"""The conv VAE of the DWP paper's Appendix E (Figure 4, right)."""

from __future__ import annotations

import pytest
import torch
import torch.distributions as td

from pyro_dwp.models import MNISTConvVAE


def test_shapes_and_the_appendix_e_kernel_sizes() -> None:
    vae = MNISTConvVAE(z_dim=5)
    x = (torch.rand(3, 1, 28, 28) > 0.5).float()
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (3, 5) and bool((scale > 0).all())
    assert vae.decode(loc).shape == (3, 1, 28, 28)
    assert vae.elbo(x).shape == (3,)
    assert vae.conv1.weight.shape == (64, 1, 7, 7) and vae.conv2.weight.shape == (128, 64, 5, 5)


def test_elbo_is_the_bernoulli_log_likelihood_minus_the_gaussian_kl() -> None:
    """The one-draw ELBO against torch.distributions on the same z."""
    torch.manual_seed(0)
    vae = MNISTConvVAE(z_dim=4)
    x = (torch.rand(2, 1, 28, 28) > 0.5).float()
    torch.manual_seed(1)
    got = vae.elbo(x)
    loc, scale = vae.encode(x)
    torch.manual_seed(1)
    z = loc + scale * torch.randn_like(loc)
    log_lik = td.Bernoulli(logits=vae.decode(z)).log_prob(x).flatten(1).sum(-1)
    q, p = td.Normal(loc, scale), td.Normal(torch.zeros_like(loc), torch.ones_like(scale))
    kl = td.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(got, log_lik - kl)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="z_dim must be >= 1"):
        MNISTConvVAE(z_dim=0)
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 28, 28\), got \(2, 28, 28\)"):
        MNISTConvVAE().elbo(torch.zeros(2, 28, 28))

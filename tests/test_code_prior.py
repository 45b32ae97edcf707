"""A Gaussian-mixture code prior in place of N(0, I): its density, its EM fit, and its use by
the deep weight prior, the kernel VAE file, the compiled engine, the bound gap and dwp-prior."""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_compiled import assert_same_loss_and_grads, images
from test_dwp_prior import kernel_dir  # noqa: F401 (a fixture)

from pyro_dwp.cli import main
from pyro_dwp.distributions import DeepWeightPrior
from pyro_dwp.distributions.code_prior import GaussianMixtureCodePrior
from pyro_dwp.distributions.deep_weight_prior import iwae_log_marginal
from pyro_dwp.experiments.dwp_bnn import make_dwp_cnn_model
from pyro_dwp.infer import LocalReparameterizationMessenger
from pyro_dwp.infer.code_prior import fit_code_prior, fit_gaussian_mixture
from pyro_dwp.infer.dwp_gap import kernel_bound_terms
from pyro_dwp.models import DWPConvNet, KernelVAE, load_kernel_vae, save_kernel_vae

pytestmark = pytest.mark.usefixtures("one_thread")


def mixture(z_dim: int = 2, components: int = 3, seed: int = 0) -> GaussianMixtureCodePrior:
    g = torch.Generator().manual_seed(seed)
    return GaussianMixtureCodePrior(
        torch.randn(components, generator=g),
        2 * torch.randn(components, z_dim, generator=g),
        0.3 + torch.rand(components, z_dim, generator=g),
    )


def test_log_prob_is_the_mixture_density_and_integrates_to_one():
    m = mixture(z_dim=1)
    z = torch.linspace(-15, 15, 30_001)[:, None]
    density = m.log_prob(z).exp()
    assert float(torch.trapezoid(density, z[:, 0])) == pytest.approx(1.0, abs=1e-5)
    weights = m.logits.softmax(-1)
    by_hand = sum(
        w * torch.distributions.Normal(loc, s).log_prob(z[:, 0]).exp()
        for w, loc, s in zip(weights, m.loc[:, 0], m.scale[:, 0], strict=True)
    )
    torch.testing.assert_close(density, by_hand, rtol=1e-5, atol=1e-12)
    z2 = torch.randn(4, 5, 2)
    m2 = mixture()
    torch.testing.assert_close(m2.log_prob(z2), m2.distribution((4, 5)).log_prob(z2))


def test_samples_follow_the_mixture():
    m = mixture(z_dim=2, components=2, seed=3)
    z = m.sample((200_000,))
    weights = m.logits.softmax(-1)
    torch.testing.assert_close(z.mean(0), weights @ m.loc, atol=0.03, rtol=0)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="logits \\(C,\\), loc \\(C, z_dim\\)"):
        GaussianMixtureCodePrior(torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="logits have 3 components and loc 2"):
        GaussianMixtureCodePrior(torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="every scale > 0"):
        GaussianMixtureCodePrior(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="dimension 2 given to a code prior of dimension 3"):
        GaussianMixtureCodePrior.empty(2, 3).log_prob(torch.zeros(4, 2))


def test_one_component_fit_is_the_sample_mean_and_variance():
    x = torch.randn(500, 3) * torch.tensor([0.5, 1.0, 2.0]) + 1.0
    m, mean_ll = fit_gaussian_mixture(x, 1)
    torch.testing.assert_close(m.loc[0], x.mean(0))
    torch.testing.assert_close(m.scale[0], x.std(0, unbiased=False))
    closed_form = torch.distributions.Normal(m.loc[0], m.scale[0]).log_prob(x).sum(-1).mean()
    assert mean_ll == pytest.approx(float(closed_form), rel=1e-5)


def test_em_recovers_a_known_mixture():
    g = torch.Generator().manual_seed(0)
    a = 0.3 * torch.randn(3000, 2, generator=g) + torch.tensor([3.0, 0.0])
    b = torch.randn(1000, 2, generator=g) * torch.tensor([1.0, 0.5]) - torch.tensor([2.0, 1.0])
    m, mean_ll = fit_gaussian_mixture(torch.cat([a, b]), 2, seed=1)
    order = m.loc[:, 0].argsort(descending=True)
    torch.testing.assert_close(
        m.logits.softmax(-1)[order], torch.tensor([0.75, 0.25]), atol=0.01, rtol=0
    )
    torch.testing.assert_close(
        m.loc[order], torch.tensor([[3.0, 0.0], [-2.0, -1.0]]), atol=0.07, rtol=0
    )
    torch.testing.assert_close(
        m.scale[order], torch.tensor([[0.3, 0.3], [1.0, 0.5]]), atol=0.05, rtol=0
    )
    assert mean_ll == pytest.approx(float(m.log_prob(torch.cat([a, b])).mean()), rel=1e-5)


def test_fit_refuses_bad_input():
    with pytest.raises(ValueError, match="n >= components >= 1"):
        fit_gaussian_mixture(torch.randn(3, 2), 4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_gaussian_mixture(torch.tensor([[0.0], [math.nan]]), 1)
    with pytest.raises(ValueError, match="kernels \\(n, k, k\\)"):
        fit_code_prior(KernelVAE(5, 2, 4).encoder, torch.randn(10, 25), 2)


def vae_with_code_prior(seed: int = 0) -> KernelVAE:
    torch.manual_seed(seed)
    vae = KernelVAE(5, 2, 4)
    kernels = 0.1 * torch.randn(60, 5, 5)
    vae.set_code_prior(fit_code_prior(vae.encoder, kernels, 3, seed=seed)[0])
    return vae


def test_deep_weight_prior_uses_the_code_prior():
    vae = vae_with_code_prior()
    prior = DeepWeightPrior.from_vae(vae, num_samples=20)
    assert isinstance(prior.latent((4,)), dist.MixtureSameFamily)
    assert prior.latent((4,)).batch_shape == (4,)
    w = 0.1 * torch.randn(6, 5, 5)
    torch.manual_seed(1)
    got = prior.log_prob(w)
    torch.manual_seed(1)
    expected, _ = iwae_log_marginal(
        vae.encoder, vae.decoder, w, 20, log_p_z=vae.code_prior.log_prob
    )
    torch.testing.assert_close(got, expected)
    torch.manual_seed(1)
    standard = DeepWeightPrior.from_vae(vae, num_samples=20, code_prior=None).log_prob(w)
    assert not torch.allclose(got, standard)
    with pytest.raises(ValueError, match="code prior of dimension 3 for a decoder of z_dim 2"):
        DeepWeightPrior(vae.decoder, code_prior=mixture(z_dim=3))
    with pytest.raises(ValueError, match="code prior of dimension 3 for a VAE of z_dim 2"):
        vae.set_code_prior(mixture(z_dim=3))


def test_vae_bounds_use_the_code_prior():
    """The IWAE bound with K = 1 and the ELBO are the same random quantity, E_q[log p(w | z) +
    log p(z) - log q(z | w)]; with many samples their means agree, and both change with p(z)."""
    vae = vae_with_code_prior()
    w = 0.1 * torch.randn(3, 5, 5)
    torch.manual_seed(0)
    elbo = vae.elbo(w, num_samples=20_000)
    torch.manual_seed(1)
    iwae1 = torch.stack([vae.iwae_bound(w, 1) for _ in range(2000)]).mean(0)
    torch.testing.assert_close(elbo, iwae1, atol=0.15, rtol=0)
    q = vae.encode(w)
    torch.manual_seed(0)
    z = q.rsample((20_000,))
    by_hand = (vae.decode(z).log_prob(w) + vae.code_prior.log_prob(z) - q.log_prob(z)).mean(0)
    torch.testing.assert_close(elbo, by_hand)


def test_code_prior_round_trips_through_the_vae_file(tmp_path):
    vae = vae_with_code_prior()
    save_kernel_vae(tmp_path / "vae.pt", vae, layer="conv2")
    loaded, meta = load_kernel_vae(tmp_path / "vae.pt")
    assert meta["code_prior_components"] == 3
    for name in ("logits", "loc", "scale"):
        torch.testing.assert_close(getattr(loaded.code_prior, name), getattr(vae.code_prior, name))
    g = torch.Generator().manual_seed(0)
    codes = loaded.sample_codes(5, g)
    assert codes.shape == (5, 2)
    vae.code_prior.scale[1, 0] = -1.0  # a corrupt file: named, not a NaN density later
    save_kernel_vae(tmp_path / "bad.pt", vae)
    with pytest.raises(ValueError, match="bad.pt is inconsistent: .*every scale > 0"):
        load_kernel_vae(tmp_path / "bad.pt")
    plain = KernelVAE(5, 2, 4)
    save_kernel_vae(tmp_path / "plain.pt", plain)
    again, meta = load_kernel_vae(tmp_path / "plain.pt")
    assert again.code_prior is None and meta["code_prior_components"] is None


def test_compiled_engine_equals_trace_elbo_with_a_code_prior():
    torch.manual_seed(0)
    vaes = {"conv1.weight": KernelVAE(7, 2, 4), "conv2.weight": vae_with_code_prior(1)}
    setup = make_dwp_cnn_model(DWPConvNet((2, 3)), "dwp", dataset_size=20, vaes=vaes)
    assert setup.model.priors["conv2.weight"].code_prior is not None
    x, y = images(5)
    pyro.clear_param_store()
    assert_same_loss_and_grads(setup.model, setup.guide, x, y)
    assert_same_loss_and_grads(setup.model, setup.guide, x, y, [LocalReparameterizationMessenger()])


def test_bound_gap_terms_use_the_code_prior():
    vae = vae_with_code_prior()
    w = 0.1 * torch.randn(4, 5, 5)
    log_p_z = vae.code_prior.log_prob
    torch.manual_seed(0)
    iwae, aux = kernel_bound_terms(vae.encoder, vae.decoder, w, 50, log_p_z=log_p_z)
    torch.manual_seed(0)
    expected = iwae_log_marginal(vae.encoder, vae.decoder, w, 50, log_p_z=log_p_z)
    torch.testing.assert_close((iwae, aux), expected)
    assert bool((iwae >= aux).all())


def test_dwp_prior_fits_a_code_prior_and_refits_one_from_trained_vaes(tmp_path, kernel_dir):  # noqa: F811
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--kernels", str(kernel_dir), "--layers", "conv2", "--iwae-samples", "4"]
    common += ["--no-progress"]
    argv = ["dwp-prior", *common, "--out", str(first), "--epochs", "2"]
    assert main([*argv, "--code-prior-components", "3"]) == 0
    report = json.loads((first / "prior_report.json").read_text())
    entry = report["layers"]["conv2"]
    assert entry["code_prior"]["components"] == 3
    assert math.isfinite(entry["code_prior"]["codes_mean_log_likelihood"])
    vae, meta = load_kernel_vae(first / "vae_conv2.pt")
    assert vae.code_prior.components == 3 and meta["training"]["code_prior_components"] == {
        "conv2": 3
    }
    # refit only the code prior of the trained VAE: the networks are unchanged
    argv = ["dwp-prior", *common, "--out", str(second), "--from-vaes", str(first)]
    assert main([*argv, "--code-prior-components", "2"]) == 0
    refit, meta = load_kernel_vae(second / "vae_conv2.pt")
    assert refit.code_prior.components == 2
    assert meta["training"]["epochs"] == 2 and meta["training"]["from_vaes"] == str(first)
    # the report names the trained VAE's options per layer, and at the top only those that
    # applied (not the defaults of --steps, --decoder-scale... that trained nothing)
    report = json.loads((second / "prior_report.json").read_text())
    assert report["layers"]["conv2"]["training"] == meta["training"]
    assert report["layers"]["conv2"]["training"]["steps"] is None
    assert set(report["training"]) == {
        "min_norm", "valid_fraction", "code_prior_components", "from_vaes", "seed"
    }  # fmt: skip
    for (name, p), q in zip(vae.named_parameters(), refit.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    # the same command again writes the same report (the evaluation's draws are seeded too)
    again = tmp_path / "again"
    argv = ["dwp-prior", *common, "--out", str(again), "--from-vaes", str(first)]
    assert main([*argv, "--code-prior-components", "2"]) == 0
    assert json.loads((again / "prior_report.json").read_text())["layers"] == report["layers"]


def test_dwp_prior_code_prior_options_are_checked(tmp_path, kernel_dir, capsys):  # noqa: F811
    argv = ["dwp-prior", "--kernels", str(kernel_dir), "--out", str(tmp_path / "o")]
    assert main([*argv, "--from-vaes", str(tmp_path)]) == 1
    assert "--from-vaes only fits a code prior" in capsys.readouterr().err
    assert main([*argv, "--code-prior-components", "0"]) == 1
    assert "--code-prior-components takes one value >= 1" in capsys.readouterr().err
    assert main([*argv, "--code-prior-components", "2", "3", "4"]) == 1  # two layers
    assert "or one per layer of --layers ['conv1', 'conv2']" in capsys.readouterr().err
    wrong = tmp_path / "wrong"
    save_kernel_vae(wrong / "vae_conv2.pt", KernelVAE(7, 2, 4), history={"epochs": 1})
    argv += ["--layers", "conv2", "--from-vaes", str(wrong), "--code-prior-components", "2"]
    assert main(argv) == 1
    assert "is a VAE of 7x7 kernels, the kernel set's are 5x5" in capsys.readouterr().err
    save_kernel_vae(wrong / "vae_conv2.pt", KernelVAE(5, 2, 4).rescale_(2.0), history={})
    assert main(argv) == 1
    assert "is a VAE rescaled by 2 (KernelVAE.rescale_)" in capsys.readouterr().err

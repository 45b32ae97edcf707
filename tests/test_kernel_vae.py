"""The kernel VAE of the deep weight prior: architectures, bounds and training."""

import math

import pytest
import torch

from pyro_dwp.distributions.deep_weight_prior import iwae_log_marginal
from pyro_dwp.infer import fit_kernel_vae
from pyro_dwp.models.kernel_vae import KernelVAE, _FromPointConvTranspose2d, _ToPointConv2d


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _synthetic_kernels(n: int, k: int, seed: int) -> torch.Tensor:
    """Kernels on a 2-D nonlinear manifold plus small noise (a fixed map shared by all seeds)."""
    lift = torch.randn(k * k, 2, generator=torch.Generator().manual_seed(42))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    w = 0.2 * torch.tanh(z @ lift.T) + 0.02 * torch.randn(n, k * k, generator=g)
    return w.reshape(n, k, k)


@pytest.mark.parametrize(
    "kernel_size, z_dim, hidden, encoder_params, decoder_params",
    [(7, 2, 32, 56_004, 56_674), (5, 4, 64, 260_040, 304_194)],
)
def test_paper_architectures_match_appendix_d_parameter_counts(
    kernel_size, z_dim, hidden, encoder_params, decoder_params
):
    vae = KernelVAE.for_kernel_size(kernel_size)
    assert (vae.z_dim, vae.hidden) == (z_dim, hidden)
    assert _num_params(vae.encoder) == encoder_params  # Table 1 of the paper
    assert _num_params(vae.decoder) == decoder_params


@pytest.mark.parametrize(
    "layer, plain, shape",
    [
        (_ToPointConv2d(6, 5, 3), torch.nn.functional.conv2d, (7, 6, 3, 3)),  # the linear map
        (_ToPointConv2d(6, 5, 1), torch.nn.functional.conv2d, (7, 6, 1, 1)),
        (_ToPointConv2d(6, 5, 3), torch.nn.functional.conv2d, (7, 6, 4, 4)),  # a convolution
        (_FromPointConvTranspose2d(6, 5, 3), torch.nn.functional.conv_transpose2d, (7, 6, 1, 1)),
        (_FromPointConvTranspose2d(6, 5, 3), torch.nn.functional.conv_transpose2d, (7, 6, 2, 2)),
        (_ToPointConv2d(6, 5, 3), torch.nn.functional.conv2d, (6, 3, 3)),  # unbatched
        (_FromPointConvTranspose2d(6, 5, 3), torch.nn.functional.conv_transpose2d, (6, 1, 1)),
    ],
)
@pytest.mark.parametrize(
    "device",
    [
        "cpu",  # the transposed one's output in the channels-last layout
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
)
def test_point_layers_equal_the_convolutions_they_compute(layer, plain, shape, device):
    """The encoder's last and the decoder's first layers, computed as matrix products: the
    values and every gradient of the (transposed) convolution with the same parameters (and
    its state_dict: the shipped priors, written before, load in test_pretrained.py)."""
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    layer = layer.to(device, torch.float64)
    out = layer(x)
    ref = plain(x, layer.weight, layer.bias)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    if device == "cpu" and isinstance(layer, _FromPointConvTranspose2d) and shape[-2:] == (1, 1):
        batched = len(shape) == 4  # a batch of 1 x 1 maps: the output in channels-last order
        assert out.is_contiguous(memory_format=torch.channels_last) == batched
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, layer.weight, layer.bias), g)
    want = torch.autograd.grad(ref, (x, layer.weight, layer.bias), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_shapes(kernel_size):
    k = kernel_size
    vae = KernelVAE(k, z_dim=3, hidden=4)
    w = torch.randn(4, 2, k, k)
    q = vae.encode(w)
    assert q.batch_shape == (4, 2) and q.event_shape == (3,)
    p = vae.decode(q.rsample((5,)))
    assert p.batch_shape == (5, 4, 2) and p.event_shape == (k, k)
    assert (p.base_dist.scale > 0).all()
    assert vae.elbo(w).shape == (4, 2)
    assert vae.elbo(w, num_samples=3).shape == (4, 2)
    assert vae.iwae_bound(w, 7, chunk_size=3).shape == (4, 2)


def test_elbo_below_iwae_and_iwae_increases_with_k():
    # Averaged over 500 kernels the Monte Carlo noise (std of the means ~0.01) is far below
    # the gaps between the bounds (~0.03-0.1 nats for this untrained VAE).
    vae = KernelVAE(3, z_dim=2, hidden=8)
    w = 0.3 * torch.randn(500, 3, 3)
    with torch.no_grad():
        elbo = vae.elbo(w).mean()
        iwae = {k: vae.iwae_bound(w, k, chunk_size=64).mean() for k in (1, 10, 100)}
    assert iwae[1] == pytest.approx(elbo.item(), abs=0.03)  # same expectation
    assert elbo < iwae[10] < iwae[100]


def test_iwae_function_matches_method():
    vae = KernelVAE(3, z_dim=2, hidden=4)
    w = torch.randn(6, 3, 3)
    torch.manual_seed(1)
    a = vae.iwae_bound(w, 5)
    torch.manual_seed(1)
    b, mean_log_weight = iwae_log_marginal(vae.encoder, vae.decoder, w, 5)
    torch.testing.assert_close(a, b)
    assert mean_log_weight.shape == (6,) and (b >= mean_log_weight).all()  # Jensen
    with pytest.raises(ValueError, match="num_samples"):
        iwae_log_marginal(vae.encoder, vae.decoder, w, 0)


def test_iwae_with_another_code_prior():
    """``log_p_z``: N(0, I) given explicitly is the default; adding a constant c to log p(z)
    adds c to the IWAE and to the mean log-weight (same draws)."""
    vae = KernelVAE(3, z_dim=2, hidden=4)
    w = torch.randn(6, 3, 3)

    def normal(z):
        return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)

    results = []
    for log_p_z in (None, normal, lambda z: normal(z) + 1.5):
        torch.manual_seed(2)
        results.append(iwae_log_marginal(vae.encoder, vae.decoder, w, 4, log_p_z=log_p_z))
    (a, ma), (b, mb), (c, mc) = results
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(mb, ma)
    torch.testing.assert_close(c, a + 1.5)
    torch.testing.assert_close(mc, ma + 1.5)


def test_training_improves_held_out_elbo():
    train, valid = _synthetic_kernels(128, 7, seed=0), _synthetic_kernels(128, 7, seed=1)
    vae = KernelVAE(7, z_dim=2, hidden=8)
    with torch.no_grad():
        before = vae.elbo(valid).mean().item()
    history = fit_kernel_vae(
        vae, train, valid, epochs=2, batch_size=32, lr=1e-2, seed=0, progress=False
    )
    assert len(history["train_elbo"]) == len(history["valid_elbo"]) == 2
    assert history["valid_elbo"][-1] > before + 20  # about -63 -> -9 nats per kernel
    assert history["train_elbo"][-1] > history["train_elbo"][0]


def test_training_is_reproducible_and_works_without_validation():
    train = _synthetic_kernels(64, 3, seed=0)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        vae = KernelVAE(3, z_dim=2, hidden=4)
        runs.append(
            fit_kernel_vae(vae, train, None, epochs=2, batch_size=32, seed=0, progress=False)
        )
    assert runs[0] == runs[1]
    assert runs[0]["valid_elbo"] == []


def test_bad_kernel_sizes_raise():
    vae = KernelVAE.for_kernel_size(7)
    with pytest.raises(ValueError, match="7x7 kernels applied to 5x5 kernels"):
        vae.encode(torch.randn(3, 5, 5))
    with pytest.raises(ValueError, match="7x7 kernels applied to 5x5 kernels"):
        fit_kernel_vae(vae, torch.randn(8, 5, 5), None, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"\(N, k, k\)"):
        fit_kernel_vae(vae, torch.randn(8, 2, 7, 7), None, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"\(N, k, k\)"):
        fit_kernel_vae(vae, torch.randn(8, 7, 7), torch.randn(7, 7), epochs=1, progress=False)
    with pytest.raises(ValueError, match="latent codes"):
        vae.decode(torch.randn(3, 4))
    with pytest.raises(ValueError, match="kernel_size must be one of"):
        KernelVAE(4, z_dim=2, hidden=8)


def test_steps_set_the_length_in_whole_epochs():
    train = _synthetic_kernels(64, 3, seed=0)
    vae = KernelVAE(3, z_dim=2, hidden=4)
    history = fit_kernel_vae(vae, train, None, steps=5, batch_size=32, progress=False)
    assert (history["epochs"], history["steps"]) == (3, 6)  # 2 steps an epoch, 5 rounded up
    assert len(history["train_elbo"]) == 3
    for kwargs in ({}, {"epochs": 1, "steps": 1}):
        with pytest.raises(ValueError, match="exactly one of epochs and steps"):
            fit_kernel_vae(vae, train, None, progress=False, **kwargs)


@pytest.mark.parametrize(("select", "kept_epoch"), [(True, 2), (False, 3)])
def test_selection_restores_the_state_of_the_best_validation_epoch(monkeypatch, select, kept_epoch):
    train, valid = _synthetic_kernels(32, 3, seed=0), _synthetic_kernels(10, 3, seed=1)
    vae = KernelVAE(3, z_dim=2, hidden=4)
    scores, states = iter([1.0, 3.0, 2.0]), []  # validation ELBO after epochs 1, 2, 3
    train_elbo = vae.elbo

    def elbo(w: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        if w is not valid:
            return train_elbo(w, num_samples)
        states.append({k: v.clone() for k, v in vae.state_dict().items()})
        return torch.full((len(w),), next(scores))

    monkeypatch.setattr(vae, "elbo", elbo)
    history = fit_kernel_vae(
        vae, train, valid, epochs=3, batch_size=16, lr=1e-2, select=select, progress=False
    )
    assert history["valid_elbo"] == [1.0, 3.0, 2.0]
    assert history["best_epoch"] == kept_epoch
    assert not torch.equal(states[1]["decoder.loc.weight"], states[2]["decoder.loc.weight"])
    for name, value in vae.state_dict().items():
        assert torch.equal(value, states[kept_epoch - 1][name]), name


def test_dihedral_augment_draws_each_of_the_eight_symmetries():
    from pyro_dwp.infer import dihedral_augment

    torch.manual_seed(0)
    w = torch.arange(9.0).reshape(3, 3)
    images = {
        tuple(v.flatten().tolist())
        for t in (w, w.T)
        for v in (t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2))
    }
    assert len(images) == 8
    out = dihedral_augment(w.expand(400, 3, 3))
    seen = [tuple(v.flatten().tolist()) for v in out]
    assert set(seen) == images
    assert min(seen.count(i) for i in images) > 25  # about 50 each


def test_an_empty_kernel_set_is_an_error_naming_it():
    vae = KernelVAE(3, z_dim=2, hidden=4)
    with pytest.raises(ValueError, match="train_kernels is empty"):
        fit_kernel_vae(vae, torch.zeros(0, 3, 3), None, epochs=1, progress=False)


def test_shared_decoder_scale_is_the_same_for_every_code_and_starts_at_the_kernels_std():
    vae = KernelVAE(5, z_dim=3, hidden=4, decoder_scale="shared")
    train = _synthetic_kernels(256, 5, seed=0)
    vae.decoder.init_from_kernels(train)
    _, scale = vae.decoder(torch.randn(10, 3))
    assert scale.shape == (10, 5, 5)
    torch.testing.assert_close(scale, train.std(0, correction=0).expand(10, 5, 5))
    # one (k, k) parameter instead of the per-code head
    assert dict(vae.decoder.named_parameters())["scale"].shape == (5, 5)
    per_code = KernelVAE(5, z_dim=3, hidden=4)
    per_code.decoder.init_from_kernels(train)  # a no-op for the per-code head
    _, s1 = per_code.decoder(torch.zeros(1, 3))
    _, s2 = per_code.decoder(torch.ones(1, 3))
    assert not torch.allclose(s1, s2)


def test_shared_decoder_scale_trains_saves_and_loads(tmp_path):
    from pyro_dwp.models.kernel_vae import load_kernel_vae, save_kernel_vae

    train, valid = _synthetic_kernels(128, 7, seed=0), _synthetic_kernels(128, 7, seed=1)
    vae = KernelVAE(7, z_dim=2, hidden=8, decoder_scale="shared")
    history = fit_kernel_vae(
        vae, train, valid, epochs=2, batch_size=32, lr=1e-2, seed=0, progress=False
    )
    assert history["valid_elbo"][-1] > history["valid_elbo"][0]
    save_kernel_vae(tmp_path / "v.pt", vae, layer="conv1")
    loaded, meta = load_kernel_vae(tmp_path / "v.pt")
    assert meta["decoder_scale"] == loaded.decoder_scale == "shared"
    w = valid[:4]
    torch.testing.assert_close(loaded.decoder(vae.encoder(w)[0]), vae.decoder(vae.encoder(w)[0]))


def test_a_file_without_decoder_scale_loads_as_per_code(tmp_path):
    from pyro_dwp.models.kernel_vae import load_kernel_vae, save_kernel_vae

    save_kernel_vae(tmp_path / "v.pt", KernelVAE(3, z_dim=2, hidden=4))
    state = torch.load(tmp_path / "v.pt", weights_only=True)
    del state["decoder_scale"]  # as written before the option existed
    torch.save(state, tmp_path / "old.pt")
    assert load_kernel_vae(tmp_path / "old.pt")[0].decoder_scale == "per-code"


def test_an_unknown_decoder_scale_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"decoder_scale must be one of \['per-code', 'shared'\]"):
        KernelVAE(3, z_dim=2, hidden=4, decoder_scale="constant")


def test_polar_mean_starts_at_the_mean_norm_and_never_falls_below_the_floor():
    vae = KernelVAE(5, z_dim=3, hidden=4, decoder_scale="shared", decoder_mean="polar")
    train = _synthetic_kernels(256, 5, seed=0)
    norms = train.flatten(1).norm(dim=1)
    vae.decoder.init_from_kernels(train)
    assert vae.decoder.norm_floor.item() == pytest.approx(norms.min().item())
    z = 3 * torch.randn(500, 3)
    loc, _ = vae.decoder(z)
    # the norm head starts constant: every mean has the kernels' mean norm
    torch.testing.assert_close(
        loc.flatten(1).norm(dim=1), norms.mean().expand(500), rtol=1e-5, atol=0.0
    )
    with torch.no_grad():  # any head: the norm is the floor plus a softplus
        vae.decoder.norm.weight.normal_(0, 10.0)
        vae.decoder.norm.bias.fill_(-30.0)
    lengths = vae.decoder(z)[0].flatten(1).norm(dim=1)
    assert lengths.min() >= norms.min() * (1 - 1e-5)
    assert lengths.min() < norms.min() * 1.01  # the floor is reached, not exceeded by much
    # the direction is the direct head's map
    features = vae.decoder.features(z.reshape(-1, 3, 1, 1))
    m = vae.decoder.loc(features).reshape(500, 5, 5)
    torch.testing.assert_close(
        vae.decoder(z)[0] / lengths[:, None, None], m / m.flatten(1).norm(dim=1)[:, None, None]
    )


def test_polar_vae_trains_saves_and_loads_with_its_floor(tmp_path):
    from pyro_dwp.models.kernel_vae import load_kernel_vae, save_kernel_vae

    train, valid = _synthetic_kernels(128, 5, seed=0), _synthetic_kernels(64, 5, seed=1)
    vae = KernelVAE(5, z_dim=2, hidden=8, decoder_scale="shared", decoder_mean="polar")
    history = fit_kernel_vae(
        vae, train, valid, epochs=2, batch_size=32, lr=1e-2, seed=0, progress=False
    )
    assert history["valid_elbo"][-1] > history["valid_elbo"][0]
    assert vae.decoder.norm_floor.item() == pytest.approx(train.flatten(1).norm(dim=1).min())
    save_kernel_vae(tmp_path / "v.pt", vae, layer="conv2")
    loaded, meta = load_kernel_vae(tmp_path / "v.pt")
    assert meta["decoder_mean"] == loaded.decoder_mean == "polar"
    assert loaded.decoder.norm_floor == vae.decoder.norm_floor
    z = torch.randn(4, 2)
    torch.testing.assert_close(loaded.decoder(z), vae.decoder(z))


def test_a_file_without_decoder_mean_loads_as_direct(tmp_path):
    from pyro_dwp.models.kernel_vae import load_kernel_vae, save_kernel_vae

    save_kernel_vae(tmp_path / "v.pt", KernelVAE(3, z_dim=2, hidden=4))
    state = torch.load(tmp_path / "v.pt", weights_only=True)
    del state["decoder_mean"]  # as written before the option existed
    torch.save(state, tmp_path / "old.pt")
    loaded = load_kernel_vae(tmp_path / "old.pt")[0]
    assert loaded.decoder_mean == "direct" and loaded.decoder.norm is None
    with pytest.raises(ValueError, match=r"decoder_mean must be one of \['direct', 'polar'\]"):
        KernelVAE(3, z_dim=2, hidden=4, decoder_mean="radial")


@pytest.mark.parametrize(
    "decoder_scale, decoder_mean", [("per-code", "direct"), ("shared", "polar")]
)
def test_a_rescaled_vae_is_the_law_of_the_rescaled_kernels(decoder_scale, decoder_mean):
    """``rescale_(c)``: p'(c w | z) = p(w | z) / c^(k^2) and q'(z | c w) = q(z | w), so the
    ELBO, the IWAE bound and the deep weight prior's log-density of ``c * w`` are those of ``w``
    minus k^2 log c, on the same draws; samples are ``c`` times the old ones."""
    from pyro_dwp.distributions import DeepWeightPrior

    k, c = 5, 1.7
    vae = KernelVAE(k, z_dim=3, hidden=4, decoder_scale=decoder_scale, decoder_mean=decoder_mean)
    vae.decoder.init_from_kernels(_synthetic_kernels(50, k, seed=0))
    w, z = _synthetic_kernels(8, k, seed=1), torch.randn(8, 3)
    with torch.no_grad():
        before = [vae.encoder(w), vae.decoder(z)]
        torch.manual_seed(0)
        bounds = [vae.elbo(w), vae.iwae_bound(w, 7), DeepWeightPrior.from_vae(vae).log_prob(w)]
        torch.manual_seed(3)
        sample = DeepWeightPrior.from_vae(vae).sample((4,))
        assert vae.rescale_(c) is vae and vae.kernel_scale == pytest.approx(c)
        after = [vae.encoder(c * w), vae.decoder(z)]
        torch.manual_seed(0)
        scaled = [vae.elbo(c * w), vae.iwae_bound(c * w, 7)]
        scaled.append(DeepWeightPrior.from_vae(vae).log_prob(c * w))
        torch.manual_seed(3)
        scaled_sample = DeepWeightPrior.from_vae(vae).sample((4,))
    for a, b in zip(before[0], after[0], strict=True):
        torch.testing.assert_close(b, a)
    for a, b in zip(before[1], after[1], strict=True):
        torch.testing.assert_close(b, c * a)
    for a, b in zip(bounds, scaled, strict=True):
        torch.testing.assert_close(b, a - k * k * math.log(c), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scaled_sample, c * sample)
    vae.rescale_(1 / c)  # factors compose
    assert vae.kernel_scale == pytest.approx(1.0)


def test_rescaling_is_saved_loaded_and_checked(tmp_path):
    from pyro_dwp.models.kernel_vae import load_kernel_vae, save_kernel_vae

    vae = KernelVAE(3, z_dim=2, hidden=4).rescale_(2.5)
    save_kernel_vae(tmp_path / "v.pt", vae)
    loaded = load_kernel_vae(tmp_path / "v.pt")[0]
    assert loaded.kernel_scale == pytest.approx(2.5)
    z = torch.randn(4, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decoder(z), vae.decoder(z))
    state = torch.load(tmp_path / "v.pt", weights_only=True)
    del state["kernel_scale"]  # as written before rescaling existed
    torch.save(state, tmp_path / "old.pt")
    assert load_kernel_vae(tmp_path / "old.pt")[0].kernel_scale == 1.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rescaling factor must be finite and > 0"):
            KernelVAE(3, z_dim=2, hidden=4).rescale_(bad)

"""The deep-weight-prior reparameterisation and the reverse-model guide: L_aux in Pyro."""

from functools import partial

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch.distributions import Normal

from pyro_dwp import BNN, Categorical
from pyro_dwp.distributions.deep_weight_prior import DeepWeightPrior
from pyro_dwp.guides import init_to_module
from pyro_dwp.guides.reverse import ReverseModelGuide
from pyro_dwp.infer import fit
from pyro_dwp.infer.reparam import DeepWeightPriorReparam, DeepWeightPriorStrategy, latent_site_name
from pyro_dwp.models.kernel_vae import KernelVAE

OUT, IN, K, Z_DIM, N, NOISE = 3, 2, 3, 2, 6, 0.5


def _linear(w, x):
    """``<w, x_n>``: ``(*particles, OUT, IN, K, K), (N, OUT, IN, K, K) -> (*particles[:-1], N)``.

    The rightmost particle dimension (size 1) lines up with the data plate, as Pyro's
    vectorised particles put it.
    """
    return (w * x).sum((-4, -3, -2, -1))


def _setup():
    """A kernel VAE, its prior, data and a one-layer model ``y_n ~ N(<w, x_n>, NOISE^2)``."""
    vae = KernelVAE(K, z_dim=Z_DIM, hidden=8)
    prior = DeepWeightPrior.from_vae(vae, with_encoder=False)
    x = torch.randn(N, OUT, IN, K, K)
    y = torch.randn(N)
    config = DeepWeightPriorStrategy()

    def model(x, y):
        with poutine.reparam(config=config):
            w = pyro.sample("w", prior.expand((OUT, IN)).to_event(2))
        mean = _linear(w, x)
        with pyro.plate("data", N, dim=-1):
            pyro.sample("y", dist.Normal(mean, NOISE), obs=y)

    return vae, prior, model, x, y


def _guide(model, vae, trainable=True):
    builder = partial(AutoNormal, init_scale=0.05)
    return ReverseModelGuide(model, builder, {"w": vae.encoder}, trainable=trainable)


def test_reparam_rewrites_site_into_code_and_conditional():
    _, prior, model, x, y = _setup()
    trace = poutine.trace(model).get_trace(x, y)
    names = [n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"]
    assert names == ["w_z", "w", "y"]
    z_site, w_site = trace.nodes["w_z"], trace.nodes["w"]
    assert not z_site["is_observed"] and not w_site["is_observed"]
    assert z_site["fn"].batch_shape == () and z_site["fn"].event_shape == (OUT, IN, Z_DIM)
    assert w_site["fn"].batch_shape == () and w_site["fn"].event_shape == (OUT, IN, K, K)
    torch.testing.assert_close(
        w_site["fn"].log_prob(w_site["value"]),
        prior.conditional(z_site["value"]).log_prob(w_site["value"]).sum(),
    )
    assert latent_site_name("conv1.weight") == "conv1.weight_z"


def test_reparam_keeps_plate_batch_dims_and_observed_values():
    _, prior, _, _, _ = _setup()
    w_obs = torch.randn(4, OUT, IN, K, K)

    def model():
        with poutine.reparam(config={"w": DeepWeightPriorReparam()}):
            with pyro.plate("layers", 4):
                pyro.sample("w", prior.expand((4, OUT, IN)).to_event(2), obs=w_obs)

    trace = poutine.trace(model).get_trace()
    z_fn, w_site = trace.nodes["w_z"]["fn"], trace.nodes["w"]
    assert z_fn.batch_shape == (4,) and z_fn.event_shape == (OUT, IN, Z_DIM)
    assert w_site["is_observed"] and w_site["value"] is w_obs
    assert w_site["fn"].batch_shape == (4,) and w_site["fn"].event_shape == (OUT, IN, K, K)


def test_reparam_rejects_other_distributions():
    def model():
        with poutine.reparam(config={"w": DeepWeightPriorReparam()}):
            pyro.sample("w", dist.Normal(0.0, 1.0).expand((2, 3, 3)).to_event(3))

    with pytest.raises(TypeError, match="expects a DeepWeightPrior"):
        poutine.trace(model).get_trace()


def _auxiliary_bound(guide, vae, x, y, w, z):
    """L_aux per particle by hand, with plain torch densities and the original VAE networks."""
    w_dims, z_dims = (-4, -3, -2, -1), (-3, -2, -1)
    log_q_w = Normal(guide.base.locs.w, guide.base.scales.w).log_prob(w).sum(w_dims)
    log_r_z = Normal(*vae.encoder(w)).log_prob(z).sum(z_dims)
    log_p_z = Normal(0.0, 1.0).log_prob(z).sum(z_dims)
    log_p_w_given_z = Normal(*vae.decoder(z)).log_prob(w).sum(w_dims)
    # (*particles[:-1], N) -> *particles, restoring the singleton dim of the data plate.
    log_lik = Normal(_linear(w, x), NOISE).log_prob(y).sum(-1).reshape(log_q_w.shape)
    return log_lik + log_p_w_given_z + log_p_z - log_q_w - log_r_z


@pytest.mark.parametrize("trainable", [True, False])
def test_trace_elbo_is_the_auxiliary_bound(trainable):
    """-Trace_ELBO = log p(D|w) + log p(w|z) + log p(z) - log q(w) - log r(z|w) (eq. 8 / 14)."""
    vae, _, model, x, y = _setup()
    guide = _guide(model, vae, trainable)
    guide(x, y)  # set up the base guide's parameters before seeding
    pyro.set_rng_seed(11)
    loss = Trace_ELBO().differentiable_loss(model, guide, x, y)
    pyro.set_rng_seed(11)
    guide_trace = poutine.trace(guide).get_trace(x, y)
    w, z = guide_trace.nodes["w"]["value"], guide_trace.nodes["w_z"]["value"]
    assert w.shape == (OUT, IN, K, K) and z.shape == (OUT, IN, Z_DIM)

    l_aux = _auxiliary_bound(guide, vae, x, y, w, z)
    torch.testing.assert_close(-loss, l_aux, rtol=1e-5, atol=0.0)

    # Same gradient for the variational means; the reverse model's only if trainable.
    loc = guide.base.locs.w
    (grad_elbo,) = torch.autograd.grad(-loss, loc, retain_graph=True)
    (grad_hand,) = torch.autograd.grad(l_aux, loc, retain_graph=True)
    torch.testing.assert_close(grad_elbo, grad_hand, rtol=1e-4, atol=1e-5)
    loss.backward()
    encoder_params = list(guide.encoders.parameters())
    registered = [n for n in pyro.get_param_store() if n.startswith("reverse_model$$$")]
    if trainable:
        assert all(p.grad is not None for p in encoder_params)
        assert any(p.grad.abs().sum() > 0 for p in encoder_params)
        assert len(registered) == len(encoder_params)
    else:
        assert all(p.grad is None and not p.requires_grad for p in encoder_params)
        assert registered == []


@pytest.mark.parametrize("trainable", [True, False])
def test_svi_trains_reverse_model_only_if_trainable(trainable):
    vae, _, model, x, y = _setup()
    # Built from the prior's frozen copy of the encoder, as an integration would.
    frozen = DeepWeightPrior.from_vae(vae).encoder
    builder = partial(AutoNormal, init_scale=0.05)
    guide = ReverseModelGuide(model, builder, {"w": frozen}, trainable=trainable)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(3):
        svi.step(x, y)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(guide.encoders.parameters(), vae.encoder.parameters(), strict=True)
    ]
    assert all(changed) if trainable else not any(changed)


def test_vectorized_particles():
    vae, _, model, x, y = _setup()
    guide = _guide(model, vae)
    guide(x, y)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(5)
    loss = elbo.differentiable_loss(model, guide, x, y)
    # As Trace_ELBO does it: a particle plate left of the data plate, so particle shape (4, 1).
    vectorized = pyro.plate("particles", 4, dim=-2)
    pyro.set_rng_seed(5)
    guide_trace = poutine.trace(vectorized(guide)).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(vectorized(model), guide_trace)).get_trace(x, y)
    assert guide_trace.nodes["w"]["value"].shape == (4, 1, OUT, IN, K, K)
    assert guide_trace.nodes["w_z"]["value"].shape == (4, 1, OUT, IN, Z_DIM)
    assert model_trace.nodes["w"]["fn"].batch_shape == (4, 1)
    model_trace.compute_log_prob()
    assert model_trace.nodes["w"]["log_prob"].shape == (4, 1)
    w, z = guide_trace.nodes["w"]["value"], guide_trace.nodes["w_z"]["value"]
    l_aux = _auxiliary_bound(guide, vae, x, y, w, z)
    assert l_aux.shape == (4, 1)
    torch.testing.assert_close(-loss, l_aux.mean(), rtol=1e-5, atol=0.0)


def test_reverse_model_guide_errors():
    vae, _, model, x, y = _setup()
    with pytest.raises(ValueError, match="at least one"):
        ReverseModelGuide(model, AutoNormal, {})
    with pytest.raises(TypeError, match="AutoGuide"):
        ReverseModelGuide(model, lambda m: m, {"w": vae.encoder})
    guide = ReverseModelGuide(model, AutoNormal, {"w": vae.encoder, "v": vae.encoder})
    with pytest.raises(KeyError, match="'v'"):
        guide(x, y)


def test_bnn_with_the_strategy_rewrites_only_dwp_sites_and_fit_refuses_it_without():
    prior = DeepWeightPrior.from_vae(KernelVAE(K, z_dim=Z_DIM, hidden=8), with_encoder=False)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, K), torch.nn.Flatten())
    rules = {"0.weight": prior, "0.bias": dist.Normal(0.0, 1.0)}
    x, y = torch.randn(4, 1, K, K), torch.tensor([0, 1, 0, 1])
    model = BNN(net, rules, Categorical(4), reparam=DeepWeightPriorStrategy())
    tr = poutine.trace(model).get_trace(x, y)
    assert latent_site_name("0.weight") in tr.nodes and latent_site_name("0.bias") not in tr.nodes
    plain = BNN(net, rules, Categorical(4))
    with pytest.raises(ValueError, match="not reparameterised"):
        guide = AutoNormal(plain, init_loc_fn=init_to_module)
        fit(plain, guide, x, y, epochs=1, batch_size=4, progress=False)

"""The Markov-chain implicit prior (DWP Appendix A): distribution, VAE, reparameterisation,
reverse-chain guide and bound gap."""

import math
from functools import partial

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn
from torch.distributions import Normal

from pyro_dwp import BNN, Categorical
from pyro_dwp.distributions import DeepWeightPrior, MarkovChainPrior
from pyro_dwp.guides import ReverseChainGuide, ReverseModelGuide, init_to_module
from pyro_dwp.infer import fit, fit_markov_chain_vae
from pyro_dwp.infer.dwp_gap import dwp_bound_gap
from pyro_dwp.infer.markov_chain_gap import markov_chain_bound_gap
from pyro_dwp.infer.markov_chain_reparam import (
    MarkovChainReparam,
    MarkovChainStrategy,
    chain_site_name,
)
from pyro_dwp.infer.reparam import DeepWeightPriorStrategy
from pyro_dwp.models import KernelVAE, MarkovChainVAE

OUT, IN, K, Z_DIM, T, N, NOISE = 3, 2, 3, 2, 2, 6, 0.5


# --- A linear-Gaussian chain over 2x2 kernels: every density in closed form. ----------------


class _Affine(nn.Module):
    """``x -> (x @ A^T + b, s)``, optionally ``+ w.flatten() @ B^T`` (a reverse transition's
    dependence on the kernel): ``(..., d_in), [(..., 2, 2)] -> 2 x (..., d_out)``, or kernels
    ``(..., 2, 2)`` out when ``kernel_out``."""

    kernel_size, z_dim = 2, 2

    def __init__(self, a, b, s, kernel_weight=None, *, kernel_in=False, kernel_out=False):
        super().__init__()
        self.a, self.b, self.s = a, b, s
        self.kernel_weight, self.kernel_in, self.kernel_out = kernel_weight, kernel_in, kernel_out

    def forward(self, x, w=None):
        x = x.flatten(-2) if self.kernel_in else x
        loc = x @ self.a.T + self.b
        if self.kernel_weight is not None:
            loc = loc + w.flatten(-2) @ self.kernel_weight.T
        loc = loc.reshape(loc.shape[:-1] + (2, 2)) if self.kernel_out else loc
        return loc, self.s.expand(loc.shape)


def _linear_chain(steps):
    """Transitions, decoder, encoder and reverse transitions of a linear-Gaussian chain."""
    g = torch.Generator().manual_seed(1)

    def rand(*shape, scale=0.5):
        return scale * torch.randn(*shape, generator=g)

    transitions = [
        _Affine(torch.eye(2) * 0.8 + rand(2, 2, scale=0.2), rand(2), torch.tensor(0.6))
        for _ in range(steps)
    ]
    decoder = _Affine(rand(4, 2, scale=1.0), rand(4), torch.tensor(0.3), kernel_out=True)
    # Proposals near the posterior, not at it: z_T from a least-squares inverse of the decoder,
    # z_{t-1} from the inverse transition plus a little of the kernel.
    pinv = torch.linalg.pinv(decoder.a)
    encoder = _Affine(pinv, -pinv @ decoder.b, torch.tensor(0.3), kernel_in=True)
    reverse = [
        _Affine(t.a.inverse(), -t.a.inverse() @ t.b, torch.tensor(0.6), rand(2, 4, scale=0.05))
        for t in transitions
    ]
    return transitions, decoder, encoder, reverse


def _exact_marginal(transitions, decoder):
    """p(w) of the linear-Gaussian chain, over flattened 2x2 kernels."""
    mean, cov = torch.zeros(2), torch.eye(2)
    for t in transitions:
        mean, cov = t.a @ mean + t.b, t.a @ cov @ t.a.T + t.s**2 * torch.eye(2)
    c = decoder.a
    return dist.MultivariateNormal(
        c @ mean + decoder.b, c @ cov @ c.T + decoder.s**2 * torch.eye(4)
    )


def test_log_prob_converges_to_the_exact_marginal_of_a_linear_gaussian_chain():
    transitions, decoder, encoder, reverse = _linear_chain(T)
    w = _exact_marginal(transitions, decoder).sample((4,))
    exact = _exact_marginal(transitions, decoder).log_prob(w)
    w = w.reshape(4, 2, 2)
    errors = {}
    for k in (1, 20_000):
        prior = MarkovChainPrior(decoder, transitions, encoder, reverse, num_samples=k)
        estimates = torch.stack([prior.log_prob(w) for _ in range(8 if k == 1 else 1)])
        errors[k] = (estimates.mean(0) - exact).abs().max().item()
    assert errors[20_000] < 0.1
    assert errors[20_000] < errors[1] / 4  # the K = 1 bound is visibly loose


# --- The bound identity: Trace_ELBO is the Appendix A bound. --------------------------------


def _data(kernel_size):
    x = torch.randn(N, OUT, IN, kernel_size, kernel_size)
    return x, torch.randn(N)


def _linear(w, x):
    """``<w, x_n>``: ``(*particles, OUT, IN, k, k), (N, OUT, IN, k, k) -> (*particles[:-1], N)``."""
    return (w * x).sum((-4, -3, -2, -1))


def _regression_model(prior, config, out=OUT, inp=IN):
    def model(x, y):
        with poutine.reparam(config=config):
            w = pyro.sample("w", prior.expand((out, inp)).to_event(2))
        with pyro.plate("data", N, dim=-1):
            pyro.sample("y", dist.Normal(_linear(w, x), NOISE), obs=y)

    return model


def _random_chain_vae(steps=T):
    """A MarkovChainVAE whose transitions are not the identity (random heads)."""
    vae = MarkovChainVAE(K, Z_DIM, 8, steps, transition_hidden=8)
    for transition in [*vae.transitions, *vae.reverse]:
        nn.init.normal_(transition.shift.weight, std=0.3)
        nn.init.normal_(transition.scale.weight, std=0.3)
    return vae


@pytest.mark.parametrize("trainable", [True, False])
def test_trace_elbo_is_the_appendix_a_bound_for_each_draw(trainable):
    """-Trace_ELBO = log p(D|w) + log p(w|z_T) + sum_t log p(z_t|z_{t-1}) + log p(z_0)
    - log q(w) - log r(z_T|w) - sum_t log r(z_{t-1}|z_t, w), draw by draw, and its gradient."""
    vae = _random_chain_vae()
    model = _regression_model(MarkovChainPrior.from_vae(vae), MarkovChainStrategy())
    x, y = _data(K)
    guide = ReverseChainGuide(
        model, partial(AutoNormal, init_scale=0.05), {"w": vae}, trainable=trainable
    )
    guide(x, y)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().differentiable_loss(model, guide, x, y)
    pyro.set_rng_seed(3)
    trace = poutine.trace(guide).get_trace(x, y)
    w = trace.nodes["w"]["value"]
    z = [trace.nodes[chain_site_name("w", t)]["value"] for t in range(T + 1)]
    assert w.shape == (OUT, IN, K, K) and all(zt.shape == (OUT, IN, Z_DIM) for zt in z)

    def log_n(loc_scale, value, dims):
        return Normal(*loc_scale).log_prob(value).sum(dims)

    wd, zd = (-4, -3, -2, -1), (-3, -2, -1)
    bound = Normal(_linear(w, x), NOISE).log_prob(y).sum(-1)
    bound = bound + log_n(vae.decoder(z[T]), w, wd) + Normal(0.0, 1.0).log_prob(z[0]).sum(zd)
    bound = bound - Normal(guide.base.locs.w, guide.base.scales.w).log_prob(w).sum(wd)
    bound = bound - log_n(vae.encoder(w), z[T], zd)
    for t in range(1, T + 1):
        bound = bound + log_n(vae.transitions[t - 1](z[t - 1]), z[t], zd)
        bound = bound - log_n(vae.reverse[t - 1](z[t], w), z[t - 1], zd)
    torch.testing.assert_close(-loss, bound, rtol=1e-5, atol=0.0)
    loc = guide.base.locs.w
    (grad_elbo,) = torch.autograd.grad(-loss, loc, retain_graph=True)
    (grad_hand,) = torch.autograd.grad(bound, loc, retain_graph=True)
    torch.testing.assert_close(grad_elbo, grad_hand, rtol=1e-4, atol=1e-5)
    loss.backward()
    reverse_params = list(guide.chains.parameters())
    if trainable:
        assert all(p.grad is not None for p in reverse_params)
        assert all(p.grad.abs().sum() > 0 for p in guide.chains["w"]["reverse"].parameters())
    else:
        assert all(p.grad is None and not p.requires_grad for p in reverse_params)


def _expected_log_normal(target, mean_map, offset, scale, noise_dim):
    """E log N(y; G x + g, diag s^2) with y and x affine in standard noise: ``target`` and each
    ``(G, x)`` of ``mean_map`` are ``(L, c)`` pairs, ``v = L eps + c``."""
    coef = torch.zeros(target[0].shape[0], noise_dim) + target[0]
    const = target[1] - offset
    for g, (lin, c) in mean_map:
        coef, const = coef - g @ lin, const - g @ c
    second_moment = (coef**2).sum(-1) + const**2
    return (-0.5 * torch.log(2 * math.pi * scale**2) - 0.5 * second_moment / scale**2).sum()


def test_trace_elbo_matches_the_closed_form_appendix_a_bound():
    """For linear-Gaussian p, q and r the expectation of the bound is closed form; the Monte
    Carlo Trace_ELBO over many particles agrees with it."""
    transitions, decoder, encoder, reverse = _linear_chain(T)
    prior = MarkovChainPrior(decoder, transitions)
    x = torch.randn(N, 1, 1, 2, 2)
    y = torch.randn(N)
    model = _regression_model(prior, MarkovChainStrategy(), out=1, inp=1)
    chain = nn.Module()
    chain.encoder, chain.reverse = encoder, nn.ModuleList(reverse)
    guide = ReverseChainGuide(model, partial(AutoNormal, init_scale=0.05), {"w": chain})
    guide(x, y)
    with torch.no_grad():
        guide.base.locs.w.copy_(torch.randn(1, 1, 2, 2))
    mu_q, s_q = guide.base.locs.w.detach().flatten(), guide.base.scales.w.detach().flatten()

    # Each variable as (L, c) with v = L eps + c; eps = (eps_w (4), eps_zT, ..., eps_z0 (2 each)).
    dim = 4 + 2 * (T + 1)

    def noise(start, size, scale):
        lin = torch.zeros(size, dim)
        lin[:, start : start + size] = torch.diag(scale.expand(size))
        return lin

    w = (noise(0, 4, s_q), mu_q)
    zs = {T: (encoder.a @ w[0] + noise(4, 2, encoder.s), encoder.a @ w[1] + encoder.b)}
    for t in range(T, 0, -1):
        r, (lin, c) = reverse[t - 1], zs[t]
        start = 4 + 2 * (T - t + 1)
        zs[t - 1] = (
            r.a @ lin + r.kernel_weight @ w[0] + noise(start, 2, r.s),
            r.a @ c + r.kernel_weight @ w[1] + r.b,
        )
    zero = torch.zeros(2)
    bound = _expected_log_normal(
        (torch.zeros(N, dim), y), [(x.reshape(N, 4), w)], 0, torch.tensor(NOISE), dim
    )
    bound += _expected_log_normal(w, [(decoder.a, zs[T])], decoder.b, decoder.s, dim)
    bound += _expected_log_normal(zs[0], [], zero, torch.tensor(1.0), dim)
    for t in range(1, T + 1):
        p = transitions[t - 1]
        bound += _expected_log_normal(zs[t], [(p.a, zs[t - 1])], p.b, p.s, dim)
    bound -= _expected_log_normal(w, [], mu_q, s_q, dim)
    bound -= _expected_log_normal(zs[T], [(encoder.a, w)], encoder.b, encoder.s, dim)
    for t in range(1, T + 1):
        r = reverse[t - 1]
        bound -= _expected_log_normal(
            zs[t - 1], [(r.a, zs[t]), (r.kernel_weight, w)], r.b, r.s, dim
        )

    elbo = Trace_ELBO(num_particles=20_000, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        monte_carlo = -elbo.loss(model, guide, x, y)
    # 20,000 particles: the Monte Carlo standard error is about 0.025 nats.
    assert abs(monte_carlo - bound.item()) < 0.1, (monte_carlo, bound.item())


# --- T = 0 is the deep weight prior. -----------------------------------------------------------


def _kernel_vae():
    return KernelVAE(K, z_dim=Z_DIM, hidden=8)


def test_t0_samples_and_log_prob_are_the_deep_weight_prior_s():
    vae = _kernel_vae()
    chain = MarkovChainPrior.from_vae(MarkovChainVAE.from_kernel_vae(vae, 0), num_samples=50)
    dwp = DeepWeightPrior.from_vae(vae, num_samples=50)
    assert chain.steps == 0
    draws = []
    for prior in (chain, dwp):
        pyro.set_rng_seed(4)
        w = prior.sample((5,))
        draws.append((w, prior.log_prob(w)))
    (w_chain, log_p_chain), (w_dwp, log_p_dwp) = draws
    torch.testing.assert_close(w_chain, w_dwp)
    torch.testing.assert_close(log_p_chain, log_p_dwp)


def test_t0_trace_elbo_and_bound_gap_are_the_deep_weight_prior_s():
    vae = _kernel_vae()
    net = nn.Sequential(nn.Conv2d(1, 2, K), nn.Flatten())
    x, y = torch.randn(4, 1, K, K), torch.tensor([0, 1, 0, 1])
    builder = partial(AutoNormal, init_loc_fn=init_to_module, init_scale=0.05)
    chain_vae = MarkovChainVAE.from_kernel_vae(vae, 0)
    setups = {
        "dwp": (
            DeepWeightPrior.from_vae(vae),
            DeepWeightPriorStrategy(),
            lambda m: ReverseModelGuide(m, builder, {"0.weight": vae.encoder}),
            dwp_bound_gap,
        ),
        "chain": (
            MarkovChainPrior.from_vae(chain_vae),
            MarkovChainStrategy(),
            lambda m: ReverseChainGuide(m, builder, {"0.weight": chain_vae}),
            markov_chain_bound_gap,
        ),
    }
    results = {}
    for key, (prior, strategy, make_guide, gap) in setups.items():
        pyro.clear_param_store()
        model = BNN(net, {"0.weight": prior}, Categorical(4), reparam=strategy)
        guide = make_guide(model)
        guide(x, y)
        pyro.set_rng_seed(8)
        loss = Trace_ELBO().differentiable_loss(model, guide, x, y)
        (grad,) = torch.autograd.grad(loss, pyro.param("AutoNormal.locs.0.weight"))
        pyro.set_rng_seed(9)
        results[key] = (loss, grad, gap(model, guide, x, y, num_samples=64)["0.weight"])
    (loss_dwp, grad_dwp, gap_dwp), (loss_chain, grad_chain, gap_chain) = results.values()
    torch.testing.assert_close(loss_chain, loss_dwp)
    torch.testing.assert_close(grad_chain, grad_dwp)
    assert gap_chain.keys() == gap_dwp.keys()
    for key, value in gap_dwp.items():
        assert gap_chain[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key


# --- Shapes, fitting, the BNN, errors. ---------------------------------------------------------


def test_sampling_shapes_and_the_reparameterised_sites():
    prior = MarkovChainPrior.from_vae(_random_chain_vae(), num_samples=7)
    assert prior.sample().shape == (K, K) and prior.sample((5,)).shape == (5, K, K)
    assert prior.expand((OUT, IN)).sample((4,)).shape == (4, OUT, IN, K, K)
    assert prior.log_prob(prior.sample((2, 5))).shape == (2, 5)
    mean = MarkovChainPrior.from_vae(_random_chain_vae(), sample_mean=True)
    assert mean.sample((3,)).shape == (3, K, K)

    model = _regression_model(prior, MarkovChainStrategy())
    x, y = _data(K)
    trace = poutine.trace(model).get_trace(x, y)
    names = [n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"]
    assert names == ["w_z0", "w_z1", "w_z2", "w", "y"]
    for t in range(T + 1):
        fn = trace.nodes[chain_site_name("w", t)]["fn"]
        assert fn.batch_shape == () and fn.event_shape == (OUT, IN, Z_DIM)
    assert trace.nodes["w"]["fn"].event_shape == (OUT, IN, K, K)

    guide = ReverseChainGuide(model, AutoNormal, {"w": _random_chain_vae()})
    particles = pyro.plate("particles", 4, dim=-2)
    guide_trace = poutine.trace(particles(guide)).get_trace(x, y)
    assert guide_trace.nodes["w"]["value"].shape == (4, 1, OUT, IN, K, K)
    assert guide_trace.nodes["w_z0"]["value"].shape == (4, 1, OUT, IN, Z_DIM)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    assert math.isfinite(elbo.loss(model, guide, x, y))


def test_fit_markov_chain_vae_improves_the_elbo_and_warm_starts_from_a_kernel_vae(one_thread):
    kernels = torch.randn(64, 1, 1) * torch.ones(64, K, K) + 0.1 * torch.randn(64, K, K)
    vae = _kernel_vae()
    chain = MarkovChainVAE.from_kernel_vae(vae, T, transition_hidden=8)
    for mine, theirs in ((chain.encoder, vae.encoder), (chain.decoder, vae.decoder)):
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b) and a is not b
    history = fit_markov_chain_vae(
        chain, kernels, kernels[:16], epochs=10, batch_size=32, lr=1e-2, seed=0, progress=False
    )
    assert history["chain_steps"] == T and len(history["train_elbo"]) == 10
    assert history["train_elbo"][-1] > history["train_elbo"][0] + 3


def test_bnn_with_the_strategy_trains_under_fit():
    net = nn.Sequential(nn.Conv2d(1, 2, K), nn.Flatten())
    x, y = torch.randn(8, 1, K, K), torch.randint(0, 2, (8,))
    vae = _random_chain_vae()
    prior = MarkovChainPrior.from_vae(vae, with_encoder=False)
    model = BNN(net, {"0.weight": prior}, Categorical(8), reparam=MarkovChainStrategy())
    guide = ReverseChainGuide(
        model, partial(AutoNormal, init_loc_fn=init_to_module), {"0.weight": vae}
    )
    history = fit(model, guide, x, y, epochs=2, batch_size=4, progress=False)
    assert len(history) == 2 and all(math.isfinite(r["loss"]) for r in history)
    before = dict(vae.reverse.named_parameters())
    after = dict(guide.chains["0__weight"]["reverse"].named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_errors():
    vae = _random_chain_vae()
    with pytest.raises(ValueError, match="T >= 0"):
        MarkovChainVAE(K, Z_DIM, 8, -1)
    with pytest.raises(ValueError, match="2 transitions need 2 reverse"):
        MarkovChainPrior(vae.decoder, vae.transitions, vae.encoder, vae.reverse[:1])
    with pytest.raises(ValueError, match="both or neither"):
        MarkovChainPrior(vae.decoder, vae.transitions, vae.encoder)
    prior = MarkovChainPrior.from_vae(vae)
    with pytest.raises(ValueError, match="3x3 kernels applied to 5x5"):
        prior.log_prob(torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match="numbered 1 to 2"):
        prior.transition(0, torch.zeros(Z_DIM))
    with pytest.raises(RuntimeError, match="reverse chain"):
        MarkovChainPrior.from_vae(vae, with_encoder=False).log_prob(torch.randn(K, K))
    with pytest.raises(ValueError, match="3x3 kernels applied to 5x5"):
        fit_markov_chain_vae(vae, torch.randn(8, 5, 5), None, epochs=1, progress=False)

    def model():
        with poutine.reparam(config={"w": MarkovChainReparam()}):
            pyro.sample("w", dist.Normal(0.0, 1.0).expand((2, K, K)).to_event(3))

    with pytest.raises(TypeError, match="expects a MarkovChainPrior"):
        poutine.trace(model).get_trace()
    with pytest.raises(ValueError, match="at least one"):
        ReverseChainGuide(model, AutoNormal, {})


def test_fit_refuses_a_markov_chain_prior_that_no_strategy_rewrote():
    """Without the strategy the site's log_prob would be the IWAE estimate, not the bound."""
    prior = MarkovChainPrior.from_vae(MarkovChainVAE(K, Z_DIM, 8, 1), with_encoder=False)
    net = nn.Sequential(nn.Conv2d(1, 2, K), nn.Flatten())
    x, y = torch.randn(4, 1, K, K), torch.tensor([0, 1, 0, 1])
    plain = BNN(net, {"0.weight": prior, "0.bias": dist.Normal(0.0, 1.0)}, Categorical(4))
    with pytest.raises(ValueError, match="MarkovChainPrior that is not reparameterised"):
        guide = AutoNormal(plain, init_loc_fn=init_to_module)
        fit(plain, guide, x, y, epochs=1, batch_size=4, progress=False)

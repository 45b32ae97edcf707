import math

import pytest
import torch
from scipy import integrate
from torch.distributions import Normal

from pyro_dwp.distributions import ScaleMixtureNormal

CASES = [(0.5, 1.0, math.exp(-6)), (0.25, math.exp(-1), math.exp(-7)), (0.75, 2.0, 0.1)]


@pytest.mark.parametrize("pi,s1,s2", CASES)
def test_density_integrates_to_one(pi, s1, s2):
    d = ScaleMixtureNormal(torch.tensor(pi, dtype=torch.float64), s1, s2)

    def pdf(w):
        return math.exp(d.log_prob(torch.tensor(w, dtype=torch.float64)))

    # integrate piecewise so quadrature resolves the narrow component at 0
    edges = [-12 * s1, -12 * s2, 0.0, 12 * s2, 12 * s1]
    pieces = zip(edges[:-1], edges[1:], strict=True)
    total = sum(integrate.quad(pdf, a, b, limit=200)[0] for a, b in pieces)
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("pi,s1,s2", CASES)
def test_matches_mixture_of_two_normals(pi, s1, s2):
    w = torch.linspace(-3, 3, 101, dtype=torch.float64)
    n1, n2 = (Normal(0.0, torch.tensor(s, dtype=torch.float64)) for s in (s1, s2))
    expected = torch.log(pi * n1.log_prob(w).exp() + (1 - pi) * n2.log_prob(w).exp())
    got = ScaleMixtureNormal(torch.tensor(pi, dtype=torch.float64), s1, s2).log_prob(w)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_finite_far_in_tails():
    d = ScaleMixtureNormal(0.5, 1.0, math.exp(-8))
    w = torch.tensor([-1e3, -50.0, 1e-12, 0.0, 50.0, 1e3])
    lp = d.log_prob(w)
    assert torch.isfinite(lp).all()
    # far away the wide component dominates: log(pi) + N(w | 0, 1)
    assert lp[-1].item() == pytest.approx(math.log(0.5) - 0.5e6 - 0.5 * math.log(2 * math.pi))


def test_moments_and_sampling():
    d = ScaleMixtureNormal(0.3, 2.0, 0.1)
    assert d.mean.item() == 0.0
    assert d.variance.item() == pytest.approx(0.3 * 4 + 0.7 * 0.01)
    torch.manual_seed(0)
    s = d.sample((200_000,))
    assert s.mean().item() == pytest.approx(0.0, abs=0.02)
    assert s.var().item() == pytest.approx(d.variance.item(), rel=0.03)
    # fraction of samples outside the narrow component's reach ~ pi * P(|N(0,4)| > 1)
    frac = (s.abs() > 1.0).float().mean().item()
    assert frac == pytest.approx(
        0.3 * 2 * Normal(0.0, 2.0).cdf(torch.tensor(-1.0)).item(), abs=0.01
    )


def test_shapes_and_expand():
    d = ScaleMixtureNormal(torch.full((3,), 0.5), 1.0, 0.1)
    assert d.batch_shape == (3,) and d.event_shape == ()
    assert d.sample((4,)).shape == (4, 3)
    e = ScaleMixtureNormal(0.5, 1.0, 0.1).expand((2, 5))
    assert e.batch_shape == (2, 5)
    assert e.log_prob(torch.zeros(2, 5)).shape == (2, 5)
    assert e.to_event(2).log_prob(torch.zeros(2, 5)).shape == ()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pi=0.0, sigma1=1.0, sigma2=0.1), "pi"),
        (dict(pi=1.0, sigma1=1.0, sigma2=0.1), "pi"),
        (dict(pi=1.5, sigma1=1.0, sigma2=0.1), "pi"),
        (dict(pi=0.5, sigma1=-1.0, sigma2=0.1), "sigma1"),
        (dict(pi=0.5, sigma1=1.0, sigma2=0.0), "sigma2"),
    ],
)
def test_invalid_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScaleMixtureNormal(**kwargs, validate_args=True)


def test_fused_log_density_matches_autograd_formula():
    """The fused forward/backward path equals the log-sum-exp formula, values and gradients."""
    d = ScaleMixtureNormal(torch.tensor(0.25, dtype=torch.float64), math.exp(-1), math.exp(-7))
    assert d._consts is not None
    w = torch.cat([torch.randn(500, dtype=torch.float64), 1e-4 * torch.randn(500).double()])
    w.requires_grad_()
    fused = d.log_prob(w)
    (g_fused,) = torch.autograd.grad(fused.sum(), w)
    d._consts = None  # the generic path
    generic = d.log_prob(w)
    (g_generic,) = torch.autograd.grad(generic.sum(), w)
    torch.testing.assert_close(fused, generic, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_fused, g_generic, rtol=1e-10, atol=1e-10)
    d._consts = d._scalar_constants()
    assert torch.autograd.gradcheck(d.log_prob, (w[:20].detach().clone().requires_grad_(),))


def _reference_log_prob(pi: float, s1: float, s2: float, w: torch.Tensor) -> torch.Tensor:
    """Float64 log-sum-exp of the two weighted Normal log-densities, through plain autograd."""
    pi64, s64 = torch.tensor(pi, dtype=torch.float64), torch.tensor([s1, s2], dtype=torch.float64)
    comps = Normal(0.0, s64).log_prob(w[..., None]) + torch.stack([pi64.log(), (-pi64).log1p()])
    return torch.logsumexp(comps, dim=-1)


def _derivatives(f, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f(w)``, ``f'(w)`` and ``f''(w)`` elementwise, by autograd (double backward)."""
    w = w.detach().clone().requires_grad_()
    value = f(w)
    (first,) = torch.autograd.grad(value.sum(), w, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), w)
    return value.detach(), first.detach(), second


PAPER_GRID = [  # Blundell et al. (2015): pi, sigma1 = e^-{0,1,2}, sigma2 = e^-{6,7,8}
    (pi, math.exp(-a), math.exp(-b))
    for pi in (0.25, 0.5, 0.75)
    for a in (0, 1, 2)
    for b in (6, 7, 8)
]
_RNG = torch.Generator().manual_seed(14)
RANDOM = [  # pi in (0.01, 0.99), both scales in (e^-9, 1), in either order
    (0.01 + 0.98 * float(u[0]), math.exp(-9 * float(u[1])), math.exp(-9 * float(u[2])))
    for u in torch.rand(12, 3, generator=_RNG)
]


@pytest.mark.parametrize("swap", [False, True], ids=["as-drawn", "swapped"])
@pytest.mark.parametrize("pi,s1,s2", PAPER_GRID + RANDOM)
def test_log_prob_and_two_derivatives_match_a_float64_reference(pi, s1, s2, swap):
    """Property: in both orders of the scales, log p, d/dw and d2/dw2 equal a float64
    log-sum-exp reference; float32 log p to relative precision (no cancellation)."""
    if swap:
        s1, s2 = s2, s1
    d64 = ScaleMixtureNormal(torch.tensor(pi, dtype=torch.float64), s1, s2)
    g = torch.Generator().manual_seed(0)
    w = torch.cat(
        [torch.randn(40, generator=g, dtype=torch.float64) * s for s in (s1, s2, 10 * max(s1, s2))]
        + [torch.tensor([0.0, 3.0, -10.0], dtype=torch.float64)]
    )
    ref = _derivatives(lambda v: _reference_log_prob(pi, s1, s2, v), w)
    got = _derivatives(d64.log_prob, w)
    for name, r, x in zip(("log p", "d/dw", "d2/dw2"), ref, got, strict=True):
        torch.testing.assert_close(x, r, rtol=1e-10, atol=1e-10, msg=f"{name} (float64)")
    got32 = _derivatives(ScaleMixtureNormal(pi, s1, s2).log_prob, w.float())
    for name, r, x, tol in zip(
        ("log p", "d/dw", "d2/dw2"), ref, got32, (1e-5, 1e-5, 1e-4), strict=True
    ):
        torch.testing.assert_close(x.double(), r, rtol=tol, atol=tol, msg=f"{name} (float32)")


def test_log_prob_with_sigma1_below_sigma2_is_exact_in_float32():
    """The issue's reproduction: [-6.1277, -51.6746] before, exact [-6.1121, -51.6121]."""
    got = ScaleMixtureNormal(0.5, math.exp(-6), 1.0).log_prob(torch.tensor([3.0, 10.0]))
    torch.testing.assert_close(got, torch.tensor([-6.1121, -51.6121]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("pi,s1,s2", PAPER_GRID)
def test_float32_log_prob_in_the_far_tail_is_the_reference_rounded(pi, s1, s2):
    """Property: on the CPU in float32, where ``softplus`` of the far tail is taken at a floor
    (away from subnormal arithmetic), log p equals the float64 reference to float32 precision
    wherever the narrow component's share is below e^-20, down to below e^-1000 (absolute 3e-7:
    the rounding of the O(1) terms where log p crosses 0, as it does with sigma1 = e^-2);
    a floor at -12, which adds up to 6e-6, fails."""
    w64 = torch.linspace(0.0, 12.0 * max(s1, s2), 20_001, dtype=torch.float64)
    ref = _reference_log_prob(pi, s1, s2, w64)
    narrow = Normal(0.0, min(s1, s2)).log_prob(w64) + math.log(pi if s1 < s2 else 1 - pi) - ref
    tail = narrow < -20
    assert tail.sum() > 10_000 and narrow.min() < -1000
    got = ScaleMixtureNormal(pi, s1, s2).log_prob(w64.float()).double()
    torch.testing.assert_close(got[tail], ref[tail], rtol=1e-6, atol=3e-7)

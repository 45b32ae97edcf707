import pytest
import torch

from pyro_dwp.infer import KLScaleMessenger, kl_weights


@pytest.mark.parametrize("scheme", ["uniform", "blundell"])
@pytest.mark.parametrize("m", [1, 2, 7, 60, 1000, 1_000_000])
def test_sums_to_one_and_finite(scheme, m):
    w = kl_weights(m, scheme)
    assert w.dtype == torch.float64 and w.shape == (m,)
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_blundell_closed_form_and_monotone():
    m = 10
    w = kl_weights(m, "blundell")
    expected = torch.tensor(
        [2.0 ** (m - i) / (2.0**m - 1) for i in range(1, m + 1)], dtype=torch.float64
    )
    assert torch.allclose(w, expected, rtol=1e-14)
    big = kl_weights(5000, "blundell")
    assert (big[1:] <= big[:-1]).all()
    assert (big[1:20] < big[:19]).all()  # strictly decreasing before underflow


def test_uniform():
    assert torch.equal(kl_weights(4, "uniform"), torch.full((4,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize(
    "args,match", [((0, "uniform"), "positive"), ((3, "nope"), "unknown KL scheme")]
)
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        kl_weights(*args)


def test_messenger_scales_only_latent_sites():
    import pyro
    import pyro.distributions as dist
    import pyro.poutine as poutine

    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=torch.tensor(0.5))

    with KLScaleMessenger(0.25):
        tr = poutine.trace(model).get_trace()
    assert tr.nodes["z"]["scale"] == 0.25
    assert tr.nodes["y"]["scale"] == 1.0

"""JointAdam and JointSGD: the same update as Pyro's per-parameter Adam / SGD, in one optimiser."""

import math
from functools import partial

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer import JointAdam, JointSGD, name_rate_factor

DATA = torch.tensor([0.3, -1.2, 0.7, 2.0])


def model():
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(w.sum() + b, 0.5).expand([4]).to_event(1), obs=DATA)


def run(optim, steps=20):
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = BBBNormal(model, init_loc_fn=lambda s: torch.zeros(s["fn"].shape()), init_scale=0.5)
    svi = SVI(model, guide, optim, Trace_ELBO())
    for _ in range(steps):
        svi.step()
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}, optim


def test_same_update_as_pyro_adam():
    ours, _ = run(JointAdam(0.05, fused=False))
    ref, _ = run(pyro.optim.Adam({"lr": 0.05}))
    assert ours.keys() == ref.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=1e-7)


def test_fused_matches_unfused():
    fused, _ = run(JointAdam(0.05, fused=True))
    plain, _ = run(JointAdam(0.05, fused=False))
    for k in fused:
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-5, atol=1e-6)


def test_state_round_trip():
    _, optim = run(JointAdam(0.05))
    state = optim.get_state()
    assert set(state) == set(pyro.get_param_store().keys())
    fresh = JointAdam(0.05)
    fresh.set_state(state)
    params = list(pyro.get_param_store()._params.values())
    for p in params:
        p.grad = torch.zeros_like(p)
    fresh(params)  # consumes the waiting state, then steps with zero gradients
    for name, s in fresh.get_state().items():
        assert s["step"].item() == state[name]["step"].item() + 1
        torch.testing.assert_close(s["exp_avg_sq"], state[name]["exp_avg_sq"] * 0.999)


@pytest.mark.parametrize("lr", [0.0, -1e-3, math.inf, math.nan])
def test_bad_learning_rate(lr):
    with pytest.raises(ValueError, match=f"learning rate must be finite and > 0, got {lr}"):
        JointAdam(lr)


def _run_scheduled(optim, epochs=6, steps_per_epoch=3):
    """SVI steps with the schedule stepped after each epoch, as ``dwp-classify`` does."""
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = BBBNormal(model, init_loc_fn=lambda s: torch.zeros(s["fn"].shape()), init_scale=0.5)
    svi = SVI(model, guide, optim, Trace_ELBO())
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            svi.step()
        optim.step()
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def decay(e):
    return 1 - e / 8


def test_a_schedule_gives_pyros_lambda_lr_update():
    """``JointAdam(lr, lr_lambda=f)`` + ``step()`` per epoch is Pyro's ``LambdaLR`` over
    ``torch.optim.Adam`` (one scheduler per parameter), in one optimiser."""
    ours = _run_scheduled(JointAdam(0.05, fused=False, lr_lambda=decay))
    ref = _run_scheduled(
        pyro.optim.LambdaLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "lr_lambda": decay}
        )
    )
    constant = _run_scheduled(JointAdam(0.05, fused=False, lr_lambda=lambda e: 1.0))
    for k in ours:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=1e-7)
        assert not torch.allclose(ours[k], constant[k])  # the schedule changed the run


def test_a_schedule_resumes_from_its_state():
    """The schedule's count travels with the state: a resumed optimiser steps at the rate the
    uninterrupted one would."""
    optim = JointAdam(0.05, lr_lambda=decay)
    _run_scheduled(optim, epochs=3)
    state = optim.get_state()
    assert state[JointAdam.SCHEDULE_KEY]["steps"].item() == 3
    fresh = JointAdam(0.05, lr_lambda=decay)
    fresh.set_state(state)
    params = list(pyro.get_param_store()._params.values())
    for p in params:
        p.grad = torch.zeros_like(p)
    fresh(params)
    assert fresh._optim.param_groups[0]["lr"] == pytest.approx(0.05 * decay(3))
    with pytest.raises(ValueError, match="with a learning-rate schedule, for a JointAdam without"):
        JointAdam(0.05).set_state(state)
    with pytest.raises(RuntimeError, match="build it with lr_lambda="):
        JointAdam(0.05).step()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("fused", [False, True])
def test_sgd_same_update_as_pyro_sgd(momentum, fused):
    ours, _ = run(JointSGD(0.01, momentum=momentum, fused=fused))
    ref, _ = run(pyro.optim.SGD({"lr": 0.01, "momentum": momentum}))
    one_step, _ = run(JointSGD(0.01, momentum=momentum), steps=1)
    for k in ours:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ours[k], one_step[k])  # it kept moving


def _sgd_in_two_parts(load_state: bool) -> dict[str, torch.Tensor]:
    """10 SGD steps, then 10 with a fresh optimiser, loaded with the first's state or not."""
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = BBBNormal(model, init_loc_fn=lambda s: torch.zeros(s["fn"].shape()), init_scale=0.5)
    first = JointSGD(0.01, momentum=0.9)
    svi = SVI(model, guide, first, Trace_ELBO())
    for _ in range(10):
        svi.step()
    state = first.get_state()
    assert all(set(s) == {"momentum_buffer"} for s in state.values())
    second = JointSGD(0.01, momentum=0.9)
    if load_state:
        second.set_state(state)
    svi = SVI(model, guide, second, Trace_ELBO())
    for _ in range(10):
        svi.step()
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_sgd_momentum_resumes_from_its_state():
    """The momentum buffers travel with the state: a resumed run is the uninterrupted one."""
    whole, _ = run(JointSGD(0.01, momentum=0.9), steps=20)
    resumed, restarted = _sgd_in_two_parts(True), _sgd_in_two_parts(False)
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=1e-6, atol=1e-7)
    assert any(not torch.allclose(restarted[k], whole[k]) for k in whole)  # momentum lost


def test_another_optimizers_state_is_refused():
    _, adam = run(JointAdam(0.05), steps=2)
    with pytest.raises(ValueError, match="not those of JointSGD.*saved by another optimiser"):
        JointSGD(0.05, momentum=0.9).set_state(adam.get_state())
    _, sgd = run(JointSGD(0.05, momentum=0.9), steps=2)
    with pytest.raises(ValueError, match="not those of JointAdam"):
        JointAdam(0.05).set_state(sgd.get_state())


@pytest.mark.parametrize("momentum", [-0.1, 1.0])
def test_bad_momentum(momentum):
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        JointSGD(0.01, momentum=momentum)


def _scales_tenfold(name: str) -> float:
    return name_rate_factor(name, contains=".scales", factor=10.0)


@pytest.mark.parametrize("make", [JointAdam, partial(JointSGD, momentum=0.9)], ids=["adam", "sgd"])
def test_rate_factors_give_pyros_update_with_rates_per_name(make):
    """``lr_factor``: each parameter at ``lr * factor(name)``, as a ``pyro.optim`` wrapper whose
    arguments are a function of the name; with a schedule, the factor stays; the factor changes
    the run."""
    ours = _run_scheduled(make(0.01, fused=False, lr_lambda=decay, lr_factor=_scales_tenfold))
    torch_optim = torch.optim.Adam if make is JointAdam else torch.optim.SGD
    extra = {} if make is JointAdam else {"momentum": 0.9}
    ref = _run_scheduled(
        pyro.optim.LambdaLR(
            {
                "optimizer": torch_optim,
                "optim_args": lambda name: {"lr": 0.01 * _scales_tenfold(name), **extra},
                "lr_lambda": decay,
            }
        )
    )
    plain = _run_scheduled(make(0.01, fused=False, lr_lambda=decay))
    assert any(".scales" in k for k in ours) and any(".locs" in k for k in ours)
    for k in ours:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=1e-7)
    assert not any(torch.allclose(ours[k], plain[k]) for k in ours if ".scales" in k)


def test_rate_factors_are_checked_and_named_in_the_run_settings():
    from pyro_dwp.infer.fingerprint import describe, differences

    with pytest.raises(
        ValueError, match="lr_factor gives parameter 'BBBNormal.scales.b' the factor 0.0"
    ):
        run(JointSGD(0.01, lr_factor=lambda name: 0.0 if ".scales" in name else 1.0), steps=1)
    plain, tenfold = JointSGD(0.01), JointSGD(0.01, lr_factor=_scales_tenfold)
    assert describe(plain) == describe(JointSGD(0.01))  # runs from before the option
    assert differences(describe(plain), describe(tenfold))

"""Training loop: resume equals an uninterrupted run, checkpoint errors, NaN losses."""

import math
import os
import signal

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_dwp.bnn import BNN
from pyro_dwp.distributions import ScaleMixtureNormal
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer import (
    CheckpointError,
    JointAdam,
    TrainingInterrupted,
    fit,
    load_checkpoint,
    non_finite_paths,
)
from pyro_dwp.infer.interrupt import DeferredSignals
from pyro_dwp.likelihoods import Gaussian

X = torch.linspace(0, 1, 30)[:, None]
Y = torch.sin(3 * X)


def make(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    model = BNN(net, ScaleMixtureNormal(0.5, 1.0, math.exp(-6)), Gaussian(len(X), 0.1))
    return model, BBBNormal(model, init_scale=0.01)


def params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


KW = dict(batch_size=8, lr=0.01, kl_scheme="blundell", seed=3, progress=False)


def test_resume_equals_uninterrupted_run(tmp_path):
    model, guide = make()
    full = fit(model, guide, X, Y, epochs=4, **KW)
    expected = params()

    pyro.clear_param_store()
    model, guide = make()
    ck = tmp_path / "ck.pt"
    fit(model, guide, X, Y, epochs=2, checkpoint=ck, **KW)
    pyro.clear_param_store()
    model, guide = make(seed=123)  # fresh objects: everything must come from the checkpoint
    resumed = fit(model, guide, X, Y, epochs=4, checkpoint=ck, resume=True, **KW)
    got = params()
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert load_checkpoint(ck)["epoch"] == 4


def test_resume_with_a_learning_rate_schedule_equals_an_uninterrupted_run(tmp_path):
    """``JointAdam(lr_lambda=)`` stepped once per epoch (``dwp-classify``'s linear decay): the
    schedule's count comes back from the checkpoint, so the resumed epochs use the same rates."""

    def decay(e):
        return 1 - e / 4

    def run(epochs, **kw):
        optim = JointAdam(0.01, lr_lambda=decay)
        history = fit(model, guide, X, Y, epochs=epochs, optim=optim,
                      callback=lambda record: optim.step(), **KW, **kw)  # fmt: skip
        return history, params()

    model, guide = make()
    full, expected = run(4)
    pyro.clear_param_store()
    model, guide = make()
    ck = tmp_path / "ck.pt"
    run(2, checkpoint=ck)
    pyro.clear_param_store()
    model, guide = make(seed=123)
    resumed, got = run(4, checkpoint=ck, resume=True)
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_at_the_epoch_end_and_the_resume_equals_an_uninterrupted_run(
    tmp_path, signum
):
    """SIGTERM / SIGINT arriving in the third epoch of 5: that epoch is finished, the
    checkpoint written at epoch 3 (not a multiple of ``checkpoint_every``), ``TrainingInterrupted``
    names it, the handlers in place before are back; the resume gives the uninterrupted run."""
    model, guide = make()
    full = fit(model, guide, X, Y, epochs=5, **KW)
    expected = params()

    def send(record):
        if record["epoch"] == 3:  # epochs count from 1
            os.kill(os.getpid(), signum)  # delivered before the callback returns

    pyro.clear_param_store()
    model, guide = make()
    ck = tmp_path / "ck.pt"
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted, match=f"{signum.name}: .*after epoch 3 of 5") as e:
        fit(model, guide, X, Y, epochs=5, checkpoint=ck, checkpoint_every=4, callback=send, **KW)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.exit_code == 128 + signum
    assert (e.value.epoch, e.value.path) == (3, ck)
    assert signal.getsignal(signum) is before
    assert load_checkpoint(ck)["epoch"] == 3
    pyro.clear_param_store()
    model, guide = make(seed=123)
    resumed = fit(model, guide, X, Y, epochs=5, checkpoint=ck, resume=True, **KW)
    got = params()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


@pytest.fixture
def python_sigint_handler():
    """SIGINT as Python sets it up in a foreground process (``KeyboardInterrupt``) for the test's
    duration: a process started in the background by a shell inherits SIGINT ignored, and
    Python then leaves it ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("python_sigint_handler")
def test_a_second_signal_acts_at_once_and_without_a_checkpoint_nothing_is_deferred():
    """Inside ``DeferredSignals`` the first SIGINT is recorded, the second is Python's
    ``KeyboardInterrupt``; a fit without a checkpoint leaves SIGINT to Python."""
    with pytest.raises(KeyboardInterrupt) as e, DeferredSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received is signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
    assert not isinstance(e.value, TrainingInterrupted)
    model, guide = make()

    def send(record):
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as e:
        fit(model, guide, X, Y, epochs=3, callback=send, **KW)
    assert not isinstance(e.value, TrainingInterrupted)


def test_history_terms_add_up():
    model, guide = make()
    hist = fit(model, guide, X, Y, epochs=2, **KW)
    assert [r["epoch"] for r in hist] == [1, 2]
    for r in hist:
        assert r["loss"] == pytest.approx(r["nll"] + r["kl"])
        assert r["kl"] > 0


class _SiteRecorder(pyro.poutine.messenger.Messenger):
    """Counts the sample sites that run while it is active."""

    def __init__(self):
        super().__init__()
        self.sites = 0

    def _pyro_sample(self, msg):
        self.sites += 1


def test_handlers_wrap_every_svi_step():
    # Each step runs the guide's and the model's 4 weight sites under the handler: >= 8.
    model, guide = make()
    recorder = _SiteRecorder()
    fit(model, guide, X, Y, epochs=2, handlers=[recorder], **KW)
    steps = 2 * math.ceil(len(X) / KW["batch_size"])
    assert recorder.sites >= steps * 8


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    model, guide = make()
    ck = tmp_path / "ck.pt"
    fit(model, guide, X, Y, epochs=1, checkpoint=ck, **KW)
    ck.write_bytes(ck.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        fit(model, guide, X, Y, epochs=2, checkpoint=ck, resume=True, **KW)


def test_resuming_to_fewer_epochs_than_done_warns_and_trains_nothing(tmp_path):
    model, guide = make()
    ck = tmp_path / "ck.pt"
    fit(model, guide, X, Y, epochs=3, checkpoint=ck, **KW)
    done = params()
    pyro.clear_param_store()
    model, guide = make()
    with pytest.warns(UserWarning, match="already has 3 epochs, more than the 2 asked for"):
        history = fit(model, guide, X, Y, epochs=2, checkpoint=ck, resume=True, **KW)
    assert len(history) == 3 and all(params()[k].equal(v) for k, v in done.items())


def test_checkpoint_of_another_run_is_refused(tmp_path):
    model, guide = make()
    ck = tmp_path / "ck.pt"
    fit(model, guide, X, Y, epochs=1, checkpoint=ck, **KW)
    with pytest.raises(CheckpointError, match=r"other settings \(batch_size: 8 -> 5\)"):
        fit(model, guide, X, Y, epochs=2, checkpoint=ck, resume=True, **{**KW, "batch_size": 5})


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro warns before fit raises
def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    calls = {"n": 0}

    def model(x, y):
        calls["n"] += 1
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        loc = w * x[:, 0] if calls["n"] < 8 else torch.full_like(x[:, 0], math.nan)
        with pyro.plate("data", len(X), subsample_size=len(x)):
            pyro.sample("obs", dist.Normal(loc, 1.0, validate_args=False), obs=y[:, 0])

    guide = BBBNormal(model, init_loc_fn=lambda s: torch.tensor(0.0))
    ck = tmp_path / "ck.pt"
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step \d of 4.*epoch 1"):
        fit(model, guide, X, Y, epochs=3, checkpoint=ck, **KW)
    state = load_checkpoint(ck)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["params"]["params"].values())


@pytest.mark.parametrize("engine", ["pyro", "compiled"])
def test_parameters_left_non_finite_by_the_last_update_are_not_saved(tmp_path, engine):
    # One step, one epoch: its loss is computed before its update, so nothing sees that the
    # rate of 1e39 (inf in float32) sends the parameters to inf or NaN; fit must not return them.
    model, guide = make()
    one_step = {**KW, "batch_size": len(X), "engine": engine}
    with pytest.raises(FloatingPointError, match=r"NaN or infinite after epoch 1.*no checkpoint"):
        fit(model, guide, X, Y, epochs=1, optim=JointAdam(1e39), **one_step)


def test_non_finite_paths_names_every_bad_tensor_in_a_nested_state():
    state = {
        "a": {"w": torch.tensor([1.0, math.nan]), "steps": 3, "ok": torch.zeros(2)},
        "b": [torch.ones(1), (torch.tensor([-math.inf]),)],
        "rng": torch.zeros(4, dtype=torch.uint8),
    }
    assert non_finite_paths(state) == ["a.w", "b.1.0"]
    assert non_finite_paths({"x": torch.ones(3)}) == []


def test_non_finite_parameters_never_reach_the_checkpoint(tmp_path):
    # Whatever made them so (here a callback, standing in for an overflowing update), the
    # checkpoint of epoch 1 stays the last one written.
    def spoil(record):
        if record["epoch"] == 2:
            pyro.get_param_store()["BBBNormal.locs.0.weight"].data[0, 0] = math.inf

    model, guide = make()
    ck = tmp_path / "ck.pt"
    message = r"BBBNormal.locs.0.weight \(1 of \d+\) are NaN or infinite after epoch 2.*epoch 1"
    with pytest.raises(FloatingPointError, match=message):
        fit(model, guide, X, Y, epochs=3, checkpoint=ck, checkpoint_every=1, callback=spoil, **KW)
    state = load_checkpoint(ck)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["params"]["params"].values())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(epochs=0, batch_size=4), "epochs"),
        (dict(epochs=1, batch_size=0), "batch_size"),
        (dict(epochs=1, batch_size=4, num_particles=0), "num_particles"),
        (dict(epochs=1, batch_size=4, resume=True), "checkpoint path"),
        *(
            (dict(epochs=1, batch_size=4, kl_weight=bad), f"kl_weight .* got {bad!r}")
            for bad in (0.0, -1.0, math.nan, math.inf, "1", True)
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    model, guide = make()
    with pytest.raises(ValueError, match=match):
        fit(model, guide, X, Y, progress=False, **kwargs)


def test_mismatched_data_lengths():
    model, guide = make()
    with pytest.raises(ValueError, match="30 examples but y has 29"):
        fit(model, guide, X, Y[:-1], epochs=1, batch_size=4, progress=False)


def test_resume_keeps_a_trained_reverse_model(tmp_path, one_thread):
    """A deep-weight-prior run resumed from a checkpoint equals the uninterrupted run, with the
    reverse models (registered through ``pyro.module``) trained after the resume too."""
    from pyro_dwp.experiments.dwp_bnn import make_dwp_cnn_model
    from pyro_dwp.models.dwp_cnn import DWPConvNet
    from pyro_dwp.models.kernel_vae import KernelVAE

    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])

    def make_dwp(seed):
        torch.manual_seed(seed)
        net = DWPConvNet((2, 3))
        torch.manual_seed(0)  # the same VAEs in every run; the net's values come from the store
        vaes = {"conv1.weight": KernelVAE(7, 2, 4), "conv2.weight": KernelVAE(5, 2, 4)}
        return make_dwp_cnn_model(net, "dwp", dataset_size=len(x), vaes=vaes)[:2]

    kw = dict(batch_size=3, lr=0.01, seed=3, progress=False)
    full = fit(*make_dwp(0), x, y, epochs=4, **kw)
    expected = params()
    assert any(k.startswith("reverse_model$$$") for k in expected)
    pyro.clear_param_store()
    ck = tmp_path / "ck.pt"
    fit(*make_dwp(0), x, y, epochs=2, checkpoint=ck, **kw)
    pyro.clear_param_store()
    resumed = fit(*make_dwp(1), x, y, epochs=4, checkpoint=ck, resume=True, **kw)
    got = params()
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def _make_with(hidden=8, prior=None, init_scale=0.01):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    prior = prior if prior is not None else ScaleMixtureNormal(0.5, 1.0, math.exp(-6))
    model = BNN(net, prior, Gaussian(len(X), 0.1))
    return model, BBBNormal(model, init_scale=init_scale)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(prior=ScaleMixtureNormal(0.5, 1.0, math.exp(-7))), r"model\.priors\.0\.weight"),
        (dict(prior=dist.Normal(0.0, 1.0)), r"model\.priors\.0\.weight\.type"),
        (dict(hidden=16), r"net\.0\.out_features: 8 -> 16.*locs\.0\.weight: \[8, 1\] -> \[16, 1\]"),
        (dict(init_scale=0.02), r"guide\._init_scale: 0\.01 -> 0\.02"),
        (dict(lr=0.02), r"optim\.args\.lr: 0\.01 -> 0\.02"),
        (dict(num_particles=2), r"num_particles: 1 -> 2"),
        (dict(kl_weight=0.5), r"kl_weight"),
        (dict(y=Y + 1), r"data: '\w+' -> '\w+'"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_them(tmp_path, change, match):
    ck = tmp_path / "ck.pt"
    fit(*_make_with(), X, Y, epochs=1, checkpoint=ck, **KW)
    build = {k: v for k, v in change.items() if k in ("hidden", "prior", "init_scale")}
    y = change.get("y", Y)
    kw = {**KW, **{k: v for k, v in change.items() if k in ("lr", "num_particles", "kl_weight")}}
    pyro.clear_param_store()
    with pytest.raises(CheckpointError, match=f"other settings.*{match}"):
        fit(*_make_with(**build), X, y, epochs=2, checkpoint=ck, resume=True, **kw)


def test_resumed_run_says_where_it_resumed(tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    fit(*make(), X, Y, epochs=1, checkpoint=ck, **KW)
    pyro.clear_param_store()
    fit(*make(), X, Y, epochs=3, checkpoint=ck, resume=True, **{**KW, "progress": True})
    assert f"resumed at epoch 1 of 3 from {ck}" in capsys.readouterr().err


def test_improper_prior_under_a_monte_carlo_elbo_is_refused_before_training():
    from pyro.infer import TraceMeanField_ELBO

    from pyro_dwp.distributions import LogUniform

    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 1))
        model = BNN(net, LogUniform(), Gaussian(len(X), 0.1))
        return model, BBBNormal(model, init_scale=0.01)

    model, guide = build()
    with pytest.raises(ValueError, match=r"improper.*LogUniform.*TraceMeanField_ELBO"):
        fit(model, guide, X, Y, epochs=1, **KW)
    assert all(torch.equal(guide.loc(n), p) for n, p in model.net.named_parameters())  # untrained
    pyro.clear_param_store()
    fit(*build(), X, Y, epochs=1, elbo=TraceMeanField_ELBO, **KW)


def test_autonormal_starting_weight_means_at_zero_is_warned_about():
    from pyro.infer.autoguide import AutoNormal

    from pyro_dwp.guides import init_to_module

    model, _ = make()
    with pytest.warns(UserWarning, match=r"AutoNormal.*at 0.*init_loc_fn=init_to_module"):
        fit(model, AutoNormal(model), X, Y, epochs=1, **KW)
    pyro.clear_param_store()
    model, _ = make()
    fit(model, AutoNormal(model, init_loc_fn=init_to_module), X, Y, epochs=1, **KW)


@pytest.mark.parametrize("bad", ["x", "y"])
def test_nan_in_the_data_is_named_before_training(bad):
    x, y = X.clone(), Y.clone()
    (x if bad == "x" else y)[7, 0] = math.nan
    with pytest.raises(ValueError, match=rf"{bad} has 1 NaN or infinite value.*example 7"):
        fit(*make(), x, y, epochs=1, **KW)


def test_a_torch_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    ck = tmp_path / "ck.pt"
    torch.save({"version": 2, "epoch": 1}, ck)
    with pytest.raises(CheckpointError, match="not a pyro_dwp training checkpoint"):
        fit(*make(), X, Y, epochs=2, checkpoint=ck, resume=True, **KW)


def test_temporaries_left_by_a_killed_write_are_removed(tmp_path):
    ck = tmp_path / "ck.pt"
    stale = tmp_path / "ck.pt.x1y2z3.tmp"  # what a kill during save_checkpoint leaves
    stale.write_bytes(b"partial")
    other = tmp_path / "other.pt.x1y2z3.tmp"  # another file's: not ours to remove
    other.write_bytes(b"partial")
    fit(*make(), X, Y, epochs=1, checkpoint=ck, **KW)
    assert ck.is_file() and not stale.exists() and other.exists()


def test_progress_bar_writes_sparingly_when_not_a_terminal(capsys):
    fit(*make(), X, Y, epochs=30, **{**KW, "progress": True})  # stderr is captured: no tty
    assert capsys.readouterr().err.count("\r") <= 3

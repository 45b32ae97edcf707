"""The compiled SVI engine: the loss and gradients of Pyro's Trace_ELBO on shared noise, the same
training as Pyro's engine, checkpoints that resume across engines, and the fallback."""

import importlib
import math
import re
import shutil
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.scale_messenger import ScaleMessenger
from torch import nn

from pyro_dwp.bnn import BNN
from pyro_dwp.distributions import LogUniform, ScaleMixtureNormal
from pyro_dwp.experiments.dwp_bnn import make_dwp_cnn_model
from pyro_dwp.guides import BBBNormal, LogVarianceNormal, PointMass, init_to_module
from pyro_dwp.guides.log_variance import TruncatedAlphaNormal
from pyro_dwp.infer import (
    JointAdam,
    KLScaleMessenger,
    LocalReparameterizationMessenger,
    SVITrainer,
    fit,
    kl_weights,
)
from pyro_dwp.infer.checkpoint import get_rng_state, set_rng_state
from pyro_dwp.infer.compiled import NotCompilableError, compile_svi
from pyro_dwp.likelihoods import Categorical, Gaussian
from pyro_dwp.models import DWPConvNet, KernelVAE

PRIORS = {
    "normal": lambda: dist.Normal(0.0, 1.0),
    "scale_mixture": lambda: ScaleMixtureNormal(0.5, 1.0, math.exp(-6)),
    "per_layer": lambda: {
        "0.*": ScaleMixtureNormal(0.25, 1.5, math.exp(-7)),
        "2.weight": dist.Normal(0.1, 0.5),
        "2.bias": None,  # a point estimate
    },
    "tensor_parameters": lambda: {  # a prior with a batch shape, broadcast over the weight
        "0.weight": dist.Normal(torch.linspace(-0.2, 0.2, 3), torch.linspace(0.5, 1.0, 3)),
        "*": ScaleMixtureNormal(torch.tensor([0.5]), 1.0, math.exp(-6)),
    },
}
GUIDES = {
    "bbb": BBBNormal,
    "log_variance": LogVarianceNormal,
    "truncated_alpha": TruncatedAlphaNormal,
    "point_mass": PointMass,  # MAP: w = loc, the term -log p(loc)
}
# A minibatch KL weight M * pi_i of the Blundell scheme (M = 4, second minibatch).
KL_SCALE = float(kl_weights(4, "blundell")[1] * 4)


def classifier(prior, guide_type, n=50):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))
    model = BNN(net, prior, Categorical(n))
    return model, guide_type(model)


def regression(n=30):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    model = BNN(net, ScaleMixtureNormal(0.5, 1.0, math.exp(-6)), Gaussian(n))  # learned noise
    return model, BBBNormal(model, init_scale=0.05)


def pyro_loss(
    model, guide, x, y, handlers, kl_scale, num_particles=1, elbo=Trace_ELBO, vectorize=False
):
    kl = KLScaleMessenger(kl_scale)
    elbo = elbo(  # as fit builds it
        num_particles=num_particles,
        vectorize_particles=vectorize,
        max_plate_nesting=1 if vectorize else float("inf"),
    )
    with pyro.poutine.block():
        for h in handlers:
            h.__enter__()
        try:
            return elbo.differentiable_loss(kl(model), kl(guide), x, y)
        finally:
            for h in reversed(handlers):
                h.__exit__(None, None, None)


def assert_same_loss_and_grads(
    model, guide, x, y, handlers=(), num_particles=1, elbo=Trace_ELBO, vectorize=False
):
    """The loss to 1e-5 relative; each gradient to 1e-5 relative per element, with a floor of
    1e-5 of its largest entry, for entries where terms of float32 rounding cancel (e.g. the KL's
    and the data term's pulls on a weight, or the auxiliary bound's ``log r(z | w)`` at
    ``z = mu + sigma * eps``, whose quadratic term has zero total gradient up to rounding)."""
    handlers = list(handlers)
    program = compile_svi(
        model, guide, x, y, optim=JointAdam(1e-2), handlers=handlers,
        num_particles=num_particles, kl_scale=KL_SCALE, elbo=elbo, vectorize_particles=vectorize,
    )  # fmt: skip
    rng = pyro.util.get_rng_state()
    loss, _ = program.loss(x, y, KL_SCALE)
    got = torch.autograd.grad(loss, program.params)
    pyro.util.set_rng_state(rng)  # shared noise
    expected_loss = pyro_loss(
        model, guide, x, y, handlers, KL_SCALE, num_particles, elbo, vectorize
    )
    expected = torch.autograd.grad(expected_loss, program.params)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0.0)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * float(e.abs().max()))


@pytest.mark.parametrize("local_reparam", [False, True], ids=["weights", "local_reparam"])
@pytest.mark.parametrize("guide_type", GUIDES.values(), ids=GUIDES.keys())
@pytest.mark.parametrize("prior", PRIORS.values(), ids=PRIORS.keys())
def test_loss_and_gradients_equal_trace_elbo(prior, guide_type, local_reparam):
    model, guide = classifier(prior(), guide_type)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    handlers = [LocalReparameterizationMessenger()] if local_reparam else []
    assert_same_loss_and_grads(model, guide, x, y, handlers)


@pytest.mark.parametrize(
    "prior, groups",
    [
        ("scale_mixture", [["0.weight", "0.bias", "2.weight", "2.bias"]]),
        ("per_layer", [["0.weight", "0.bias"], ["2.weight"]]),  # 2.bias is a point estimate
        # 0.weight's Normal has a batch shape (3,); the mixture's one-element tensors fuse
        ("tensor_parameters", [["0.weight"], ["0.bias", "2.weight", "2.bias"]]),
    ],
)
def test_sites_of_one_scalar_prior_run_fused(prior, groups):
    """Consecutive small sites of the same scalar-parameter prior are evaluated as one vector
    (the loss and gradients above then test the fused pass against Pyro's); a prior with a
    batch shape, or another prior, starts a new run."""
    model, guide = classifier(PRIORS[prior](), BBBNormal)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    program = compile_svi(model, guide, x, y, optim=JointAdam(1e-2))
    assert [[s.name for s in g] for g in program._groups] == groups


@pytest.mark.parametrize("local_reparam", [False, True], ids=["weights", "local_reparam"])
@pytest.mark.parametrize("guide_type", GUIDES.values(), ids=GUIDES.keys())
@pytest.mark.parametrize(
    "prior",
    [*PRIORS.values(), lambda: LogUniform()],
    ids=[*PRIORS.keys(), "log_uniform"],
)
def test_loss_and_gradients_equal_trace_mean_field_elbo(prior, guide_type, local_reparam):
    # Registered KLs (Normal, log-uniform) analytic; the scale mixture's term Monte Carlo.
    model, guide = classifier(prior(), guide_type)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    handlers = [LocalReparameterizationMessenger()] if local_reparam else []
    if guide_type is PointMass and isinstance(model.priors["0.weight"], LogUniform):
        # a point mass takes the prior's log-density, which the engine does not have: named
        with pytest.raises(NotCompilableError, match="unsupported prior LogUniform"):
            compile_svi(model, guide, x, y, optim=None, elbo=TraceMeanField_ELBO)
        return
    assert_same_loss_and_grads(model, guide, x, y, handlers, elbo=TraceMeanField_ELBO)


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
@pytest.mark.parametrize("prior", ["per_layer", "tensor_parameters"])
def test_vectorised_particles_equal_pyros(prior, elbo):
    # The local reparameterisation handler is inert under vmap, in Pyro and here.
    model, guide = classifier(PRIORS[prior](), LogVarianceNormal)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    handlers = [LocalReparameterizationMessenger()]
    assert_same_loss_and_grads(
        model, guide, x, y, handlers, num_particles=3, elbo=elbo, vectorize=True
    )


@pytest.mark.parametrize("vectorize", [False, True])
def test_a_point_mass_with_particles_equals_pyros(vectorize):
    """Particles of a point mass are copies of one point: the loss is still Pyro's."""
    model, guide = classifier(PRIORS["scale_mixture"](), PointMass)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    handlers = [LocalReparameterizationMessenger()]
    assert_same_loss_and_grads(model, guide, x, y, handlers, num_particles=3, vectorize=vectorize)


def test_vectorised_particles_with_a_gaussian_likelihood():
    model, guide = regression()
    x = torch.linspace(0, 1, 7)[:, None]
    assert_same_loss_and_grads(model, guide, x, torch.sin(3 * x), num_particles=4, vectorize=True)


def test_gaussian_likelihood_with_learned_noise_and_two_particles():
    model, guide = regression()
    x = torch.linspace(0, 1, 7)[:, None]
    assert_same_loss_and_grads(model, guide, x, torch.sin(3 * x), num_particles=2)


def dwp_convnet(trainable_reverse=True, prior="dwp", n=20):
    torch.manual_seed(0)
    vaes = {"conv1.weight": KernelVAE(7, 2, 4), "conv2.weight": KernelVAE(5, 2, 4)}
    net = DWPConvNet((2, 3))
    setup = make_dwp_cnn_model(
        net, prior, dataset_size=n, vaes=vaes, trainable_reverse=trainable_reverse
    )
    return setup.model, setup.guide


def images(n=20):
    torch.manual_seed(1)
    return torch.randn(n, 1, 28, 28).clamp_min(0), torch.randint(0, 10, (n,))


@pytest.mark.parametrize("local_reparam", [False, True], ids=["weights", "local_reparam"])
@pytest.mark.parametrize("trainable", [True, False], ids=["trainable", "frozen"])
def test_dwp_convnet_loss_and_gradients_equal_trace_elbo(trainable, local_reparam, one_thread):
    model, guide = dwp_convnet(trainable)
    x, y = images(5)
    handlers = [LocalReparameterizationMessenger()] if local_reparam else []
    assert_same_loss_and_grads(model, guide, x, y, handlers)


def test_dwp_convnet_on_one_layer_with_a_normal_prior_on_the_other(one_thread):
    model, guide = dwp_convnet(prior={"conv1": "dwp", "conv2": "normal"})
    x, y = images(5)
    assert_same_loss_and_grads(model, guide, x, y)


def test_fit_compiled_dwp_convnet_equals_fit_pyro(one_thread):
    x, y = images()
    runs = {}
    for engine in ("pyro", "compiled"):
        pyro.clear_param_store()
        model, guide = dwp_convnet()
        trainer = SVITrainer(
            model, guide, x, y, batch_size=5, lr=1e-3, seed=1, progress=False, engine=engine,
            handlers=[LocalReparameterizationMessenger()],
        )  # fmt: skip
        trainer.train(1)
        assert trainer.running_engine == engine
        runs[engine] = params()
    assert_same_params(runs["pyro"], runs["compiled"])


X = torch.linspace(0, 1, 30)[:, None]
Y = torch.sin(3 * X)
KW = dict(batch_size=8, lr=0.01, kl_scheme="blundell", seed=3, progress=False)


def params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def assert_same_params(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0.0, atol=atol, msg=k)


@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
@pytest.mark.parametrize("local_reparam", [False, True], ids=["weights", "local_reparam"])
def test_fit_compiled_equals_fit_pyro(local_reparam, kl_weight):
    """The same parameters and records from both engines, a tempered KL term (kl_weight) too."""
    runs = {}
    for engine in ("pyro", "compiled"):
        pyro.clear_param_store()
        model, guide = regression()
        handlers = [LocalReparameterizationMessenger()] if local_reparam else []
        trainer = SVITrainer(
            model, guide, X, Y, engine=engine, handlers=handlers, kl_weight=kl_weight, **KW
        )
        history = trainer.train(3)
        assert trainer.running_engine == engine
        runs[engine] = params(), history
    assert_same_params(runs["pyro"][0], runs["compiled"][0])
    for a, b in zip(runs["pyro"][1], runs["compiled"][1], strict=True):
        for key in ("loss", "nll", "kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-5)


ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_rng_state_restores_the_draws_on_the_device():
    """What compile_svi's check restores: on CUDA the noise comes from the device's generator,
    which Pyro's own RNG state leaves out (the check then compared different noise)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    state = get_rng_state(device)
    assert (state["cuda_rng"] is None) == (device == "cpu")
    drawn = torch.randn(5, device=device), torch.randn(5)
    set_rng_state(state, device)
    assert torch.equal(drawn[0], torch.randn(5, device=device))
    assert torch.equal(drawn[1], torch.randn(5))


@ON_CUDA
def test_fit_compiled_runs_compiled_on_cuda():
    runs = {}
    for engine in ("pyro", "compiled"):
        pyro.clear_param_store()
        model, guide = regression()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to Pyro's engine
            trainer = SVITrainer(model, guide, X, Y, engine=engine, device="cuda", **KW)
            history = trainer.train(2)
        assert trainer.running_engine == engine
        runs[engine] = history
    for a, b in zip(runs["pyro"], runs["compiled"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.parametrize("guide_type", [LogVarianceNormal, PointMass])
@pytest.mark.parametrize("particles", [{}, {"num_particles": 2, "vectorize_particles": True}])
def test_fit_compiled_classifier_equals_fit_pyro(particles, guide_type):
    x, y = torch.randn(40, 3), torch.randint(0, 4, (40,))
    runs = {}
    for engine in ("pyro", "compiled"):
        pyro.clear_param_store()
        model, guide = classifier(PRIORS["per_layer"](), guide_type, n=40)
        trainer = SVITrainer(model, guide, x, y, engine=engine, **particles, **KW)
        trainer.train(2)
        assert trainer.running_engine == engine
        runs[engine] = params()
    assert_same_params(runs["pyro"], runs["compiled"])


@pytest.mark.parametrize("first, second", [("pyro", "compiled"), ("compiled", "pyro")])
def test_checkpoint_resumes_on_the_other_engine(tmp_path, first, second):
    model, guide = regression()
    fit(model, guide, X, Y, epochs=4, engine=second, **KW)
    expected = params()

    pyro.clear_param_store()
    model, guide = regression()
    ck = tmp_path / "ck.pt"
    fit(model, guide, X, Y, epochs=2, checkpoint=ck, engine=first, **KW)
    pyro.clear_param_store()
    model, guide = regression()
    fit(model, guide, X, Y, epochs=4, checkpoint=ck, resume=True, engine=second, **KW)
    assert_same_params(expected, params())


@pytest.mark.parametrize("first, second", [("pyro", "compiled"), ("compiled", "pyro")])
def test_checkpoint_loads_bit_identically_into_the_other_engine(tmp_path, first, second):
    ck = tmp_path / "ck.pt"
    model, guide = regression()
    writer = SVITrainer(model, guide, X, Y, checkpoint=ck, engine=first, **KW)
    writer.train(2)
    saved_params, saved_optim = params(), writer.optim.get_state()

    pyro.clear_param_store()
    model, guide = regression()
    reader = SVITrainer(model, guide, X, Y, checkpoint=ck, engine=second, **KW)
    assert reader.resume()
    got_params, got_optim = params(), reader.optim.get_state()
    assert saved_params.keys() == got_params.keys() and saved_optim.keys() == got_optim.keys()
    for k in saved_params:
        assert torch.equal(saved_params[k], got_params[k]), k
    for k in saved_optim:
        for key, value in saved_optim[k].items():
            assert torch.equal(value, got_optim[k][key]), (k, key)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=ON_CUDA)])
def test_compiled_resume_is_bit_identical(tmp_path, device):
    """On CUDA too: the checkpoint is read onto the CPU, and its parameters must reach the device
    as leaves the optimiser accepts (a bare ``.to("cuda")`` made non-leaf copies)."""
    kw = {**KW, "engine": "compiled", "device": device}
    model, guide = regression()
    full = fit(model, guide, X, Y, epochs=4, **kw)
    expected = params()

    pyro.clear_param_store()
    model, guide = regression()
    ck = tmp_path / "ck.pt"
    fit(model, guide, X, Y, epochs=2, checkpoint=ck, **kw)
    pyro.clear_param_store()
    model, guide = regression()
    resumed = fit(model, guide, X, Y, epochs=4, checkpoint=ck, resume=True, **kw)
    got = params()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_auto_compiles_a_bnn():
    model, guide = regression()
    trainer = SVITrainer(model, guide, X, Y, engine="auto", **KW)
    trainer.train(1)
    assert trainer.running_engine == "compiled"


def test_nan_loss_on_the_compiled_engine_names_the_step():
    # Huge steps overflow the weights after the first (Pyro's) step: the compiled second fails.
    model, guide = regression()
    with pytest.raises(FloatingPointError, match=r"loss is (inf|nan) at epoch 1, step 2 of 4"):
        fit(model, guide, X, Y, epochs=2, **{**KW, "lr": 1e30}, engine="compiled")


def pyro_model(x, y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(X), subsample_size=len(x)):
        pyro.sample("obs", dist.Normal(w * x[:, 0], 0.1), obs=y[:, 0])


class _NoisyNet(nn.Module):
    """A network with a Pyro site of its own: the traced sites are not a BNN's."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)

    def forward(self, x):
        gain = pyro.sample("gain", dist.Normal(1.0, 0.1))
        return gain * self.layer(x)


def _laplace_bnn():
    net = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    model = BNN(net, dist.Laplace(0.0, 1.0), Gaussian(len(X), 0.1))
    return model, BBBNormal(model)


def _noisy_bnn():
    model = BNN(_NoisyNet(), {"layer.*": dist.Normal(0.0, 1.0)}, Gaussian(len(X), 0.1))
    return model, BBBNormal(model)


@pytest.mark.parametrize(
    "build, options, reason",
    [
        (
            lambda: (pyro_model, AutoNormal(pyro_model)),
            {},
            "unsupported model function (compiled: pyro_dwp.BNN)",
        ),
        (_laplace_bnn, {}, "unsupported prior Laplace at site '0.weight'"),
        (regression, {"elbo": TraceGraph_ELBO}, "unsupported ELBO TraceGraph_ELBO"),
        (
            regression,
            {"handlers": [ScaleMessenger(1.0)]},
            "unsupported handler(s) ['ScaleMessenger']",
        ),
        (_noisy_bnn, {}, "the traced guide sample sites differ from the BNN's: gain"),
    ],
    ids=["pyro_function", "laplace_prior", "trace_graph_elbo", "handler", "extra_site"],
)
def test_unsupported_setting_falls_back_to_pyro_naming_the_reason(build, options, reason):
    model, guide = build()
    trainer = SVITrainer(model, guide, X, Y, engine="compiled", **{**KW, **options})
    expected = r"^engine='compiled' falls back to Pyro's SVI: " + re.escape(reason)
    with pytest.warns(UserWarning, match=expected) as warned:
        history = trainer.train(2)
    assert len([w for w in warned if "falls back" in str(w.message)]) == 1
    assert trainer.running_engine == "pyro" and math.isfinite(history[-1]["loss"])


def test_an_error_while_compiling_falls_back_naming_it(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a network the tracer cannot run")

    # compile_or_warn, which fit's trainer calls, looks compile_svi up in its module
    monkeypatch.setattr(importlib.import_module("pyro_dwp.infer.compiled"), "compile_svi", broken)
    model, guide = regression()
    trainer = SVITrainer(model, guide, X, Y, engine="auto", **KW)
    expected = "engine='auto' falls back to Pyro's SVI: compiling failed with RuntimeError: a net"
    with pytest.warns(UserWarning, match=re.escape(expected)):
        trainer.train(1)
    assert trainer.running_engine == "pyro"


def test_unknown_engine_is_refused():
    model, guide = regression()
    with pytest.raises(ValueError, match="engine must be one of"):
        fit(model, guide, X, Y, epochs=1, engine="jit", **KW)


def test_compile_refuses_a_handler_it_does_not_know():
    model, guide = regression()

    class Other(pyro.poutine.messenger.Messenger):
        pass

    with pytest.raises(NotCompilableError, match=r"unsupported handler\(s\) \['Other'\]"):
        compile_svi(model, guide, X[:8], Y[:8], optim=JointAdam(1e-2), handlers=[Other()])


def test_predict_after_compiled_training_reads_the_trained_guide():
    from pyro_dwp.infer import predict

    model, guide = regression()
    fit(model, guide, X, Y, epochs=2, engine="compiled", **KW)
    draws = predict(model, guide, X, num_samples=5)
    assert draws["_RETURN"].shape == (5, 30, 1)
    assert torch.equal(guide.loc("0.weight"), pyro.param("BBBNormal.locs.0.weight"))


def test_autonormal_guide_is_named():
    model = BNN(nn.Linear(1, 1), dist.Normal(0.0, 1.0), Gaussian(len(X), 0.1))
    guide = AutoNormal(model, init_loc_fn=init_to_module)
    with pytest.raises(NotCompilableError, match="unsupported guide AutoNormal"):
        compile_svi(model, guide, X[:8], Y[:8], optim=JointAdam(1e-2))


def test_compiled_without_an_optimiser_gives_the_loss_and_refuses_to_step():
    model, guide = classifier(ScaleMixtureNormal(0.5, 1.0, math.exp(-6)), BBBNormal)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    program = compile_svi(model, guide, x, y, optim=None)
    loss, _ = program.loss(x, y)
    assert loss.requires_grad and torch.isfinite(loss)
    with pytest.raises(RuntimeError, match="compiled with optim=None"):
        program.step(x, y)


NEEDS_CXX = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile on a CPU needs a C++ compiler",
)


@NEEDS_CXX
def test_torch_compiled_training_equals_the_compiled_training(one_thread):
    """The same draws (the eager generators) and the same updates, to float32 rounding, with
    Blundell KL weights (a tensor factor, not a recompiled constant) and a smaller last batch.
    On a torch whose inductor fails the first pass's check (2.11: wrong gradients) the step runs
    eagerly, so the runs still agree; the test then says so as a skip."""
    runs, refused = {}, []
    for torch_compile in (False, True):
        pyro.clear_param_store()
        model, guide = regression()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = SVITrainer(
                model, guide, X, Y, engine="compiled", torch_compile=torch_compile, **KW
            )
            history = trainer.train(3)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        refused += [m for m in messages if m.startswith("torch.compile of the compiled step")]
        assert len(refused) == len(messages), messages  # no fallback to Pyro's SVI
        runs[torch_compile] = params(), history
    assert_same_params(runs[False][0], runs[True][0], atol=1e-5)
    for a, b in zip(runs[False][1], runs[True][1], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    if refused:
        pytest.skip(f"this torch's inductor was refused, the step ran eagerly: {refused[0]}")


def _with_torch_compile(monkeypatch, fake):
    """A compiled regression step whose ``torch.compile`` is ``fake(fn, program)`` (returning
    the pass to run), the eager loss that its next pass gives, and the RNG state for it."""
    model, guide = regression()
    program = compile_svi(model, guide, X[:8], Y[:8], optim=JointAdam(0.01))
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fake(fn, program))
    program.use_torch_compile()
    rng = torch.get_rng_state()
    expected = program._particle_loss(X[:8], Y[:8], 1.0)[0]
    torch.set_rng_state(rng)
    return program, expected, rng


def test_a_failing_torch_compile_falls_back_to_the_eager_pass(monkeypatch):
    def broken(fn, program):
        def fail(*args):
            raise RuntimeError("no C++ compiler")

        return fail

    program, expected, _ = _with_torch_compile(monkeypatch, broken)
    with pytest.warns(UserWarning, match="step is not used.*it failed: RuntimeError: no C"):
        loss, _ = program.loss(X[:8], Y[:8])
    assert torch.equal(loss, expected)


def test_a_torch_compile_with_wrong_gradients_is_refused(monkeypatch):
    """The right loss with a wrong gradient (what torch 2.11's inductor returns for this pass)
    fails the first call's check: the step runs eagerly, on the draws it would have made."""

    def wrong_gradients(fn, program):
        first = program.params[0]

        def run(*args):
            loss, data = fn(*args)
            return loss + (first - first.detach()).sum(), data  # same value, gradient + 1

        return run

    program, expected, rng = _with_torch_compile(monkeypatch, wrong_gradients)
    with pytest.warns(UserWarning, match=r"the gradients of 1 of \d+ parameters differ"):
        loss, _ = program.loss(X[:8], Y[:8])
    assert torch.equal(loss, expected) and not program.uses_torch_compile
    torch.set_rng_state(rng)
    assert torch.equal(program.loss(X[:8], Y[:8])[0], expected)  # eager from now on, silently


def test_a_torch_compile_that_agrees_is_kept_after_the_check(monkeypatch):
    """A compiled pass that agrees with the eager one passes the check, runs from then on, and
    the check leaves the RNG where the step found it (its first loss is on the same draws)."""
    calls = []

    def same(fn, program):
        def run(*args):
            calls.append(1)
            return fn(*args)

        return run

    program, expected, _ = _with_torch_compile(monkeypatch, same)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, _ = program.loss(X[:8], Y[:8])
        program.loss(X[:8], Y[:8])
    assert torch.equal(loss, expected) and program.uses_torch_compile
    assert len(calls) == 3  # the check's pass, the first step's, the second step's

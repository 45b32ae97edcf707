"""Data-parallel SVI (``pyro_dwp.infer.distributed``): two CPU processes over gloo.

One run of ``tests/ddp_worker.py`` (two processes, about 10 s) records what the tests check
against single-process computations done here with plain Pyro.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pyro_dwp
from pyro_dwp.cli import main
from pyro_dwp.diagnostics import to_inference_data
from pyro_dwp.experiments.mnist import load_bbb_run
from pyro_dwp.infer import CheckpointError, KLScaleMessenger, kl_weights, predict

if os.environ.get("CI") != "true":  # CI installs the dev extra, which has lightning: never skip
    pytest.importorskip("lightning", reason="needs the extra pyro-dwp[distributed] (lightning)")

import ddp_worker as worker  # noqa: E402  (tests/ is on sys.path, as for conftest)
from test_mnist_job import TINY  # noqa: E402

from pyro_dwp.infer.distributed import fit_distributed, load_distributed_checkpoint  # noqa: E402

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """The folder of one two-process run of ``ddp_worker.py``."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent)}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _single_process_gradients(
    step: dict, n: int, likelihood: bool, elbo: type, num_batches: int
) -> dict[str, torch.Tensor]:
    """The gradient of one process's loss on the whole global batch of ``step``, from the same
    parameters and RNG state, with the Blundell KL weight of the step's global batch index."""
    model, guide = worker.build(n, likelihood)
    x, y = step["x"], step["y"]
    with torch.no_grad(), pyro.poutine.block():
        pyro.poutine.replay(model, pyro.poutine.trace(guide).get_trace(x, y))(x, y)
    store = pyro.get_param_store()
    params = {k: v.clone().requires_grad_() for k, v in step["params"].items()}
    store.set_state({"params": params, "constraints": store.get_state()["constraints"]})
    pyro.util.set_rng_state(step["rng"])
    scale = KLScaleMessenger(float(kl_weights(num_batches, "blundell")[step["batch_idx"]]))
    scale.scale *= num_batches
    loss = elbo().differentiable_loss(scale(model), scale(guide), x, y)
    values = dict(store.named_parameters())
    grads = torch.autograd.grad(loss, [values[k] for k in params])
    return dict(zip(params, grads, strict=True))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_ddp_gradient_equals_single_process_gradient_on_union_of_batches(ddp_run):
    record = torch.load(ddp_run / "grad.pt", weights_only=False)
    steps = record["steps"]
    assert len(steps) == 2  # N = 16, global batch 2 x 4
    for step in steps:
        assert step["x"].shape == (2 * worker.BATCH, 3)  # both processes' batches
        ref = _single_process_gradients(step, record["n"], True, Trace_ELBO, len(steps))
        assert "noise_scale" in ref  # a param-store value outside the guide is trained too
        for name, grad in ref.items():
            assert _relative_error(step["grads"][name], grad) < 1e-6, name


def test_ddp_compiled_engine_gradient_equals_single_process_pyro_gradient(ddp_run):
    """Each process's compiled loss (from the second step on) gives, after DDP's averaging, the
    gradient of Pyro's single-process loss on the union of the two processes' batches."""
    record = torch.load(ddp_run / "grad_compiled.pt", weights_only=False)
    steps = record["steps"]
    assert [s["engine"] for s in steps] == ["pyro", "compiled", "compiled"]  # N = 24: 3 x 2 x 4
    for step in steps:
        ref = _single_process_gradients(step, record["n"], True, Trace_ELBO, len(steps))
        for name, grad in ref.items():
            assert _relative_error(step["grads"][name], grad) < 1e-6, name


def test_kl_counted_once_per_global_step_with_blundell_weights_by_global_index(ddp_run):
    # No likelihood: the loss is the KL term alone, in closed form (TraceMeanField_ELBO). Two
    # processes that each added their KL would give twice the single-process gradient.
    record = torch.load(ddp_run / "kl.pt", weights_only=False)
    steps = record["steps"]
    assert [s["batch_idx"] for s in steps] == [0, 1, 2]  # N = 24: 3 global batches of 2 x 4
    for step in steps:
        ref = _single_process_gradients(step, record["n"], False, TraceMeanField_ELBO, 3)
        for name, grad in ref.items():
            assert _relative_error(step["grads"][name], grad) < 1e-6, name
    # Over an epoch the Blundell weights M * pi_i sum to M: the KL once per epoch on average.
    (epoch,) = record["history"]
    assert epoch["nll"] == 0 and epoch["kl"] == pytest.approx(epoch["loss"])


def test_ddp_checkpoint_resumes_as_the_uninterrupted_run(ddp_run):
    runs = torch.load(ddp_run / "resume.pt", weights_only=False)
    (whole, whole_params), (resumed, resumed_params) = runs["whole"], runs["resumed"]
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert len(whole) == 2 and drop(resumed) == drop(whole)
    assert resumed_params.keys() == whole_params.keys()
    for name, value in whole_params.items():
        assert torch.equal(resumed_params[name], value), name
    state = torch.load(ddp_run / "b.ckpt", weights_only=False)
    assert state["optimizer_states"][0]["state"]  # Adam's moments
    assert {"rng", "history", "fingerprint"} <= state["pyro_dwp"].keys()


def test_ddp_trained_model_predicts_on_one_process(ddp_run):
    whole_params = torch.load(ddp_run / "resume.pt", weights_only=False)["whole"][1]
    x, y = worker.data(20)
    model, guide = pyro_dwp.load(ddp_run / "model.pt")
    samples = predict(model, guide, x, num_samples=7)["obs"]
    assert samples.shape == (7, 20, 1) and torch.isfinite(samples).all()
    idata = to_inference_data(model, guide, x, y, num_samples=7)
    assert idata.posterior.sizes["draw"] == 7

    pyro.clear_param_store()  # the Lightning checkpoint itself, into a freshly built model
    model, guide = worker.build(20)
    load_distributed_checkpoint(ddp_run / "a.ckpt", model, guide, x, y)
    for name, value in whole_params.items():
        assert torch.equal(pyro.get_param_store()._params[name], value), name
    assert predict(model, guide, x, num_samples=3)["obs"].shape == (3, 20, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"devices": 0}, "devices must be a positive integer, got 0"),
        ({"devices": 1.5}, "devices must be a positive integer"),
        ({"num_nodes": 0}, "num_nodes must be a positive integer"),
        ({"strategy": "horovod"}, "unknown strategy 'horovod'; choose one of auto, ddp"),
        ({"accelerator": "tpu"}, "unknown accelerator 'tpu'"),
        ({"checkpoint": "run.pt"}, "checkpoint must be a Lightning .ckpt file, got 'run.pt'"),
    ],
)
def test_bad_distributed_settings_are_refused_before_any_work(kwargs, match):
    x, y = worker.data(8)
    model, guide = worker.build(8)
    with pytest.raises(ValueError, match=match):
        fit_distributed(model, guide, x, y, epochs=1, batch_size=4, progress=False, **kwargs)
    assert not pyro.get_param_store().keys()  # nothing was set up


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    x, y = worker.data(8)
    model, guide = worker.build(8)
    with pytest.raises(ValueError, match="accelerator cuda was asked for, but torch sees no CUDA"):
        fit_distributed(
            model, guide, x, y, epochs=1, batch_size=4, accelerator="cuda", progress=False
        )


def test_resume_with_other_settings_is_refused(tmp_path):
    x, y = worker.data(12)
    checkpoint = tmp_path / "run.ckpt"
    model, guide = worker.build(12)
    options = {"checkpoint": checkpoint, "progress": False}
    fit_distributed(model, guide, x, y, epochs=1, batch_size=4, **options)
    model, guide = worker.build(12)
    with pytest.raises(CheckpointError, match="batch_size: 4 -> 3"):
        fit_distributed(model, guide, x, y, epochs=2, batch_size=3, resume=True, **options)


@needs_shared_data("mnist")
def test_mnist_job_trains_on_two_processes(tmp_path, capsys):
    args = ["mnist", "--devices", "2", "--strategy", "ddp", "--out", str(tmp_path), *TINY]
    done = subprocess.run(
        [sys.executable, "-m", "pyro_dwp.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0 <= metrics["test_error_mean"] <= 1
    assert metrics["config"]["devices"] == 2 and (tmp_path / "checkpoint.ckpt").is_file()
    (record,) = json.loads((tmp_path / "learning_curves.json").read_text())
    assert {"loss", "nll", "kl", "valid_error"} <= record.keys()
    _, model, guide = load_bbb_run(tmp_path)  # onto one process
    assert predict(model, guide, torch.zeros(3, 784), num_samples=2)["obs"].shape == (2, 3)
    # Resuming it on one process would start afresh from another checkpoint: refused.
    assert main([args[0], *args[5:], "--epochs", "2", "--resume"]) == 1
    assert "holds checkpoint.ckpt, a run trained with other --devices" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, match",
    [
        (["--devices", "0"], "devices must be a positive integer, got 0"),
        (["--devices", "2", "--method", "sgd"], "needs --method bbb"),
        (["--devices", "2", "--max-train-minutes", "1"], "no time limit"),
    ],
)
def test_mnist_job_refuses_bad_distributed_options(options, match, tmp_path, capsys):
    assert main(["mnist", "--out", str(tmp_path), *options]) == 1
    assert match in capsys.readouterr().err


@needs_shared_data("mnist")
def test_ddp_scaling_benchmark_runs_on_tiny_settings(tmp_path):
    sys.path.insert(0, str(WORKER.parents[1] / "benchmarks"))
    try:
        import ddp_scaling
    finally:
        sys.path.pop(0)
    argv = ["--devices", "1", "--epochs", "1", "--hidden", "8", "--n-train", "200"]
    argv += ["--n-test", "100", "--test-samples", "2", "--data-dir", str(SHARED_DATA)]
    argv += ["--results-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    report = ddp_scaling.main(ddp_scaling.build_parser().parse_args(argv))
    saved = json.loads((tmp_path / "ddp_scaling.json").read_text())
    (run,) = saved["devices"].values()
    assert saved["devices"].keys() == {"1"} and report["devices"][1] == run
    assert run["examples_per_s"] > 0 and 0 <= run["test_error"] <= 100
    assert "| 1 | 128 |" in (tmp_path / "ddp_scaling.md").read_text()

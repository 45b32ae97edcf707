"""The ``pyro-dwp mnist`` and ``pyro-dwp prune`` jobs end to end on a slice of the real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from pyro_dwp.cli import main
from pyro_dwp.data import DATA_ENV_VAR
from pyro_dwp.experiments import classification
from pyro_dwp.experiments.mnist import load_bbb_run, training_warnings
from pyro_dwp.infer.compiled import CompiledSVI

TINY = ["--n-train", "200", "--hidden", "16", "--epochs", "1", "--n-test", "200"]
TINY += ["--test-samples", "4", "--data-dir", str(SHARED_DATA), "--no-progress"]
METRICS = (
    "test_error_mean",
    "test_error_ensemble",
    "test_nll_mean",
    "test_nll_ensemble",
    "ece",
    "ood_auroc",
    "seconds",
)
FILES = (
    "metrics.json",
    "learning_curves.json",
    "learning_curves.png",
    "reliability.png",
    "model.pt",
    "checkpoint.pt",
)

pytestmark = needs_shared_data("mnist", "notmnist")


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)


@pytest.mark.parametrize("method", ["bbb", "sgd", "dropout"])
def test_mnist_job_writes_its_files(method: str, tmp_path: Path) -> None:
    assert main(["mnist", "--method", method, "--out", str(tmp_path), *TINY]) == 0
    assert all((tmp_path / f).stat().st_size > 0 for f in FILES)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in METRICS:
        assert isinstance(metrics[key], float) and metrics[key] >= 0, key
    assert 0 <= metrics["test_error_mean"] <= 1 and 0 <= metrics["ood_auroc"] <= 1
    assert metrics["epochs"] == 1 and metrics["config"]["method"] == method
    assert metrics["warnings"] == []  # 2 steps: too few to judge
    (record,) = json.loads((tmp_path / "learning_curves.json").read_text())
    assert {"epoch", "loss", "nll", "kl", "valid_error"} <= set(record)
    assert record["loss"] == pytest.approx(record["nll"] + record["kl"])


def _curve(errors: list[float]) -> list[dict[str, float]]:
    return [{"epoch": e + 1, "valid_error": v} for e, v in enumerate(errors)]


def test_training_warnings_flag_a_run_that_stays_at_chance() -> None:
    # The shape of a 600-epoch SGD run at lr 0.4 (bbb_mnist_sgd.md): finite, at chance level.
    diverged = _curve([0.557, 0.789, 0.815, 0.901, 0.894])
    (message,) = training_warnings(diverged, lr=0.4, steps_per_epoch=391)
    assert "did not learn" in message and "89.40%" in message and "--lr 0.4" in message
    assert "1955 steps" in message
    assert training_warnings(_curve([0.05, 0.03, 0.0149]), lr=0.1, steps_per_epoch=391) == []
    # too few steps to judge; no validation record
    assert training_warnings(diverged, lr=0.4, steps_per_epoch=99) == []
    assert training_warnings([{"epoch": 5, "loss": 1.0}], lr=0.4, steps_per_epoch=391) == []
    assert training_warnings([], lr=0.4, steps_per_epoch=391) == []


@pytest.mark.parametrize(
    ("error", "classes", "steps", "flagged"),
    [
        (0.80, 10, 500, True),  # chance 0.9: within the margin of 0.1
        (0.79, 10, 500, False),
        (0.95, 10, 499, False),  # too few steps to judge
        (0.40, 2, 10_000, True),  # chance 0.5
        (0.39, 2, 10_000, False),
    ],
)
def test_not_learning_warnings_at_the_chance_margin(error, classes, steps, flagged) -> None:
    messages = classification.not_learning_warnings(error, classes, steps, "the run")
    assert bool(messages) == flagged
    if flagged:
        assert messages[0].startswith("the run did not learn") and f"{error:.2%}" in messages[0]


def test_mnist_job_reports_a_run_that_did_not_learn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every run counts as not learning: the warning reaches the console and metrics.json.
    monkeypatch.setattr(classification, "CHANCE_MARGIN", 1.0)
    monkeypatch.setattr(classification, "MIN_STEPS_TO_LEARN", 1)
    with pytest.warns(RuntimeWarning, match="did not learn"):
        assert main(["mnist", "--method", "sgd", "--out", str(tmp_path), *TINY]) == 0
    (message,) = json.loads((tmp_path / "metrics.json").read_text())["warnings"]
    assert "did not learn" in message


def test_mnist_job_trains_bbb_on_the_compiled_engine(tmp_path: Path) -> None:
    # Two vectorised particles: the job's BBB setting, compiled as well.
    argv = ["mnist", "--out", str(tmp_path), *TINY, "--engine", "compiled", "--particles", "2"]
    assert main(argv) == 0
    (record,) = json.loads((tmp_path / "learning_curves.json").read_text())
    assert record["loss"] == pytest.approx(record["nll"] + record["kl"])


def test_torch_compile_trains_the_same_loss_as_the_eager_compiled_step(
    tmp_path: Path, monkeypatch
) -> None:
    """Property: ``--torch-compile`` runs the compiled engine's step through ``torch.compile``
    (its passes, as fit runs them) on the same draws: the same epoch loss to float32 reduction
    order (1e-4 relative)."""
    compiled = []
    use = CompiledSVI.use_torch_compile
    monkeypatch.setattr(CompiledSVI, "use_torch_compile", lambda svi: compiled.append(use(svi)))
    argv = ["mnist", *TINY, "--engine", "compiled", "--epochs", "2"]
    assert main([*argv, "--out", str(tmp_path / "eager")]) == 0
    assert compiled == []
    assert main([*argv, "--torch-compile", "--out", str(tmp_path / "inductor")]) == 0
    assert compiled
    eager, fused = (
        json.loads((tmp_path / run / "learning_curves.json").read_text())
        for run in ("eager", "inductor")
    )
    assert [r["loss"] for r in fused] == pytest.approx([r["loss"] for r in eager], rel=1e-4)
    config = json.loads((tmp_path / "inductor" / "metrics.json").read_text())["config"]
    assert config["torch_compile"] is True


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--torch-compile needs --engine compiled, got --engine pyro"),
        (["--engine", "compiled", "--method", "sgd"], "--method sgd does not take --torch-compile"),
    ],
)
def test_torch_compile_is_refused_off_the_compiled_bbb_step(extra, message, tmp_path, capsys):
    argv = ["mnist", "--out", str(tmp_path / "run"), *TINY, "--torch-compile", *extra]
    assert main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["bbb", "sgd"])
def test_mnist_job_resumes(method: str, tmp_path: Path, capsys) -> None:
    args = ["mnist", "--method", method, "--out", str(tmp_path), *TINY]
    assert main(args) == 0
    first = json.loads((tmp_path / "learning_curves.json").read_text())
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert "training starts afresh" not in capsys.readouterr().err
    curves = json.loads((tmp_path / "learning_curves.json").read_text())
    assert [r["epoch"] for r in curves] == [1, 2] and curves[0] == first[0]
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("flag", ["--lr", "--init-scale"])
def test_an_infinite_rate_or_scale_is_refused_before_training(flag, tmp_path, capsys) -> None:
    assert main(["mnist", "--out", str(tmp_path), *TINY, flag, "inf"]) == 1
    assert "--lr and --init-scale must be finite and > 0" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_prior_scale_that_is_not_a_number_is_refused_before_any_file(tmp_path, capsys) -> None:
    assert main(["mnist", "--out", str(tmp_path / "run"), *TINY, "--neg-log-sigma1", "nan"]) == 1
    assert "--neg-log-sigma1 must be a finite number, got nan" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "method,options,named",
    [
        ("sgd", ["--particles", "5", "--prior", "normal"], "--prior (bbb's), --particles (bbb's)"),
        ("sgd", ["--dropout", "0.3"], "--dropout (dropout's)"),
        ("bbb", ["--input-dropout", "0.2"], "--input-dropout (dropout's)"),
        ("dropout", ["--kl-scheme", "uniform"], "--kl-scheme (bbb's)"),
    ],
)
def test_options_of_another_method_are_refused_not_ignored(
    method, options, named, tmp_path, capsys
) -> None:
    assert main(["mnist", "--method", method, "--out", str(tmp_path), *TINY, *options]) == 1
    assert f"--method {method} does not take {named}" in capsys.readouterr().err


def test_a_folder_of_another_jobs_run_is_refused_and_left_as_it_was(tmp_path, capsys) -> None:
    tiny_regression = ["--n-train", "40", "--hidden", "8", "--epochs", "2", "--batch-size", "20"]
    argv = ["regression", "--out", str(tmp_path), *tiny_regression, "--no-progress"]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main(["mnist", "--out", str(tmp_path), *TINY]) == 1
    err = capsys.readouterr().err
    assert "holds a `pyro-dwp regression` run, whose files `pyro-dwp mnist` would" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert main(["mnist", "--out", str(tmp_path / "mnist"), *TINY]) == 0  # its own folder


def test_mnist_job_resume_without_a_checkpoint_says_it_starts_afresh(
    tmp_path: Path, capsys
) -> None:
    # e.g. a mistyped --out: the run trains from epoch 0, and says so on stderr
    assert main(["mnist", "--out", str(tmp_path / "new"), *TINY, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"--resume: no checkpoint at {tmp_path / 'new' / 'checkpoint.pt'}" in err
    assert "training starts afresh" in err
    curves = json.loads((tmp_path / "new" / "learning_curves.json").read_text())
    assert [r["epoch"] for r in curves] == [1]


def test_mnist_job_refuses_to_resume_other_settings(tmp_path: Path, capsys) -> None:
    args = ["mnist", "--method", "sgd", "--out", str(tmp_path), *TINY]
    assert main(args) == 0
    assert main([*args, "--hidden", "8", "--resume"]) == 1
    assert "hidden" in capsys.readouterr().err


def test_mnist_job_bad_input_is_reported(tmp_path: Path, capsys) -> None:
    assert main(["mnist", "--out", str(tmp_path), *TINY, "--dropout", "1.0"]) == 1
    assert "--dropout" in capsys.readouterr().err


def test_prune_job(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["mnist", "--method", "bbb", "--out", str(run), *TINY]) == 0
    assert main(["prune", "--run", str(run), "--fractions", "0.5", "0.95"]) == 0
    table = json.loads((run / "prune" / "pruning.json").read_text())
    rows = table["rows"]
    assert [r["fraction"] for r in rows] == [0.0, 0.5, 0.95]
    total = rows[0]["total_weights"]
    assert total == 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert [r["kept_weights"] for r in rows] == [total, total - round(0.5 * total), 650]
    assert rows[-1]["sparse_bytes"] < rows[-1]["dense_bytes"]
    md = (run / "prune" / "pruning.md").read_text()
    assert len(md.strip().splitlines()) == 5  # header, rule, 3 rows
    assert (run / "prune" / "snr.png").stat().st_size > 10_000
    assert (run / "prune" / "pruned_95.pt").is_file()


def test_prune_job_rejects_baselines_and_bad_fractions(tmp_path: Path, capsys) -> None:
    assert main(["mnist", "--method", "sgd", "--out", str(tmp_path), *TINY]) == 0
    assert main(["prune", "--run", str(tmp_path)]) == 1
    assert "only BBB runs" in capsys.readouterr().err
    assert main(["prune", "--run", str(tmp_path), "--fractions", "1.0"]) == 1
    assert "[0, 1)" in capsys.readouterr().err
    assert main(["prune", "--run", str(tmp_path / "nothing")]) == 1
    assert "mnist run file" in (err := capsys.readouterr().err) and "not found" in err
    for name, content in (("truncated", None), ("empty", b""), ("foreign", {"params": 1})):
        run = tmp_path / name
        run.mkdir()
        if content is None:  # the run's own file, cut short
            data = (tmp_path / "model.pt").read_bytes()
            (run / "model.pt").write_bytes(data[: len(data) // 2])
        elif isinstance(content, bytes):
            (run / "model.pt").write_bytes(content)
        else:  # another job's torch file
            torch.save(content, run / "model.pt")
        assert main(["prune", "--run", str(run)]) == 1
        err = capsys.readouterr().err
        assert str(run / "model.pt") in err, name
        assert "unreadable" in err or "is not the model.pt of a `pyro-dwp mnist` run" in err, name


def test_prune_at_zero_reproduces_the_run_from_its_saved_parameters(tmp_path: Path) -> None:
    """Reloading a run gives exactly its saved parameters, so pruning nothing gives the run's own
    test metrics: the same mean network (same error and NLL) and an ensemble of the same
    posterior (other weight draws)."""
    run = tmp_path / "run"
    assert (
        main(
            ["mnist", "--method", "bbb", "--out", str(run), *TINY, "--epochs", "2", "--lr", "0.01"]
        )
        == 0
    )
    saved = torch.load(run / "model.pt", weights_only=False)["params"]["params"]
    _, _, guide = load_bbb_run(run)
    for name in guide.site_names:
        assert torch.equal(guide.loc(name), saved[f"BBBNormal.locs.{name}"]), name
        assert torch.equal(guide.rho(name), saved[f"BBBNormal.scales.{name}"]), name
    assert main(["prune", "--run", str(run), "--fractions", "0.5"]) == 0
    unpruned = json.loads((run / "prune" / "pruning.json").read_text())["rows"][0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert unpruned["fraction"] == 0.0
    assert unpruned["test_error_mean"] == metrics["test_error_mean"]
    assert unpruned["test_nll_mean"] == pytest.approx(metrics["test_nll_mean"], rel=1e-6)
    assert unpruned["test_error_ensemble"] == pytest.approx(
        metrics["test_error_ensemble"], abs=0.02
    )
    assert unpruned["test_nll_ensemble"] == pytest.approx(metrics["test_nll_ensemble"], rel=0.02)


def test_a_time_limit_trains_in_chunks_past_the_slow_first_epoch(tmp_path, monkeypatch, capsys):
    """The first epoch pays the set-up (10 s here, 1 s an epoch after that, 0.5 s per call):
    extrapolating it alone would stop at 10 epochs in 100 s; the chunks reach about 90."""
    from pyro_dwp.experiments import mnist

    clock = [0.0]
    monkeypatch.setattr(mnist.time, "perf_counter", lambda: clock[0])
    calls = []

    def train(epochs: int, resume: bool) -> list[dict[str, float]]:
        done = calls[-1][0] if calls else 0
        clock[0] += 0.5 + (10.0 if not calls else 0.0) + (epochs - done)
        calls.append((epochs, resume))
        return [{"epoch": e + 1} for e in range(epochs)]

    history = mnist._train_within(train, 600, False, 100.0, tmp_path / "none.pt")
    assert calls[0] == (1, False) and all(resume for _, resume in calls[1:])
    assert 85 <= len(history) <= 100 and clock[0] <= 100.0 + 1.5
    stopped = f"--max-train-minutes: stopped after epoch {len(history)} of 600"
    assert stopped in capsys.readouterr().err  # a short run says so
    calls.clear()
    clock[0] = 0.0
    assert len(mnist._train_within(train, 30, False, 100.0, tmp_path / "none.pt")) == 30
    assert "stopped after" not in capsys.readouterr().err


def _timeless(curves: list[dict]) -> list[dict]:
    """Learning-curve records without their wall-clock seconds."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in curves]


def _stopped_and_resumed(args: list[str], out: Path, monkeypatch) -> list[dict]:
    """The curves of ``pyro-dwp ARGS`` in ``out``, stopped after its first epoch and resumed."""
    from pyro_dwp.experiments import mnist

    with monkeypatch.context() as m:
        m.setattr(mnist, "_train_within", lambda train, epochs, resume, *_: train(1, resume))
        assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(out), "--resume"]) == 0
    return _timeless(json.loads((out / "learning_curves.json").read_text()))


@pytest.mark.parametrize("method", ["bbb", "sgd"])
def test_linear_rate_schedule_and_its_exact_resume(
    method: str, tmp_path: Path, monkeypatch
) -> None:
    """``--lr-schedule linear`` over 3 epochs runs them at lr, 2 lr / 3, lr / 3; a run stopped
    after its first epoch and resumed gives the uninterrupted run's curves exactly."""

    args = ["mnist", "--method", method, *TINY, "--epochs", "3", "--lr-schedule", "linear"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "learning_curves.json").read_text())
    assert [r["lr"] for r in whole] == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3])
    assert _stopped_and_resumed(args, tmp_path / "parts", monkeypatch) == _timeless(whole)


def test_resume_checks_the_rate_schedule_and_its_epochs(tmp_path: Path, capsys) -> None:
    args = ["mnist", "--method", "sgd", "--out", str(tmp_path), *TINY, "--lr-schedule", "linear"]
    assert main(args) == 0
    assert main([*args, "--epochs", "2", "--resume"]) == 1
    assert "epochs" in capsys.readouterr().err
    # a run recorded before the option ran at a constant rate, and resumes as one
    old = ["mnist", "--method", "sgd", "--out", str(tmp_path / "old"), *TINY]
    assert main(old) == 0
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["lr_schedule"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert main([*old, "--epochs", "2", "--resume"]) == 0
    assert main([*old, "--epochs", "3", "--resume", "--lr-schedule", "linear"]) == 1
    assert "lr_schedule" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["bbb", "sgd"])
def test_sgd_optimizer_its_rate_and_its_exact_resume(
    method: str, tmp_path: Path, monkeypatch
) -> None:
    """``--optimizer sgd --momentum 0.9``: BBB's SGD steps the -ELBO (a sum over the N training
    images) at lr / N, i.e. at ``--lr`` on the loss per image, as the baselines' steps on a
    minibatch's mean loss; a run stopped after its first epoch and resumed (with the momentum
    buffers) gives the uninterrupted curves exactly, and they differ from Adam's."""
    from pyro_dwp.experiments import mnist

    rates: list[float] = []
    joint_sgd = mnist.JointSGD

    def recorded(lr: float, **kwargs):
        rates.append(lr)
        return joint_sgd(lr, **kwargs)

    monkeypatch.setattr(mnist, "JointSGD", recorded)
    args = ["mnist", "--method", method, *TINY, "--epochs", "2", "--lr", "0.05"]
    sgd = [*args, "--optimizer", "sgd", "--momentum", "0.9"]
    assert main([*sgd, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "learning_curves.json").read_text())
    assert [r["lr"] for r in whole] == pytest.approx([0.05, 0.05])
    assert _stopped_and_resumed(sgd, tmp_path / "parts", monkeypatch) == _timeless(whole)
    assert main([*args, "--out", str(tmp_path / "adam")]) == 0
    adam = json.loads((tmp_path / "adam" / "learning_curves.json").read_text())
    assert adam[-1]["loss"] != pytest.approx(whole[-1]["loss"], rel=1e-6)
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert (config["optimizer"], config["momentum"]) == ("sgd", 0.9)
    n_train = 200
    assert rates == ([0.05 / n_train] * 3 if method == "bbb" else [])


def test_optimizer_settings_are_checked(tmp_path: Path, capsys) -> None:
    out = ["--out", str(tmp_path / "run")]
    assert main(["mnist", *out, *TINY, "--momentum", "0.9"]) == 1
    assert "--momentum is SGD's" in capsys.readouterr().err
    assert main(["mnist", *out, *TINY, "--optimizer", "sgd", "--momentum", "1"]) == 1
    assert "--momentum must be in [0, 1)" in capsys.readouterr().err
    assert main(["mnist", *out, *TINY, "--scale-lr-factor", "0"]) == 1
    assert "--scale-lr-factor must be > 0" in capsys.readouterr().err
    assert main(["mnist", "--method", "sgd", *out, *TINY, "--scale-lr-factor", "10"]) == 1
    assert "--scale-lr-factor is BBB's" in capsys.readouterr().err
    args = ["mnist", "--method", "sgd", *out, *TINY]
    assert main(args) == 0  # Adam
    assert main([*args, "--epochs", "2", "--resume", "--optimizer", "sgd"]) == 1
    assert "optimizer" in capsys.readouterr().err


def test_scale_rate_factor_reaches_the_scales_only(tmp_path: Path, monkeypatch) -> None:
    """``--scale-lr-factor K``: the BBB optimiser steps the posterior scales' parameters at K
    times the rate of the means, and the run differs from one without it."""
    from pyro_dwp.experiments import mnist

    factors: list = []
    joint_sgd = mnist.JointSGD

    def recorded(lr: float, **kwargs):
        factors.append(kwargs["lr_factor"])
        return joint_sgd(lr, **kwargs)

    monkeypatch.setattr(mnist, "JointSGD", recorded)
    args = ["mnist", *TINY, "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--scale-lr-factor", "100", "--out", str(tmp_path / "scaled")]) == 0
    assert factors[0] is None
    assert factors[1]("BBBNormal.scales.0.weight") == 100
    assert factors[1]("BBBNormal.locs.0.weight") == 1
    curves = [
        json.loads((tmp_path / run / "learning_curves.json").read_text())
        for run in ("plain", "scaled")
    ]
    assert curves[0][-1]["kl"] != pytest.approx(curves[1][-1]["kl"], rel=1e-6)


def test_local_reparameterisation_option(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--local-reparam``: BBB trains under the local reparameterisation handler (and only
    then), the run records it and differs from one without it; a baseline method, or a resume
    with the other setting, is refused."""
    from pyro_dwp.experiments import mnist
    from pyro_dwp.infer import LocalReparameterizationMessenger

    seen: list = []
    real_fit = mnist.fit

    def recorded(*args, **kwargs):
        seen.append(list(kwargs["handlers"]))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(mnist, "fit", recorded)
    args = ["mnist", *TINY]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--local-reparam", "--out", str(tmp_path / "lrt")]) == 0
    assert seen[0] == []
    assert [type(h) for h in seen[1]] == [LocalReparameterizationMessenger]
    curves = [
        json.loads((tmp_path / run / "learning_curves.json").read_text())
        for run in ("plain", "lrt")
    ]
    assert curves[0][-1]["nll"] != pytest.approx(curves[1][-1]["nll"], rel=1e-6)
    config = json.loads((tmp_path / "lrt" / "config.json").read_text())
    assert config["local_reparam"] is True
    capsys.readouterr()
    assert (
        main(
            [
                *args,
                "--epochs",
                "2",
                "--resume",
                "--out",
                str(tmp_path / "plain"),
                "--local-reparam",
            ]
        )
        == 1
    )
    assert "local_reparam" in capsys.readouterr().err
    assert (
        main(["mnist", "--method", "sgd", *TINY, "--local-reparam", "--out", str(tmp_path / "s")])
        == 1
    )
    assert "--local-reparam is BBB's" in capsys.readouterr().err


def _scripted_valid_errors(monkeypatch, errors: list[float]) -> None:
    """The job's per-epoch validation errors replaced, in order, by ``errors`` (the validation
    pass still runs; the test metrics come from the evaluation's own code)."""
    from pyro_dwp.experiments import mnist

    queue = list(errors)
    monkeypatch.setattr(mnist, "error_rate", lambda logits, labels: queue.pop(0))


def _best_and_final(out: Path, method: str) -> tuple[dict, dict]:
    """``best.pt``'s parameters and ``model.pt``'s, as ``{name: tensor}``."""
    best = torch.load(out / "best.pt", weights_only=False)
    final = torch.load(out / "model.pt", weights_only=False)
    if method == "bbb":
        return best["params"]["params"], final["params"]["params"]
    return best["state_dict"], final["state_dict"]


# the mean (or single) network's metrics: deterministic given the parameters
_MEAN_METRICS = ("test_error_mean", "test_nll_mean")


@pytest.mark.parametrize("method, engine", [("bbb", "pyro"), ("bbb", "compiled"), ("sgd", "pyro")])
def test_keep_best_evaluates_the_lowest_validation_epoch(
    method, engine, tmp_path, monkeypatch
) -> None:
    """``--keep-best`` over 3 epochs with validation errors 0.5, 0.2, 0.2: ``best.pt`` holds
    epoch 2 (the first of a tie) with exactly the parameters a 2-epoch run ends with, and
    ``best_valid`` evaluates them; a fresh run in the same folder starts its own record."""
    args = ["mnist", "--method", method, *TINY, "--keep-best", "--engine", engine]
    _scripted_valid_errors(monkeypatch, [0.9, 0.9])
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    _scripted_valid_errors(monkeypatch, [0.5, 0.2, 0.2])
    out = tmp_path / "three"
    assert main([*args, "--epochs", "3", "--out", str(out)]) == 0
    three = json.loads((out / "metrics.json").read_text())
    assert three["epochs"] == 3
    assert {k: three["best_valid"][k] for k in ("epoch", "valid_error")} == {
        "epoch": 2,
        "valid_error": 0.2,
    }
    best, _ = _best_and_final(out, method)
    _, two_final = _best_and_final(tmp_path / "two", method)
    assert best.keys() == two_final.keys()
    assert all(torch.equal(best[k], two_final[k]) for k in best)
    for key in _MEAN_METRICS:
        assert three["best_valid"][key] == pytest.approx(two[key], rel=1e-6), key
    assert two["best_valid"]["epoch"] == 1  # 0.9 twice: the first epoch
    _scripted_valid_errors(monkeypatch, [0.7])
    assert main([*args, "--epochs", "1", "--out", str(out)]) == 0  # no --resume: afresh
    assert json.loads((out / "metrics.json").read_text())["best_valid"]["epoch"] == 1


def test_keep_best_resumes_as_an_uninterrupted_run(tmp_path, monkeypatch, capsys) -> None:
    """Stopped after its first epoch and resumed, a ``--keep-best`` run keeps the same epoch
    and parameters as an uninterrupted one; a resume that drops the option is refused."""
    args = ["mnist", "--method", "sgd", *TINY, "--epochs", "3", "--keep-best"]
    _scripted_valid_errors(monkeypatch, [0.5, 0.2, 0.3])
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    _scripted_valid_errors(monkeypatch, [0.5, 0.2, 0.3])
    _stopped_and_resumed(args, tmp_path / "parts", monkeypatch)
    whole, parts = (
        json.loads((tmp_path / d / "metrics.json").read_text())["best_valid"]
        for d in ("whole", "parts")
    )
    assert whole["epoch"] == parts["epoch"] == 2
    assert {k: whole[k] for k in _MEAN_METRICS} == {k: parts[k] for k in _MEAN_METRICS}
    (a, _), (b, _) = (
        _best_and_final(tmp_path / "whole", "sgd"),
        _best_and_final(tmp_path / "parts", "sgd"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    (tmp_path / "parts" / "best.pt").write_bytes(b"not a torch file")
    assert main([*args, "--epochs", "4", "--out", str(tmp_path / "parts"), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "best.pt is unreadable" in err and "rerun without --resume" in err
    (tmp_path / "parts" / "best.pt").unlink()  # lost: the best epoch so far is unknown
    config = (tmp_path / "parts" / "config.json").read_text()
    again = [*args, "--epochs", "4", "--test-samples", "3", "--out", str(tmp_path / "parts")]
    assert main([*again, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "best.pt is missing, so the best epoch before the checkpoint is unknown" in err
    # the refused run leaves the folder's record of its run as it was
    assert (tmp_path / "parts" / "config.json").read_text() == config
    no_keep = [a for a in args if a != "--keep-best"]
    assert main([*no_keep, "--out", str(tmp_path / "parts"), "--resume"]) == 1
    assert "keep_best" in capsys.readouterr().err


def test_keep_best_is_refused_with_data_parallel_training(tmp_path, capsys) -> None:
    argv = ["mnist", "--out", str(tmp_path), *TINY, "--keep-best", "--devices", "2"]
    assert main(argv) == 1
    assert "--keep-best" in capsys.readouterr().err


def test_bbb_weights_the_kl_per_minibatch_as_the_paper_by_default(tmp_path: Path) -> None:
    """Without ``--kl-scheme`` a BBB run is the run with ``--kl-scheme blundell`` (Sec. 3.4),
    and not the uniform one; its config records the scheme."""
    curves, schemes = {}, {}
    for name in ("default", "blundell", "uniform"):
        out = tmp_path / name
        scheme = [] if name == "default" else ["--kl-scheme", name]
        argv = ["mnist", "--method", "bbb", *TINY, "--batch-size", "50", *scheme]
        assert main([*argv, "--out", str(out)]) == 0
        curves[name] = _timeless(json.loads((out / "learning_curves.json").read_text()))
        schemes[name] = json.loads((out / "config.json").read_text())["kl_scheme"]
    assert schemes == {"default": "blundell", "blundell": "blundell", "uniform": "uniform"}
    assert curves["default"] == curves["blundell"]
    assert curves["uniform"][0]["loss"] != pytest.approx(curves["default"][0]["loss"], rel=1e-6)

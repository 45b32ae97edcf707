"""The ``pyro-dwp regression`` job end to end with tiny settings."""

import json
import math
import re
import signal

import arviz as az
import pytest
import torch
from conftest import signal_after_epoch

import pyro_dwp
from pyro_dwp.cli import main
from pyro_dwp.data import true_curve
from pyro_dwp.experiments.regression import band_coverage, sigma_from_neg_log

TINY = [
    "--n-train",
    "40",
    "--hidden",
    "8",
    "--epochs",
    "3",
    "--batch-size",
    "20",
    "--predictive-samples",
    "20",
    "--no-progress",
]


def test_regression_job_writes_its_files(tmp_path, capsys):
    assert main(["regression", "--out", str(tmp_path), *TINY]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("seconds", "test_rmse", "band_width_in", "band_width_out"):
        assert isinstance(metrics[key], float) and metrics[key] > 0
    for key in ("coverage_in", "coverage_out"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0
    assert json.loads(capsys.readouterr().out)["test_rmse"] == metrics["test_rmse"]
    assert (tmp_path / "regression.png").stat().st_size > 10_000
    idata = az.from_netcdf(tmp_path / "posterior.nc")
    assert {"posterior", "posterior_predictive", "observed_data", "log_likelihood"} <= set(
        idata.groups()
    )
    assert idata.log_likelihood["obs"].shape == (1, 20, 40)


def test_regression_job_trains_on_the_compiled_engine(tmp_path):
    argv = ["regression", "--out", str(tmp_path), *TINY, "--engine", "compiled", "--learn-noise"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["test_rmse"] > 0


def test_band_coverage_counts_the_masked_points_inside_the_band():
    g = torch.linspace(-0.2, 1.2, 561)
    truth = true_curve(g)
    inside = (g >= 0) & (g <= 0.5)
    # the band holds the curve on every other point inside the data (edges included: a band
    # touching the curve covers it) and on the first quarter of the points outside
    lower, upper = truth - 0.1, truth.clone()
    lower[inside.nonzero()[1::2, 0]] = truth[inside.nonzero()[1::2, 0]] + 1e-3
    out_idx = (~inside).nonzero()[:, 0]
    lower[out_idx[len(out_idx) // 4 :]] = truth[out_idx[len(out_idx) // 4 :]] + 1e-3
    n_in = int(inside.sum())
    assert band_coverage(lower, upper, truth, inside) == (n_in + 1) // 2 / n_in
    assert band_coverage(lower, upper, truth, ~inside) == (len(out_idx) // 4) / len(out_idx)
    assert band_coverage(truth - 1, truth - 0.5, truth, inside) == 0.0  # a band below the curve
    with pytest.raises(ValueError, match="selects no grid point"):
        band_coverage(lower, upper, truth, torch.zeros_like(inside))


@pytest.mark.parametrize(
    "value,message",
    [
        (math.nan, "must be a finite number, got nan"),
        (-math.inf, "must be a finite number, got -inf"),
        (-800.0, "overflows"),
        (800.0, "is 0"),
    ],
)
def test_sigma_from_neg_log_names_the_flag(value, message):
    with pytest.raises(ValueError, match=f"--neg-log-sigma1.*{message}"):
        sigma_from_neg_log(value, "--neg-log-sigma1")
    assert sigma_from_neg_log(6.0, "--neg-log-sigma2") == pytest.approx(math.exp(-6.0))


def test_regression_job_resumes(tmp_path, capsys):
    assert main(["regression", "--out", str(tmp_path), *TINY]) == 0
    capsys.readouterr()
    # argparse keeps the last --epochs: continue the 3-epoch checkpoint up to 5 epochs
    assert main(["regression", "--out", str(tmp_path), *TINY, "--epochs", "5", "--resume"]) == 0
    assert "training starts afresh" not in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 5
    # --resume where no run was: it trains from the start, and says so
    assert main(["regression", "--out", str(tmp_path / "new"), *TINY, "--resume"]) == 0
    assert "--resume: no checkpoint at" in capsys.readouterr().err
    assert json.loads((tmp_path / "new" / "metrics.json").read_text())["epochs"] == 3


def test_ctrl_c_stops_the_job_after_an_epoch_and_resume_finishes_it(tmp_path, capsys):
    """SIGINT in the second of 3 epochs: exit 130, the message says to rerun with ``--resume``;
    that rerun's metrics equal the uninterrupted run's."""
    assert main(["regression", "--out", str(tmp_path / "whole"), *TINY]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    args = ["regression", "--out", str(tmp_path / "run"), *TINY]
    capsys.readouterr()
    with signal_after_epoch(signal.SIGINT, 1):
        assert main(args) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "stopped: SIGINT: training stopped after epoch 2 of 3" in err
    assert err.strip().endswith("the same command with --resume goes on from it")
    assert main([*args, "--resume"]) == 0
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {
        k: v for k, v in whole.items() if k != "seconds"
    }


def test_regression_job_bad_input_is_reported(tmp_path, capsys):
    extra = ["--prior", "scale-mixture", "--pi", "1.5"]
    assert main(["regression", "--out", str(tmp_path), *TINY, *extra]) == 1
    assert "pi" in capsys.readouterr().err
    assert main(["regression", "--out", str(tmp_path), *TINY, "--predictive-samples", "1"]) == 1
    assert "--predictive-samples must be at least 2, got 1" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()  # refused before training


def test_unknown_job():
    with pytest.raises(SystemExit):
        main(["nope"])


def test_regression_job_can_learn_the_noise(tmp_path):
    import pyro

    assert main(["regression", "--out", str(tmp_path), *TINY, "--learn-noise"]) == 0
    assert "noise_scale" in pyro.get_param_store()


def test_regression_job_records_its_settings_and_refuses_to_overwrite_other_ones(tmp_path, capsys):
    assert main(["regression", "--out", str(tmp_path), *TINY]) == 0
    settings = json.loads((tmp_path / "metrics.json").read_text())["settings"]
    assert settings["lr"] == 1e-2 and settings["hidden"] == [8] and settings["epochs"] == 3
    capsys.readouterr()
    assert main(["regression", "--out", str(tmp_path), *TINY, "--lr", "0.05"]) == 1
    err = capsys.readouterr().err
    assert "finished run with other settings (--lr: 0.01 -> 0.05)" in err
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"] == settings


def test_regression_job_resume_with_another_lr_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    args = ["regression", "--out", str(tmp_path / "run"), *TINY]
    assert main(args) == 0
    (tmp_path / "run" / "metrics.json").unlink()  # as if killed before the end
    assert main([*args, "--epochs", "5", "--resume", "--lr", "0.05"]) == 1
    assert "optim.args.lr: 0.01 -> 0.05" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case,match",
    [
        ("file", "is a file, not a folder"),
        ("under-a-file", "cannot be written to"),
        ("sigma", r"--neg-log-sigma1 -800\.0: sigma = exp\(800\.0\) overflows"),
        ("not-a-checkpoint", "not a pyro_dwp training checkpoint"),
    ],
)
def test_bad_input_is_a_one_line_error_before_training(tmp_path, capsys, case, match):
    out, extra = tmp_path / "out", []
    if case == "file":
        out.write_text("")
    elif case == "under-a-file":
        (tmp_path / "f").write_text("")
        out = tmp_path / "f" / "out"
    elif case == "sigma":
        extra = ["--neg-log-sigma1", "-800"]
    else:
        out.mkdir()
        torch.save({"weights": torch.zeros(3)}, out / "checkpoint.pt")
        extra = ["--resume"]
    assert main(["regression", "--out", str(out), *TINY, *extra]) == 1
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1, err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyro-dwp {pyro_dwp.__version__}"


@pytest.mark.parametrize(
    "job,option",
    [
        ("regression", r"--epochs EPOCHS\s+\(default: 3000\)"),
        ("mnist", r"--seed SEED\s+\(default: 0\)"),
        ("prune", r"--device \{cpu,cuda\}\s+where to compute \(default: cpu\)"),
        ("dwp-classify", r"--n-train N_TRAIN \[N_TRAIN \.\.\.\]\s+\(default: \[50, 100,"),
        ("dwp-gap", r"--channels C1 C2\s+\(default: \[32, 128\]\)"),
    ],
)
def test_help_shows_every_default_without_rest_markup(job, option, capsys):
    with pytest.raises(SystemExit):
        main([job, "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":class:" not in text and ":func:" not in text
    assert re.search(option, text), text

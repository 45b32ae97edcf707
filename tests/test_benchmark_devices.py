"""Benchmark grids spread over devices: independent cells as processes, one device each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from pyro_dwp.cli import main as cli_main

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

sys.path.insert(0, str(BENCHMARKS))

import devices  # noqa: E402  (benchmarks/devices.py)
import mushroom  # noqa: E402  (benchmarks/mushroom.py)
import mushroom_posterior  # noqa: E402  (benchmarks/mushroom_posterior.py)


@needs_shared_data("mushroom")
def test_mushroom_seeds_as_processes_equal_the_seeds_in_one_process(tmp_path):
    common = ["--seeds", "0", "1", "--steps", "2", "--data-dir", str(SHARED_DATA), "--no-progress"]
    runs = {}
    for workers in ("2", "1"):
        out = tmp_path / workers
        argv = [*common, "--workers", workers, "--work-dir", str(out), "--results-dir", str(out)]
        runs[workers] = mushroom.main(argv)["per_seed"]
    assert runs["2"] == runs["1"] and runs["1"].keys() == {"0", "1"}


def test_mushroom_benchmark_refuses_zero_workers():
    with pytest.raises(ValueError, match="--workers must be >= 1, got 0"):
        mushroom.main(["--workers", "0"])


@needs_shared_data("mushroom")
def test_mushroom_benchmark_passes_the_prior_to_the_job_and_adds_up_its_seconds(tmp_path):
    argv = ["--engine", "lockstep", "--seeds", "0", "--data-dir", str(SHARED_DATA), "--no-progress"]
    argv += ["--neg-log-sigma1", "2", "--neg-log-sigma2", "8", "--pi", "0.25", "--kl-size", "seen"]
    argv += [
        "--bbb-variant",
        "slow",
        "lr=1e-4",
        "--lr-final-factor",
        "0.5",
        "--lr-decay-steps",
        "4",
    ]
    argv += ["--work-dir", str(tmp_path), "--results-dir", str(tmp_path)]
    first = mushroom.main([*argv, "--steps", "3"])
    result = mushroom.main([*argv, "--steps", "5"])  # resumes the run of 3 steps
    settings = json.loads((tmp_path / "lockstep" / "regret.json").read_text())["settings"]
    assert (settings["neg_log_sigma1"], settings["neg_log_sigma2"], settings["pi"]) == (2, 8, 0.25)
    assert settings["kl_size"] == "seen" and settings["bbb_variant"] == [["slow", "lr=1e-4"]]
    assert (settings["lr_final_factor"], settings["lr_decay_steps"]) == (0.5, 4)
    assert set(result["regret"]) == {"bbb", "bbb:slow", "greedy", "eps0.01", "eps0.05"}
    assert result["step_minutes"] > first["step_minutes"] > 0
    assert "minutes of stepping over every invocation" in (tmp_path / "mushroom.md").read_text()


@needs_shared_data("mushroom")
def test_mushroom_posterior_of_a_collapsed_posterior_is_its_mean_networks(tmp_path):
    # a BBB posterior whose sigmas are ~1e-13: Thompson draws decide as the mean network does,
    # so the draws' eat rates and implied regret are the mean network's mistakes
    argv = ["mushroom", "--engine", "lockstep", "--agents", "bbb", "greedy", "--steps", "30"]
    argv += ["--hidden", "8", "--num-batches", "2", "--no-progress", "--out", str(tmp_path)]
    assert cli_main([*argv, "--data-dir", str(SHARED_DATA)]) == 0
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    w = state["runner"]["params"].numel() // 3  # mu, rho of bbb, then greedy's weights
    state["runner"]["params"][w : 2 * w] = -30.0
    torch.save(state, path)
    bbb, greedy = mushroom_posterior.read(path, SHARED_DATA, draws=3, seed=0)
    assert (bbb["agent"], greedy["agent"]) == ("bbb", "greedy")
    assert max(bbb["sigma_quantiles"]) < 1e-12
    n, poisonous = 8124, 3916
    assert bbb["p_eat_poisonous"] == pytest.approx(bbb["mean_net_eats_poisonous"] / poisonous)
    assert bbb["p_eat_edible"] == pytest.approx(1 - bbb["mean_net_passes_edible"] / (n - poisonous))
    implied = 1000 * (15 * bbb["mean_net_eats_poisonous"] + 5 * bbb["mean_net_passes_edible"]) / n
    assert bbb["implied_regret_per_1000"] == pytest.approx(implied)
    assert set(bbb["p_eat_poisonous_by_odour"]) <= set("alcyfmnps")


@needs_shared_data("mushroom")
def test_mushroom_posterior_refuses_a_checkpoint_of_another_engine(tmp_path):
    argv = ["mushroom", "--agents", "greedy", "--steps", "2", "--num-batches", "1"]
    assert (
        cli_main([*argv, "--no-progress", "--out", str(tmp_path), "--data-dir", str(SHARED_DATA)])
        == 0
    )
    with pytest.raises(ValueError, match="is not a checkpoint of --engine lockstep"):
        mushroom_posterior.main(
            ["--checkpoint", str(tmp_path / "checkpoint.pt"), "--data-dir", str(SHARED_DATA)]
        )


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH needs Python 3.11")
def test_processes_import_the_installed_package_not_a_checkout_in_cwd(tmp_path, monkeypatch):
    # A checkout's pyro_dwp/ lacks pyro_dwp.models and pyro_dwp.guides (only an install maps
    # them); run from its root, `python -m pyro_dwp.cli` must still find the installed package.
    shadow = tmp_path / "pyro_dwp"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the checkout shadowed the install')\n")
    monkeypatch.chdir(tmp_path)
    assert devices.run_processes([["--help"]], workers=1, gpus=0) > 0


@needs_shared_data("mnist")
@pytest.mark.slow
def test_a_time_limit_stops_running_cells_at_an_epoch_end_and_skips_the_rest(tmp_path, vae_dir):
    """Two long cells, one worker, 20 s: the first is stopped by SIGTERM after a whole epoch,
    its checkpoint written (exit 143 is not a failure), the second is never started."""
    from pyro_dwp.infer import load_checkpoint

    def cell(out):
        return ["dwp-classify", "--out", out, "--vae-dir", vae_dir, "--data-dir", SHARED_DATA,
                "--n-train", "20", "--seeds", "0", "--epochs", "100000", "--n-test", "200",
                "--channels", "2", "3", "--priors", "normal", "--no-progress"]  # fmt: skip

    seconds = devices.run_processes(
        [cell(tmp_path / "a"), cell(tmp_path / "b")], workers=1, gpus=0, time_limit=20
    )
    assert 20 <= seconds < 60
    (checkpoint,) = (tmp_path / "a" / "cells").glob("normal_*.pt")
    assert 0 < load_checkpoint(checkpoint)["epoch"] < 100000
    assert not (tmp_path / "b").exists()

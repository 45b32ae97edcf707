"""Benchmark grids spread over devices: independent cells as processes, one device each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_shared_data

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

sys.path.insert(0, str(BENCHMARKS))

import mushroom  # noqa: E402  (benchmarks/mushroom.py)


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
    argv += ["--work-dir", str(tmp_path), "--results-dir", str(tmp_path)]
    first = mushroom.main([*argv, "--steps", "3"])
    result = mushroom.main([*argv, "--steps", "5"])  # resumes the run of 3 steps
    settings = json.loads((tmp_path / "lockstep" / "regret.json").read_text())["settings"]
    assert (settings["neg_log_sigma1"], settings["neg_log_sigma2"], settings["pi"]) == (2, 8, 0.25)
    assert settings["kl_size"] == "seen"
    assert result["step_minutes"] > first["step_minutes"] > 0
    assert "minutes of stepping over every invocation" in (tmp_path / "mushroom.md").read_text()

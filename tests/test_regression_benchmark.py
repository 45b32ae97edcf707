"""``benchmarks/bbb_regression.py``: the regression job over seeds, on tiny settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bbb_regression  # noqa: E402

TINY = ["--n-train", "40", "--hidden", "8", "--epochs", "3", "--batch-size", "20"]
TINY += ["--predictive-samples", "20"]


def test_benchmark_reports_each_seed_and_their_mean(tmp_path: Path) -> None:
    argv = ["--seeds", "0", "1", "--runs-dir", str(tmp_path / "runs")]
    argv += ["--results-dir", str(tmp_path / "results"), "--", *TINY]
    report = bbb_regression.main(bbb_regression.build_parser().parse_args(argv))
    assert set(report["seeds"]) == {"0", "1"}
    for key in bbb_regression.METRICS:
        values = [report["seeds"][s][key] for s in ("0", "1")]
        assert report["mean"][key] == pytest.approx(sum(values) / 2)
    run = json.loads((tmp_path / "runs" / "seed1" / "metrics.json").read_text())
    assert run["settings"]["seed"] == 1 and run["settings"]["epochs"] == 3
    assert report["settings"]["epochs"] == 3 and "seed" not in report["settings"]
    assert json.loads((tmp_path / "results" / "regression.json").read_text()) == report
    md = (tmp_path / "results" / "regression.md").read_text()
    assert "| mean |" in md and "coverage_out" in md
    assert (tmp_path / "results" / "regression.png").stat().st_size > 10_000


def test_benchmark_refuses_no_jobs(tmp_path: Path) -> None:
    args = bbb_regression.build_parser().parse_args(["--jobs", "0"])
    with pytest.raises(ValueError, match="--jobs"):
        bbb_regression.main(args)

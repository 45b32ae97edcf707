"""The Markov-chain prior benchmark (DWP Appendix A against T = 0) on tiny settings."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import BENCHMARKS, SHARED_DATA, needs_shared_data

sys.path.insert(0, str(BENCHMARKS))

import dwp_markov_chain  # noqa: E402

pytestmark = needs_shared_data("mnist")


def test_benchmark_outputs(tmp_path, one_thread):
    for layer, k in (("conv1", 7), ("conv2", 5)):
        state = {"train": torch.randn(20, k, k) * 0.1, "test": torch.randn(5, k, k) * 0.1}
        torch.save({**state, "layer": layer, "kernel_size": k}, tmp_path / f"kernels_{layer}.pt")
    args = dwp_markov_chain.parse_args(
        ["--data-dir", str(SHARED_DATA), "--out", str(tmp_path / "out"), "--kernels",
         str(tmp_path), "--steps", "0", "1", "--vae-steps", "2", "--n-train", "20",
         "--seeds", "0", "--epochs", "1", "--channels", "2", "4", "--n-test", "50",
         "--test-samples", "1", "--gap-samples", "4", "--threads", "1"]
    )  # fmt: skip
    result = dwp_markov_chain.main(args)
    saved = json.loads((tmp_path / "out" / "dwp_markov_chain.json").read_text())
    assert saved["cells"] == result["cells"]
    assert [(c["T"], c["n"]) for c in saved["cells"]] == [(0, 20), (1, 20)]
    assert [(r["T"], r["layer"]) for r in saved["vaes"]] == [
        (0, "conv1"), (0, "conv2"), (1, "conv1"), (1, "conv2")
    ]  # fmt: skip
    for cell in saved["cells"]:
        assert 0 <= cell["accuracy"] <= 1 and cell["gap"] >= 0 and cell["gap_frozen"] >= 0
    table = (tmp_path / "out" / "dwp_markov_chain.md").read_text()
    assert "| T | N | accuracy" in table


def test_bad_chain_length_is_an_error():
    with pytest.raises(SystemExit):
        dwp_markov_chain.parse_args(["--steps", "-1"])


def _run(tmp_path, name, steps, seed, **settings):
    """A dwp_markov_chain.json as one run with --steps T --seeds S writes it."""
    cells = [
        {"T": steps, "n": n, "seed": seed, "accuracy": 0.5 + 0.1 * seed + 0.01 * n / 50,
         "nll": 1.0, "final_loss": 10.0, "gap": 2.0 + steps, "gap_frozen": 3.0}
        for n in (50, 100)
    ]  # fmt: skip
    vaes = [
        {"T": steps, "layer": layer, "test_elbo": 1.0 + steps + seed, "test_iwae": 2.0}
        for layer in ("conv1", "conv2")
    ]
    result = {
        "command": f"python dwp_markov_chain.py --steps {steps} --seeds {seed}",
        "date": "2026-11-30", "hardware": "x, cuda", "seconds": 10.0 + seed,
        "settings": {"preset": "gpu", "steps": [steps], "seeds": [seed], "out": name,
                     "threads": 1, "merge": None, "epochs": 1000, "n_train": [50, 100],
                     "channels": [32, 128], "vae_steps": 8000, "n_test": None,
                     "gap_samples": 1000, **settings},
        "vaes": vaes, "cells": cells,
    }  # fmt: skip
    path = tmp_path / name / "dwp_markov_chain.json"
    path.parent.mkdir()
    path.write_text(json.dumps(result))
    return path


def test_merge_joins_runs_split_by_chain_length_and_seed(tmp_path):
    paths = [_run(tmp_path, f"t{t}s{s}", t, s) for t in (2, 0) for s in (1, 0)]
    args = dwp_markov_chain.parse_args(["--merge", *map(str, paths), "--out", str(tmp_path / "m")])
    merged = dwp_markov_chain.merge(args.merge, args.out)
    saved = json.loads((tmp_path / "m" / "dwp_markov_chain.json").read_text())
    assert saved["cells"] == merged["cells"]
    assert [(c["T"], c["n"], c["seed"]) for c in saved["cells"]] == [
        (t, n, s) for t in (0, 2) for n in (50, 100) for s in (0, 1)
    ]
    # one row per (T, layer), from the first run of that T (seed 1 here)
    assert [(r["T"], r["layer"], r["test_elbo"]) for r in saved["vaes"]] == [
        (0, "conv1", 2.0), (0, "conv2", 2.0), (2, "conv1", 4.0), (2, "conv2", 4.0)
    ]  # fmt: skip
    assert saved["settings"]["steps"] == [0, 2] and saved["settings"]["seeds"] == [0, 1]
    assert saved["seconds"] == 11.0 and len(saved["merged"]) == 4
    table = (tmp_path / "m" / "dwp_markov_chain.md").read_text()
    assert "| 0 | 50 | 0.560 |" in table  # mean accuracy over seeds 0 and 1


def test_merge_refuses_other_settings_and_repeated_cells(tmp_path):
    a = _run(tmp_path, "a", 0, 0)
    with pytest.raises(ValueError, match="other settings than .*: epochs"):
        dwp_markov_chain.merge([a, _run(tmp_path, "b", 0, 1, epochs=10)], tmp_path / "m")
    with pytest.raises(ValueError, match=r"repeat a \(T, N, seed\) cell"):
        dwp_markov_chain.merge([a, _run(tmp_path, "c", 0, 0)], tmp_path / "m")

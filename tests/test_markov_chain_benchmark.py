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

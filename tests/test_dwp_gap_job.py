"""``pyro-dwp dwp-gap``: a tiny run writes both reverse-model options, rejects bad input."""

import json
from itertools import pairwise

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from pyro_dwp.cli import main
from pyro_dwp.infer.dwp_gap import kernel_bound_terms
from pyro_dwp.models.kernel_vae import KernelVAE

needs_data = needs_shared_data("mnist")


def _args(out, vae_dir, *extra):
    return [
        "dwp-gap",
        "--out", str(out),
        "--vae-dir", str(vae_dir),
        "--data-dir", str(SHARED_DATA),
        "--n-train", "20",
        "--epochs", "2",
        "--channels", "2", "4",
        "--gap-samples", "8",
        "--no-progress",
        *extra,
    ]  # fmt: skip


@needs_data
@pytest.mark.slow
def test_tiny_run_reports_both_reverse_models(tmp_path, vae_dir, capsys, one_thread):
    out = tmp_path / "out"
    assert main(_args(out, vae_dir)) == 0
    printed = json.loads(capsys.readouterr().out)
    results = json.loads((out / "dwp_gap.json").read_text())
    assert results["config"]["gap_samples"] == 8 and results["config"]["channels"] == [2, 4]
    rows = results["rows"]
    assert set(rows) == {"init", "trainable", "frozen"} == set(printed["gap"])
    for name, row in rows.items():
        estimates = row["estimates"]
        assert set(estimates) == {"conv1.weight", "conv2.weight", "total"}
        assert estimates["total"]["kernels"] == 2 * 1 + 4 * 2
        for layer in estimates.values():
            # IWAE >= the auxiliary term for every draw (Jensen): up to float rounding only.
            assert layer["gap"] >= -1e-4 and layer["gap_frozen"] >= -1e-4
            assert layer["gap"] == pytest.approx(layer["log_p_w"] - layer["aux"], abs=1e-4)
        total = estimates["total"]
        assert printed["gap"][name] == total["gap"]
        assert printed["gap_per_kernel"][name] == pytest.approx(total["gap"] / 10)
    # The frozen reverse model is still the VAE encoder after training; the trainable one moved.
    assert rows["frozen"]["reverse_shift"] == 0.0 and rows["init"]["reverse_shift"] == 0.0
    assert rows["trainable"]["reverse_shift"] > 0.0
    assert "final_loss" in rows["frozen"] and "final_loss" not in rows["init"]
    table = (out / "dwp_gap.md").read_text()
    for name in ("trainable", "frozen", "init"):
        assert f"| {name} | " in table
    assert "gap conv1.weight" in table and "gap per kernel" in table
    assert not list((out / "cells").glob("*.pt"))  # the training checkpoints are removed
    # A rerun finds every row done; other settings in the same folder are refused.
    assert main(_args(out, vae_dir)) == 0
    assert json.loads((out / "dwp_gap.json").read_text()) == results
    capsys.readouterr()
    assert main(_args(out, vae_dir, "--epochs", "3")) == 1
    assert "other settings" in capsys.readouterr().err


def test_bad_input_is_reported(tmp_path, vae_dir, capsys):
    assert main(_args(tmp_path / "o", vae_dir, "--gap-samples", "0")) == 1
    assert "--gap-samples must be >= 1" in capsys.readouterr().err
    assert main(_args(tmp_path / "o", vae_dir, "--epochs", "0")) == 1
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert main(_args(tmp_path / "o", tmp_path / "missing")) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "missing" / "vae_conv1.pt") in err and "dwp-prior" in err
    assert not (tmp_path / "o").exists()  # nothing is written before the inputs are checked


def test_gap_grows_with_the_number_of_codes():
    """E[IWAE_K] is non-decreasing in K (Burda et al., 2016) and E[aux] does not depend on K."""
    torch.manual_seed(0)
    vae = KernelVAE(5, 2, 4)
    w = (0.3 * torch.randn(4, 5, 5)).expand(200, 4, 5, 5)  # 200 repeats of 4 kernels
    means = []
    for k in (1, 4, 32):
        iwae, aux = kernel_bound_terms(vae.encoder, vae.decoder, w, k)
        gap = (iwae - aux).sum(-1)  # (200,)
        assert (gap >= -1e-4).all()
        means.append((gap.mean().item(), gap.std().item() / 200**0.5))
    assert means[0] == (0.0, 0.0)  # one code: the IWAE estimate is the auxiliary term
    for (m, s), (m_next, s_next) in pairwise(means):
        assert m_next > m + 3 * (s**2 + s_next**2) ** 0.5

"""The random-feature and convergence benchmarks (DWP Figures 3 and 4) on tiny settings."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from pyro_dwp.data import DWP_PIXEL_SCALE, load_mnist
from pyro_dwp.models import DWPConvNet, MNISTConvVAE
from pyro_dwp.pretrained import pretrained

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import dwp_convergence  # noqa: E402
import dwp_random_features  # noqa: E402

pytestmark = needs_shared_data("mnist")


@pytest.fixture
def kernel_dir(tmp_path):
    """A stand-in for a ``pyro-dwp dwp-source`` output: random 7x7 and 5x5 kernel sets."""
    for layer, k in (("conv1", 7), ("conv2", 5)):
        state = {"train": torch.randn(20, k, k) * 0.1, "test": torch.randn(5, k, k) * 0.1}
        torch.save({**state, "layer": layer, "kernel_size": k}, tmp_path / f"kernels_{layer}.pt")
    return tmp_path


def test_frozen_features_leave_the_convolutions_unchanged(one_thread):
    x, y = load_mnist("train", SHARED_DATA, n=300, flatten=False, pixel_scale=DWP_PIXEL_SCALE)
    net = dwp_random_features.initialise(
        "dwp", partial(DWPConvNet, (4, 16)), 0, pretrained("notmnist"), None
    )
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    dwp_random_features.train_classifier(net, x, y, epochs=5, batch_size=50, lr=1e-2, seed=0)
    after = dict(net.named_parameters())
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.equal(after[name], before[name]), name
        assert not after[name].requires_grad
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    # the standardisation is folded into the classifier: the whole net classifies
    assert dwp_random_features.accuracy(net, x, y) > 0.6


def test_random_features_outputs(tmp_path, kernel_dir, one_thread):
    args = dwp_random_features.parse_args(
        ["--data-dir", str(SHARED_DATA), "--results-dir", str(tmp_path / "out"),
         "--source-kernels", str(kernel_dir), "--n-train", "100", "--n-test", "100",
         "--widths", "1/16", "1/8", "--seeds", "0", "1", "--epochs", "1"]
    )  # fmt: skip
    result = dwp_random_features.main(args)
    saved = json.loads((tmp_path / "out" / "dwp_random_features.json").read_text())
    assert saved["table"] == result["table"]
    assert set(saved["table"]) == {"dwp", "xavier", "filters"}
    for per_k in saved["table"].values():
        assert set(per_k) == {"1/16", "1/8"}
        assert all(0 <= v["mean"] <= 1 and v["std"] >= 0 for v in per_k.values())
    assert saved["settings"]["seeds"] == [0, 1] and saved["settings"]["n_train"] == 100
    assert "NOT the paper's protocol" in saved["what"]
    assert (tmp_path / "out" / "dwp_random_features.png").stat().st_size > 0
    assert "| filters |" in (tmp_path / "out" / "dwp_random_features.md").read_text()


def test_convergence_outputs(tmp_path, one_thread):
    args = dwp_convergence.parse_args(
        ["--data-dir", str(SHARED_DATA), "--results-dir", str(tmp_path), "--n-train", "200",
         "--n-test", "100", "--steps", "50", "--eval-at", "10", "--seeds", "0", "--batch-size",
         "16"]
    )  # fmt: skip
    result = dwp_convergence.main(args)
    saved = json.loads((tmp_path / "dwp_convergence.json").read_text())
    assert set(saved["table"]) == {"dwp", "xavier"}  # no --source-kernels: no filters row
    assert saved["table"]["dwp"] == {"50": result["table"]["dwp"][50]}
    assert saved["settings"]["eval_at"] == [0, 10, 50]
    assert (tmp_path / "dwp_convergence.png").stat().st_size > 0


def test_convergence_vae_panel_initialises_only_the_encoder_convs_and_learns(tmp_path, one_thread):
    priors = pretrained("notmnist")
    nets = {
        init: dwp_random_features.initialise(
            init,
            partial(MNISTConvVAE, 4),
            0,
            priors,
            {"conv1": torch.randn(9, 7, 7), "conv2": torch.randn(9, 5, 5)},
        )  # fmt: skip
        for init in ("dwp", "xavier", "filters")
    }
    params = {init: dict(net.named_parameters()) for init, net in nets.items()}
    for name, p in params["dwp"].items():
        same = all(torch.equal(p, params[i][name]) for i in ("xavier", "filters"))
        assert same == (name not in ("conv1.weight", "conv2.weight")), name
    args = dwp_convergence.parse_args(
        ["--data-dir", str(SHARED_DATA), "--results-dir", str(tmp_path), "--n-train", "200",
         "--n-test", "50", "--steps", "50", "--eval-at", "10", "--seeds", "0", "--batch-size",
         "16", "--panels", "vae", "--z-dim", "4"]
    )  # fmt: skip
    dwp_convergence.main(args)
    saved = json.loads((tmp_path / "dwp_convergence.json").read_text())
    assert saved["table"] == {} and set(saved["vae"]["table"]) == {"dwp", "xavier"}
    for curve in saved["vae"]["curves"]["mean"].values():
        assert curve["50"] > curve["0"] + 100  # nats per image: the VAE learns
    assert "## Conv VAE" in (tmp_path / "dwp_convergence.md").read_text()
    assert (tmp_path / "dwp_convergence.png").stat().st_size > 0

"""The deep weight prior shipped with the package: loading, checksums, devices, kernel sizes."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import pyro_dwp.pretrained as shipped
from pyro_dwp import BNN, Categorical
from pyro_dwp.distributions import DeepWeightPrior
from pyro_dwp.experiments import dwp_classify
from pyro_dwp.models.kernel_vae import KernelVAE, load_kernel_vae
from pyro_dwp.pretrained import LAYERS, PRETRAINED, pretrained


@pytest.fixture
def copy_of_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the shipped ``notmnist`` folder that the loader reads instead."""
    folder = tmp_path / "notmnist"
    shutil.copytree(shipped._folder("notmnist"), folder)
    monkeypatch.setattr(shipped, "_folder", lambda name: folder)
    return folder


def test_pretrained_gives_one_prior_per_layer_equal_to_the_shipped_vaes() -> None:
    assert PRETRAINED == ("notmnist",)
    priors = pretrained("notmnist")
    assert set(priors) == {"conv1", "conv2"}
    folder = shipped.pretrained_dir("notmnist")
    for layer, k in (("conv1", 7), ("conv2", 5)):
        prior = priors[layer]
        assert isinstance(prior, DeepWeightPrior)
        assert prior.event_shape == (k, k)
        vae, _ = load_kernel_vae(folder / f"vae_{layer}.pt")
        z = torch.randn(16, vae.z_dim)
        for got, want in zip(prior.decoder(z), vae.decoder(z), strict=True):
            torch.testing.assert_close(got, want)
        # the code prior p(z) fitted to the source kernels' codes, not N(0, I)
        assert vae.code_prior is not None
        torch.testing.assert_close(prior.latent().log_prob(z), vae.code_prior.log_prob(z))
        # the importance-sampled log density of a decoder mean is finite
        w = vae.decoder(z[:2])[0].detach()
        assert torch.isfinite(prior.log_prob(w)).all()


def test_metadata_records_provenance_fit_and_the_files_checksums() -> None:
    meta = shipped.pretrained_metadata("notmnist")
    folder = shipped.pretrained_dir("notmnist")
    assert meta["commit"] and meta["commands"]
    assert set(meta["sha256"]) == {"vae_conv1.pt", "vae_conv2.pt"}
    for file, digest in meta["sha256"].items():
        assert shipped.sha256(folder / file) == digest
    for layer, k in (("conv1", 7), ("conv2", 5)):
        info = meta["layers"][layer]
        assert info["kernel_size"] == k
        assert info["source_kernels"]["kernel_size"] == k
        assert 0 < info["fit_on_held_out_kernels"]["recon_over_std"] < 1
    assert [meta["layers"][layer]["code_prior_components"] for layer in ("conv1", "conv2")] == [
        16,
        64,
    ]


def test_a_changed_byte_is_refused_naming_the_file(copy_of_shipped: Path) -> None:
    path = copy_of_shipped / "vae_conv2.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"vae_conv2\.pt has SHA-256 .* corrupt or was altered"):
        pretrained("notmnist")


def test_a_missing_file_or_unreadable_metadata_is_refused(copy_of_shipped: Path) -> None:
    (copy_of_shipped / "vae_conv1.pt").unlink()
    with pytest.raises(ValueError, match=r"vae_conv1\.pt is missing"):
        pretrained("notmnist")
    (copy_of_shipped / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read .*metadata.json"):
        pretrained("notmnist")


def test_an_unknown_name_lists_the_shipped_priors() -> None:
    with pytest.raises(ValueError, match=r"no shipped prior named 'cifar'.*'notmnist'"):
        pretrained("cifar")


def test_device_argument_places_the_networks() -> None:
    priors = pretrained("notmnist", device=torch.device("cpu"), num_samples=7)
    for prior in priors.values():
        assert prior.num_samples == 7
        assert {p.device for p in prior.parameters()} == {torch.device("cpu")}
    if torch.cuda.is_available():  # pragma: no cover (CI has no GPU)
        cuda = pretrained("notmnist", device="cuda")["conv1"]
        assert next(cuda.parameters()).is_cuda


def test_a_layer_of_another_kernel_size_is_refused() -> None:
    priors = pretrained("notmnist")
    net = nn.Sequential(nn.Conv2d(1, 4, 5), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match=r"event shape 7x7 but .*\(4, 1, 5, 5\)"):
        BNN(net, {"0.weight": priors["conv1"]}, Categorical(10))
    BNN(net, {"0.weight": priors["conv2"]}, Categorical(10))  # the 5x5 prior fits


def test_dwp_classify_pretrained_option_resolves_the_verified_folder(
    copy_of_shipped: Path,
) -> None:
    parser = argparse.ArgumentParser()
    dwp_classify.add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--pretrained", "notmnist", "--priors", "dwp"])
    dwp_classify._check_args(args)
    assert args.vae_dir == copy_of_shipped
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--pretrained", "notmnist", "--vae-dir", "v"])
    meta = json.loads((copy_of_shipped / "metadata.json").read_text())
    meta["sha256"]["vae_conv1.pt"] = "0" * 64
    (copy_of_shipped / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="corrupt or was altered"):
        dwp_classify._check_args(parser.parse_args(["--out", "x", "--pretrained", "notmnist"]))


def test_fan_in_rescales_a_prior_to_the_he_scale_of_its_layer() -> None:
    """The shipped kernels sit at the He scale sqrt(2 / fan-in) of the paper's 32 / 128 net
    (fan-ins 49 and 32 * 25): ``fan_in`` moves a prior to its layer's, samples and all."""
    meta = [load_kernel_vae(shipped.pretrained_dir() / f"vae_{layer}.pt")[1] for layer in LAYERS]
    assert [shipped.he_gauge_fan_in(m) for m in meta] == [49, 800]
    kept_std = shipped.pretrained_metadata()["layers"]["conv2"]["source_kernels"]["kept_kernels"][
        "std"
    ]
    assert kept_std == pytest.approx((2 / 800) ** 0.5, rel=1e-3)  # what the gauge wrote
    as_shipped = pretrained()
    fitted = pretrained(fan_in={"conv2": 16 * 25})
    assert fitted["conv1"].decoder.output_scale == 1.0  # not named: as shipped
    z = torch.randn(8, as_shipped["conv2"].z_dim)
    c = (800 / 400) ** 0.5
    for got, want in zip(fitted["conv2"].decoder(z), as_shipped["conv2"].decoder(z), strict=True):
        torch.testing.assert_close(got, c * want)
    torch.manual_seed(0)
    samples = fitted["conv2"].sample((2000,))
    assert samples.square().mean().sqrt().item() == pytest.approx((2 / 400) ** 0.5, rel=0.1)
    with pytest.raises(ValueError, match=r"fan_in names layers \['conv3'\]"):
        pretrained(fan_in={"conv3": 9})
    with pytest.raises(ValueError, match="fan-in must be a positive integer, got 0"):
        pretrained(fan_in={"conv2": 0})


def test_a_vae_of_kernels_as_trained_is_not_rescaled() -> None:
    """A VAE without the He gauge in its provenance has no reference fan-in: factor 1."""
    vae = KernelVAE(3, z_dim=2, hidden=4)
    meta = {"layer": "conv2", "kernel_size": 3, "provenance": {"kernel_gauge": "none"}}
    assert shipped.he_gauge_fan_in(meta) is None
    assert shipped.match_fan_in(vae, meta, 123) == 1.0 and vae.kernel_scale == 1.0

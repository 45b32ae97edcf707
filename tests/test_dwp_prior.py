"""The ``pyro-dwp dwp-prior`` job and the kernel VAE files it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pyro_dwp.cli import main
from pyro_dwp.experiments.dwp_prior import evaluate_kernel_vae, load_kernel_set
from pyro_dwp.infer import fit_kernel_vae
from pyro_dwp.io import save_checkpoint
from pyro_dwp.models import KernelVAE, load_kernel_vae, save_kernel_vae

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_kernel_set(path: Path, k: int, n_train: int = 40, n_test: int = 10) -> None:
    g = torch.Generator().manual_seed(k)
    save_checkpoint(
        path,
        {
            "train": 0.1 * torch.randn(n_train, k, k, generator=g),
            "test": 0.1 * torch.randn(n_test, k, k, generator=g),
            "layer": path.stem.removeprefix("kernels_"),
            "kernel_size": k,
            "provenance": {"seeds": [0, 1], "kept_of_total": f"kept {n_train + n_test} of 60"},
        },
    )


@pytest.fixture
def kernel_dir(tmp_path: Path) -> Path:
    """A folder like dwp-source's output: 7x7 ``conv1`` and 5x5 ``conv2`` kernel sets."""
    folder = tmp_path / "source"
    _write_kernel_set(folder / "kernels_conv1.pt", 7)
    _write_kernel_set(folder / "kernels_conv2.pt", 5)
    return folder


def test_tiny_run_writes_vae_files_plots_and_report(tmp_path, kernel_dir):
    out = tmp_path / "prior"
    argv = ["dwp-prior", "--kernels", str(kernel_dir), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--iwae-samples", "5", "--no-progress"]) == 0
    report = json.loads((out / "prior_report.json").read_text())
    for layer, k, z_dim in (("conv1", 7, 2), ("conv2", 5, 4)):
        entry = report["layers"][layer]
        assert (entry["kernel_size"], entry["z_dim"]) == (k, z_dim)
        assert (entry["n_train"], entry["n_valid"], entry["n_test"]) == (36, 4, 10)
        assert entry["best_epoch"] == 1 and entry["epochs"] == 1
        assert report["recon_over_std"][layer] == entry["recon_over_std"] > 0
        assert set(report["smoothness"][layer]) == {"source", "prior_samples", "prior_means"}
        assert entry["iwae_samples"] == 5 and entry["vae_file"] == f"vae_{layer}.pt"
        assert (out / f"samples_{layer}.png").stat().st_size > 5_000
        vae, meta = load_kernel_vae(out / f"vae_{layer}.pt")
        assert (vae.kernel_size, vae.z_dim, meta["layer"]) == (k, z_dim, layer)
        assert meta["provenance"]["seeds"] == [0, 1]
        assert meta["provenance"]["kernels_file"] == str(kernel_dir / f"kernels_{layer}.pt")
        assert len(meta["history"]["train_elbo"]) == 1 and meta["training"]["epochs"] == 1
        assert meta["test_elbo"] == entry["test_elbo"] and meta["test_iwae"] == entry["test_iwae"]
    assert report["layers"]["conv1"]["latent_plot"] == "latent_conv1.png"
    assert (out / "latent_conv1.png").stat().st_size > 5_000
    assert report["layers"]["conv2"]["latent_plot"] is None
    assert not (out / "latent_conv2.png").exists()


def test_save_load_round_trip(tmp_path):
    vae = KernelVAE(7, z_dim=2, hidden=4)
    path = tmp_path / "vae.pt"
    save_kernel_vae(path, vae, layer="conv1", history={"train_elbo": [1.0]})
    loaded, meta = load_kernel_vae(path)
    assert meta == {
        "kernel_size": 7,
        "z_dim": 2,
        "hidden": 4,
        "decoder_scale": "per-code",
        "decoder_mean": "direct",
        "code_prior_components": None,
        "kernel_scale": 1.0,
        "layer": "conv1",
        "history": {"train_elbo": [1.0]},
    }
    assert not loaded.training
    for name, value in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    with pytest.raises(ValueError, match="reserved"):
        save_kernel_vae(path, vae, z_dim=3)


def test_load_kernel_vae_errors_name_the_file(tmp_path):
    missing = tmp_path / "vae_conv1.pt"
    with pytest.raises(FileNotFoundError, match=r"vae_conv1\.pt.*pyro-dwp dwp-prior"):
        load_kernel_vae(missing)
    save_kernel_vae(missing, KernelVAE(7, z_dim=2, hidden=4))
    corrupt = tmp_path / "vae_corrupt.pt"
    corrupt.write_bytes(missing.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match=r"vae_corrupt\.pt is unreadable"):
        load_kernel_vae(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match=r"other\.pt is not a kernel VAE file"):
        load_kernel_vae(other)


def test_missing_kernel_set_names_the_file_and_the_command(tmp_path, capsys):
    argv = ["dwp-prior", "--kernels", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "kernels_conv1.pt" in err and "pyro-dwp dwp-source --out" in err
    assert not (tmp_path / "out").exists()  # nothing started
    corrupt = tmp_path / "kernels_conv1.pt"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"kernels_conv1\.pt is unreadable"):
        load_kernel_set(corrupt)


def test_7x7_vae_on_5x5_kernels_is_a_clear_error(tmp_path, kernel_dir):
    vae = KernelVAE.for_kernel_size(7)
    train, test, k, _ = load_kernel_set(kernel_dir / "kernels_conv2.pt")
    assert k == 5
    with pytest.raises(
        ValueError, match=r"7x7 kernels cannot evaluate kernels of shape \(10, 5, 5\)"
    ):
        evaluate_kernel_vae(vae, test, iwae_samples=2)
    with pytest.raises(ValueError, match="7x7 kernels applied to 5x5"):
        fit_kernel_vae(vae, train, None, epochs=1, progress=False)
    # a kernel set whose declared size disagrees with its tensors
    bad = tmp_path / "kernels_conv1.pt"
    state = torch.load(kernel_dir / "kernels_conv2.pt", weights_only=True)
    save_checkpoint(bad, {**state, "kernel_size": 7})
    with pytest.raises(ValueError, match=r"'train' must be 7x7 kernels"):
        load_kernel_set(bad)


def test_a_kernel_file_of_another_layer_is_refused_naming_both(tmp_path, kernel_dir, capsys):
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for mine, theirs in (("conv1", "conv2"), ("conv2", "conv1")):  # the two files renamed
        data = (kernel_dir / f"kernels_{theirs}.pt").read_bytes()
        (swapped / f"kernels_{mine}.pt").write_bytes(data)
    argv = ["dwp-prior", "--kernels", str(swapped), "--out", str(tmp_path / "out")]
    assert main([*argv, "--epochs", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "kernels_conv1.pt holds the kernels of conv2, not of conv1" in err
    assert not (tmp_path / "out" / "vae_conv1.pt").exists()
    assert load_kernel_set(swapped / "kernels_conv1.pt")[2] == 5  # unchecked without a layer


def test_z_dim_overrides_the_latent_dimension(tmp_path, kernel_dir, capsys):
    out = tmp_path / "prior"
    argv = ["dwp-prior", "--kernels", str(kernel_dir), "--out", str(out), "--epochs", "1"]
    argv += ["--layers", "conv2", "--iwae-samples", "2", "--no-progress"]
    assert main([*argv, "--z-dim", "8"]) == 0
    vae, _ = load_kernel_vae(out / "vae_conv2.pt")
    assert (vae.z_dim, vae.hidden) == (8, 64)
    assert main([*argv, "--z-dim", "0"]) == 1
    assert "--z-dim must be >= 1" in capsys.readouterr().err


def test_kernel_fit_figures_follow_their_definitions():
    torch.manual_seed(0)
    vae = KernelVAE(5, z_dim=4, hidden=4).eval()
    kernels = 0.1 * torch.randn(30, 5, 5)
    figures = evaluate_kernel_vae(vae, kernels, iwae_samples=3)
    with torch.no_grad():
        loc, scale = vae.decoder(vae.encoder(kernels)[0])
    std = kernels.std()
    assert figures["recon_over_std"] == pytest.approx(
        ((kernels - loc).square().mean().sqrt() / std).item(), rel=1e-5
    )
    assert figures["decoder_scale_over_std"] == pytest.approx(
        (scale.square().mean().sqrt() / std).item(), rel=1e-5
    )
    from pyro_dwp.data import kernel_smoothness

    assert figures["smoothness"]["source"] == pytest.approx(kernel_smoothness(kernels))
    # the decoder scale of an untrained VAE (~softplus(0) = 0.69) dwarfs these kernels (std
    # 0.1): prior samples are nearly white noise
    assert figures["sample_std_over_std"] > 3
    assert abs(figures["smoothness"]["prior_samples"]) < 0.1


def test_zero_kernel_gap_against_the_closed_form():
    """With the encoder equal to p(z) and a decoder that ignores z, p(w) = N(w; c, s^2) exactly
    and every importance weight is that density: the gap is log N(0; c, s^2) minus the mean
    log N(w; c, s^2) of the kernels, in closed form."""
    vae = KernelVAE(5, z_dim=2, hidden=4, decoder_scale="shared").eval()
    c, s = 0.3, 0.1
    with torch.no_grad():
        for head in (vae.encoder.loc, vae.encoder.scale, vae.decoder.loc):
            head.weight.zero_()
        vae.encoder.loc.bias.zero_()
        vae.encoder.scale.bias.fill_(math.log(math.e - 1))  # softplus -> 1
        vae.decoder.loc.bias.fill_(c)
        vae.decoder.scale.fill_(math.log(math.expm1(s)))  # softplus -> s
    kernels = c + s * torch.randn(40, 5, 5, generator=torch.Generator().manual_seed(0))
    figures = evaluate_kernel_vae(vae, kernels, iwae_samples=3)
    density = torch.distributions.Normal(c, s)
    expected = density.log_prob(torch.zeros(5, 5)).sum() - density.log_prob(kernels).sum((1, 2))
    assert figures["zero_kernel_gap"] == pytest.approx(expected.mean().item(), rel=1e-4)
    assert figures["zero_kernel_gap"] < -50  # about -25 * 0.3^2 / (2 * 0.1^2) + 25 / 2: no hole


def test_steps_set_the_length_and_augment_is_recorded(tmp_path, kernel_dir):
    out = tmp_path / "prior"
    argv = ["dwp-prior", "--kernels", str(kernel_dir), "--out", str(out), "--steps", "3"]
    argv += ["--layers", "conv1", "--iwae-samples", "2", "--no-progress", "--augment"]
    argv += ["--batch-size", "16", "--valid-fraction", "0.25"]
    assert main(argv) == 0
    entry = json.loads((out / "prior_report.json").read_text())["layers"]["conv1"]
    assert (entry["n_train"], entry["n_valid"]) == (30, 10)
    assert (entry["epochs"], entry["steps"]) == (2, 4)  # 2 steps an epoch, 3 rounded up
    _, meta = load_kernel_vae(out / "vae_conv1.pt")
    assert meta["training"]["augment"] is True and meta["training"]["steps"] == 3


def test_min_norm_drops_small_kernels_before_fitting(tmp_path, kernel_dir, capsys):
    out = tmp_path / "prior"
    argv = ["dwp-prior", "--kernels", str(kernel_dir), "--out", str(out), "--epochs", "1"]
    argv += ["--layers", "conv1", "--iwae-samples", "2", "--no-progress"]
    train, test, _, _ = load_kernel_set(kernel_dir / "kernels_conv1.pt")
    floor = train.flatten(1).norm(dim=1).median().item()
    n_kept = int((train.flatten(1).norm(dim=1) >= floor).sum())
    n_test = int((test.flatten(1).norm(dim=1) >= floor).sum())
    assert main([*argv, "--min-norm", str(floor)]) == 0
    entry = json.loads((out / "prior_report.json").read_text())["layers"]["conv1"]
    assert entry["n_train"] + entry["n_valid"] == n_kept and entry["n_test"] == n_test
    _, meta = load_kernel_vae(out / "vae_conv1.pt")
    assert meta["provenance"]["prior_floor"]["min_norm"] == floor
    assert main([*argv, "--min-norm", "100"]) == 1
    assert "--min-norm 100.0 leaves no conv1 kernel" in capsys.readouterr().err
    assert main([*argv, "--min-norm", "0.1", "0.2"]) == 1
    assert "one per layer" in capsys.readouterr().err

"""The DWP ConvNet and the ``pyro-dwp dwp-source`` job, on a tiny learnable synthetic notMNIST."""

from __future__ import annotations

import argparse
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_dwp.cli import main
from pyro_dwp.data import CACHE_ENV_VAR, DATA_ENV_VAR, random_affine, split_kernels
from pyro_dwp.experiments import dwp_source
from pyro_dwp.experiments.dwp_source import CHANCE_ACCURACY, select_kernels
from pyro_dwp.infer import load_checkpoint
from pyro_dwp.models import DWPConvNet, conv_layers

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = struct.pack(f">I{array.ndim}I", 0x0800 + array.ndim, *array.shape)
    with gzip.open(path, "wb") as out:
        out.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``notmnist/`` of 200 train / 100 test images: class c is a bright bar at rows 2c+4..2c+6."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("data")
    (root / "notmnist").mkdir()
    for prefix, size in (("train", 200), ("t10k", 100)):
        labels = np.arange(size) % 10
        images = rng.integers(0, 60, size=(size, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 7, 4:24] = 255
        _write_idx_gz(root / "notmnist" / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx_gz(root / "notmnist" / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)


def _tiny(out: Path, data_dir: Path) -> list[str]:
    return [
        "dwp-source",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--num-nets",
        "2",
        "--channels",
        "4",
        "8",
        "--epochs",
        "4",
        "--batch-size",
        "50",
        "--lr",
        "1e-2",
        "--n-train-subset",
        "100",
        "--no-progress",
    ]


# --- the network ----------------------------------------------------------------------------


def test_dwp_convnet_layout_and_names():
    net = DWPConvNet()
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == {
        "conv1.weight": (32, 1, 7, 7),
        "conv1.bias": (32,),
        "conv2.weight": (128, 32, 5, 5),
        "conv2.bias": (128,),
        "fc.weight": (10, 128 * 3 * 3),
        "fc.bias": (10,),
    }
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert conv_layers(net) == {"conv1": 7, "conv2": 5}
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        net(torch.randn(3, 784))
    with pytest.raises(ValueError, match="channels"):
        DWPConvNet((0, 4))


# --- kernel selection -----------------------------------------------------------------------


def _kernels_of_norms(norms: list[float]) -> torch.Tensor:
    kernels = torch.zeros(len(norms), 5, 5)
    kernels[:, 2, 2] = torch.tensor(norms)  # each kernel's L2 norm is its entry of `norms`
    return kernels


def test_norm_filter_keeps_the_largest_fraction_or_the_kernels_above_a_floor():
    kernels = _kernels_of_norms([0.5, 3.0, 0.4, 1.0, 0.9, 2.0, 5.0, 4.0, 0.1])
    keep, floor = select_kernels(kernels, keep_fraction=1 / 3)  # the 3 largest
    assert keep.tolist() == [False, True, False, False, False, False, True, True, False]
    assert floor == pytest.approx(3.0)
    keep, floor = select_kernels(kernels, keep_fraction=1.0)
    assert keep.all() and floor == pytest.approx(0.1)
    keep, floor = select_kernels(kernels, min_norm=0.9)  # 0.9 stays
    assert keep.tolist() == [False, True, False, True, True, True, True, True, False]
    assert floor == 0.9
    with pytest.raises(ValueError, match="exactly one"):
        select_kernels(kernels)
    with pytest.raises(ValueError, match="exactly one"):
        select_kernels(kernels, keep_fraction=0.5, min_norm=0.1)
    with pytest.raises(ValueError, match="keep_fraction"):
        select_kernels(kernels, keep_fraction=1.5)
    with pytest.raises(ValueError, match="min_norm"):
        select_kernels(kernels, min_norm=-0.1)


def test_norm_filter_that_keeps_nothing_is_an_error_naming_the_floor():
    kernels = _kernels_of_norms([0.5, 3.0, 0.4])
    with pytest.raises(ValueError, match=r"keeps none of 3 kernels \(floor 10, largest norm 3"):
        select_kernels(kernels, min_norm=10.0)
    with pytest.raises(ValueError, match="keeps none of 3"):
        select_kernels(kernels, keep_fraction=0.1)  # round(0.3) = 0


def test_l2_penalty_decays_the_conv_weights_only():
    net = DWPConvNet((4, 8))
    dwp_source.l2_penalty(net, "conv").backward()
    for name, p in net.named_parameters():
        if name in ("conv1.weight", "conv2.weight"):
            assert torch.allclose(p.grad, 2 * p.detach())  # d/dw sum(w^2)
        else:
            assert p.grad is None
    net.zero_grad(set_to_none=True)
    total = dwp_source.l2_penalty(net, "all")
    assert total.item() == pytest.approx(sum(p.square().sum().item() for p in net.parameters()))
    with pytest.raises(ValueError, match="params"):
        dwp_source.l2_penalty(net, "fc")


@pytest.mark.parametrize(
    ("schedule", "factors"), [("linear", [1, 0.75, 0.5, 0.25]), ("constant", [1, 1, 1, 1])]
)
def test_source_learning_rate_schedule(tmp_path, data_dir, monkeypatch, schedule, factors):
    rates = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    argv = _tiny(tmp_path / "source", data_dir)  # 100 images, batch 50: 2 steps an epoch
    argv[argv.index("--epochs") + 1] = "2"
    argv[argv.index("--num-nets") + 1] = "1"
    assert main([*argv, "--lr-schedule", schedule]) == 0
    assert rates == pytest.approx([1e-2 * f for f in factors])


def test_split_kernels_is_a_seeded_partition():
    kernels = torch.arange(10.0)[:, None, None].expand(10, 3, 3)
    train, test = split_kernels(kernels, 0.2, seed=3)
    assert train.shape == (8, 3, 3) and test.shape == (2, 3, 3)
    values = sorted(train[:, 0, 0].tolist() + test[:, 0, 0].tolist())
    assert values == list(range(10))
    again = split_kernels(kernels, 0.2, seed=3)
    assert torch.equal(again[1], test)


# --- the job --------------------------------------------------------------------------------


def test_tiny_run_writes_kernel_sets_with_provenance(tmp_path, data_dir):
    out = tmp_path / "source"
    assert main(_tiny(out, data_dir)) == 0
    report = json.loads((out / "source_report.json").read_text())
    assert [net["seed"] for net in report["nets"]] == [0, 1]
    assert all(net["test_accuracy"] > CHANCE_ACCURACY for net in report["nets"])
    assert report["warnings"] == []
    nets = []
    for seed in (0, 1):
        state = load_checkpoint(out / "source_nets" / f"net_seed{seed}.pt")  # infer.Checkpoint's
        net = DWPConvNet((4, 8))
        net.load_state_dict(state["state_dict"])
        nets.append(net)
    layers = (("conv1", 7, 2 * 4 * 1, 0.85), ("conv2", 5, 2 * 8 * 4, 0.08))  # default fractions
    for layer, k, total, fraction in layers:
        data = torch.load(out / f"kernels_{layer}.pt", weights_only=True)
        assert data["layer"] == layer and data["kernel_size"] == k
        # "kept n of m" follows the documented rule applied to the saved nets' weights
        all_kernels = torch.cat(
            [n.get_submodule(layer).weight.detach().reshape(-1, k, k) for n in nets]
        )
        keep, threshold = select_kernels(all_kernels, keep_fraction=fraction)
        prov = data["provenance"]
        assert (prov["kept"], prov["total"]) == (int(keep.sum()), total)
        assert prov["kept_of_total"] == f"kept {int(keep.sum())} of {total}"
        assert prov["norm_threshold"] == pytest.approx(threshold)
        assert report["layers"][layer]["kept_of_total"] == prov["kept_of_total"]
        # train + test are exactly the kept kernels, 80 / 20
        both = torch.cat([data["train"], data["test"]])
        assert data["train"].shape[1:] == (k, k) and len(data["test"]) == round(0.2 * len(both))
        assert torch.equal(
            both.flatten(1).sort(0).values, all_kernels[keep].flatten(1).sort(0).values
        )
        assert prov["seeds"] == [0, 1] and prov["excluded_seeds"] == []
        assert prov["channels"] == [4, 8] and prov["epochs"] == 4
        assert prov["l2"] == 1e-3 and prov["l2_params"] == "conv" and prov["n_train"] == 100
        assert prov["net_init"] == "xavier" and prov["pixel_scale"] == 255
        assert set(prov["test_accuracy"]) == {0, 1} and "fraction" in prov["rule"]
        assert prov["keep_fraction"] == fraction
        stats = report["layers"][layer]["kept_kernels"]
        assert stats["n"] == int(keep.sum()) and -1 <= stats["smoothness"] <= 1


def test_rerun_resumes_and_rejects_other_settings(tmp_path, data_dir, capsys):
    out = tmp_path / "source"
    args = _tiny(out, data_dir)
    assert main(args) == 0
    first = torch.load(out / "kernels_conv2.pt", weights_only=True)
    assert main(args) == 0
    report = json.loads((out / "source_report.json").read_text())
    assert all(net["resumed"] for net in report["nets"])
    assert torch.equal(
        torch.load(out / "kernels_conv2.pt", weights_only=True)["train"], first["train"]
    )
    capsys.readouterr()
    assert main([*args, "--epochs", "5"]) == 1
    assert "epochs: 4 -> 5" in capsys.readouterr().err
    assert main([*args, "--l2-params", "all"]) == 1
    assert "l2_params: 'conv' -> 'all'" in capsys.readouterr().err
    (out / "source_nets" / "net_seed0.pt").write_bytes(b"not a checkpoint")
    assert main(args) == 1
    assert "net_seed0.pt" in capsys.readouterr().err


def test_net_at_chance_is_excluded_with_a_warning(tmp_path, data_dir, monkeypatch):
    accuracies = iter([0.9, 0.1])  # the second net (seed 1) is at chance
    monkeypatch.setattr(dwp_source, "_accuracy", lambda *args: next(accuracies))
    out = tmp_path / "source"
    with pytest.warns(UserWarning, match="seed 1 is at chance"):
        assert main(_tiny(out, data_dir)) == 0
    report = json.loads((out / "source_report.json").read_text())
    assert len(report["warnings"]) == 1 and "seed 1" in report["warnings"][0]
    prov = torch.load(out / "kernels_conv1.pt", weights_only=True)["provenance"]
    assert prov["seeds"] == [0] and prov["excluded_seeds"] == [1]
    assert prov["total"] == 4  # conv1 kernels of one 4-channel net


def test_all_nets_at_chance_is_an_error(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setattr(dwp_source, "_accuracy", lambda *args: 0.1)
    with pytest.warns(UserWarning, match="at chance"):
        assert main(_tiny(tmp_path / "source", data_dir)) == 1
    assert "all 2 source nets are at chance" in capsys.readouterr().err


def test_xavier_init_draws_weights_with_the_xavier_normal_std():
    torch.manual_seed(0)
    net = DWPConvNet((32, 128))
    dwp_source.INITS["xavier"](net)
    for module in (net.conv1, net.conv2, net.fc):
        w = module.weight.detach()
        fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
        assert w.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.05)
    default = DWPConvNet((4, 8))
    before = {k: v.clone() for k, v in default.state_dict().items()}
    dwp_source.INITS["torch"](default)
    assert all(torch.equal(v, before[k]) for k, v in default.state_dict().items())


def test_train_only_writes_nets_and_no_kernel_sets_then_a_full_run_reuses_them(tmp_path, data_dir):
    out = tmp_path / "source"
    argv = _tiny(out, data_dir)
    one_net = argv.index("--num-nets") + 1
    for seed in ("0", "1"):  # e.g. one process per GPU
        single = [*argv[:one_net], "1", *argv[one_net + 1 :], "--seed", seed, "--train-only"]
        assert main(single) == 0
    assert not (out / "kernels_conv1.pt").exists()
    assert sorted(p.name for p in (out / "source_nets").iterdir()) == [
        "net_seed0.pt",
        "net_seed1.pt",
    ]
    assert main(argv) == 0
    report = json.loads((out / "source_report.json").read_text())
    assert [n["resumed"] for n in report["nets"]] == [True, True]
    assert (out / "kernels_conv1.pt").exists()


def test_a_floor_that_empties_a_layer_is_an_error_naming_it(tmp_path, data_dir, capsys):
    argv = [*_tiny(tmp_path / "source", data_dir), "--min-norm", "0", "1000"]
    assert main(argv) == 1
    assert "conv2: the norm filter keeps none of 64 kernels" in capsys.readouterr().err


def test_kernel_smoothness_separates_noise_bars_and_checkerboards():
    from pyro_dwp.data import kernel_smoothness

    torch.manual_seed(0)
    noise = torch.randn(2000, 7, 7)
    assert abs(kernel_smoothness(noise)) < 0.03
    # a random mix of horizontal and vertical ramps: adjacent pixels along a ramp are equal or
    # one step apart, so the correlation is close to 1
    ramp = torch.linspace(-1, 1, 7)
    bars = torch.where(
        torch.rand(500, 1, 1) < 0.5, ramp[None, :, None].expand(500, 7, 7), ramp.expand(500, 7, 7)
    ) * torch.randn(500, 1, 1)
    assert kernel_smoothness(bars) > 0.6
    checker = (-1.0) ** (torch.arange(7)[:, None] + torch.arange(7))
    signs = torch.randn(100, 1, 1).sign()
    assert kernel_smoothness(checker * signs) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match=r"\(N, k, k\)"):
        kernel_smoothness(torch.randn(7, 7))


# --- options beyond the recipe: the He gauge, augmentation ----------------------------------


def test_he_gauge_rescales_each_layer_to_the_target_he_scale_and_keeps_the_shapes(
    tmp_path, data_dir
):
    plain, gauged = tmp_path / "plain", tmp_path / "he"
    assert main(_tiny(plain, data_dir)) == 0
    args = [*_tiny(gauged, data_dir), "--kernel-gauge", "he", "--target-channels", "3", "9"]
    assert main(args) == 0
    report = json.loads((gauged / "source_report.json").read_text())
    for layer, fan_in in (("conv1", 1 * 49), ("conv2", 3 * 25)):
        ours = torch.load(plain / f"kernels_{layer}.pt", weights_only=True)
        theirs = torch.load(gauged / f"kernels_{layer}.pt", weights_only=True)
        both = torch.cat([theirs["train"], theirs["test"]])
        # RMS of the written kernels = He std of the target layer (fan-in = in-channels x k^2)
        assert both.square().mean().sqrt().item() == pytest.approx((2 / fan_in) ** 0.5, rel=1e-5)
        factor = report["layers"][layer]["gauge_factor"]
        assert theirs["provenance"]["gauge_factor"] == factor
        assert theirs["provenance"]["kernel_gauge"] == "he"
        assert theirs["provenance"]["target_channels"] == [3, 9]
        # one factor per layer: the same kernels (same filter, split) times the factor
        torch.testing.assert_close(theirs["train"], ours["train"] * factor)
        assert report["layers"][layer]["kept_kernels"]["std"] == pytest.approx(
            both.std().item(), rel=1e-5
        )
    # the gauge acts on the written kernels only: the trained nets are reused as they are
    assert all(net["resumed"] is False for net in report["nets"])
    assert main(args) == 0
    assert all(
        n["resumed"] for n in json.loads((gauged / "source_report.json").read_text())["nets"]
    )


def test_he_scale_is_the_he_standard_deviation():
    assert dwp_source.he_scale(7, 1) == pytest.approx((2 / 49) ** 0.5)  # 0.202, the paper's conv1
    assert dwp_source.he_scale(5, 32) == pytest.approx(0.05)


def test_a_net_of_the_old_format_is_refused_naming_the_file(tmp_path, data_dir, capsys):
    out = tmp_path / "source"
    args = _tiny(out, data_dir)
    assert main(args) == 0
    path = out / "source_nets" / "net_seed0.pt"
    state = load_checkpoint(path)
    # the job's own format before the one Checkpoint
    old = {"format": "pyro_dwp.dwp_source_net", "seed": 0, "state_dict": state["state_dict"]}
    torch.save(old, path)
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{path} is not a pyro_dwp training checkpoint" in err
    assert "delete it to train that net again" in err


def test_an_interrupted_net_trains_on_as_if_uninterrupted(tmp_path, data_dir, monkeypatch, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    argv = [*_tiny(whole, data_dir), "--augment"]
    assert main(argv) == 0
    steps = 0

    class Interrupted(dwp_source.GradientSteps):
        def step(self, loss: torch.Tensor) -> None:
            nonlocal steps
            steps += 1
            if steps > 5:  # in the 3rd of 4 epochs (2 steps each) of the first net
                raise RuntimeError("interrupted")
            super().step(loss)

    monkeypatch.setattr(dwp_source, "GradientSteps", Interrupted)
    argv = [*_tiny(cut, data_dir), "--augment"]
    assert main(argv) == 1
    assert "interrupted" in capsys.readouterr().err
    state = load_checkpoint(cut / "source_nets" / "net_seed0.pt")
    assert state["epoch"] == 2 and state["test_accuracy"] is None
    monkeypatch.undo()
    assert main(argv) == 0
    report = json.loads((cut / "source_report.json").read_text())
    assert [n["resumed"] for n in report["nets"]] == [True, False]
    expected = json.loads((whole / "source_report.json").read_text())
    for theirs, ours in zip(expected["nets"], report["nets"], strict=True):
        assert ours["train_loss"] == theirs["train_loss"]
        assert ours["test_accuracy"] == theirs["test_accuracy"]
    for layer in ("conv1", "conv2"):
        a = torch.load(whole / f"kernels_{layer}.pt", weights_only=True)
        b = torch.load(cut / f"kernels_{layer}.pt", weights_only=True)
        assert torch.equal(a["train"], b["train"]) and torch.equal(a["test"], b["test"])


def test_augment_is_a_training_setting(tmp_path, data_dir, capsys):
    out = tmp_path / "source"
    args = _tiny(out, data_dir)
    assert main(args) == 0
    plain = torch.load(out / "kernels_conv1.pt", weights_only=True)["train"]
    capsys.readouterr()
    assert main([*args, "--augment"]) == 1
    assert "augment: False -> True" in capsys.readouterr().err
    augmented = tmp_path / "augmented"
    assert main([*_tiny(augmented, data_dir), "--augment"]) == 0
    report = json.loads((augmented / "source_report.json").read_text())
    assert all(net["test_accuracy"] > CHANCE_ACCURACY for net in report["nets"])
    assert not torch.equal(
        torch.load(augmented / "kernels_conv1.pt", weights_only=True)["train"], plain
    )


def test_random_affine_identity_shift_determinism_and_bad_input():
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    same = random_affine(images, generator, degrees=0, scale=0, shift=0)
    torch.testing.assert_close(same, images)
    a = random_affine(images, torch.Generator().manual_seed(2))
    b = random_affine(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and a.shape == images.shape and not torch.equal(a, images)
    # a bar moved by at most `shift` pixels (rows) when only shifts are drawn
    bar = torch.zeros(200, 1, 28, 28)
    bar[:, :, 14, :] = 1
    moved = random_affine(bar, torch.Generator().manual_seed(3), degrees=0, scale=0, shift=2)
    rows = (moved[:, 0, :, 10:18].sum(-1) * torch.arange(28.0)).sum(-1) / moved[:, 0, :, 10:18].sum(
        (-1, -2)
    )
    assert (rows - 14).abs().max() <= 2 + 1e-4 and (rows - 14).abs().max() > 1
    with pytest.raises(ValueError, match="square images"):
        random_affine(torch.zeros(2, 28, 28), generator)
    with pytest.raises(ValueError, match="scale"):
        random_affine(images, generator, scale=1.5)


def test_he_gauge_of_dead_kernels_and_bad_target_channels_are_errors(tmp_path, data_dir, capsys):
    args = argparse.Namespace(kernel_gauge="he", max_kernels=100, seed=0, test_fraction=0.2)
    dead, floor = [torch.zeros(4, 1, 7, 7)], {"keep_fraction": 0.5}
    with pytest.raises(ValueError, match="conv1: the kept kernels are all zero"):
        dwp_source._write_kernel_set(tmp_path, "conv1", 7, dead, {}, floor, 1, args)
    assert not (tmp_path / "kernels_conv1.pt").exists()
    assert main([*_tiny(tmp_path / "s", data_dir), "--target-channels", "0", "8"]) == 1
    assert "--target-channels must be >= 1" in capsys.readouterr().err

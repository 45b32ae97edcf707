"""``pyro-dwp dwp-classify``: a tiny run writes its files, resumes by cell, rejects bad input."""

import argparse
import json
import math
import signal

import pyro
import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data, signal_after_epoch

from pyro_dwp.cli import main
from pyro_dwp.data import load_mnist
from pyro_dwp.experiments import classification, dwp_classify
from pyro_dwp.models.kernel_vae import KernelVAE, save_kernel_vae

needs_data = needs_shared_data("mnist")


def _args(out, vae_dir, *extra):
    return [
        "dwp-classify",
        "--out", str(out),
        "--vae-dir", str(vae_dir),
        "--data-dir", str(SHARED_DATA),
        "--n-train", "20",
        "--seeds", "0",
        "--epochs", "1",
        "--n-test", "200",
        "--channels", "2", "3",
        "--test-samples", "2",
        "--priors", "dwp", "log-uniform",
        "--no-progress",
        *extra,
    ]  # fmt: skip


@needs_data
@pytest.mark.slow
def test_tiny_run_writes_its_files_and_resumes(tmp_path, vae_dir, capsys):
    out = tmp_path / "out"
    assert main(_args(out, vae_dir, "--gap-samples", "4")) == 0
    for name in ("dwp_classify.json", "dwp_classify.md", "figure2.png"):
        assert (out / name).is_file()
    results = json.loads((out / "dwp_classify.json").read_text())
    cells = {c["prior"]: c for c in results["cells"]}
    assert sorted(cells) == ["dwp", "log-uniform"]
    for c in cells.values():
        assert 0 <= c["accuracy"] <= 1 and c["nll"] > 0 and c["n"] == 20
        for site in ("conv1.weight", "conv2.weight"):
            stats = c["kernels"][site]
            assert 0 <= stats["similarity"] <= 1 and stats["mean_norm"] > 0
            assert stats["mean_sigma"] > 0
    assert cells["dwp"]["gap"]["gap"] >= 0 and "gap" not in cells["log-uniform"]
    assert "| dwp | " in (out / "dwp_classify.md").read_text()
    assert not list((out / "cells").iterdir())  # checkpoints of finished cells are removed
    # A rerun finds every cell done and only rewrites the summaries.
    capsys.readouterr()
    assert main(_args(out, vae_dir, "--gap-samples", "4")) == 0
    assert json.loads((out / "dwp_classify.json").read_text()) == results
    # Other settings in the same folder are refused.
    assert main(_args(out, vae_dir, "--gap-samples", "4", "--epochs", "2")) == 1
    err = capsys.readouterr().err
    assert "other settings (old -> new: epochs: " in err and "-> 2)" in err  # names what changed


@needs_data
def test_cells_train_on_the_compiled_engine(tmp_path, vae_dir, one_thread):
    # Two epochs of one batch: the second step of each cell is compiled (a fallback would warn,
    # and warnings are errors here): the auxiliary bound, the normal prior, and the log-uniform
    # prior's truncated-alpha guide under TraceMeanField_ELBO.
    priors = ["--priors", "dwp", "normal", "log-uniform"]
    argv = _args(tmp_path / "out", vae_dir, *priors, "--epochs", "2", "--engine", "compiled")
    assert main(argv) == 0
    cells = json.loads((tmp_path / "out" / "dwp_classify.json").read_text())["cells"]
    assert sorted(c["prior"] for c in cells) == ["dwp", "log-uniform", "normal"]


@needs_data
def test_the_papers_deterministic_net_from_dwp_samples(tmp_path, vae_dir, one_thread):
    """``--priors deterministic-l2 --guide-init dwp``: the fourth row of Figure 2, a point mass
    (no scale), started from the prior's samples, on the compiled engine (two epochs of one
    batch: the second step is compiled; a fallback would warn, and warnings are errors)."""
    argv = _args(tmp_path / "out", vae_dir, "--priors", "deterministic-l2", "--guide-init", "dwp")
    assert main([*argv, "--epochs", "2", "--engine", "compiled"]) == 0
    (cell,) = json.loads((tmp_path / "out" / "dwp_classify.json").read_text())["cells"]
    assert cell["prior"] == "deterministic-l2" and 0 <= cell["accuracy"] <= 1
    assert all(k["mean_sigma"] == 0 and k["mean_norm"] > 0 for k in cell["kernels"].values())
    table = (tmp_path / "out" / "dwp_classify.md").read_text()
    assert "| deterministic + L2 | " in table


def test_bad_input_is_reported(tmp_path, vae_dir, capsys):
    assert main(_args(tmp_path / "o", tmp_path / "missing")) == 1
    err = capsys.readouterr().err
    assert "kernel VAE file" in err and "dwp-prior" in err  # the message says how to make one
    save_kernel_vae(vae_dir / "vae_conv2.pt", KernelVAE(7, 2, 4))
    assert main(_args(tmp_path / "o", vae_dir)) == 1
    assert "models 7x7 kernels but conv2.weight has 5x5" in capsys.readouterr().err
    # a cell named twice would be run twice and report a spread of zero
    for flag, values in (("--seeds", ["0", "0"]), ("--priors", ["normal", "normal"])):
        assert main(_args(tmp_path / "o", vae_dir, flag, *values)) == 1
        assert f"{flag} names a value twice" in capsys.readouterr().err


@needs_data
@pytest.mark.slow
def test_dwp_layers_puts_the_deep_weight_prior_on_those_layers_only(tmp_path, vae_dir):
    out = tmp_path / "out"
    argv = _args(out, vae_dir, "--gap-samples", "4", "--priors", "dwp", "--dwp-layers", "conv1")
    assert main(argv) == 0
    (cell,) = json.loads((out / "dwp_classify.json").read_text())["cells"]
    assert cell["gap"]["kernels"] == 2 * 1  # conv1's (2, 1) kernels; conv2 keeps N(0, 1)


@needs_data
@pytest.mark.slow
def test_replaced_vaes_are_not_mixed_with_old_cells(tmp_path, vae_dir, capsys, one_thread):
    out = tmp_path / "out"
    assert main(_args(out, vae_dir, "--priors", "dwp")) == 0
    config = json.loads((out / "dwp_classify.json").read_text())["config"]
    assert set(config["vae_checksums"]) == {"vae_conv1.pt", "vae_conv2.pt"}
    save_kernel_vae(vae_dir / "vae_conv1.pt", KernelVAE(7, 2, 4))  # another VAE, same path
    capsys.readouterr()
    assert main(_args(out, vae_dir, "--priors", "dwp")) == 1
    assert "other settings" in capsys.readouterr().err


@needs_data
@pytest.mark.parametrize("option", [("--epochs", "2"), ("--lr", "0.01")])
def test_cell_checkpoint_of_other_epochs_or_lr_is_refused(
    tmp_path, vae_dir, capsys, monkeypatch, one_thread, option
):
    from pyro_dwp.experiments import dwp_classify

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # killed after training, before the cell is recorded

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(dwp_classify, "ensemble_log_probs", interrupted)
        with pytest.raises(KeyboardInterrupt):
            main(_args(out, vae_dir, "--priors", "normal"))
    assert list((out / "cells").glob("normal_*.pt"))
    capsys.readouterr()
    assert main(_args(out, vae_dir, "--priors", "normal", *option)) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and option[0].lstrip("-") in err


@needs_data
def test_a_sigterm_stops_the_job_and_the_same_command_resumes_it(
    tmp_path, vae_dir, capsys, one_thread
):
    """SIGTERM in the second of 3 epochs (``timeout``, a lent machine's limit): the command
    exits with 143 naming the cell's checkpoint, written after that epoch; the same command
    then finishes the cell with the uninterrupted run's accuracy and NLL."""
    args = ["--priors", "normal", "--epochs", "3"]
    assert main(_args(tmp_path / "whole", vae_dir, *args)) == 0
    whole = json.loads((tmp_path / "whole" / "dwp_classify.json").read_text())["cells"]
    out = tmp_path / "out"
    capsys.readouterr()
    with signal_after_epoch(signal.SIGTERM, 1):
        assert main(_args(out, vae_dir, *args)) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    (checkpoint,) = (out / "cells").glob("normal_*.pt")
    assert (
        f"stopped: SIGTERM: training stopped after epoch 2 of 3, the checkpoint {checkpoint} "
        "written there; the same command goes on from it"
    ) in err
    assert not (out / "dwp_classify.json").exists()
    assert main(_args(out, vae_dir, *args)) == 0
    resumed = json.loads((out / "dwp_classify.json").read_text())["cells"]
    for key in ("accuracy", "nll", "final_loss"):
        assert resumed[0][key] == whole[0][key], key


@needs_data
def test_table_heading_names_the_actual_ensemble_size(tmp_path, vae_dir, one_thread):
    out = tmp_path / "out"
    assert main(_args(out, vae_dir, "--priors", "normal")) == 0  # --test-samples 2
    table = (out / "dwp_classify.md").read_text()
    assert "(2-sample ensemble;" in table and "10-sample" not in table


@needs_data
def test_the_shipped_prior_is_rescaled_to_the_nets_fan_ins(tmp_path, capsys):
    """``--prior-scale fan-in`` (default): the shipped kernels, at the He scale of the 32 /
    128-channel net, move to this net's (conv2 fan-in 2 * 25: by sqrt(800 / 50) = 4; conv1's
    fan-in is 49 in both); ``as-trained`` keeps them; a run written before the option existed
    resumes only as ``as-trained``."""
    runs = {}
    for scale in ("fan-in", "as-trained"):
        out = tmp_path / scale
        argv = _args(out, "unused", "--priors", "dwp", "--prior-scale", scale)
        argv[argv.index("--vae-dir") : argv.index("--vae-dir") + 2] = ["--pretrained", "notmnist"]
        assert main(argv) == 0
        runs[scale] = (out, argv, json.loads((out / "dwp_classify.json").read_text()))
    assert runs["fan-in"][2]["kernel_scale"] == pytest.approx(
        {"conv1.weight": 1.0, "conv2.weight": 4.0}
    )
    assert runs["as-trained"][2]["kernel_scale"] == {"conv1.weight": 1.0, "conv2.weight": 1.0}
    out, argv, results = runs["as-trained"]
    del results["config"]["prior_scale"]  # as written before the option
    (out / "dwp_classify.json").write_text(json.dumps(results))
    assert main(argv) == 0  # every cell found done
    capsys.readouterr()
    fan_in = [a if a != "as-trained" else "fan-in" for a in argv]
    assert main(fan_in) == 1
    assert "other settings" in capsys.readouterr().err


@needs_data
def test_a_cell_that_did_not_learn_is_reported(tmp_path, vae_dir, monkeypatch):
    # Every cell counts as at chance level: the warning reaches the console and the cell's record.
    monkeypatch.setattr(classification, "CHANCE_MARGIN", 1.0)
    monkeypatch.setattr(classification, "MIN_STEPS_TO_LEARN", 1)
    argv = _args(tmp_path / "out", vae_dir, "--priors", "normal")
    with pytest.warns(RuntimeWarning, match="the normal cell N=20 seed 0 .* did not learn"):
        assert main(argv) == 0
    (cell,) = json.loads((tmp_path / "out" / "dwp_classify.json").read_text())["cells"]
    (message,) = cell["warnings"]
    assert "after 1 steps" in message and "chance level for 10 classes is 90%" in message


@needs_data
@pytest.mark.parametrize("net_init", ["torch", "xavier"])
def test_net_init_sets_the_starting_weights(net_init):
    """``--net-init``: the guide means (``--guide-init module``) and the point-estimate classifier
    start from PyTorch's Kaiming-uniform draw (std ``1 / sqrt(3 fan_in)``) or Xavier normal
    (std ``sqrt(2 / (fan_in + fan_out))``), per layer."""
    p = argparse.ArgumentParser()
    dwp_classify.add_training_arguments(p)
    args = p.parse_args(["--channels", "16", "32", "--net-init", net_init])
    args.data_dir, args.device, args.reverse, args.log_uniform_guide = (
        SHARED_DATA, "cpu", "frozen", "additive",
    )  # fmt: skip
    setup, x, y = dwp_classify.build_cell(args, "normal", 20, 0, None)
    setup.guide(x[:2], y[:2])
    store = pyro.get_param_store()
    weights = {  # name: (tensor, fan_in, fan_out)
        "conv2": (store["LogVarianceNormal.locs.conv2.weight"], 16 * 25, 32 * 25),
        "fc": (store["fc.weight"], 32 * 9, 10),
    }
    for name, (w, fan_in, fan_out) in weights.items():
        expected = (
            math.sqrt(2 / (fan_in + fan_out)) if net_init == "xavier" else 1 / math.sqrt(3 * fan_in)
        )
        # 12,800 and 2,880 draws: the sample std is within 2% / 4% of its law's at 3 sigma
        assert float(w.detach().std()) == pytest.approx(expected, rel=0.04), name
        if net_init == "torch":
            assert float(w.detach().abs().max()) <= 1 / math.sqrt(fan_in)  # uniform's bound


@pytest.mark.parametrize(
    ("key", "before", "other"),
    [("net_init", "torch", "xavier"), ("split", "balanced", "paper"), ("kl_weight", 1.0, 0.5)],
)
def test_results_from_before_an_option_resume_only_as_its_old_value(tmp_path, key, before, other):
    """A results file written before ``--net-init`` / ``--split`` / ``--kl-weight`` existed was
    trained with PyTorch's init / on the balanced subsets / the ELBO: it resumes under that
    value, not another."""
    path = tmp_path / "dwp_classify.json"
    path.write_text(json.dumps({"config": {"epochs": 1}, "cells": []}))
    config = {"epochs": 1, key: before}
    assert dwp_classify.load_results(path, config, {})["config"] == config
    with pytest.raises(ValueError, match=f"{key}: {before!r} -> {other!r}"):
        dwp_classify.load_results(path, {**config, key: other}, {})


@needs_data
def test_kl_weight_scales_the_kl_term_of_a_cell(vae_dir):
    """``--kl-weight 0.5``: the first step (the same draws, before any update) has the same data
    term as the ELBO's and half its KL term, for the deep weight prior and a closed-form one."""
    p = argparse.ArgumentParser()
    dwp_classify.add_training_arguments(p)
    records, vaes = {}, dwp_classify.load_vaes(vae_dir, "cpu")
    for weight in ("1", "0.5"):
        args = p.parse_args(["--channels", "4", "8", "--epochs", "1", "--kl-weight", weight])
        args.data_dir, args.device, args.reverse, args.log_uniform_guide = (
            SHARED_DATA, "cpu", "frozen", "additive",
        )  # fmt: skip
        args.no_progress = True
        for prior in ("normal", "dwp"):
            pyro.clear_param_store()
            setup, x, y = dwp_classify.build_cell(args, prior, 20, 0, vaes)
            (records[prior, weight],) = dwp_classify.train_cell(args, setup, x, y, 0, None)
    for prior in ("normal", "dwp"):
        full, half = records[prior, "1"], records[prior, "0.5"]
        assert half["nll"] == pytest.approx(full["nll"], rel=1e-6), prior
        assert half["kl"] == pytest.approx(0.5 * full["kl"], rel=1e-5), prior


@needs_data
def test_split_paper_trains_on_the_authors_subset():
    """``--split paper``: the cell's N examples are scikit-learn's stratified split of the 60,000
    training images (``random_state`` = the seed), pixels / 255, in dataset order."""
    p = argparse.ArgumentParser()
    dwp_classify.add_training_arguments(p)
    args = p.parse_args(["--channels", "4", "8", "--split", "paper"])
    args.data_dir, args.device, args.reverse, args.log_uniform_guide = (
        SHARED_DATA, "cpu", "frozen", "additive",
    )  # fmt: skip
    _, x, y = dwp_classify.build_cell(args, "normal", 50, 3, None)
    expected_x, expected_y = load_mnist(
        "train+valid", SHARED_DATA, n=50, seed=3, subset="stratified", flatten=False,
        pixel_scale=255.0,
    )  # fmt: skip
    assert torch.equal(x, expected_x) and torch.equal(y, expected_y)
    assert p.parse_args([]).split == "balanced"

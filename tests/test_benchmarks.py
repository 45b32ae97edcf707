"""Every script of ``benchmarks/`` runs from its command line on tiny settings, on CPU.

As Pyro's ``tests/test_examples.py``: :data:`TINY` holds one command line per script, and
:func:`test_every_benchmark_is_listed` fails when a script is added without one, so no benchmark
rots unnoticed. Each script runs in this process through ``runpy`` (its ``__main__`` block and
argument parser included, without the cost of a new interpreter), writing into ``tmp_path``;
the scripts' own outputs are checked in detail by ``test_dwp_init_benchmarks.py``,
``test_benchmark_devices.py`` and ``test_distributed.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import runpy
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import BENCHMARKS, SHARED_DATA, data_args, needs_shared_data, options

from pyro_dwp.cli import main as cli_main
from pyro_dwp.data import load_mnist
from pyro_dwp.experiments.classification import bbb_classifier
from pyro_dwp.experiments.mnist import load_bbb_run
from pyro_dwp.models.kernel_vae import KernelVAE, load_kernel_vae, save_kernel_vae

Argv = Callable[[Path], list[str]]
"""``tmp_path -> command line`` of one script, its outputs under ``tmp_path``."""


def _results(tmp: Path) -> list[str]:
    return options(results_dir=tmp / "results")


def _untrained_prior(tmp: Path) -> Path:
    """A folder ``tmp/prior`` with untrained kernel VAEs of both layers."""
    prior = tmp / "prior"
    prior.mkdir(parents=True)
    save_kernel_vae(prior / "vae_conv1.pt", KernelVAE(7, 2, 4))
    save_kernel_vae(prior / "vae_conv2.pt", KernelVAE(5, 2, 4))
    return prior


def _dwp_mnist(tmp: Path) -> list[str]:
    """The classifier stage only, on untrained kernel VAEs (the source nets and the VAEs are
    the ``dwp-source`` / ``dwp-prior`` jobs, tested on their own)."""
    prior = _untrained_prior(tmp)
    tiny = options(stages="classify", prior_dir=prior, epochs=1, n_train=10, seeds=0, n_test=50)
    tiny += options(test_samples=2, channels=(2, 3))
    return [*tiny, "--device", "cpu", "--work-dir", str(tmp / "work"), *data_args(), *_results(tmp)]


def _dwp_settings(tmp: Path) -> list[str]:
    """A made-up reference grid (lr 1e-3) and one run at lr 5e-4, one cell each."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "reference.json").write_text(json.dumps(_grid([("dwp", 50, 0, 0.8)])))
    run = _grid([("dwp", 50, 0, 0.82)])
    run["lr"] = 5e-4
    (tmp / "run.json").write_text(json.dumps(run))
    argv = options(reference=tmp / "reference.json", runs=tmp / "run.json", key="lr", name="s")
    return [*argv, *_results(tmp)]


def _dwp_prior_screen(tmp: Path, seeds: str = "0", grid_epochs: int = 1) -> list[str]:
    """Untrained kernel VAEs on N = 10 cells, paired with a made-up grid whose accuracies are
    0.5 + seed / 10 (DWP), 0.4 (normal), 0.3 (log-uniform)."""
    tmp.mkdir(parents=True, exist_ok=True)
    grid = tmp / "grid.json"
    rows = [("dwp", 0.5), ("normal", 0.4), ("log-uniform", 0.3)]
    cells = [(p, 10, s, a + s / 10 * (p == "dwp")) for p, a in rows for s in range(3)]
    grid.write_text(
        json.dumps({**_grid(cells, epochs=grid_epochs), "channels": [2, 3], "n_test": 50})
    )
    tiny = options(prior=f"tiny={_untrained_prior(tmp)}", cells=f"10:{seeds}", epochs=1)
    tiny += options(n_test=50, channels=(2, 3), grid=grid, work_dir=tmp / "work", device="cpu")
    return [*tiny, *data_args(), *_results(tmp)]


def _dwp_markov_chain(tmp: Path) -> list[str]:
    """Random kernel sets in place of a ``dwp-source`` folder."""
    for layer, k in (("conv1", 7), ("conv2", 5)):
        state = {"train": torch.randn(20, k, k) * 0.1, "test": torch.randn(5, k, k) * 0.1}
        torch.save({**state, "layer": layer, "kernel_size": k}, tmp / f"kernels_{layer}.pt")
    tiny = options(steps=(0, 1), vae_steps=2, n_train=20, seeds=0, epochs=1, channels=(2, 4))
    tiny += options(n_test=50, test_samples=1, gap_samples=4, threads=1)
    return [*tiny, "--kernels", str(tmp), "--out", str(tmp / "results"), *data_args()]


def _lockstep_checkpoint(tmp: Path) -> Path:
    """A tiny ``pyro-dwp mushroom --engine lockstep`` run's checkpoint (the real data)."""
    argv = ["mushroom", "--engine", "lockstep", "--agents", "bbb", "greedy", "--steps", "3"]
    argv += ["--bbb-variant", "slow", "lr=1e-4"]
    argv += ["--hidden", "8", "--num-batches", "1", "--no-progress", "--out", str(tmp / "run")]
    assert cli_main([*argv, *data_args()]) == 0
    return tmp / "run" / "checkpoint.pt"


def _bbb_run(tmp: Path) -> Path:
    """A tiny ``pyro-dwp mnist --method bbb --keep-best`` run (the real data)."""
    argv = ["mnist", "--method", "bbb", *options(hidden=8, n_train=200, n_test=100, epochs=2)]
    argv += ["--keep-best", "--no-progress", "--out", str(tmp / "bbb")]
    assert cli_main([*argv, *data_args()]) == 0
    return tmp / "bbb"


def _dwp_code_prior(tmp: Path) -> list[str]:
    _dwp_markov_chain(tmp)  # random kernel sets in the dwp-source layout
    tiny = options(kernels=tmp, layers=("conv1", "conv2"), components=(3, 5), held_out=4)
    tiny += options(iwae_samples=2, pull_kernels=4, steps=2, threads=1)
    return [*tiny, *_results(tmp)]


TINY: dict[str, Argv] = {
    "bbb_ensemble_size.py": lambda tmp: [
        *options(run_dirs=_bbb_run(tmp), sizes=(1, 3), draw_seeds=2),
        *data_args(),
        *_results(tmp),
    ],
    "bbb_regression.py": lambda tmp: [
        *options(seeds=0, jobs=1, runs_dir=tmp / "runs"),
        *_results(tmp),
        "--",
        *options(n_train=40, hidden=8, epochs=3, batch_size=20, predictive_samples=20),
    ],
    "bbb_mnist.py": lambda tmp: [
        *options(epochs=1, hidden=8, n_train=200, n_test=100, test_samples=2, fractions=0.5),
        *options(runs_dir=tmp / "runs", no_progress=True),
        *data_args(),
        *_results(tmp),
    ],
    "ddp_scaling.py": lambda tmp: [
        *options(devices=1, epochs=1, hidden=8, n_train=200, n_test=100, test_samples=2),
        *options(runs_dir=tmp / "runs"),
        *data_args(),
        *_results(tmp),
    ],
    "dwp_convergence.py": lambda tmp: [
        *options(n_train=100, n_test=100, steps=4, eval_at=2, seeds=0, batch_size=16, threads=1),
        *data_args(),
        *_results(tmp),
    ],
    "dwp_code_prior.py": _dwp_code_prior,
    "dwp_markov_chain.py": _dwp_markov_chain,
    "dwp_mnist.py": _dwp_mnist,
    "dwp_prior_screen.py": _dwp_prior_screen,
    "dwp_settings.py": _dwp_settings,
    "dwp_prior_pull.py": lambda tmp: [
        *options(prior="shipped=pretrained:notmnist", kernels=4, steps=2, every=1, threads=1),
        *_results(tmp),
    ],
    "dwp_quick_preset.py": lambda tmp: [
        *options(device="cpu", seeds=0, n_test=50, workers=2, work_dir=tmp / "work"),
        *("--variant", "2", "3", "1", "0.001"),
        *data_args(),
        *_results(tmp),
    ],
    "dwp_random_features.py": lambda tmp: [
        *options(n_train=100, n_test=100, widths="1/16", seeds=0, epochs=1, threads=1),
        *data_args(),
        *_results(tmp),
    ],
    "dwp_step_time.py": lambda tmp: [
        *options(threads=1, rounds=1, steps=1, batch=4, channels=(2, 2)),
        *_results(tmp),
    ],
    "mushroom.py": lambda tmp: [
        *options(seeds=0, steps=2, workers=1, work_dir=tmp / "work", no_progress=True),
        *options(scale_lr_factor=0.5),
        *data_args(),
        *_results(tmp),
    ],
    "mushroom_offline.py": lambda tmp: [
        *options(checkpoint=_lockstep_checkpoint(tmp), source="bbb:0", steps=2, every=1),
        *options(noise=(1.0, 3.0), draws=2),
        "--learn-noise",
        *data_args(),
        *_results(tmp),
    ],
    "mushroom_forgetting.py": lambda tmp: [
        *options(checkpoint=_lockstep_checkpoint(tmp), members=("bbb:0", "greedy:0")),
        *options(steps=2, every=1, draws=2, threads=1),
        *data_args(),
        *_results(tmp),
    ],
    "mushroom_posterior.py": lambda tmp: [
        *options(checkpoint=_lockstep_checkpoint(tmp), draws=2),
        *data_args(),
        *_results(tmp),
    ],
    "step_time.py": lambda tmp: [
        *options(threads=1, hidden=8, batch=8, rounds=1, steps=1, warmup=1),
        *_results(tmp),
    ],
}
"""The tiny command line of each benchmark script."""

HELPERS = {"devices.py"}
"""Modules of ``benchmarks/`` that the scripts import; not scripts themselves."""

NEEDS = {
    "bbb_ensemble_size.py": ("mnist", "notmnist"),
    "bbb_mnist.py": ("mnist", "notmnist"),
    "ddp_scaling.py": ("mnist", "notmnist"),
    "dwp_convergence.py": ("mnist",),
    "dwp_markov_chain.py": ("mnist",),
    "dwp_mnist.py": ("mnist",),
    "dwp_prior_screen.py": ("mnist",),
    "dwp_quick_preset.py": ("mnist",),
    "dwp_random_features.py": ("mnist",),
    "mushroom.py": ("mushroom",),
    "mushroom_forgetting.py": ("mushroom",),
    "mushroom_offline.py": ("mushroom",),
    "mushroom_posterior.py": ("mushroom",),
}
"""The folders of ``../shared/data`` each script reads."""


def test_every_benchmark_is_listed():
    scripts = {p.name for p in BENCHMARKS.glob("*.py")} - HELPERS
    assert scripts == set(TINY), (
        f"benchmarks without a tiny command line in TINY: {sorted(scripts - set(TINY))}; "
        f"listed but gone: {sorted(set(TINY) - scripts)}"
    )
    assert set(NEEDS) <= set(TINY)


@pytest.fixture
def keep_threads():
    """The scripts set torch's thread count (``--threads``): restore it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "script", [pytest.param(s, marks=needs_shared_data(*NEEDS.get(s, ()))) for s in sorted(TINY)]
)
def test_benchmark_runs_on_tiny_settings(script, tmp_path, monkeypatch, keep_threads):
    argv = TINY[script](tmp_path)
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *argv])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    written = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert any(name.endswith(".json") for name in written), written
    assert any(name.endswith(".md") for name in written), written


def test_dwp_mnist_prior_stage_takes_one_value_per_layer(tmp_path, keep_threads):
    """``--prior-z-dim 2 3 --prior-decoder-mean direct polar``: conv1 and conv2 each get theirs
    (the shipped prior's recipe has a direct conv1 VAE and a polar conv2 VAE)."""
    source = tmp_path / "work" / "source"
    source.mkdir(parents=True)
    _dwp_markov_chain(source)  # random kernel sets in the dwp-source layout
    sys.path.insert(0, str(BENCHMARKS))
    import dwp_mnist

    argv = ["--stages", "prior", "--device", "cpu", "--work-dir", str(tmp_path / "work")]
    argv += options(prior_steps=2, prior_z_dim=(2, 3), prior_decoder_mean=("direct", "polar"))
    argv += options(prior_code_prior_components=(2, 3))
    dwp_mnist.main(dwp_mnist.parse_args(argv))
    for layer, z_dim, mean, c in (("conv1", 2, "direct", 2), ("conv2", 3, "polar", 3)):
        vae, _ = load_kernel_vae(tmp_path / "work" / "prior" / f"vae_{layer}.pt")
        assert (vae.z_dim, vae.decoder_mean, vae.code_prior.components) == (z_dim, mean, c)
    with pytest.raises(SystemExit, match="one value .both layers. or two"):
        dwp_mnist.main(dwp_mnist.parse_args([*argv[:6], *options(prior_z_dim=(2, 3, 4))]))


@needs_shared_data("mnist")
def test_dwp_mnist_deterministic_adds_the_fourth_row(tmp_path, keep_threads):
    """``--deterministic``: Figure 2's deterministic net from DWP samples beside the priors, in
    the grid's json (its key in ``ours``) and table, with the paper's row."""
    sys.path.insert(0, str(BENCHMARKS))
    import dwp_mnist

    result = dwp_mnist.main(dwp_mnist.parse_args([*_dwp_mnist(tmp_path), "--deterministic"]))
    assert {"dwp N=10", "normal N=10", "deterministic-l2 N=10"} <= set(result["ours"])
    prior = tmp_path / "prior"  # the grid records which prior it ran, by its files' SHA-256
    assert result["prior_sha256"] == {
        name: hashlib.sha256((prior / name).read_bytes()).hexdigest()
        for name in ("vae_conv1.pt", "vae_conv2.pt")
    }
    table = (tmp_path / "results" / "dwp_mnist.md").read_text()
    assert table.count("| deterministic + L2 |") == 3  # the paper's row, ours: accuracy, NLL


def test_dwp_mnist_markdown_reads_the_paper_row_from_json():
    """The paper's row keyed by strings (as read back from JSON) is printed, not as NaN."""
    sys.path.insert(0, str(BENCHMARKS))
    import dwp_mnist

    result = {
        "command": "c", "date": "d", "gpus": 1, "device": "cpu", "epochs": 1, "evaluation": "e",
        "dwp_init": "dwp", "reverse": "trainable", "seconds": {},
        "paper": {"dwp": {"50": 0.8, "100": 0.867}},
    }  # fmt: skip
    summary = {("dwp", 50): {"accuracy": [0.7, 0.0, 1], "nll": [1.0, 0.0, 1]}}
    text = dwp_mnist._markdown(result, summary)
    assert "| dwp | 0.800 |" in text and "nan" not in text.split("## Ours")[0]


def test_dwp_mnist_passes_net_init_lr_and_kl_weight_to_every_cell():
    """``--net-init xavier``, ``--lr`` and ``--kl-weight`` reach dwp-classify's command line
    (parsed by the job's own options) and the table's header; left out, the job's defaults hold
    and the header says so, for a grid written before the options too."""
    sys.path.insert(0, str(BENCHMARKS))
    import dwp_mnist

    from pyro_dwp.experiments import dwp_classify

    job = argparse.ArgumentParser()
    dwp_classify.add_training_arguments(job)
    for given, expected in (
        (["--net-init", "xavier", "--lr", "0.002", "--kl-weight", "0.5"], ("xavier", 0.002, 0.5)),
        ([], ("torch", 0.001, 1.0)),
    ):
        argv = dwp_mnist._classify_options(dwp_mnist.parse_args(given))
        parsed = job.parse_args([str(a) for a in argv])
        assert (parsed.net_init, parsed.lr, parsed.kl_weight) == expected
    result = _grid([("dwp", 50, 0, 0.7)])
    summary = {("dwp", 50): {"accuracy": [0.7, 0.0, 1], "nll": [1.0, 0.0, 1]}}
    assert "network's initialisation (`torch`)" in dwp_mnist._markdown(result, summary)
    assert "; device: cpu; " in dwp_mnist._markdown(result, summary)  # no "0 x cpu"
    result["net_init"] = "xavier"
    assert "network's initialisation (`xavier`)" in dwp_mnist._markdown(result, summary)
    assert "initial learning rate 0.001; KL weight 1;" in dwp_mnist._markdown(result, summary)


def _grid(cells: list[tuple[str, int, int, float]], epochs: int = 4000) -> dict:
    """A dwp_mnist.json of ``(prior, N, seed, accuracy)`` cells (NLL 1 - accuracy)."""
    return {
        "command": "c", "date": "d", "device": "cpu", "gpus": 0, "epochs": epochs,
        "evaluation": "e", "dwp_init": "dwp", "reverse": "trainable", "seconds": {"classify": 1},
        "paper": {"dwp": {"50": 0.8}},
        "cells": [
            {"prior": p, "n": n, "seed": s, "accuracy": a, "nll": 1 - a} for p, n, s, a in cells
        ],
    }  # fmt: skip


def test_dwp_mnist_merge_adds_cells_and_refuses_a_mismatch(tmp_path):
    """``--merge``: a grid run in parts (another N, more seeds) is summarised as one; a part of
    another protocol or one that repeats a cell is refused by name."""
    sys.path.insert(0, str(BENCHMARKS))
    import dwp_mnist

    (tmp_path / "dwp_mnist.json").write_text(json.dumps(_grid([("dwp", 50, 0, 0.8)])))
    part = tmp_path / "part.json"
    part.write_text(json.dumps(_grid([("dwp", 50, 1, 0.7), ("dwp", 500, 0, 0.9)])))
    result = dwp_mnist.merge(tmp_path, [part])
    assert result["ours"]["dwp N=50"]["accuracy"] == pytest.approx([0.75, 0.0707107, 2])
    assert result["ours"]["dwp N=500"]["accuracy"] == pytest.approx([0.9, 0.0, 1])
    assert result["commands"] == ["c", "c (d, cpu)"]
    assert "| dwp | 0.750 ± 0.071 (2) | 0.900 (1 seed) |" in (
        (tmp_path / "dwp_mnist.md").read_text()
    )
    assert (tmp_path / "dwp_mnist_figure2.png").exists()
    with pytest.raises(SystemExit, match=r"cell \(prior, N, seed\) \('dwp', 50, 1\) is already"):
        dwp_mnist.merge(tmp_path, [part])
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_grid([("dwp", 100, 0, 0.8)], epochs=10_000)))
    with pytest.raises(SystemExit, match="epochs 10000, but the grid's is 4000"):
        dwp_mnist.merge(tmp_path, [other])
    paper = _grid([("dwp", 100, 0, 0.8)])
    paper["split"] = "paper"  # the grid, written before --split, is on the balanced subsets
    other.write_text(json.dumps(paper))
    with pytest.raises(SystemExit, match="split 'paper', but the grid's is 'balanced'"):
        dwp_mnist.merge(tmp_path, [other])
    for key, value, grid_value in (
        ("net_init", "xavier", "torch"),
        ("lr", 0.002, 0.001),
        ("reverse", "frozen", "trainable"),
    ):
        changed = _grid([("dwp", 100, 0, 0.8)])
        changed[key] = value  # the grid has no net_init / lr / kl_weight: older
        other.write_text(json.dumps(changed))
        with pytest.raises(SystemExit, match=f"{key} {value!r}, but the grid's is {grid_value!r}"):
            dwp_mnist.merge(tmp_path, [other])
    # the prior's files: compared where both record them
    grid = json.loads((tmp_path / "dwp_mnist.json").read_text())
    grid["prior_sha256"] = {"vae_conv1.pt": "a", "vae_conv2.pt": "b"}
    (tmp_path / "dwp_mnist.json").write_text(json.dumps(grid))
    changed = _grid([("dwp", 100, 0, 0.8)])
    changed["prior_sha256"] = {"vae_conv1.pt": "c", "vae_conv2.pt": "b"}
    other.write_text(json.dumps(changed))
    with pytest.raises(SystemExit, match="trained with another prior"):
        dwp_mnist.merge(tmp_path, [other])
    del changed["prior_sha256"]  # written before the key: not compared
    other.write_text(json.dumps(changed))
    assert dwp_mnist.merge(tmp_path, [other])["prior_sha256"]["vae_conv1.pt"] == "a"


def test_dwp_settings_pairs_every_prior_by_seed_and_refuses_another_protocol(tmp_path):
    """``dwp_settings.sweep``: per (value, N, prior) the mean over the run's seeds, the paired
    difference to the reference on the same seeds (points, standard error as
    ``stdev / sqrt(n)``), the seeds higher; the reference's row on the runs' seeds only; a run
    under another protocol, with the reference's value, a cell twice or none shared: refused."""
    sys.path.insert(0, str(BENCHMARKS))
    import dwp_settings

    ref = _grid([(p, 200, s, a) for p, a0 in (("dwp", 0.90), ("normal", 0.87)) for s, a in
                 enumerate((a0, a0 + 0.01, a0 - 0.01, a0 + 0.02))])  # fmt: skip
    low = _grid([("dwp", 200, 0, 0.91), ("dwp", 200, 1, 0.91), ("normal", 200, 0, 0.86)])
    low["lr"] = 5e-4
    more = _grid([("dwp", 200, 2, 0.92), ("dwp", 200, 9, 0.5)])  # seed 9: not in the reference
    more["lr"] = 5e-4
    rows = dwp_settings.sweep(ref, [("low", low), ("more", more)], "lr")
    by = {(r["value"], r["prior"]): r for r in rows}
    dwp = by[5e-4, "dwp"]
    assert dwp["seeds"] == [0, 1, 2]
    assert dwp["accuracy"] == pytest.approx([0.9133333, 0.0057735, 3])
    differences = [1.0, 0.0, 3.0]  # points: .91 - .90, .91 - .91, .92 - .89
    assert dwp["minus_reference"] == pytest.approx(sum(differences) / 3)
    assert dwp["se"] == pytest.approx(statistics.stdev(differences) / 3**0.5)
    assert dwp["higher"] == 2 and dwp["reference_accuracy"] == pytest.approx(0.90)
    assert by[5e-4, "normal"]["se"] is None and by[5e-4, "normal"]["higher"] == 0
    # the reference's own rows: the seeds the runs have (0-2 for dwp and normal), not seed 3
    assert by[1e-3, "dwp"]["seeds"] == [0, 1, 2] and by[1e-3, "normal"]["seeds"] == [0, 1, 2]
    assert by[1e-3, "dwp"]["minus_reference"] == 0.0
    assert [r["value"] for r in rows] == [5e-4, 5e-4, 1e-3, 1e-3]

    other = dict(low, epochs=10_000)
    with pytest.raises(SystemExit, match="other: epochs 10000, but the grid's is 4000"):
        dwp_settings.sweep(ref, [("other", other)], "lr")
    with pytest.raises(SystemExit, match="same: lr 0.001 is the reference's own"):
        dwp_settings.sweep(ref, [("same", dict(low, lr=1e-3))], "lr")
    with pytest.raises(SystemExit, match=r"again: cell \(prior, N, seed\) \('dwp', 200, 0\)"):
        dwp_settings.sweep(ref, [("low", low), ("again", low)], "lr")
    with pytest.raises(SystemExit, match="apart: no .* cell that the reference also has"):
        dwp_settings.sweep(ref, [("apart", dict(low, cells=more["cells"][1:]))], "lr")
    with pytest.raises(SystemExit, match="--key 'seed' is not a protocol key"):
        dwp_settings.sweep(ref, [("low", low)], "seed")
    changed = dict(low, prior_sha256={"vae_conv1.pt": "a"})
    with pytest.raises(SystemExit, match="trained with another prior"):
        dwp_settings.sweep(dict(ref, prior_sha256={"vae_conv1.pt": "b"}), [("p", changed)], "lr")


@needs_shared_data("mnist")
def test_dwp_prior_screen_pairs_each_seed_with_the_grid(tmp_path, keep_threads, capsys):
    """Each candidate cell is set beside the grid's cell of the same N and seed: the paired
    difference and its standard error from the per-seed differences; ``--collect-only`` reads the
    same cells back (from per-cell folders or one run's folder) and lists those not run;
    ``--reference`` pairs with a variant of the same run instead; a grid of other epochs or
    channels and a prior folder without both VAEs are refused before any cell runs, an N named
    twice and a time limit of 0 by the parser."""
    sys.path.insert(0, str(BENCHMARKS))
    import dwp_prior_screen

    result = dwp_prior_screen.main(dwp_prior_screen.parse_args(_dwp_prior_screen(tmp_path, "0,2")))
    (row,) = result["summary"]
    assert row["seeds"] == [0, 2] and row["grid_dwp"] == pytest.approx([0.5, 0.7])
    assert row["grid_normal"] == [0.4, 0.4] and row["grid_log_uniform"] == [0.3, 0.3]
    d = [100 * (a - g) for a, g in zip(row["accuracy"], row["grid_dwp"], strict=True)]
    assert row["minus_grid_dwp"] == pytest.approx((d[0] + d[1]) / 2)
    assert row["se"] == pytest.approx(abs(d[0] - d[1]) / 2)  # stdev of two / sqrt(2)
    again = dwp_prior_screen.parse_args(
        [*_dwp_prior_screen(tmp_path / "b", "0,2"), "--collect-only"]
    )
    again.work_dir, again.grid = tmp_path / "work", tmp_path / "grid.json"
    assert dwp_prior_screen.main(again)["cells"] == result["cells"]
    # The same cells as one run's results in WORK/one, paired with the per-cell folders of tiny.
    one = tmp_path / "work" / "one"
    one.mkdir()
    (one / "dwp_classify.json").write_text(json.dumps({"cells": result["cells"]}))
    argv = ["--prior", "tiny=x", "one=x", "--reference", "tiny", "--grid", "none"]
    ref = dwp_prior_screen.parse_args(
        [*argv, "--cells", "10:0,2", "--epochs", "1", "--device", "cpu"]
    )
    ref.work_dir, ref.results_dir, ref.collect_only = tmp_path / "work", tmp_path / "r", True
    by_variant = {r["variant"]: r for r in dwp_prior_screen.main(ref)["summary"]}
    assert by_variant["one"]["accuracy"] == row["accuracy"]
    assert (by_variant["one"]["minus_reference"], by_variant["one"]["reference_se"]) == (0, 0)
    assert "minus_reference" not in by_variant["tiny"] and "grid_dwp" not in by_variant["tiny"]
    missing = dwp_prior_screen.parse_args(
        [*_dwp_prior_screen(tmp_path / "c", "1"), "--collect-only"]
    )
    assert dwp_prior_screen.main(missing)["missing"] == [{"variant": "tiny", "n": 10, "seed": 1}]
    other = dwp_prior_screen.parse_args(_dwp_prior_screen(tmp_path / "d", "0", grid_epochs=4000))
    with pytest.raises(ValueError, match="the grid's epochs are 4000, these cells' 1"):
        dwp_prior_screen.main(other)
    other.grid, other.channels = tmp_path / "grid.json", [4, 5]
    with pytest.raises(ValueError, match=r"the grid's channels is \[2, 3\], these cells' \[4, 5\]"):
        dwp_prior_screen.main(other)
    assert not (tmp_path / "d" / "work").exists()
    with pytest.raises(ValueError, match="equal, non-empty"):
        dwp_prior_screen.paired([0.5], [0.5, 0.6])
    ref.collect_only, ref.prior = False, [("tiny", tmp_path / "work")]
    with pytest.raises(FileNotFoundError, match=r"--prior tiny: .*vae_conv1.pt not found"):
        dwp_prior_screen.main(ref)
    with pytest.raises(SystemExit):
        dwp_prior_screen.parse_args([*argv, "--cells", "10:0", "10:1"])
    assert "--cells names an N twice: [10, 10]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dwp_prior_screen.parse_args([*argv, "--cells", "10:0", "--time-limit", "0"])
    assert "--time-limit must be > 0 seconds, got 0.0" in capsys.readouterr().err


def test_code_prior_mixture_density_against_torch_distributions():
    sys.path.insert(0, str(BENCHMARKS))
    import dwp_code_prior

    loc, scale = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([[1.0, 0.5], [0.3, 2.0]])
    z = torch.randn(5, 2)
    parts = [torch.distributions.Normal(loc[j], scale[j]).log_prob(z).sum(-1) for j in range(2)]
    expected = torch.logsumexp(torch.stack(parts), 0) - torch.log(torch.tensor(2.0))
    torch.testing.assert_close(dwp_code_prior.vamp(loc, scale)(z), expected)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(dwp_code_prior.standard_normal(z), normal)


@needs_shared_data("mnist", "notmnist")
def test_bbb_mnist_side_by_side_adds_the_gaussian_row_and_widths(
    tmp_path, monkeypatch, keep_threads
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bbb_mnist")
    argv = [*TINY["bbb_mnist.py"](tmp_path), "--parallel", "--gaussian", "--extra-hidden", "4"]
    report = bench.main(bench.build_parser().parse_args(argv))
    methods = {"bbb", "bbb_gaussian", "sgd", "dropout"}
    assert set(report["ours"]) == methods | {f"{m}_h4" for m in methods}
    assert report["hidden_of"] == {
        **dict.fromkeys(methods, 8),
        **dict.fromkeys((f"{m}_h4" for m in methods), 4),
    }
    config = json.loads((tmp_path / "runs" / "bbb_gaussian_h4" / "config.json").read_text())
    assert (config["prior"], config["neg_log_sigma"], config["hidden"]) == ("normal", 0.0, 4)
    assert config["kl_scheme"] == "blundell" == report["kl_scheme"]  # the paper's, by default
    table = (tmp_path / "results" / "bbb_mnist.md").read_text()
    assert "| BBB, Gaussian prior | 8 | n/a | " in table  # no paper value at 8 or 4 units
    assert "| SGD + dropout | 4 | n/a | " in table
    assert "not run" not in table and "rate (constant)" in table
    assert "KL weight per minibatch: 2^-i / (1 - 2^-M)" in table


@needs_shared_data("mnist", "notmnist")
def test_bbb_ensemble_size_draws_each_ensemble_under_its_own_seed(tmp_path, monkeypatch):
    """Both parameter files are read; at each size one entry per draw seed; a one-member
    ensemble under seed k is the network of one weight draw after ``torch.manual_seed(k)``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bbb_ensemble_size")
    argv = [*TINY["bbb_ensemble_size.py"](tmp_path)]
    result = bench.main(bench.build_parser().parse_args(argv))
    assert set(result["runs"]) == {"bbb/model.pt", "bbb/best.pt"}
    run = result["runs"]["bbb/model.pt"]
    assert [len(run["sizes"][s]["error"]) for s in ("1", "3")] == [2, 2]

    config, model, guide = load_bbb_run(tmp_path / "bbb")
    x, y = load_mnist("test", SHARED_DATA, n=config["n_test"], seed=config["seed"])
    clf = bbb_classifier(model, guide)
    for seed in range(2):
        torch.manual_seed(seed)
        logits = clf.sample_logits(x, 1)[0]
        error = float((logits.argmax(-1) != y).float().mean())
        assert run["sizes"]["1"]["error"][seed] == pytest.approx(error)


@needs_shared_data("mnist", "notmnist")
def test_bbb_mnist_bbb_rows_alone_under_a_linear_schedule(tmp_path, monkeypatch, keep_threads):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bbb_mnist")
    argv = [*TINY["bbb_mnist.py"](tmp_path), "--parallel", "--gaussian", "--bbb-only"]
    argv += ["--lr-schedule", "linear", "--kl-scheme", "uniform"]
    report = bench.main(bench.build_parser().parse_args(argv))
    assert set(report["ours"]) == {"bbb", "bbb_gaussian"} and report["lr_schedule"] == "linear"
    for row in ("bbb", "bbb_gaussian"):
        config = json.loads((tmp_path / "runs" / row / "config.json").read_text())
        assert (config["lr_schedule"], config["kl_scheme"]) == ("linear", "uniform")
    table = (tmp_path / "results" / "bbb_mnist.md").read_text()
    assert "| SGD (no dropout) | 8 | n/a | not run" in table
    assert "decayed linearly to 0 over the --epochs" in table
    assert "KL weight per minibatch: 1 / M for each" in table


@needs_shared_data("mnist", "notmnist")
def test_bbb_mnist_in_two_parts_merges_into_one_table(tmp_path, monkeypatch, keep_threads):
    """``--bbb-only`` and ``--baselines-only`` (two device calls) and ``--merge``: the table of
    one run of all four rows; parts of other settings, or a row twice, are refused by name."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bbb_mnist")
    parts = {}
    for name, flags in (("bbb", ["--bbb-only", "--gaussian"]), ("base", ["--baselines-only"])):
        argv = [*TINY["bbb_mnist.py"](tmp_path), "--parallel", *flags]
        argv += options(runs_dir=tmp_path / f"runs_{name}", results_dir=tmp_path / name)
        parts[name] = bench.main(bench.build_parser().parse_args(argv))
    assert set(parts["base"]["ours"]) == {"sgd", "dropout"} and parts["base"]["pruning"] is None
    assert "Pruning" not in (tmp_path / "base" / "bbb_mnist.md").read_text()
    sources = [tmp_path / "bbb" / "bbb_mnist.json", tmp_path / "base" / "bbb_mnist.json"]
    merged = bench.merge(tmp_path / "all", sources)
    assert set(merged["ours"]) == {"bbb", "bbb_gaussian", "sgd", "dropout"}
    assert merged["pruning"] == parts["bbb"]["pruning"] and len(merged["commands"]) == 2
    assert merged["epochs"] == {**parts["bbb"]["epochs"], **parts["base"]["epochs"]}
    table = (tmp_path / "all" / "bbb_mnist.md").read_text()
    assert "not run" not in table and "Pruning the BBB network" in table
    with pytest.raises(SystemExit, match=r"rows \['bbb', 'bbb_gaussian'\] are already"):
        bench.merge(tmp_path / "all", [sources[0], sources[0]])
    other = json.loads(sources[1].read_text()) | {"lr_schedule": "linear"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="lr_schedule 'linear', but"):
        bench.merge(tmp_path / "all", [sources[0], tmp_path / "other.json"])
    with pytest.raises(SystemExit, match="no part has the pruning table"):
        bench.merge(tmp_path / "all", [sources[1]])


@needs_shared_data("mnist", "notmnist")
def test_bbb_mnist_keep_best_adds_the_validation_selected_table(
    tmp_path, monkeypatch, keep_threads
):
    """``--keep-best`` reaches every method's run, and the second table prints each row's
    ``best_valid`` (epoch, validation and test errors) as the runs wrote them."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bbb_mnist")
    argv = [*TINY["bbb_mnist.py"](tmp_path), "--epochs", "2", "--keep-best"]
    report = bench.main(bench.build_parser().parse_args(argv))
    table = (tmp_path / "results" / "bbb_mnist.md").read_text()
    assert "Selected by validation" in table
    assert report["train_examples"] == 200 and "- training images: 200 (the paper's" in table
    saved = json.loads((tmp_path / "results" / "bbb_mnist.json").read_text())
    assert bench._markdown(saved) == table  # the same table from the saved JSON
    del saved["kl_scheme"]  # a report written before --kl-scheme ran the uniform weights
    assert "- BBB's KL weight per minibatch: 1 / M for each" in bench._markdown(saved)
    for row in ("bbb", "sgd", "dropout"):
        assert json.loads((tmp_path / "runs" / row / "config.json").read_text())["keep_best"]
        b = report["ours"][row]["best_valid"]
        assert b["epoch"] in (1, 2)
        assert (
            f"| {row} | {b['epoch']} | {100 * b['valid_error']:.2f} "
            f"| {100 * b['test_error_mean']:.2f} | {100 * b['test_error_ensemble']:.2f} "
            f"| {b['test_nll_ensemble']:.4f} |"
        ) in table


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--extra-hidden", "4"], "need --parallel"),
        (["--bbb-only"], "need --parallel"),
        (["--parallel", "--extra-hidden", "8"], "other than --hidden"),
    ],
)
def test_bbb_mnist_refuses_bad_widths(tmp_path, monkeypatch, extra, message):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bbb_mnist")
    args = bench.build_parser().parse_args([*TINY["bbb_mnist.py"](tmp_path), *extra])
    with pytest.raises(ValueError, match=message):
        bench.main(args)


def _quick_run(
    path: Path, priors: dict[str, list[float]], channels=(32, 16), epochs=500, n_test=None
) -> None:
    """A ``dwp_classify.json`` with one cell per (prior, seed): seed ``i`` has ``values[i]``."""
    config = {"channels": list(channels), "epochs": epochs, "lr": 1e-3, "n_test": n_test}
    cells = [
        {"prior": p, "n": 100, "seed": i, "accuracy": a, "nll": 1.0}
        for p, values in priors.items()
        for i, a in enumerate(values)
    ]
    path.mkdir(parents=True)
    (path / "dwp_classify.json").write_text(json.dumps({"config": config, "cells": cells}))


def test_dwp_quick_preset_margin_against_the_better_baseline_of_each_seed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("dwp_quick_preset")
    _quick_run(tmp_path / "a_dwp", {"dwp": [0.80, 0.70, 0.90]})
    _quick_run(
        tmp_path / "a_base", {"normal": [0.75, 0.72, 0.80], "log-uniform": [0.78, 0.60, 0.85]}
    )
    _quick_run(tmp_path / "b", {"dwp": [0.5], "normal": [0.6]}, channels=(16, 32), epochs=1000)
    variants = bench.collect(tmp_path)
    a = variants["32/16, 500 epochs"]
    # better baseline per seed: 0.78, 0.72, 0.85 -> margins 0.02, -0.02, 0.05
    assert a["dwp_minus_best_baseline"] == pytest.approx(0.05 / 3)
    assert a["dwp_first_on"] == 2 and a["seeds"] == [0, 1, 2]
    assert a["accuracy"]["dwp"][:1] == pytest.approx([0.8]) and a["accuracy"]["dwp"][2] == 3
    assert variants["16/32, 1000 epochs"]["dwp_first_on"] == 0
    _quick_run(tmp_path / "c", {"dwp": [0.5, 0.6], "normal": [0.6]}, channels=(8, 8))
    with pytest.raises(ValueError, match="different seeds"):
        bench.collect(tmp_path)
    _quick_run(tmp_path / "e" / "dwp", {"dwp": [0.5]}, channels=(4, 4))
    _quick_run(tmp_path / "e" / "base", {"normal": [0.5]}, channels=(4, 4), n_test=2000)
    with pytest.raises(ValueError, match="differ in their settings"):
        bench.collect(tmp_path / "e")
    _quick_run(tmp_path / "d", {"dwp": [0.5]}, channels=(4, 4))
    with pytest.raises(ValueError, match="needs the dwp run and a baseline"):
        bench.collect(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="run the benchmark first"):
        bench.collect(tmp_path / "empty")


@needs_shared_data("mushroom")
def test_mushroom_forgetting_takes_each_members_own_state(tmp_path, monkeypatch):
    # The run's members bbb:0, bbb:slow:0, greedy:0; the picked runner's bbb:0 and greedy:0
    # must hold those members' parameters, Adam moments and buffers, not a neighbour's.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    forgetting = importlib.import_module("mushroom_forgetting")
    from pyro_dwp.data.mushroom import load_mushroom
    from pyro_dwp.experiments.bandit_lockstep import LockstepBandit
    from pyro_dwp.infer.checkpoint import load_checkpoint

    state = load_checkpoint(_lockstep_checkpoint(tmp_path))
    source = state["runner"]
    members = [tuple(m) for m in source["members"]]
    assert members == [("bbb", 0), ("bbb:slow", 0), ("greedy", 0)]
    contexts, edible = load_mushroom(Path(data_args()[1]))
    kwargs = {"hidden": tuple(state["fingerprint"]["--hidden"]), "num_batches": 1}
    whole = LockstepBandit(
        contexts, edible, agents=["bbb", "bbb:slow", "greedy"], seeds=[0],
        overrides={"bbb:slow": {"lr": 1e-4}}, **kwargs,
    )  # fmt: skip
    whole.load_state_dict(source)
    picked = LockstepBandit(contexts, edible, agents=["bbb", "greedy"], seeds=[0], **kwargs)
    picked.load_state_dict(forgetting.member_state(source, members, picked))
    for mine, theirs in ((0, 0), (1, 2)):
        for key in ("params", "adam_m", "adam_v"):
            ours = picked.named_parameters(mine, picked.state_dict()[key])
            want = whole.named_parameters(theirs, whole.state_dict()[key])
            assert ours.keys() == want.keys()
            assert all(torch.equal(ours[k], want[k]) for k in ours), (key, mine)
        assert torch.equal(picked.state_dict()["buffer_x"][mine], source["buffer_x"][theirs])
    assert torch.equal(picked.state_dict()["adam_steps"], source["adam_steps"])


@pytest.mark.parametrize("kernel_size", [5, 7])
def test_dwp_step_time_reference_networks_are_plain_convolutions_with_the_same_maps(
    kernel_size, monkeypatch
):
    """The breakdown's reference: the same VAE with its point layers as (transposed)
    convolutions, and the same outputs."""
    from pyro_dwp.models.kernel_vae import KernelVAE, _FromPointConvTranspose2d, _ToPointConv2d

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("dwp_step_time")
    vae = KernelVAE.for_kernel_size(kernel_size)
    plain = bench._as_convolutions(vae)
    point = (_ToPointConv2d, _FromPointConvTranspose2d)
    assert any(isinstance(m, point) for m in vae.modules())
    assert not any(isinstance(m, point) for m in plain.modules())
    w, z = torch.randn(6, kernel_size, kernel_size), torch.randn(6, vae.z_dim)
    for got, want in zip(
        (*vae.encoder(w), *vae.decoder(z)), (*plain.encoder(w), *plain.decoder(z)), strict=True
    ):
        torch.testing.assert_close(got, want)


def test_dwp_step_time_tables_count_the_arithmetic_once_per_setting(tmp_path, monkeypatch):
    """Two devices measured at one batch and width share one arithmetic row (the count does not
    depend on the device); each keeps its own timing row."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("dwp_step_time")
    for device, ms in (("cpu (2 threads)", 100.0), ("cuda", 2.0)):
        bench._write(
            {
                "device": device, "date": "2026-12-02", "hardware": "test", "batch": 4,
                "channels": [2, 2], "step_ms": {"dwp": 3 * ms, "normal": ms},
                "ratio_dwp_to_normal": 3.0, "prior_networks_ms": {"conv2 decoder": ms},
                "gflop_per_step": {"dwp": 6.0, "normal": 2.0}, "flop_ratio_dwp_to_normal": 3.0,
            },
            tmp_path,
        )  # fmt: skip
    text = (tmp_path / "dwp_step_time.md").read_text()
    assert text.count("| 4 | [2, 2] | 6.00 | 2.00 | 3.00 |") == 1
    for device in ("cpu (2 threads)", "cuda"):
        assert f"| {device} | 2026-12-02 | test |" in text
    assert set(json.loads((tmp_path / "dwp_step_time.json").read_text())) == {"cpu", "cuda"}


@needs_shared_data("mnist", "notmnist")
def test_bbb_mnist_resume_continues_every_row_as_an_uninterrupted_run(
    tmp_path, monkeypatch, keep_threads
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bbb_mnist")

    def run(name: str, *extra: str) -> dict:
        argv = [*TINY["bbb_mnist.py"](tmp_path / name), *extra]
        return bench.main(bench.build_parser().parse_args(argv))

    run("parts")  # one epoch
    resumed = run("parts", "--epochs", "2", "--resume")
    whole = run("whole", "--epochs", "2")
    assert resumed["epochs"] == whole["epochs"] == {"bbb": 2, "sgd": 2, "dropout": 2}
    for row in ("bbb", "sgd", "dropout"):
        curves = [
            [
                {k: v for k, v in r.items() if k != "seconds"}
                for r in json.loads(
                    (tmp_path / d / "runs" / row / "learning_curves.json").read_text()
                )
            ]
            for d in ("parts", "whole")
        ]
        assert curves[0] == curves[1]
        assert resumed["ours"][row]["test_error_mean"] == whole["ours"][row]["test_error_mean"]

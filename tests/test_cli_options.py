"""The jobs' command-line options are named the same way everywhere: renamed options parse under
their new names only, ``--device`` is ``{cpu,cuda}`` with one error for a missing GPU, and runs
recorded under the old names still resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from pyro_dwp.cli import build_parser, main
from pyro_dwp.experiments.dwp_classify import load_results
from pyro_dwp.experiments.mnist import upgrade_config

# The options each job needs to parse at all.
REQUIRED = {
    "regression": ["--out", "o"],
    "mnist": ["--out", "o"],
    "prune": ["--run", "r"],
    "dwp-source": ["--out", "o"],
    "dwp-prior": ["--kernels", "k", "--out", "o"],
    "dwp-classify": ["--out", "o"],
    "dwp-gap": ["--out", "o", "--vae-dir", "v"],
    "dwp": ["--out", "o"],
}
CUDA_ERROR = "--device cuda was asked for, but torch sees no CUDA device"


def _parse(job: str, *options: str):
    return build_parser().parse_args([job, *REQUIRED[job], *options])


@pytest.mark.parametrize(
    "job,new,old,dest,value",
    [
        ("regression", "--predictive-samples", "--samples", "predictive_samples", 7),
        ("mnist", "--particles", "--samples", "particles", 3),
        ("mnist", "--n-test", "--n-eval", "n_test", 500),
        ("prune", "--n-test", "--n-eval", "n_test", 500),
        ("mnist", "--test-samples", "--eval-samples", "test_samples", 4),
        ("prune", "--test-samples", "--eval-samples", "test_samples", 4),
        ("dwp-source", "--net-init", "--init", "net_init", "torch"),
        ("dwp-classify", "--guide-init", "--init", "guide_init", "dwp"),
        ("dwp-gap", "--guide-init", "--init", "guide_init", "dwp"),
    ],
)
def test_renamed_option_parses_under_its_new_name_only(job, new, old, dest, value, capsys):
    args = _parse(job, new, str(value))
    assert getattr(args, dest) == value
    assert not hasattr(args, old.lstrip("-").replace("-", "_"))
    with pytest.raises(SystemExit) as info:
        _parse(job, old, str(value))
    assert info.value.code == 2
    assert old in capsys.readouterr().err


SEED_FLAGS = [
    ("regression", "--seed"),
    ("mnist", "--seed"),
    ("prune", "--seed"),
    ("dwp-source", "--seed"),
    ("dwp-prior", "--seed"),
    ("dwp-classify", "--seeds"),
    ("dwp-gap", "--seed"),
    ("dwp", "--seeds"),
    ("mushroom", "--seed"),
    ("mushroom", "--seeds"),
]


@pytest.mark.parametrize("job,flag", SEED_FLAGS)
def test_a_seed_outside_the_generators_range_is_refused_naming_its_flag(job, flag, capsys):
    """``torch.manual_seed`` and NumPy take seeds in [0, 2**32 - 1]; the jobs check them while
    parsing, so the error names the flag (it came from torch, without it, at run time)."""
    parse = build_parser().parse_args
    required = REQUIRED.get(job, ["--out", "o"])
    assert getattr(parse([job, *required, flag, str(2**32 - 1)]), flag[2:]) in (
        2**32 - 1,
        [2**32 - 1],
    )
    for bad, why in (("-1", "in [0, 2**32 - 1], got -1"), ("1.5", "an integer, got '1.5'")):
        with pytest.raises(SystemExit) as info:
            parse([job, *required, flag, bad])
        assert info.value.code == 2
        assert f"argument {flag}: a seed is {why}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse([job, *required, flag, str(2**32)])


@pytest.mark.parametrize("job", list(REQUIRED))
def test_device_is_cpu_or_cuda_in_every_job(job, capsys):
    assert _parse(job).device == "cpu"
    assert _parse(job, "--device", "cuda").device == "cuda"
    with pytest.raises(SystemExit):
        _parse(job, "--device", "gpu")
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


@pytest.mark.parametrize("job", [j for j in REQUIRED if j != "dwp"])  # dwp: its stages check
def test_device_cuda_without_cuda_is_one_line_error(job, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    options = [str(tmp_path / a) if i % 2 else a for i, a in enumerate(REQUIRED[job])]
    assert main([job, *options, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err == f"pyro-dwp {job}: error: {CUDA_ERROR}\n"


@pytest.mark.parametrize("job", list(REQUIRED))
def test_help_states_the_resume_rule(job, capsys):
    with pytest.raises(SystemExit):
        main([job, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Resume:" in text or "rerun with the same settings" in text


def test_configs_recorded_under_old_option_names_are_read_under_the_new_ones(tmp_path):
    old = {"samples": 2, "eval_samples": 5, "n_eval": 100, "hidden": 16}
    assert upgrade_config(old) == {"particles": 2, "test_samples": 5, "n_test": 100, "hidden": 16}
    config = {"guide_init": "dwp", "epochs": 3}
    path = tmp_path / "dwp_classify.json"
    path.write_text(json.dumps({"config": {"init": "dwp", "epochs": 3}, "cells": [1]}))
    assert load_results(path, config, {}) == {"config": config, "cells": [1]}
    with pytest.raises(ValueError, match="other settings"):
        load_results(path, {**config, "guide_init": "module"}, {})


@needs_shared_data("mnist", "notmnist")
def test_mnist_run_recorded_under_old_option_names_resumes_and_prunes(tmp_path):
    tiny = ["--n-train", "200", "--hidden", "16", "--epochs", "1", "--n-test", "200"]
    tiny += ["--test-samples", "2", "--data-dir", str(SHARED_DATA), "--no-progress"]
    args = ["mnist", "--method", "bbb", "--out", str(tmp_path), *tiny]
    assert main(args) == 0
    renamed = {"particles": "samples", "test_samples": "eval_samples", "n_test": "n_eval"}
    config = json.loads((tmp_path / "config.json").read_text())
    old = {renamed.get(k, k): v for k, v in config.items()}
    (tmp_path / "config.json").write_text(json.dumps(old))
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    torch.save({**saved, "config": old}, tmp_path / "model.pt")
    assert main(["prune", "--run", str(tmp_path), "--fractions", "0.5"]) == 0
    pruning = json.loads((tmp_path / "prune" / "pruning.json").read_text())
    assert pruning["test_samples"] == 2 and pruning["test_examples"] == 200
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 2
    assert main([*args, "--epochs", "2", "--resume", "--particles", "2"]) == 1


def test_an_option_prefix_is_not_taken_for_a_longer_option(capsys):
    # with argparse's abbreviations the removed --init -5 would set --init-log-variance
    with pytest.raises(SystemExit) as info:
        _parse("dwp-classify", "--init", "-5")
    assert info.value.code == 2
    assert "unrecognized arguments: --init" in capsys.readouterr().err

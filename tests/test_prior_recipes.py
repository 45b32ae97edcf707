"""The registry of prior recipes drives the experiments: a new prior is one entry."""

import json

import pyro.distributions as dist
import pytest
from conftest import SHARED_DATA, needs_shared_data

from pyro_dwp.cli import build_parser, main
from pyro_dwp.experiments.dwp_pipeline import classify_runs
from pyro_dwp.experiments.mnist import upgrade_config
from pyro_dwp.experiments.prior_recipes import (
    PRIOR_RECIPES,
    PriorRecipe,
    PriorSettings,
    prior_names,
)

needs_data = needs_shared_data("mnist")

LAPLACE = PriorRecipe(
    label="laplace",
    colour="tab:purple",
    build=lambda settings: dist.Laplace(0.0, settings.sigma1),
    experiments=frozenset({"bbb", "dwp"}),
)


@pytest.fixture
def laplace(monkeypatch):
    """The registry with a toy Laplace prior added for both kinds of experiment."""
    monkeypatch.setitem(PRIOR_RECIPES, "laplace", LAPLACE)


def _choices(job: str, option: str) -> list[str]:
    sub = build_parser()._subparsers._group_actions[0].choices[job]
    (action,) = [a for a in sub._actions if option in a.option_strings]
    return list(action.choices)


def test_cli_choices_come_from_the_registry():
    assert _choices("dwp-classify", "--priors") == [
        "dwp",
        "normal",
        "log-uniform",
        "deterministic-l2",
    ]
    # the paper's three priors by default; its deterministic net when named
    assert build_parser().parse_args(["dwp-classify", "--out", "o"]).priors == [
        "dwp",
        "normal",
        "log-uniform",
    ]
    assert _choices("regression", "--prior") == ["normal", "scale-mixture"]
    assert _choices("mnist", "--prior") == ["normal", "scale-mixture"]
    assert set(prior_names("bbb")) & set(prior_names("dwp")) == {"normal"}  # one name for both


def test_recipes_build_their_priors():
    settings = PriorSettings(sigma1=2.0, sigma2=0.1, pi=0.25)
    normal = PRIOR_RECIPES["normal"].build(settings)
    assert isinstance(normal, dist.Normal) and float(normal.scale) == 2.0
    mixture = PRIOR_RECIPES["scale-mixture"].build(settings)
    assert float(mixture.pi) == 0.25 and float(mixture.sigma2) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs the kernel VAE"):
        PRIOR_RECIPES["dwp"].build(settings)


def test_runs_recorded_with_the_old_name_are_upgraded():
    upgraded = upgrade_config({"prior": "gaussian", "samples": 2})
    assert upgraded == {"prior": "normal", "particles": 2}


def test_a_new_entry_joins_the_choices_and_the_pipeline(laplace):
    assert "laplace" in _choices("dwp-classify", "--priors")
    assert "laplace" in _choices("regression", "--prior")
    assert classify_runs()["baselines"][:4] == ["--priors", "normal", "log-uniform", "laplace"]


def test_a_new_entry_trains_in_the_regression_experiment(laplace, tmp_path, capsys):
    argv = ["regression", "--out", str(tmp_path), "--prior", "laplace", "--epochs", "2"]
    assert main([*argv, "--n-train", "50", "--predictive-samples", "4", "--no-progress"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["prior"] == "laplace"


@needs_data
@pytest.mark.slow
def test_a_new_entry_runs_a_dwp_cell(laplace, tmp_path, vae_dir, one_thread, capsys):
    out = tmp_path / "out"
    argv = ["dwp-classify", "--out", str(out), "--data-dir", str(SHARED_DATA)]
    argv += ["--vae-dir", str(vae_dir), "--priors", "laplace", "dwp", "--n-train", "20"]
    argv += ["--seeds", "0", "--epochs", "1", "--n-test", "100", "--channels", "2", "3"]
    assert main([*argv, "--test-samples", "2", "--no-progress"]) == 0
    cells = {c["prior"]: c for c in json.loads((out / "dwp_classify.json").read_text())["cells"]}
    assert sorted(cells) == ["dwp", "laplace"]
    assert 0 <= cells["laplace"]["accuracy"] <= 1 and cells["laplace"]["nll"] > 0
    table = (out / "dwp_classify.md").read_text()
    assert table.index("| dwp | ") < table.index("| laplace | ")  # registry order
    assert (out / "figure2.png").stat().st_size > 10_000

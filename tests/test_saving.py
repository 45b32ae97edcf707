"""``pyro_dwp.save`` / ``pyro_dwp.load``: a fitted model predicts bit for bit in a fresh process."""

import math
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch
from torch import nn

import pyro_dwp
from pyro_dwp import BNN, Gaussian
from pyro_dwp.diagnostics import to_inference_data
from pyro_dwp.distributions import ScaleMixtureNormal
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer import fit, predict

X = torch.linspace(0, 1, 20)[:, None]
Y = torch.sin(3 * X)


def _fitted():
    net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    model = BNN(net, ScaleMixtureNormal(0.5, 1.0, math.exp(-6)), Gaussian(len(X)))  # learned noise
    guide = BBBNormal(model, init_scale=0.01)
    fit(model, guide, X, Y, epochs=3, batch_size=10, lr=0.05, progress=False)
    return model, guide


def test_predict_round_trips_bit_for_bit_in_a_fresh_process(tmp_path):
    model, guide = _fitted()
    assert pyro.param("noise_scale").item() != pytest.approx(0.1)  # learned, not the initial
    pyro_dwp.save(tmp_path / "model.pt", model, guide)
    pyro.set_rng_seed(7)
    expected = predict(model, guide, X, num_samples=5)
    torch.save({k: v for k, v in expected.items()}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import pyro, torch, pyro_dwp
        from pyro_dwp.infer import predict
        model, guide = pyro_dwp.load({str(tmp_path / "model.pt")!r})
        pyro.set_rng_seed(7)
        x = torch.linspace(0, 1, 20)[:, None]
        torch.save(predict(model, guide, x, num_samples=5), {str(tmp_path / "got.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    got = torch.load(tmp_path / "got.pt")
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_load_replaces_same_names_and_keeps_other_parameters(tmp_path):
    model, guide = _fitted()
    saved = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    pyro_dwp.save(tmp_path / "model.pt", model, guide)
    pyro.clear_param_store()
    pyro.param("other", torch.ones(2))
    model2, guide2 = pyro_dwp.load(tmp_path / "model.pt")
    store = pyro.get_param_store()
    assert set(store.keys()) == set(saved) | {"other"}
    for k, v in saved.items():
        assert torch.equal(store[k], v), k
    assert type(model2) is BNN and type(guide2) is BBBNormal
    torch.testing.assert_close(guide2.loc("0.weight"), saved["BBBNormal.locs.0.weight"])


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pyro_dwp.save"):
        pyro_dwp.load(tmp_path / "missing.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a model saved by pyro_dwp.save"):
        pyro_dwp.load(tmp_path / "other.pt")
    model, guide = _fitted()
    pyro_dwp.save(tmp_path / "model.pt", model, guide)
    state = torch.load(tmp_path / "model.pt", weights_only=False)
    torch.save({**state, "version": 99}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format version 99"):
        pyro_dwp.load(tmp_path / "future.pt")
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="param store is empty"):
        pyro_dwp.save(tmp_path / "empty.pt", model, guide)


def test_a_guide_loaded_into_the_store_saves_and_loads_its_store_values(tmp_path):
    """A guide set up, then given a fitted run's values through the param store (as
    ``load_bbb_run`` or a resume does), saves those values, and ``load`` gives them back exactly:
    through the guide's accessors, ``predict`` and ``to_inference_data``."""
    model, guide = _fitted()
    fitted = {
        k: v.detach().clone() for k, v in pyro.get_param_store().get_state()["params"].items()
    }
    pyro.set_rng_seed(3)
    expected = predict(model, guide, X, num_samples=4)
    pyro.set_rng_seed(3)
    expected_idata = to_inference_data(model, guide, X, Y, num_samples=4)
    pyro.clear_param_store()
    torch.manual_seed(1)
    model2, guide2 = _fitted()  # other values, then the fitted ones through the store
    store = pyro.get_param_store()
    store.set_state({**store.get_state(), "params": {k: v.clone() for k, v in fitted.items()}})
    pyro_dwp.save(tmp_path / "model.pt", model2, guide2)
    pyro.clear_param_store()
    model3, guide3 = pyro_dwp.load(tmp_path / "model.pt")
    for name in guide3.site_names:
        assert torch.equal(guide3.loc(name), fitted[f"BBBNormal.locs.{name}"]), name
        assert torch.equal(guide3.rho(name), fitted[f"BBBNormal.scales.{name}"]), name
    pyro.set_rng_seed(3)
    got = predict(model3, guide3, X, num_samples=4)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    pyro.set_rng_seed(3)
    idata = to_inference_data(model3, guide3, X, Y, num_samples=4)
    for group in ("posterior", "log_likelihood", "constant_data"):
        assert idata[group].equals(expected_idata[group]), group

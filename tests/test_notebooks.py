"""Every notebook runs top to bottom in smoke mode (``CI`` set), as Pyro's CI does."""

import os
from pathlib import Path

import nbformat
import pytest
from conftest import SHARED_DATA
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS][:1] == ["01_bbb_regression.ipynb"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jupyter's own, at kernel start-up
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if SHARED_DATA.is_dir() and not os.environ.get("PYRO_DWP_DATA"):
        monkeypatch.setenv("PYRO_DWP_DATA", str(SHARED_DATA))  # MNIST / notMNIST notebooks
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    # nbclient raises CellExecutionError on the first failing cell; every code cell ran:
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")

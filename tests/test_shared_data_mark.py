"""The ``shared_data`` mark of ``conftest.py``: skip when the data is missing, fail under CI."""

import conftest
import pytest


class _Item:
    """The part of a ``pytest.Item`` that the setup hook reads: its ``shared_data`` marks."""

    def __init__(self, *paths: str) -> None:
        self._mark = pytest.mark.shared_data(*paths).mark

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [self._mark] if name == "shared_data" else []


def test_missing_data_skips_locally_and_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI needs the bundled data; .*mnist"):
        conftest.pytest_runtest_setup(_Item("mnist"))
    for local in ("", "false", "0"):
        monkeypatch.setenv("CI", local)
        with pytest.raises(pytest.skip.Exception, match="missing under .*: mnist/a.gz"):
            conftest.pytest_runtest_setup(_Item("mnist/a.gz"))
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "a.gz").touch()
    monkeypatch.setenv("CI", "true")
    conftest.pytest_runtest_setup(_Item("mnist", "mnist/a.gz"))  # all there: runs


def test_options_builds_command_lines():
    argv = conftest.options(n_train=200, seeds=[0, 1], no_progress=True, resume=False, out=None)
    assert argv == ["--n-train", "200", "--seeds", "0", "1", "--no-progress"]
    assert conftest.data_args() == ["--data-dir", str(conftest.SHARED_DATA)]

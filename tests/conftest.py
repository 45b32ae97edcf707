"""Shared test fixtures and helpers.

- Every test starts seeded and with an empty Pyro param store (autouse fixture).
- Real data: ``SHARED_DATA`` is ``../shared/data`` beside the repository. A test that needs it
  carries ``@pytest.mark.shared_data("mnist", ...)`` (paths under ``SHARED_DATA``) or
  :func:`needs_shared_data`; a missing path skips the test, except under ``CI=true``, where it
  fails it (CI must not pass by skipping the real-data tests).
- Command lines: :func:`options` turns keywords into ``--option value`` lists, :func:`data_args`
  the data folder's options.
- Interrupts: :func:`signal_after_epoch` sends a signal from inside a fit, at an epoch's end.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyro
import pytest
import torch

from pyro_dwp.models.kernel_vae import KernelVAE, save_kernel_vae

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""
SHARED_DATA = ROOT.parent / "shared" / "data"
"""The bundled data sets (``mnist/``, ``notmnist/``, ``mushroom/``), beside the repository."""
BENCHMARKS = ROOT / "benchmarks"


def in_ci() -> bool:
    """Whether the suite runs in CI (``CI`` set to anything but empty, ``0`` or ``false``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def needs_shared_data(*paths: str) -> pytest.MarkDecorator:
    """The mark of a test that reads ``paths`` (folders or files) under :data:`SHARED_DATA`."""
    return pytest.mark.shared_data(*paths)


def missing_shared_data(paths: tuple[str, ...]) -> list[str]:
    """Those of ``paths`` (under :data:`SHARED_DATA`) that do not exist."""
    return [p for p in paths if not (SHARED_DATA / p).exists()]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (locally) or fail (in CI) a ``shared_data`` test whose files are missing."""
    paths = tuple(p for mark in item.iter_markers("shared_data") for p in mark.args)
    missing = missing_shared_data(paths)
    if missing:
        reason = f"missing under {SHARED_DATA}: {', '.join(missing)}"
        if in_ci():
            pytest.fail(f"CI needs the bundled data; {reason}", pytrace=False)
        pytest.skip(reason)


def options(**values: object) -> list[str]:
    """``--name value`` per keyword (``n_train=200`` -> ``["--n-train", "200"]``): a list or
    tuple gives several values, ``True`` a bare flag, ``None`` or ``False`` nothing."""
    argv: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, *map(str, value)]
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv


@contextmanager
def signal_after_epoch(signum: signal.Signals, epoch: int) -> Iterator[None]:
    """Inside it every ``SVITrainer`` sends its own process ``signum`` at the end of epoch
    ``epoch`` (0-based): a Ctrl-C or ``timeout`` arriving during that epoch."""
    from pyro_dwp.infer.fit import SVITrainer

    one_epoch = SVITrainer._epoch

    def signalled(self: SVITrainer, e: int, check: bool) -> dict[str, float]:
        record = one_epoch(self, e, check)
        if e == epoch:
            os.kill(os.getpid(), signum)
        return record

    with pytest.MonkeyPatch.context() as m:
        m.setattr(SVITrainer, "_epoch", signalled)
        yield


def data_args() -> list[str]:
    """``["--data-dir", SHARED_DATA]``: the jobs' and benchmarks' data option."""
    return ["--data-dir", str(SHARED_DATA)]


@pytest.fixture(autouse=True)
def _seed_and_clear_param_store():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def one_thread():
    """Tiny convolutions: one intra-op thread is faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def vae_dir(tmp_path):
    """A folder with untrained kernel VAEs ``vae_conv1.pt`` (7x7) and ``vae_conv2.pt`` (5x5)."""
    save_kernel_vae(tmp_path / "vae_conv1.pt", KernelVAE(7, 2, 4))
    save_kernel_vae(tmp_path / "vae_conv2.pt", KernelVAE(5, 2, 4))
    return tmp_path

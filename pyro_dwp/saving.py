"""Keeping a fitted model: :func:`save` and :func:`load` of a model, its guide and every learned
value, in one versioned file."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pyro

from pyro_dwp.io import read_torch_file, save_checkpoint
from pyro_dwp.version import __version__

__all__ = ["SAVE_VERSION", "load", "save"]

SAVE_VERSION = 1
"""Format version of the files :func:`save` writes and :func:`load` reads."""
_FORMAT = "pyro_dwp.save"


def save(path: str | os.PathLike, model: Callable, guide: Callable) -> None:
    """Write a fitted ``model`` and ``guide`` to ``path``, atomically (a temporary file, then a
    rename: an interrupted save leaves the old file).

    The file holds the model (network structure, prior, likelihood), the guide (family and
    hyperparameters) and Pyro's param store (every learned value: guide parameters, point
    estimates such as a learned ``noise_scale``, trained reverse models), with the format and
    ``pyro_dwp`` versions. Read it back with :func:`load`; only load files you trust (pickle).

    Raises:
        ValueError: If ``guide`` has not been run yet (it has no parameters to save).
        TypeError: If the model or guide cannot be pickled (e.g. a lambda inside it).
    """
    params = pyro.get_param_store().get_state()
    if not params["params"]:
        raise ValueError("nothing to save: the param store is empty (fit the guide first)")
    try:
        pickle.dumps((model, guide))
    except Exception as e:  # pickle raises several types
        raise TypeError(f"cannot save this model and guide: {type(e).__name__}: {e}") from e
    save_checkpoint(
        path,
        {
            "format": _FORMAT,
            "version": SAVE_VERSION,
            "pyro_dwp": __version__,
            "model": model,
            "guide": guide,
            "params": params,
        },
    )


def load(path: str | os.PathLike) -> tuple[Callable, Callable]:
    """Read a model and guide written by :func:`save`, onto the CPU.

    Their learned values go into Pyro's param store, replacing parameters of the same names and
    keeping the others; ``predict(model, guide, x)`` then gives what it gave before the save
    (bit for bit, with the same RNG seed).

    Returns:
        ``(model, guide)``.

    Raises:
        FileNotFoundError: If there is no file.
        ValueError: If it is truncated or corrupt, not written by :func:`save`, or of another
            format version.
    """
    path = Path(path)
    remedy = "write it with pyro_dwp.save(path, model, guide)"
    state = read_torch_file(path, what="saved model", remedy=remedy, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a model saved by pyro_dwp.save; {remedy}")
    if state["version"] != SAVE_VERSION:
        raise ValueError(
            f"{path} has format version {state['version']} (pyro_dwp {state['pyro_dwp']}); this "
            f"pyro_dwp reads version {SAVE_VERSION}"
        )
    store = pyro.get_param_store()
    current, saved = store.get_state(), state["params"]
    store.set_state(
        {
            "params": {**current["params"], **saved["params"]},
            "constraints": {**current["constraints"], **saved["constraints"]},
        }
    )
    return state["model"], state["guide"]

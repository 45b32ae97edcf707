"""The one checkpoint/resume mechanism of the training loops: a settings fingerprint, every RNG
state, the history, written atomically; resumed only by a run with the same settings."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_dwp.io import read_torch_file, save_checkpoint

from .fingerprint import differences

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "get_rng_state",
    "load_checkpoint",
    "non_finite_paths",
    "set_param_store_state",
    "set_rng_state",
]


def get_rng_state(device: torch.device | str) -> dict[str, Any]:
    """Pyro's RNG states (Python, NumPy, torch's CPU generator) and, on a CUDA ``device``, that
    device's generator, which draws the noise of tensors made there: ``{"rng", "cuda_rng"}``
    (``cuda_rng`` ``None`` off CUDA)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "rng": pyro.util.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None,
    }


def set_rng_state(state: Mapping[str, Any], device: torch.device | str) -> None:
    """Restore :func:`get_rng_state`'s ``state`` (its CUDA generator only on a CUDA ``device``)."""
    device = torch.device(device)
    pyro.util.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def set_param_store_state(state: Mapping[str, Any], device: torch.device | str) -> None:
    """Put a param-store ``state`` (``pyro.get_param_store().get_state()``, e.g. read from a
    checkpoint onto the CPU) into Pyro's param store on ``device``.

    Each value is copied to ``device`` as a new leaf tensor (``requires_grad`` as saved): a bare
    ``value.to("cuda")`` of a tensor that requires grad is a non-leaf copy, which no optimiser
    accepts ("can't optimize a non-leaf Tensor").
    """
    params = {
        name: value.detach().to(device).requires_grad_(value.requires_grad)
        for name, value in state["params"].items()
    }
    pyro.get_param_store().set_state({**state, "params": params})


CHECKPOINT_VERSION = 2
"""Format version of the training checkpoints that :func:`load_checkpoint` accepts."""

# What every training checkpoint holds (fit's and the mnist job's deterministic ones).
_CHECKPOINT_KEYS = frozenset({"version", "epoch", "fingerprint", "rng", "history"})
_REMEDY = "start over with another checkpoint path, or without resume"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


def non_finite_paths(state: Any, where: str = "") -> list[str]:
    """The dotted paths (e.g. ``"greedy.net.0.weight"``) of the tensors holding a NaN or an
    infinity in ``state``, nested dicts, lists and tuples of tensors (other leaves are skipped),
    in order; ``where`` prefixes them. A state that should never reach a checkpoint has some."""
    if isinstance(state, Mapping):
        items: Any = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        finite = not isinstance(state, torch.Tensor) or bool(torch.isfinite(state).all())
        return [] if finite else [where]
    return [
        path
        for key, value in items
        for path in non_finite_paths(value, f"{where}.{key}" if where else str(key))
    ]


def load_checkpoint(path: str | os.PathLike, *, remedy: str = _REMEDY) -> dict[str, Any]:
    """Read a checkpoint written by :class:`Checkpoint` onto the CPU (only load files you trust).

    Args:
        path: The file.
        remedy: What to do about a file that cannot be used, for the error message.

    Raises:
        FileNotFoundError: if there is no file.
        CheckpointError: if the file is truncated, corrupt, not a pyro_dwp checkpoint or one of
            an older format (naming the file).
    """
    try:
        state = read_torch_file(Path(path), what="checkpoint", remedy=remedy, weights_only=False)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= state.keys():
        raise CheckpointError(
            f"{path} is not a pyro_dwp training checkpoint (a file of an older pyro_dwp, or of "
            f"something else); {remedy}"
        )
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is a checkpoint of format {state['version']}, written by another version of "
            f"pyro_dwp (this one reads format {CHECKPOINT_VERSION}); {remedy}"
        )
    return state


class Checkpoint:
    """A training run's checkpoint file.

    :meth:`save` writes (atomically, through :func:`pyro_dwp.io.save_checkpoint`) the format
    version, the loop's position (key ``"epoch"``: epochs, or steps of a step loop such as a
    bandit's), the settings' fingerprint, Pyro's RNG states (torch, numpy, random), the
    CUDA generator of ``device``, the state of each named ``generators`` entry (key
    ``f"{name}_rng"``), the history and the loop's own state (parameters, optimiser...).
    :meth:`load` reads it back and refuses it if its fingerprint differs from the run's (naming
    each differing setting, old -> new); :meth:`restore_rng` then restores every RNG. Every
    refusal is a :class:`CheckpointError` that names the file and ends with ``remedy``.

    Args:
        path: The file.
        device: The run's device (its CUDA generator is saved and restored).
        generators: ``{name: torch.Generator}`` of the loop (e.g. ``{"shuffle": ...}``).
        remedy: What to do about a file that cannot be resumed (unreadable, of an older format
            or of other settings), for the error messages.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: torch.device | str = "cpu",
        generators: Mapping[str, torch.Generator] | None = None,
        remedy: str = _REMEDY,
    ) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.generators = dict(generators or {})
        self.remedy = remedy

    def exists(self) -> bool:
        """Whether the file exists."""
        return self.path.exists()

    def save(
        self,
        epoch: int,
        fingerprint: dict[str, Any],
        history: Sequence[dict[str, float]] = (),
        **state: Any,
    ) -> None:
        """Write the checkpoint of the run after ``epoch`` epochs (or steps) with its history so
        far (``state``: the loop's own entries, e.g. ``params`` and ``optim``)."""
        save_checkpoint(
            self.path,
            {
                "version": CHECKPOINT_VERSION,
                "epoch": epoch,
                "fingerprint": fingerprint,
                **state,
                **get_rng_state(self.device),
                **{f"{n}_rng": g.get_state() for n, g in self.generators.items()},
                "history": list(history),
            },
        )

    def load(self, fingerprint: dict[str, Any]) -> dict[str, Any]:
        """Read the checkpoint and check that it was written with ``fingerprint``; the loop then
        restores its own state from it, and last the RNGs (:meth:`restore_rng`).

        Raises:
            CheckpointError: if the file is unreadable or was written with other settings.
        """
        state = load_checkpoint(self.path, remedy=self.remedy)
        changed = differences(state["fingerprint"], fingerprint)
        if changed:
            raise CheckpointError(
                f"checkpoint {self.path} was written with other settings ("
                + "; ".join(changed)
                + f"): rerun with its settings, or {self.remedy}"
            )
        return state

    def restore_rng(self, state: dict[str, Any]) -> None:
        """Set Pyro's RNGs, the CUDA generator and the named generators to ``state``'s, after
        whatever the loop's own restoring drew, so the run continues as if uninterrupted."""
        set_rng_state(state, self.device)
        for name, generator in self.generators.items():
            generator.set_state(state[f"{name}_rng"])

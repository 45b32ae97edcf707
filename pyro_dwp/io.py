"""Files and output: atomic writers (``torch.save`` files, JSON), reading ``torch.save`` files
with errors that name the file and the remedy, output folders checked before training, progress
bars; the jobs' shared ``--device`` option."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = [
    "DEVICES",
    "JOB_FILE",
    "add_device_argument",
    "add_out_argument",
    "add_resume_argument",
    "announce_fresh_start",
    "check_device",
    "parse_seed",
    "prepare_out",
    "progress_bar",
    "read_torch_file",
    "save_checkpoint",
    "write_json",
]

DEVICES = ("cpu", "cuda")
"""``--device`` choices of every job."""

_LOG_INTERVAL_S = 60.0
"""Seconds between progress lines when stderr is not a terminal (a log file)."""


def _atomic_write(path: Path, mode: str, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then ``os.replace`` it onto
    ``path``: a reader never sees a half-written file. Temporaries of ``path`` that a killed
    write left (``<name>.*.tmp``) are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` atomically: a temporary file, then ``os.replace``."""
    _atomic_write(Path(path), "wb", lambda f: torch.save(state, f))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (and a final newline) atomically."""

    def dump(f: Any) -> None:
        json.dump(data, f, indent=2)
        f.write("\n")

    _atomic_write(Path(path), "w", dump)


def progress_bar(iterable: Iterable, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` that, when stderr is not a terminal (a log file, a pipe),
    writes at most one line a minute instead of a carriage return at every refresh."""
    if not sys.stderr.isatty():
        kwargs = {"mininterval": _LOG_INTERVAL_S, "maxinterval": _LOG_INTERVAL_S, **kwargs}
    return tqdm(iterable, **kwargs)


_OUT_HELP = {
    "explicit": "output directory (resume: explicit, with --resume; see --resume)",
    "automatic": "output directory (resume: automatic, a rerun with the same settings continues "
    "the run there; other settings are refused)",
}


def add_out_argument(p: argparse.ArgumentParser, resume: str) -> None:
    """Add the required ``--out`` directory, its help naming the job's resume rule:
    ``"explicit"`` (with :func:`add_resume_argument`) or ``"automatic"``."""
    p.add_argument("--out", type=Path, required=True, help=_OUT_HELP[resume])


def add_resume_argument(p: argparse.ArgumentParser, length: str = "--epochs") -> None:
    """Add ``--resume`` of the jobs that resume explicitly; ``length`` is the option that may
    differ on a resume (the run's length)."""
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in --out from its checkpoint.pt (settings must match; {length} "
        "may differ); without it the run starts afresh",
    )


def announce_fresh_start(resume: bool, *checkpoints: Path) -> bool:
    """Say on stderr, in one line, that ``--resume`` found none of ``checkpoints`` and training
    starts afresh: a mistyped ``--out`` or a checkpoint that never reached the disk would
    otherwise begin a new run without a word.

    Returns:
        Whether the run resumes (``resume``, and one of ``checkpoints`` exists).
    """
    found = any(path.exists() for path in checkpoints)
    if resume and not found:
        names = " or ".join(str(path) for path in checkpoints)
        print(f"--resume: no checkpoint at {names}; training starts afresh", file=sys.stderr)
    return resume and found


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """Add ``--device {cpu,cuda}`` (default ``cpu``), the same option in every job; check it
    with :func:`check_device`."""
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to compute")


def parse_seed(text: str) -> int:
    """The ``type`` of every ``--seed`` / ``--seeds`` option: an integer in ``[0, 2**32 - 1]``,
    the range of ``torch.manual_seed``'s generators and NumPy's; argparse then names the flag.

    Raises:
        argparse.ArgumentTypeError: For text that is not such an integer.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"a seed is in [0, 2**32 - 1], got {value}")
    return value


def check_device(device: str) -> None:
    """Fail early, with one line, if ``--device cuda`` is asked for but unavailable.

    Raises:
        ValueError: If ``device`` is ``"cuda"`` and torch sees no CUDA device.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")


JOB_FILE = ".pyro-dwp-job"
"""The file in an output folder that names the job writing there (see :func:`prepare_out`)."""


def prepare_out(out: Path, job: str, *, flag: str = "--out") -> Path:
    """Create the output folder ``out`` (with its parents), check that it can be written to and
    that no other job's run lives there, before any training; then claim it for ``job``.

    Args:
        out: The folder.
        job: The ``pyro-dwp`` subcommand writing there (e.g. ``"mnist"``), recorded in
            :data:`JOB_FILE`.
        flag: How the user named it, for messages.

    Returns:
        ``out``.

    Raises:
        ValueError: If ``out`` is a file, cannot be created or written to, or holds a run of
            another job (whose files this one would overwrite).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a folder: pass a folder path")
    owner = out / JOB_FILE
    if owner.is_file() and (other := owner.read_text().strip()) != job:
        raise ValueError(
            f"{flag} {out} holds a `pyro-dwp {other}` run, whose files `pyro-dwp {job}` would "
            f"overwrite: pass another folder"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
        owner.write_text(job + "\n")
    except OSError as e:
        raise ValueError(
            f"{flag} {out} cannot be written to ({e.strerror or e}): pass a folder you can write"
        ) from e
    return out


def read_torch_file(path: Path, *, what: str, remedy: str, weights_only: bool = True) -> Any:
    """``torch.load`` a file onto the CPU.

    Args:
        path: The file.
        what: What the file is, for messages (e.g. ``"kernel dataset"``).
        remedy: What to do about a missing or broken file (e.g. the command that writes it).
        weights_only: Passed to ``torch.load``.

    Raises:
        FileNotFoundError: If there is no file.
        ValueError: If the file is truncated or corrupt.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found: {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # torch raises several types for truncated / corrupt files
        raise ValueError(
            f"{what} {path} is unreadable (truncated or corrupt: {type(e).__name__}: {e}); {remedy}"
        ) from e

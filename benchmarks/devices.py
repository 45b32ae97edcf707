"""Independent benchmark cells as separate ``pyro-dwp`` processes spread over the visible GPUs,
one device per process, so that a multi-GPU machine runs a whole grid in one go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from subprocess import PIPE

import torch

__all__ = ["run_processes", "visible_gpus"]


def visible_gpus(device: str) -> int:
    """The number of GPUs to spread processes over: all visible ones for ``cuda``, else 0."""
    return torch.cuda.device_count() if device == "cuda" else 0


def run_processes(
    jobs: list[list[object]], workers: int, gpus: int, time_limit: float | None = None
) -> float:
    """Run ``pyro-dwp`` argvs as separate processes, ``workers`` at a time, job ``i`` on GPU
    ``i % gpus`` (``CUDA_VISIBLE_DEVICES``; all devices when ``gpus`` is 0); the wall seconds.
    The working directory stays off ``sys.path`` (``PYTHONSAFEPATH``): run from a checkout, its
    ``pyro_dwp/`` lacks ``pyro_dwp.models`` and ``pyro_dwp.guides``, which only an install maps.

    ``time_limit`` (seconds; for a machine lent for a limited time): then every process still
    running gets SIGTERM, which stops a checkpointed fit at the end of its epoch with its
    checkpoint written (:class:`~pyro_dwp.infer.TrainingInterrupted`, exit status 143), and the
    jobs not yet started are skipped; neither is a failure, and rerunning the same jobs resumes
    them.

    Raises:
        RuntimeError: If a process fails (its command and the end of its stderr).
    """
    deadline = None if time_limit is None else time.monotonic() + time_limit

    def left() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def run(i: int) -> None:
        if (remaining := left()) is not None and remaining <= 0:
            return
        command = [sys.executable, "-m", "pyro_dwp.cli", *map(str, jobs[i])]
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus else {})}
        env["PYTHONSAFEPATH"] = "1"  # the installed package, not a checkout's pyro_dwp/ in cwd
        process = subprocess.Popen(command, stdout=PIPE, stderr=PIPE, text=True, env=env)
        try:
            _, stderr = process.communicate(timeout=left())
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate()
            # 128 + 15: stopped after an epoch, checkpoint written; -15: before any fit began
            if process.returncode in (128 + signal.SIGTERM, -signal.SIGTERM):
                return
        if process.returncode != 0:
            raise RuntimeError(f"stage failed: {' '.join(command)}\n{stderr[-2000:]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, range(len(jobs))))
    return time.perf_counter() - t0

"""Independent benchmark cells as separate ``pyro-dwp`` processes spread over the visible GPUs,
one device per process, so that a multi-GPU machine runs a whole grid in one go."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["run_processes", "visible_gpus"]


def visible_gpus(device: str) -> int:
    """The number of GPUs to spread processes over: all visible ones for ``cuda``, else 0."""
    return torch.cuda.device_count() if device == "cuda" else 0


def run_processes(jobs: list[list[object]], workers: int, gpus: int) -> float:
    """Run ``pyro-dwp`` argvs as separate processes, ``workers`` at a time, job ``i`` on GPU
    ``i % gpus`` (``CUDA_VISIBLE_DEVICES``; all devices when ``gpus`` is 0); the wall seconds.
    The working directory stays off ``sys.path`` (``PYTHONSAFEPATH``): run from a checkout, its
    ``pyro_dwp/`` lacks ``pyro_dwp.models`` and ``pyro_dwp.guides``, which only an install maps.

    Raises:
        RuntimeError: If a process fails (its command and the end of its stderr).
    """

    def run(i: int) -> None:
        command = [sys.executable, "-m", "pyro_dwp.cli", *map(str, jobs[i])]
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus else {})}
        env["PYTHONSAFEPATH"] = "1"  # the installed package, not a checkout's pyro_dwp/ in cwd
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"stage failed: {' '.join(command)}\n{done.stderr[-2000:]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, range(len(jobs))))
    return time.perf_counter() - t0

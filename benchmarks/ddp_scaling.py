"""Data-parallel scaling of BBB on MNIST (issue 13): throughput and test error on 1 and N devices.

Trains the 2 x H (default 1200) scale-mixture BBB network with ``pyro-dwp mnist --devices n
--strategy ddp`` for each ``n`` of ``--devices`` (the same per-device batch, the same epochs,
one job process per ``n``: Lightning starts the other processes by rerunning it), then writes
``ddp_scaling.json`` and ``ddp_scaling.md`` to ``--results-dir``::

    {"devices": {n: {"examples_per_s": x, "test_error": e, ...}}, "command": ..., ...}

``examples_per_s`` is the training examples of an epoch over its training seconds (recorded by
process 0), averaged over the epochs after the first (which holds warm-up); ``test_error`` is the
posterior-mean network's test error (%) after the last epoch. The targets: on 2 GPUs at least 1.8x
the examples/s of one GPU, and a test error within 0.1 points of one GPU's.

Example (2 GPUs)::

    python benchmarks/ddp_scaling.py --device cuda --devices 1 2 --epochs 20

On CPU (processes instead of GPUs, gloo) it runs with tiny settings, to check that it works, not
to measure anything (the processes share the cores; Lightning gives each of N > 1 processes
``cores / N`` threads, a single process all of them, so set ``OMP_NUM_THREADS=1`` on a small
machine); keep such results out of ``benchmarks/results``::

    OMP_NUM_THREADS=1 python benchmarks/ddp_scaling.py --devices 1 2 --epochs 2 --hidden 32 \\
        --n-train 2000 --n-test 500 --results-dir /tmp/ddp_scaling --runs-dir /tmp/ddp_runs

The GPU run of 2026-11-30 (2 x H200, 4 epochs) is in ``benchmarks/results/ddp_scaling.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_SPEEDUP = 1.8
TARGET_ERROR_POINTS = 0.1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="device counts to run")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=128, help="per device")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--test-samples", type=int, default=10)
    p.add_argument("--n-train", type=int, default=None, help="training subset (default: 50k)")
    p.add_argument("--n-test", type=int, default=None, help="test subset (default: all)")
    p.add_argument("--data-dir", type=Path, default=None, help="holds mnist/ and notmnist/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--engine", choices=["pyro", "compiled"], default="pyro", help="pyro-dwp mnist --engine"
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/ddp_scaling"))
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``pyro-dwp mnist`` on each device count; write and return the report."""
    if any(n < 1 for n in args.devices) or args.epochs < 1:
        raise ValueError(f"--devices and --epochs must be >= 1, got {args.devices}, {args.epochs}")
    t0 = time.perf_counter()
    runs = {n: _run(args, n) for n in args.devices}
    report = {
        "command": "python benchmarks/ddp_scaling.py " + shlex.join(_argv(args)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(args.device),
        "settings": {
            k: getattr(args, k) for k in ("epochs", "hidden", "batch_size", "lr", "n_train")
        },
        "devices": runs,
        "seconds": time.perf_counter() - t0,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "ddp_scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results_dir / "ddp_scaling.md").write_text(_markdown(report))
    return report


def _run(args: argparse.Namespace, devices: int) -> dict[str, float]:
    """One ``pyro-dwp mnist`` run on ``devices`` devices: its throughput and test error."""
    out = args.runs_dir / f"devices_{devices}"
    argv = ["mnist", "--method", "bbb", "--devices", str(devices), "--strategy", "ddp"]
    argv += ["--out", str(out), "--device", args.device, "--epochs", str(args.epochs)]
    argv += ["--hidden", str(args.hidden), "--batch-size", str(args.batch_size)]
    argv += ["--lr", str(args.lr), "--test-samples", str(args.test_samples)]
    argv += ["--seed", str(args.seed), "--engine", args.engine, "--no-progress"]
    for key in ("n_train", "n_test", "data_dir"):
        if getattr(args, key) is not None:
            argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = {**os.environ, "PYTHONSAFEPATH": "1"}  # the installed pyro_dwp, not the checkout's
    subprocess.run([sys.executable, "-m", "pyro_dwp.cli", *argv], check=True, env=env)
    metrics = json.loads((out / "metrics.json").read_text())
    curves = json.loads((out / "learning_curves.json").read_text())
    timed = curves[1:] or curves  # the first epoch holds warm-up
    examples = metrics["config"]["train_size"]
    return {
        "examples_per_s": examples * len(timed) / sum(r["seconds"] for r in timed),
        "test_error": 100 * metrics["test_error_mean"],
        "test_error_ensemble": 100 * metrics["test_error_ensemble"],
        "global_batch": devices * args.batch_size,
        "epochs": metrics["epochs"],
    }


def _markdown(r: dict[str, Any]) -> str:
    runs = r["devices"]
    base = runs.get(1)
    lines = [
        "# Data-parallel BBB on MNIST: scaling (issue 13)",
        "",
        f"`{r['command']}`, {r['date']}, {r['device']}; settings {r['settings']}.",
        "",
        "| devices | global batch | examples/s | speed-up | test error (%) | vs 1 device |",
        "|---|---|---|---|---|---|",
    ]
    for n, run in runs.items():
        speedup = f"{run['examples_per_s'] / base['examples_per_s']:.2f}x" if base else "-"
        diff = f"{run['test_error'] - base['test_error']:+.2f}" if base else "-"
        lines.append(
            f"| {n} | {run['global_batch']} | {run['examples_per_s']:.0f} | {speedup} "
            f"| {run['test_error']:.2f} | {diff} |"
        )
    lines += [
        "",
        f"Targets (2 devices against 1): speed-up >= {TARGET_SPEEDUP}x, test error within "
        f"{TARGET_ERROR_POINTS} points, after the same epochs with the same per-device batch.",
    ]
    return "\n".join(lines) + "\n"


def _argv(args: argparse.Namespace) -> list[str]:
    """The options of ``args`` as a command line (defaults included)."""
    argv = []
    for key, value in vars(args).items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def _device_name(device: str) -> str:
    if device == "cuda":
        count = torch.cuda.device_count()
        return f"{count} x {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()} (torch {torch.__version__})"


if __name__ == "__main__":
    main(build_parser().parse_args())

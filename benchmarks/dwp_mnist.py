"""The Deep Weight Prior's Figure 2 on MNIST: source nets -> kernel VAEs -> the prior grid.

Runs ``pyro-dwp dwp-source``, ``dwp-prior`` and ``dwp-classify`` (each resumable; ``--reuse``
skips a stage whose outputs exist) and writes ``benchmarks/results/dwp_mnist.{md,json}`` and
``dwp_mnist_figure2.png``: our
test accuracy (10-sample ensemble, mean and std over data seeds) beside the paper's, with the
command, date, device and epochs. Meant for a GPU::

    python benchmarks/dwp_mnist.py --device cuda --work-dir runs/dwp_mnist
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from pyro_dwp.jobs.dwp_classify import PAPER, RESULTS, plot_figure2, summarise, summary_table
from pyro_dwp.jobs.dwp_pipeline import classify_runs, run_stage

__all__ = ["main"]


def _stage(argv: list[object]) -> float:
    return run_stage(argv)[1]


def main(args: argparse.Namespace) -> dict:
    work = Path(args.work_dir)
    common = ["--device", args.device, "--no-progress"]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    seconds = {}
    if not (args.reuse and (work / "source" / "kernels_conv2.pt").exists()):
        seconds["source"] = _stage(
            [
                "dwp-source",
                "--out",
                work / "source",
                "--num-nets",
                args.source_nets,
                "--epochs",
                args.source_epochs,
                *data,
                *common,
            ]
        )
    if not (args.reuse and (work / "prior" / "vae_conv2.pt").exists()):
        seconds["prior"] = _stage(
            [
                "dwp-prior",
                "--kernels",
                work / "source",
                "--out",
                work / "prior",
                "--epochs",
                args.prior_epochs,
                *common,
            ]
        )
    # The baselines start from the network's own initialisation, the deep weight prior from
    # its own samples (``--dwp-init``): two runs of dwp-classify, cells merged.
    runs = {
        work / f"classify_{run}": [
            "dwp-classify",
            "--vae-dir",
            work / "prior",
            "--epochs",
            args.epochs,
            *extra,
            *data,
            *common,
        ]
        for run, extra in classify_runs(args.dwp_init, args.reverse).items()
    }
    if args.workers == 1:
        grid = ["--n-train", *args.n_train, "--seeds", *args.seeds]
        for out_dir, base in runs.items():
            seconds[out_dir.name] = _stage([*base, "--out", out_dir, *grid])
        out_dirs = list(runs)
    else:
        seconds["classify"], out_dirs = _parallel_cells(runs, args)
    cells = [c for d in out_dirs for c in json.loads((d / RESULTS).read_text())["cells"]]
    summary = summarise(cells)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "epochs": args.epochs,
        "dwp_init": args.dwp_init,
        "reverse": args.reverse,
        "seconds": seconds,
        "paper": PAPER,
        "ours": {f"{p} N={n}": s for (p, n), s in sorted(summary.items())},
        "cells": cells,
    }
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dwp_mnist.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "dwp_mnist.md").write_text(_markdown(result, summary))
    plot_figure2(out / "dwp_mnist_figure2.png", summary)
    return result


def _parallel_cells(
    runs: dict[Path, list[object]], args: argparse.Namespace
) -> tuple[float, list[Path]]:
    """Run each ``{out: dwp-classify argv}`` once per (N, seed), into ``out/n<N>_s<seed>``,
    ``--workers`` processes at a time: a GPU runs small cells faster side by side than one after
    the other (one cell keeps it busy a fraction of the time). Returns the wall seconds and the
    cells' output folders."""
    jobs = {
        out / f"n{n}_s{seed}": [*base, "--n-train", n, "--seeds", seed]
        for out, base in runs.items()
        for n in args.n_train
        for seed in args.seeds
    }

    def run(out: Path) -> None:
        argv = [*jobs[out], "--out", out]
        command = [sys.executable, "-m", "pyro_dwp.cli", *map(str, argv)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"stage failed: {' '.join(command)}\n{done.stderr[-2000:]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(run, jobs))
    return time.perf_counter() - t0, list(jobs)


def _markdown(result: dict, summary: dict) -> str:
    sizes = sorted({n for _, n in summary})
    lines = [
        "# Deep Weight Prior, MNIST with N training examples (Atanov et al. 2019, Figure 2)",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; device: {result['device']}; epochs per cell: "
        f"{result['epochs']} (the paper: 10,000 on the small sets); DWP means initialised from "
        f"`{result['dwp_init']}`, the baselines' from the network's initialisation; reverse "
        f"model {result['reverse']}",
        f"- stage seconds: {json.dumps({k: round(v) for k, v in result['seconds'].items()})}",
        "",
        "## Paper (Figure 2, mean test accuracy)",
        "",
        "| prior | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for p, row in PAPER.items():
        lines.append(
            f"| {p} | " + " | ".join(f"{row.get(n, float('nan')):.3f}" for n in sizes) + " |"
        )
    lines += ["", "## Ours", "", summary_table(summary)]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--work-dir", default="runs/dwp_mnist")
    p.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--source-nets", type=int, default=16)
    p.add_argument("--source-epochs", type=int, default=20)
    p.add_argument("--prior-epochs", type=int, default=150)
    p.add_argument("--epochs", type=int, default=300, help="per (prior, N, seed) cell")
    p.add_argument("--n-train", type=int, nargs="+", default=[50, 100, 200, 500, 1000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--dwp-init", choices=["module", "dwp"], default="dwp", help="the DWP prior's q means"
    )
    p.add_argument("--reverse", choices=["trainable", "frozen"], default="trainable")
    p.add_argument("--reuse", action="store_true", help="skip stages whose outputs exist")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="dwp-classify processes side by side, one per (N, seed) (on a GPU: 8-16)",
    )
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    return args


if __name__ == "__main__":
    main(parse_args())

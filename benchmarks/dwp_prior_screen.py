"""Screen candidate deep weight priors on chosen cells of the MNIST grid, paired with the grid.

Each ``--prior NAME=DIR`` (a folder with ``vae_conv1.pt`` and ``vae_conv2.pt``: a ``dwp-prior``
output, or one layer's new VAE beside the shipped prior's other) runs as the grid runs the deep
weight prior (``dwp-classify --priors dwp --guide-init dwp --reverse trainable --epochs E``, the
test-time ensemble of ``--evaluation``) on the ``(N, seed)`` cells of ``--cells``, one process
per cell, ``--workers`` at a time, in ``--work-dir/NAME_nN_sS`` (resumable: a rerun keeps the
finished cells and trains an interrupted one on from its checkpoint; ``--time-limit S`` stops
the running cells after S seconds at an epoch's end, checkpoint written, and summarises what
finished, for a machine lent for a limited time). Each candidate's accuracy
is then set beside the grid's cells of the same N and seeds (``--grid``: the shipped prior's
DWP and both baselines): per seed, the mean, and the paired difference to the grid's DWP with
its standard error. A grid of another protocol (epochs, evaluation, channels, test set) is
refused: the pairing would compare two protocols. Writes ``--results-dir/STEM.{json,md}``
(``--name STEM``)::

    python benchmarks/dwp_prior_screen.py --prior z2=runs/v_z2 --cells 1000:6,8,9 200:0,1 \\
        --engine compiled --device cuda --workers 20 --name dwp_conv1_screen

``--grid none --reference NAME`` pairs the variants with the cells of ``NAME`` of this run
instead (for another protocol than the grid's: other epochs, ``--channels``, ``--n-test``)::

    python benchmarks/dwp_prior_screen.py --prior shipped=pyro_dwp/pretrained/notmnist \\
        z2=DIR --reference shipped --grid none --cells 100:0,1,2 --epochs 500 --channels 32 16 \\
        --n-test 2000 --device cpu --workers 2

``--collect-only`` runs nothing and summarises the cells found in ``--work-dir``: in
``NAME_nN_sS`` (a cell run by hand with the command above) or else in ``NAME`` (one
``dwp-classify`` run of a variant's cells); a cell in neither is listed as missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
from pathlib import Path
from typing import get_args

import torch
from devices import run_processes, visible_gpus

from pyro_dwp.experiments.classification import EVALUATIONS
from pyro_dwp.experiments.dwp_classify import RESULTS
from pyro_dwp.infer.fit import Engine

__all__ = ["main", "paired", "parse_args"]

RESULTS_DIR = Path(__file__).parent / "results"
BASELINES = ("dwp", "normal", "log-uniform")  # the grid's rows set beside each candidate


def _prior(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"--prior takes NAME=DIR, got {text!r}")
    return name, Path(folder)


def _cells(text: str) -> tuple[int, list[int]]:
    n, sep, seeds = text.partition(":")
    try:
        return int(n), [int(s) for s in seeds.split(",")] if sep else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cells takes N:S,S,..., got {text!r}") from None


def _cell_dir(work: Path, name: str, n: int, seed: int) -> Path:
    return work / f"{name}_n{n}_s{seed}"


def paired(candidate: list[float], reference: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of ``candidate - reference`` per seed, in points (x 100); the
    error is ``None`` for one seed."""
    if len(candidate) != len(reference) or not candidate:
        raise ValueError(f"paired needs equal, non-empty lists: {candidate}, {reference}")
    d = [100 * (a - b) for a, b in zip(candidate, reference, strict=True)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None
    return statistics.fmean(d), se


def _argv(args: argparse.Namespace, folder: object, n: object, seed: object, out: object) -> list:
    """The ``dwp-classify`` command line of one cell (placeholders give the recorded template)."""
    argv: list[object] = ["dwp-classify", "--vae-dir", folder, "--priors", "dwp"]
    argv += ["--guide-init", "dwp", "--reverse", "trainable", "--n-train", n, "--seeds", seed]
    argv += ["--epochs", args.epochs, "--evaluation", args.evaluation, "--engine", args.engine]
    if args.n_test is not None:
        argv += ["--n-test", args.n_test]
    if args.channels is not None:
        argv += ["--channels", *args.channels]
    if args.data_dir is not None:
        argv += ["--data-dir", args.data_dir]
    return [*argv, "--device", args.device, "--out", out, "--no-progress"]


def _commands(args: argparse.Namespace) -> list[tuple[str, int, int, list[object]]]:
    """``[(name, N, seed, dwp-classify argv)]`` of every cell."""
    return [
        (name, n, seed, _argv(args, folder, n, seed, _cell_dir(args.work_dir, name, n, seed)))
        for name, folder in args.prior
        for n, seeds in args.cells
        for seed in seeds
    ]


def _grid(args: argparse.Namespace) -> dict | None:
    """The grid's json (``None`` without one); refused if its protocol is not these cells'."""
    if args.grid is None:
        return None
    grid = json.loads(args.grid.read_text())
    if grid.get("epochs") != args.epochs:
        raise ValueError(
            f"{args.grid}: the grid's epochs are {grid.get('epochs')}, these cells' {args.epochs}"
        )
    for key in ("channels", "n_test"):  # absent from the grid's json: the job's default
        if getattr(args, key) != grid.get(key):
            raise ValueError(
                f"{args.grid}: the grid's {key} is {grid.get(key)}, these cells' "
                f"{getattr(args, key)}; give --grid none (and --reference) for another protocol"
            )
    if args.evaluation != "lrt":  # the grid's evaluation is recorded in words; lrt is its only
        raise ValueError(f"the grid is evaluated with lrt; --evaluation {args.evaluation} is not")
    return grid


def _find_cell(work: Path, name: str, n: int, seed: int) -> dict | None:
    """The DWP cell of ``(N, seed)`` from ``WORK/NAME_nN_sS`` (one process per cell) or else
    ``WORK/NAME`` (one ``dwp-classify`` run of several cells); ``None`` if neither has it."""
    for folder in (_cell_dir(work, name, n, seed), work / name):
        path = folder / RESULTS
        if path.exists():
            for cell in json.loads(path.read_text())["cells"]:
                if (cell["prior"], cell["n"], cell["seed"]) == ("dwp", n, seed):
                    return cell
    return None


def _summary_row(
    name: str,
    n: int,
    cells: list[dict],
    grid: dict[tuple[str, int, int], float] | None,
    paper: dict[str, float],
    reference: str | None,
) -> dict | None:
    """One variant at one N: its seeds that the grid (accuracy by ``(prior, N, seed)``, all of
    :data:`BASELINES`) and the reference variant also have, the paired differences and the
    paper's DWP (``paper``, by N as a string); ``None`` if no seed is left."""
    own = {c["seed"]: c["accuracy"] for c in cells if (c["variant"], c["n"]) == (name, n)}
    ref = {c["seed"]: c["accuracy"] for c in cells if (c["variant"], c["n"]) == (reference, n)}
    seeds = sorted(
        s
        for s in own
        if (grid is None or all((p, n, s) in grid for p in BASELINES))
        and (reference is None or s in ref)
    )
    if not seeds:
        return None
    accuracy = [own[s] for s in seeds]
    row: dict = {"variant": name, "n": n, "seeds": seeds, "accuracy": accuracy}
    row["mean"] = statistics.fmean(accuracy)
    if grid is not None:
        for p in BASELINES:
            row[f"grid_{p.replace('-', '_')}"] = [grid[(p, n, s)] for s in seeds]
        row["minus_grid_dwp"], row["se"] = paired(accuracy, row["grid_dwp"])
        row["minus_grid_normal"], _ = paired(accuracy, row["grid_normal"])
        row["paper_dwp"] = paper.get(str(n))
    if reference is not None and name != reference:
        row["reference"] = [ref[s] for s in seeds]
        row["minus_reference"], row["reference_se"] = paired(accuracy, row["reference"])
    return row


def main(args: argparse.Namespace) -> dict:
    """Run (unless ``--collect-only``) and summarise the cells; return (and write) the result."""
    grid = _grid(args)  # before any cell runs
    jobs = _commands(args)
    seconds = None
    if not args.collect_only:
        for name, folder in args.prior:
            for layer in ("conv1", "conv2"):
                if not (folder / f"vae_{layer}.pt").exists():
                    raise FileNotFoundError(
                        f"--prior {name}: {folder / f'vae_{layer}.pt'} not found; a prior is a "
                        "folder with vae_conv1.pt and vae_conv2.pt (copy the other layer's VAE "
                        "from pyro_dwp/pretrained/notmnist when only one is new)"
                    )
        seconds = run_processes(
            [j[3] for j in jobs], args.workers, visible_gpus(args.device), args.time_limit
        )
    cells, missing = [], []
    for name, n, seed, _ in jobs:
        cell = _find_cell(args.work_dir, name, n, seed)
        if cell is None:
            missing.append({"variant": name, "n": n, "seed": seed})
        else:
            cells.append({**cell, "variant": name})
    paper = {} if grid is None else grid.get("paper", {}).get("dwp", {})
    accuracy = None
    if grid is not None:
        accuracy = {(c["prior"], c["n"], c["seed"]): c["accuracy"] for c in grid["cells"]}
    rows = (
        _summary_row(name, n, cells, accuracy, paper, args.reference)
        for name, _ in args.prior
        for n, _ in args.cells
    )
    result = {
        "date": datetime.date.today().isoformat(),
        "device": args.device_text
        or (
            torch.cuda.get_device_name()
            if args.device == "cuda" and torch.cuda.is_available()
            else args.device
        ),  # collect-only on another machine: --device-text names it
        "command": args.command_text
        or "pyro-dwp "
        + " ".join(map(str, _argv(args, "DIR", "N", "S", "WORK/NAME_nN_sS")))
        + " (one process per cell)",
        "epochs": args.epochs,
        "evaluation": args.evaluation,
        "grid": None if args.grid is None else _shown(args.grid),
        "reference": args.reference,
        "variants": {name: str(folder) for name, folder in args.prior},
        "notes": args.note,
        "seconds": seconds,
        "summary": [row for row in rows if row is not None],
        "missing": missing,
        "cells": cells,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results_dir / f"{args.name}.md").write_text(_markdown(result))
    print((args.results_dir / f"{args.name}.md").read_text())
    return result


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (as the results files name files)."""
    root = Path(__file__).resolve().parents[1]
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def _points(mean: float, se: float | None) -> str:
    return f"{mean:+.2f}" + ("" if se is None else f" ({se:.2f})")


def _markdown(result: dict) -> str:
    grid, reference = result["grid"], result["reference"]
    paired_with = [f"the cells of the same N and seed in `{grid}` (same protocol)"] if grid else []
    if reference:
        paired_with.append(f"the cells of `{reference}` of the same N and seed (this run)")
    header = ["N", "variant", "seeds", "per seed", "mean"]
    if grid:
        header += ["minus grid DWP, points (SE)", "grid DWP", "grid normal"]
        header += ["minus grid normal, points", "paper DWP"]
    if reference:
        header.append(f"minus {reference}, points (SE)")
    lines = [
        f"# Candidate deep weight priors on cells of the MNIST grid ({result['date']}, "
        f"{result['device']})",
        "",
        f"- command: `{result['command']}`",
        f"- epochs {result['epochs']}, test-time evaluation {result['evaluation']}; paired with "
        + (" and ".join(paired_with) or "nothing"),
        *(f"- `{k}`: {v}" for k, v in result["variants"].items()),
        *(f"- {note}" for note in result["notes"]),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in sorted(result["summary"], key=lambda r: (r["n"], r["variant"])):
        cols = [str(r["n"]), r["variant"], ",".join(map(str, r["seeds"]))]
        cols += [" ".join(f"{a:.4f}" for a in r["accuracy"]), f"{r['mean']:.4f}"]
        if grid:
            paper = r["paper_dwp"]
            cols += [
                _points(r["minus_grid_dwp"], r["se"]),
                f"{statistics.fmean(r['grid_dwp']):.4f}",
            ]
            cols += [f"{statistics.fmean(r['grid_normal']):.4f}", f"{r['minus_grid_normal']:+.2f}"]
            cols.append("" if paper is None else f"{paper:.3f}")
        if reference:
            has = "minus_reference" in r
            cols.append(_points(r["minus_reference"], r["reference_se"]) if has else "")
        lines.append("| " + " | ".join(cols) + " |")
    if result["missing"]:
        gone = ", ".join(f"{m['variant']} N={m['n']} seed {m['seed']}" for m in result["missing"])
        lines += ["", f"Not finished (no result): {gone}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prior", type=_prior, nargs="+", required=True, metavar="NAME=DIR")
    p.add_argument("--cells", type=_cells, nargs="+", required=True, metavar="N:S,S")
    p.add_argument("--epochs", type=int, default=4000, help="per cell (the grid's)")
    p.add_argument("--evaluation", choices=list(EVALUATIONS), default="lrt")
    p.add_argument("--engine", choices=list(get_args(Engine)), default="pyro")
    p.add_argument("--n-test", type=int, default=None, help="dwp-classify --n-test (all)")
    p.add_argument("--channels", type=int, nargs=2, default=None, help="dwp-classify --channels")
    p.add_argument(
        "--grid",
        type=lambda t: None if t == "none" else Path(t),
        default=RESULTS_DIR / "dwp_mnist.json",
        help="the grid to pair with (none: no pairing with a grid)",
    )
    p.add_argument("--reference", default=None, help="a --prior NAME to pair the others with")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--workers", type=int, default=1, help="cells run side by side")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="then stop the running cells at an epoch's end (checkpoint written), start no more "
        "and summarise what finished; a rerun resumes the rest",
    )
    p.add_argument("--work-dir", type=Path, default=Path("runs/dwp_prior_screen"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--collect-only", action="store_true", help="summarise what --work-dir holds")
    p.add_argument("--command-text", default=None, help="the command to record (collect-only)")
    p.add_argument("--device-text", default=None, help="the device to record (collect-only)")
    p.add_argument("--note", action="append", default=[], help="a line for the table's header")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="dwp_prior_screen", help="output file stem")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.workers < 1 or any(not seeds for _, seeds in args.cells):
        p.error("--epochs and --workers must be >= 1, and every --cells entry needs seeds")
    if args.time_limit is not None and not args.time_limit > 0:
        p.error(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    sizes = [n for n, _ in args.cells]
    if len(set(sizes)) != len(sizes):
        p.error(f"--cells names an N twice: {sizes}; give each N once with all its seeds")
    names = [name for name, _ in args.prior]
    if len(set(names)) != len(names) or args.reference not in (None, *names):
        p.error(f"--prior names must differ and --reference be one of them: {names}")
    return args


if __name__ == "__main__":
    main(parse_args())

"""Mushroom contextual bandit of Blundell et al. (2015), Section 5.3 / Figure 5.

Runs ``pyro-dwp mushroom --preset paper`` (:mod:`pyro_dwp.experiments.mushroom`: 50,000 steps, 64
minibatches of 64 per step, buffer of 4,096; agents ``bbb``, ``greedy``, ``eps0.01``,
``eps0.05``; ``--preset tuned`` for the lowest BBB regret measured, on the lockstep engine) once
per seed, each into ``--work-dir/seed<S>`` (a rerun resumes an interrupted seed), and writes
``mushroom.md`` and ``mushroom.json`` to ``--results-dir``: the mean cumulative regret over the
seeds per agent (``{"steps": S, "regret": {agent: r}, ...}``), each seed's regret, the paper's
values, the command, date and hardware.

``--steps`` below 50,000 runs a shortened protocol; the table then says so in its title.

``--engine lockstep`` runs every agent on every seed in this one process as one batched network,
a bandit step captured as a CUDA graph on ``--device cuda``
(:mod:`pyro_dwp.experiments.bandit_lockstep`), into ``--work-dir/lockstep``; the fastest way to
the paper's protocol on one GPU::

    python benchmarks/mushroom.py --preset paper --engine lockstep --device cuda --seeds 0 1

``--compare-capture`` instead times ``--steps`` lockstep steps eager and captured (CUDA) from the
same start, prints the milliseconds per bandit step of each and whether they agree, and writes
nothing::

    python benchmarks/mushroom.py --compare-capture --device cuda --steps 500

Example (one GPU, one agent object each)::

    python benchmarks/mushroom.py --device cuda --seeds 0 1

With several GPUs the seeds run side by side, one process per seed, seed ``i`` on GPU
``i % GPUs`` (``--workers``: processes at a time, default the number of visible GPUs; 1 runs
the seeds one after the other in this process)::

    python benchmarks/mushroom.py --device cuda --seeds 0 1 2 3 4 5 6 7
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, get_args

import torch
from devices import run_processes, visible_gpus

from pyro_dwp.data.mushroom import load_mushroom
from pyro_dwp.experiments import mushroom
from pyro_dwp.experiments.bandit_lockstep import LockstepBandit
from pyro_dwp.experiments.bandits import KLSize
from pyro_dwp.experiments.mushroom import PAPER_REGRET, PRESETS, preset_value
from pyro_dwp.infer.kl import KLScheme

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PAPER_STEPS = PRESETS["paper"]["steps"]


def build_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="pyro-dwp mushroom --preset (default: paper)",
    )
    p.add_argument("--steps", type=int, help="shorten the protocol (default: the preset's)")
    p.add_argument("--data-dir", type=Path, help="folder with mushroom/ (else PYRO_DWP_DATA)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/mushroom_benchmark"))
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--engine",
        choices=["pyro", "compiled", "lockstep"],
        help="pyro-dwp mushroom --engine (default: the preset's, else compiled); lockstep runs "
        "all seeds in this process",
    )
    bbb = p.add_argument_group(
        "the BBB agent's prior, KL weighting and scales' rate, every agent's rate decay "
        "(default: the job's)"
    )
    for flag in ("--pi", "--neg-log-sigma1", "--neg-log-sigma2", "--scale-lr-factor"):
        bbb.add_argument(flag, type=float, help=f"pyro-dwp mushroom {flag}")
    bbb.add_argument("--kl-size", choices=get_args(KLSize), help="pyro-dwp mushroom --kl-size")
    for flag, kind in (("--lr-final-factor", float), ("--lr-decay-steps", int)):
        bbb.add_argument(flag, type=kind, help=f"pyro-dwp mushroom {flag} (lockstep)")
    bbb.add_argument(
        "--kl-scheme", choices=get_args(KLScheme), help="pyro-dwp mushroom --kl-scheme"
    )
    bbb.add_argument(
        "--bbb-variant",
        nargs="+",
        action="append",
        metavar="LABEL [KEY=VALUE ...]",
        help="pyro-dwp mushroom --bbb-variant (with --engine lockstep; repeatable)",
    )
    p.add_argument(
        "--compare-capture",
        action="store_true",
        help="time --steps lockstep steps eager and captured (--device cuda) and check that "
        "they agree; writes nothing",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="seeds at a time (default: the visible GPUs)"
    )
    return p


def seed_argv(args: argparse.Namespace, seed: int) -> list[str]:
    """The ``pyro-dwp mushroom --preset <preset>`` command line of one seed, into
    ``--work-dir/seed<S>``."""
    out = args.work_dir / f"seed{seed}"
    return [*_common_argv(args, out), "--seed", str(seed)]


def _common_argv(args: argparse.Namespace, out: Path) -> list[str]:
    argv = ["--preset", args.preset, "--out", str(out)]
    argv += ["--steps", str(args.steps), "--device", args.device, "--resume"]
    argv += ["--engine", args.engine]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    bbb = ("pi", "neg_log_sigma1", "neg_log_sigma2", "scale_lr_factor", "kl_size", "kl_scheme")
    for flag in (*bbb, "lr_final_factor", "lr_decay_steps"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for spec in args.bbb_variant or []:
        argv += ["--bbb-variant", *spec]
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def run_seeds(args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], float | None]:
    """Each seed's final cumulative regret per agent, and the seconds spent stepping over every
    invocation where the run records them (``None`` otherwise): all in one lockstep run
    (``--engine lockstep``, into ``--work-dir/lockstep``; the seconds of a resumed run include
    its earlier invocations'), or in this process, one seed after the other (``workers`` 1), or
    as processes over the visible GPUs."""
    if args.engine == "lockstep":
        parser = argparse.ArgumentParser(prog="pyro-dwp mushroom")
        mushroom.add_arguments(parser)
        argv = _common_argv(args, args.work_dir / "lockstep")
        argv += ["--seeds", *map(str, args.seeds)]
        result = mushroom.run(parser.parse_args(argv))
        return result["per_seed"], result["step_seconds"]
    gpus = visible_gpus(args.device)
    workers = args.workers if args.workers is not None else max(1, gpus)
    if workers == 1:
        parser = argparse.ArgumentParser(prog="pyro-dwp mushroom")
        mushroom.add_arguments(parser)
        return {
            str(seed): mushroom.run(parser.parse_args(seed_argv(args, seed)))["regret"]
            for seed in args.seeds
        }, None
    run_processes([["mushroom", *seed_argv(args, seed)] for seed in args.seeds], workers, gpus)
    return {
        str(seed): json.loads((args.work_dir / f"seed{seed}" / "regret.json").read_text())["regret"]
        for seed in args.seeds
    }, None


def table(result: dict[str, Any]) -> str:
    """The markdown report."""
    steps, seeds = result["steps"], result["seeds"]
    protocol = (
        "the paper's protocol"
        if steps == PAPER_STEPS
        else f"a SHORT {result['device'].split()[0].upper()} RUN of {steps:,} steps, not the "
        f"paper's protocol of {PAPER_STEPS:,}"
    )
    lines = [
        f"# Mushroom bandit (Blundell et al. 2015, Fig. 5): cumulative regret, {protocol}",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {result['device']}; {result['date']}; "
        f"{result['minutes']:.1f} minutes in this invocation"
        + (
            f", {result['step_minutes']:.1f} minutes of stepping over every invocation of the run."
            if result["step_minutes"] is not None
            else "."
        ),
        f"Command: `{result['command']}`",
        "",
        "| agent | mean regret | per seed | std over seeds | paper at 50,000 steps (approx.) |",
        "|---|---:|---|---:|---:|",
    ]
    for name, mean in result["regret"].items():
        per_seed = ", ".join(f"{r[name]:,.0f}" for r in result["per_seed"].values())
        paper = PAPER_REGRET.get(name)
        paper_text = f"{paper:,}" if paper is not None else "-"
        std = result["spread"][name]["std"]
        lines.append(f"| {name} | {mean:,.0f} | {per_seed} | {std:,.0f} | {paper_text} |")
    return "\n".join(lines) + "\n"


def spread(values: list[float]) -> dict[str, float]:
    """``{"min", "max", "std"}`` of the seeds' values (the sample std; 0 for one seed)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"min": min(values), "max": max(values), "std": std}


def compare_capture(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``--steps`` lockstep steps (4 agents x ``--seeds``, the preset's minibatches) eager
    and captured from the same start; print and return ms per step and their agreement."""
    if args.device != "cuda" or not torch.cuda.is_available():
        raise ValueError("--compare-capture needs --device cuda and a CUDA device")
    contexts, edible = load_mushroom(args.data_dir)
    agents = ["bbb", "greedy", "eps0.01", "eps0.05"]
    runs: dict[bool, dict[str, Any]] = {}
    report: dict[str, Any] = {"steps": args.steps, "members": len(agents) * len(args.seeds)}
    for capture in (False, True):
        runner = LockstepBandit(
            contexts, edible, agents=agents, seeds=args.seeds, device="cuda", capture=capture,
            num_batches=PRESETS[args.preset]["num_batches"], rng_seed=args.seeds[0],
        )  # fmt: skip
        runner.step()  # the capture (or the first kernels' set-up), not timed
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps - 1):
            runner.step()
        torch.cuda.synchronize()
        ms = 1000 * (time.perf_counter() - t0) / max(1, args.steps - 1)
        report[f"{'captured' if capture else 'eager'}_ms_per_step"] = ms
        runs[capture] = runner.state_dict()
    eager, captured = runs[False], runs[True]
    report["same_buffers"] = bool(eager["buffer_y"].equal(captured["buffer_y"]))
    report["regret_eager"] = eager["regret"].tolist()
    report["regret_captured"] = captured["regret"].tolist()
    report["max_param_difference"] = float((eager["params"] - captured["params"]).abs().max())
    print(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_args_parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    for flag in ("steps", "engine"):
        if getattr(args, flag) is None:
            setattr(args, flag, preset_value(args.preset, flag))
    if args.compare_capture:
        return compare_capture(args)
    t0 = time.perf_counter()
    per_seed, step_seconds = run_seeds(args)
    agents = list(next(iter(per_seed.values())))
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
    result = {
        "steps": args.steps,
        "regret": {a: sum(r[a] for r in per_seed.values()) / len(per_seed) for a in agents},
        "seeds": args.seeds,
        "per_seed": per_seed,
        "spread": {a: spread([r[a] for r in per_seed.values()]) for a in agents},
        "engine": args.engine,
        "paper": PAPER_REGRET,
        "device": f"{args.device} ({device or platform.machine()})",
        "date": datetime.date.today().isoformat(),
        "minutes": (time.perf_counter() - t0) / 60,
        "step_minutes": None if step_seconds is None else step_seconds / 60,
        "command": shlex.join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "mushroom.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results_dir / "mushroom.md").write_text(table(result))
    print(table(result))
    return result


if __name__ == "__main__":
    main()

"""The Mushroom contextual bandit of Blundell et al. (2015), Section 5.3.

The experiment of ``pyro-dwp mushroom``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.mushroom`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_dwp.data.mushroom import load_mushroom
from pyro_dwp.experiments.bandits import GreedyAgent, MushroomBandit, RegretLog, ThompsonBBBAgent
from pyro_dwp.experiments.regression import sigma_from_neg_log
from pyro_dwp.infer import Checkpoint
from pyro_dwp.io import (
    add_device_argument,
    add_out_argument,
    add_resume_argument,
    check_device,
    prepare_out,
    progress_bar,
    write_json,
)

__all__ = ["PAPER_REGRET", "PRESETS", "add_arguments", "run", "parse_agent"]

PRESETS: dict[str, dict[str, int]] = {
    "quick": {"steps": 2000, "num_batches": 4},
    "paper": {"steps": 50_000, "num_batches": 64},
}
"""Option values of each preset."""
PAPER_REGRET = {"bbb": 5_700, "greedy": 8_000, "eps0.01": 18_000, "eps0.05": 38_000}
"""Cumulative regret at 50,000 steps read off the paper's Figure 5 (approximate)."""
_RECORD_EVERY = 100
# Options that do not change the result (where it goes, how it is shown, how far it goes).
_NOT_SETTINGS = (
    "out",
    "resume",
    "no_progress",
    "device",
    "engine",
    "threads",
    "run",
    "job",
    "steps",
    "data_dir",
)


def parse_agent(name: str) -> str:
    """Check an agent name: ``bbb``, ``greedy`` or ``eps<E>`` with ``0 < E <= 1``.

    Raises:
        argparse.ArgumentTypeError: For another name.
    """
    if name in ("bbb", "greedy"):
        return name
    if name.startswith("eps"):
        try:
            epsilon = float(name[3:])
        except ValueError:
            epsilon = math.nan
        if 0.0 < epsilon <= 1.0:
            return name
    raise argparse.ArgumentTypeError(
        f"unknown agent {name!r}: choose bbb, greedy or eps<E> with 0 < E <= 1 (e.g. eps0.05)"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out_argument(p, "explicit")
    p.add_argument("--data-dir", type=Path, help="folder with mushroom/ (else PYRO_DWP_DATA)")
    p.add_argument(
        "--agents",
        nargs="+",
        type=parse_agent,
        default=["bbb", "greedy", "eps0.01", "eps0.05"],
        help="bbb (Thompson sampling), greedy, eps<E> (epsilon-greedy)",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    o = p.add_argument_group("overrides of the preset (default: the preset's value)")
    o.add_argument("--steps", type=int, help="bandit steps (quick 2,000; paper 50,000)")
    o.add_argument("--num-batches", type=int, help="minibatches per step (quick 4; paper 64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--buffer-size", type=int, default=4096, help="interactions kept")
    p.add_argument("--hidden", type=int, nargs="+", default=[100, 100], help="hidden layer sizes")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (every agent)")
    p.add_argument("--particles", type=int, default=2, help="BBB weight samples per SVI step")
    p.add_argument("--pi", type=float, default=0.5, help="scale-mixture weight pi")
    p.add_argument("--neg-log-sigma1", type=float, default=0.0, help="-log sigma1")
    p.add_argument("--neg-log-sigma2", type=float, default=6.0, help="-log sigma2")
    p.add_argument("--init-scale", type=float, default=0.01, help="initial posterior sigma")
    p.add_argument("--noise", type=float, default=1.0, help="BBB likelihood noise std (fixed)")
    p.add_argument(
        "--learn-noise",
        action="store_true",
        help="learn the BBB noise std as a point estimate instead (starts at --noise)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the stream and the agents")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    add_device_argument(p)
    p.add_argument(
        "--engine",
        choices=["pyro", "compiled"],
        default="pyro",
        help="the BBB agent's SVI steps: Pyro's SVI, or the same steps compiled to plain "
        "PyTorch (pyro_dwp.infer.compiled; equal to float rounding; not a run setting, so a run "
        "resumes under either) (default: pyro)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads during the run (the nets are small: one thread is the fastest, "
        "and several collapse on a loaded machine)",
    )
    add_resume_argument(p, "--steps")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the agents side by side; write and return the regrets and the settings."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    check_device(args.device)
    for flag in ("steps", "num_batches"):
        if getattr(args, flag) is None:
            setattr(args, flag, PRESETS[args.preset][flag])
    _check_args(args)
    out: Path = prepare_out(args.out)
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
    contexts, edible = load_mushroom(args.data_dir)
    device = torch.device(args.device)
    env = MushroomBandit(contexts.to(device), edible.to(device), seed=args.seed)
    pyro.set_rng_seed(args.seed)
    agents = {name: _make_agent(name, args, env.context_dim, device) for name in args.agents}
    logs = {name: RegretLog(_RECORD_EVERY) for name in args.agents}
    checkpoint = Checkpoint(
        out / "checkpoint.pt",
        device=device,
        remedy="run without --resume to start afresh, or use another --out",
    )
    # the settings as options, so that a refused checkpoint names them: "--lr: 0.001 -> 0.01"
    fingerprint = {f"--{k.replace('_', '-')}": v for k, v in settings.items()}
    start = 0
    if args.resume and checkpoint.exists():
        start = _restore(checkpoint, fingerprint, env, agents, logs)
        if not args.no_progress:
            tqdm.write(
                f"resumed at step {start} of {args.steps} from {checkpoint.path}", file=sys.stderr
            )
    bar = progress_bar(
        range(start, args.steps),
        desc="steps",
        disable=args.no_progress,
        initial=start,
        total=args.steps,
    )
    for step in bar:
        context = env.observe()
        oracle = env.oracle_reward()
        for name, agent in agents.items():
            action = agent.act(context)
            received = env.reward(action)
            logs[name].add(oracle, received)
            agent.learn(context, action, received)
        done = step + 1
        if done % args.checkpoint_every == 0 or done == args.steps:
            bar.set_postfix({n: f"{log.total:.0f}" for n, log in logs.items()}, refresh=False)
            checkpoint.save(
                done,
                fingerprint,
                env=env.state_dict(),
                agents={n: a.state_dict() for n, a in agents.items()},
                regret={n: log.state_dict() for n, log in logs.items()},
            )
    result = {
        "steps": args.steps,
        "seed": args.seed,
        "regret": {n: log.total for n, log in logs.items()},
        "every": _RECORD_EVERY,
        "curves": {n: log.curve for n, log in logs.items()},
        "seconds": time.perf_counter() - t0,
        "settings": settings,
    }
    write_json(out / "regret.json", result)
    (out / "regret.md").write_text(_table(result, args.preset))
    _plot(out / "regret.png", result)
    return {k: v for k, v in result.items() if k != "curves"}


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("steps", "num_batches", "batch_size", "buffer_size", "particles"):
        value = getattr(args, flag)
        if value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if len(set(args.agents)) != len(args.agents):
        raise ValueError(f"--agents names an agent twice: {args.agents}")
    if not (args.lr > 0 and args.init_scale > 0 and args.noise > 0 and 0 < args.pi < 1):
        raise ValueError(
            f"--lr, --init-scale and --noise must be > 0 and --pi in (0, 1), got {args.lr}, "
            f"{args.init_scale}, {args.noise}, {args.pi}"
        )


def _make_agent(
    name: str, args: argparse.Namespace, context_dim: int, device: torch.device
) -> GreedyAgent | ThompsonBBBAgent:
    """The agent ``name``, its seed derived from ``--seed`` and its name (so an agent's run does
    not depend on which others run beside it)."""
    common: dict[str, Any] = {
        "seed": args.seed * 1000 + zlib.crc32(name.encode()) % 1000,
        "hidden": tuple(args.hidden),
        "buffer_size": args.buffer_size,
        "batch_size": args.batch_size,
        "num_batches": args.num_batches,
        "lr": args.lr,
        "device": device,
    }
    if name == "bbb":
        return ThompsonBBBAgent(
            context_dim,
            num_particles=args.particles,
            pi=args.pi,
            sigma1=sigma_from_neg_log(args.neg_log_sigma1, "--neg-log-sigma1"),
            sigma2=sigma_from_neg_log(args.neg_log_sigma2, "--neg-log-sigma2"),
            init_scale=args.init_scale,
            noise=None if args.learn_noise else args.noise,
            init_noise=args.noise,
            engine=args.engine,
            **common,
        )
    epsilon = 0.0 if name == "greedy" else float(name[3:])
    return GreedyAgent(context_dim, epsilon=epsilon, **common)


def _restore(
    checkpoint: Checkpoint,
    fingerprint: dict[str, Any],
    env: MushroomBandit,
    agents: dict[str, GreedyAgent | ThompsonBBBAgent],
    logs: dict[str, RegretLog],
) -> int:
    """Load the checkpoint into the run (the RNGs last, after the agents' set-up draws); return
    its step.

    Raises:
        CheckpointError: If the checkpoint is unreadable, of an older format or was written with
            other settings (naming each, old -> new).
    """
    state = checkpoint.load(fingerprint)
    env.load_state_dict(state["env"])
    for name, agent in agents.items():
        agent.load_state_dict(state["agents"][name])
        logs[name].load_state_dict(state["regret"][name])
    checkpoint.restore_rng(state)
    return state["epoch"]


def _table(result: dict[str, Any], preset: str) -> str:
    """The markdown table of the cumulative regrets at the last step."""
    steps = result["steps"]
    lines = [
        f"# Mushroom bandit: cumulative regret at {steps:,} steps (seed {result['seed']}, "
        f"{preset} preset{'' if steps == 50_000 else ', not the paper protocol'})",
        "",
        "| agent | cumulative regret | regret per 1,000 steps | paper at 50,000 steps (approx.) |",
        "|---|---:|---:|---:|",
    ]
    for name, total in result["regret"].items():
        paper = PAPER_REGRET.get(name)
        paper_text = f"{paper:,}" if paper is not None else "-"
        lines.append(f"| {name} | {total:,.0f} | {1000 * total / steps:,.0f} | {paper_text} |")
    lines += ["", "A uniformly random agent loses about 4,900 per 1,000 steps."]
    return "\n".join(lines) + "\n"


def _plot(path: Path, result: dict[str, Any]) -> None:
    """Cumulative regret against steps, log y (values <= 0 are not drawn)."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it is

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    every = result["every"]
    for name, curve in result["curves"].items():
        ax.plot([every * (i + 1) for i in range(len(curve))], curve, label=name)
    ax.set_yscale("log", nonpositive="mask")
    ax.set(xlabel="step", ylabel="cumulative regret", title="Mushroom bandit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)

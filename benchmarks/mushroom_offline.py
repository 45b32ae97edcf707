"""Mushroom bandit, offline: fresh agents fitted on one fixed buffer, their policies over time.

Takes the replay buffer of members of a ``pyro-dwp mushroom --engine lockstep`` run (each
``--source``'s last 4,096 interactions, from the checkpoint), gives a copy of each to a set of
fresh agents (BBB with the likelihood noise of each ``--noise``, fixed or, with
``--learn-noise``, its start; and a greedy network; all of
them for every source, in one batched runner whose "seeds" are the sources), and trains them on
it exactly as the bandit does (the run's network, prior, learning rate, initial scale,
``num_batches`` updates of its minibatch size per step, the data term scaled by the full
buffer; the KL spread by ``--kl-scheme``), without new interactions. Every ``--every`` steps it
reads each agent's policy over all 8,124 mushrooms as ``mushroom_posterior.py`` does: the mean
network's mistakes and, for BBB, Thompson sampling's eat rates and the regret per 1,000 steps
they imply on a uniform stream.

It separates what the data allow from what the online run did: the same buffer, fitted from a
fresh start, for a measured number of updates, under several likelihoods. One generator
(``--seed``) draws the minibatches, the weight noise and the readings' Thompson draws, so
``--every`` and ``--draws`` are part of a run's settings. Writes
``NAME.{md,json}`` (``--name``, default ``mushroom_offline``) to ``--results-dir``::

    python benchmarks/mushroom_offline.py --checkpoint runs/mushroom/checkpoint.pt \\
        --source bbb:0 eps0.05:0 --steps 300 --every 50 --noise 1 3 10 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, get_args

import torch
from mushroom_posterior import all_inputs, load_lockstep, member_report, poisonous_meals

from pyro_dwp.data.mushroom import load_mushroom
from pyro_dwp.experiments.bandit_lockstep import LockstepBandit
from pyro_dwp.experiments.bandits import EAT, bandit_net
from pyro_dwp.experiments.regression import sigma_from_neg_log
from pyro_dwp.infer.kl import KLScheme

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _source(text: str) -> tuple[str, int]:
    """``AGENT:SEED`` -> ``(agent, seed)``."""
    agent, _, seed = text.rpartition(":")
    if not agent or not seed.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"--source takes AGENT:SEED, e.g. bbb:0, got {text!r}")
    return agent, int(seed)


def _label(noise: float) -> str:
    return "bbb" if noise == 1.0 else f"bbb:noise{noise:g}"


def fit(args: argparse.Namespace) -> dict[str, Any]:
    """Train the fresh agents on the source buffers; the reports every ``--every`` steps."""
    runner_state, settings, members = load_lockstep(args.checkpoint)
    for agent, seed in args.source:
        if (agent, seed) not in members:
            raise ValueError(f"--source {agent}:{seed} is not among the run's members {members}")
    sources = [members.index(s) for s in dict.fromkeys(args.source)]
    contexts, edible = load_mushroom(args.data_dir)
    hidden = tuple(settings["--hidden"])
    noises = list(dict.fromkeys(args.noise))
    agents = [*(_label(v) for v in noises), "greedy"]
    runner = LockstepBandit(
        contexts, edible, agents=agents, seeds=list(range(len(sources))), hidden=hidden,
        buffer_size=runner_state["buffer_y"].shape[1], batch_size=settings["--batch-size"],
        num_batches=settings["--num-batches"], num_particles=settings["--particles"],
        lr=settings["--lr"], init_scale=settings["--init-scale"], pi=settings["--pi"],
        sigma1=sigma_from_neg_log(settings["--neg-log-sigma1"], "--neg-log-sigma1"),
        sigma2=sigma_from_neg_log(settings["--neg-log-sigma2"], "--neg-log-sigma2"),
        kl_scheme=args.kl_scheme, learn_noise=args.learn_noise,
        overrides={_label(v): {"noise": v} for v in noises if v != 1.0},
        rng_seed=args.seed,
    )  # fmt: skip
    fresh = runner.state_dict()  # member (agent, i): the buffer of source i
    source_of = [sources[i] for _, i in runner.members]
    fresh["buffer_x"] = runner_state["buffer_x"][source_of].clone()
    fresh["buffer_y"] = runner_state["buffer_y"][source_of].clone()
    fresh["interactions"] = runner_state["interactions"].clone()
    runner.load_state_dict(fresh)
    net = bandit_net(contexts.shape[1], hidden)
    inputs = all_inputs(contexts)
    gen = torch.Generator().manual_seed(args.seed)
    reports: dict[int, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    size = min(runner.buffer_size, int(runner_state["interactions"]))
    for step in range(1, args.steps + 1):
        for k in range(runner.num_batches):
            rows = torch.randint(size, (len(runner.members), runner.batch_size), generator=gen)
            eps = torch.randn(
                runner.num_bbb, runner.num_particles, runner.num_weights, generator=gen
            )
            runner.update(rows, eps, k)
        if step % args.every == 0 or step == args.steps:
            flat = runner.params.detach()
            reports[step] = [
                member_report(runner, m, flat, net, inputs, edible, args.draws, gen)
                | _noise(runner, m, flat)
                for m in range(len(runner.members))
            ]
            seconds = time.perf_counter() - t0
            print(f"step {step} ({seconds:.0f} s): " + ", ".join(
                f"{r['agent']}/{r['seed']} {r['implied_regret_per_1000']:.0f}"
                for r in reports[step]
            ), flush=True)  # fmt: skip
    return {
        "checkpoint": str(args.checkpoint),
        "sources": [
            {"agent": members[i][0], "seed": members[i][1], "slot": slot}
            | _buffer_counts(runner_state, i, contexts, edible)
            for slot, i in enumerate(sources)
        ],
        "learn_noise": args.learn_noise,
        "reports": {str(k): v for k, v in reports.items()},
    }


def _noise(runner: LockstepBandit, member: int, flat: torch.Tensor) -> dict[str, float]:
    """A BBB member's learnt noise standard deviation (``--learn-noise``), else nothing."""
    params = runner.named_parameters(member, flat)
    return {"noise": float(params["log_noise"].exp())} if "log_noise" in params else {}


def _buffer_counts(
    runner_state: dict[str, Any], member: int, contexts: torch.Tensor, edible: torch.Tensor
) -> dict[str, int]:
    """What a member's buffer holds: meals, poisonous meals, and -35 rewards."""
    stored = min(int(runner_state["interactions"]), runner_state["buffer_y"].shape[1])
    x, y = runner_state["buffer_x"][member, :stored], runner_state["buffer_y"][member, :stored]
    eaten = x[:, contexts.shape[1] + EAT] == 1
    return {
        "interactions": len(y),
        "meals": int(eaten.sum()),
        "poisonous_meals": int(poisonous_meals(x, contexts, edible).sum()),
        "rewards_of_minus_35": int((y == -35).sum()),
    }


def table(result: dict[str, Any]) -> str:
    """The markdown report: implied regret per 1,000 steps by agent, source and step."""
    steps = list(result["reports"])
    lines = [
        "# Mushroom bandit offline: fresh agents fitted on fixed buffers",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Buffers of `{result['checkpoint']}`:",
        "",
        *(
            f"- source {b['slot']}: member {b['agent']} seed {b['seed']}, {b['interactions']:,} "
            f"interactions, {b['meals']:,} meals, {b['poisonous_meals']} of them poisonous "
            f"({b['rewards_of_minus_35']} paid -35)"
            for b in result["sources"]
        ),
        "",
        "Regret per 1,000 steps that each policy implies on a uniform stream (BBB: Thompson "
        "sampling; greedy: its network's choices), after S steps of fitting "
        "(mean network's poisonous eaten / edible passed in brackets"
        + ("; the learnt noise sd" if result["learn_noise"] else "")
        + "). BBB agents are named by their likelihood noise"
        + (" at the start" if result["learn_noise"] else "")
        + ":",
        "",
        "| agent | source | " + " | ".join(f"S = {s}" for s in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    first = result["reports"][steps[0]]
    for i in sorted(range(len(first)), key=lambda i: (first[i]["seed"], i)):
        cells = []
        for s in steps:
            r = result["reports"][s][i]
            mistakes = f"{r['mean_net_eats_poisonous']} / {r['mean_net_passes_edible']}"
            noise = f"; noise {r['noise']:.2f}" if "noise" in r else ""
            cells.append(f"{r['implied_regret_per_1000']:.0f} ({mistakes}{noise})")
        lines.append(f"| {first[i]['agent']} | {first[i]['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a lockstep run's checkpoint.pt")
    p.add_argument(
        "--source", type=_source, nargs="+", required=True, help="AGENT:SEED whose buffers to fit"
    )
    p.add_argument("--steps", type=int, default=300, help="bandit steps of fitting")
    p.add_argument("--every", type=int, default=50, help="steps between readings")
    p.add_argument(
        "--noise", type=float, nargs="+", default=[1.0, 3.0, 10.0], help="BBB likelihood noises"
    )
    p.add_argument(
        "--kl-scheme",
        choices=get_args(KLScheme),
        default="uniform",
        help="the fresh BBB agents' (pyro-dwp mushroom --kl-scheme; default: uniform)",
    )
    p.add_argument(
        "--learn-noise",
        action="store_true",
        help="the BBB agents learn their noise, starting from their --noise",
    )
    p.add_argument("--draws", type=int, default=20, help="Thompson draws per reading")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh agents and the draws")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, help="folder with mushroom/ (else PYRO_DWP_DATA)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--name", default="mushroom_offline", help="stem of the result files (NAME.md, NAME.json)"
    )
    args = p.parse_args(argv)
    for name in ("steps", "every", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.draws < 2:
        raise ValueError(f"--draws must be >= 2, got {args.draws}")
    if any(not v > 0 for v in args.noise):
        raise ValueError(f"--noise values must be > 0, got {args.noise}")
    torch.set_num_threads(args.threads)
    result = fit(args)
    result["command"] = shlex.join(
        [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
    )
    text = table(result)
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.md").write_text(text)
    (args.results_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

"""Mushroom bandit: how fast trained agents forget the poisonous mushrooms.

Takes members of a ``pyro-dwp mushroom --engine lockstep`` run at its checkpoint (their
parameters, Adam state and last 4,096 interactions) and keeps training each of them exactly as
the bandit does (``num_batches`` updates of its minibatch size per step, the data term scaled by
the full buffer), without new interactions, on one of two buffers:

- ``own``: the member's buffer as it is (the control);
- ``no-poisonous-meals``: the same buffer without its meals of a poisonous mushroom, i.e. what the
  buffer holds once an agent stops eating them for 4,096 steps.

``--lr`` trains on at another rate than the run's (the Adam moments carried over).
``--kl-divisor D`` weights the KL term as for a buffer of ``D`` times its size (the data term
scaled by ``D * 4,096 / B`` instead of ``4,096 / B``; ``D = 1`` is the run's weighting): with a
large ``D`` the prior's pull all but vanishes, which separates what the KL term does from what
the weight noise does.

Every ``--every`` steps it reads each member's policy over all 8,124 mushrooms as
``mushroom_posterior.py`` does (the mean network's poisonous mushrooms eaten; for BBB, Thompson
sampling's eat rates and the regret per 1,000 steps they imply). The question it answers: once
the evidence against a poisonous mushroom has left the buffer, how many steps does an agent keep
passing it, BBB (whose KL term keeps pulling every weight to the prior) against the greedy
network (whose weights only the data move)? Writes ``NAME.{md,json}`` to ``--results-dir``::

    python benchmarks/mushroom_forgetting.py --checkpoint DIR/checkpoint.pt \\
        --members bbb:0 bbb:1 greedy:0 greedy:1 --steps 200 --every 20 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from mushroom_offline import _source
from mushroom_posterior import all_inputs, load_lockstep, member_report, poisonous_meals
from torch import Tensor

from pyro_dwp.data.mushroom import load_mushroom
from pyro_dwp.experiments.bandit_lockstep import LockstepBandit, agent_epsilon
from pyro_dwp.experiments.bandits import bandit_net
from pyro_dwp.experiments.regression import sigma_from_neg_log

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUFFERS = ("own", "no-poisonous-meals")


def member_state(
    source: dict[str, Any], members: list[tuple[str, int]], runner: LockstepBandit
) -> dict[str, Any]:
    """``runner``'s state made of the ``source`` run's state (members ``members``, in its flat
    layout: every bbb member's ``mu``, then every bbb member's ``rho``, then the others'
    weights): parameters, Adam moments and buffers of ``runner.members`` picked out."""
    w, nb = runner.num_weights, sum(1 for a, _ in members if agent_epsilon(a) is None)

    def pick(flat: Tensor) -> Tensor:
        mus, rhos, others = [], [], []
        for member in runner.members:
            i = members.index(member)
            if i < nb:
                mus.append(flat[i * w : (i + 1) * w])
                rhos.append(flat[(nb + i) * w : (nb + i + 1) * w])
            else:
                others.append(flat[(nb + i) * w : (nb + i + 1) * w])
        return torch.cat(mus + rhos + others)

    rows = [members.index(m) for m in runner.members]
    state = runner.state_dict()
    state |= {k: pick(source[k]) for k in ("params", "adam_m", "adam_v")}
    state |= {k: source[k][rows].clone() for k in ("buffer_x", "buffer_y")}
    state |= {k: source[k].clone() for k in ("adam_steps", "interactions")}
    return state


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the members on each buffer; their reports every ``--every`` steps."""
    source, settings, members = load_lockstep(args.checkpoint)
    for member in args.members:
        if member not in members or member[0].startswith("bbb:"):
            raise ValueError(f"--members: {member} is not among the run's bbb / greedy / eps "
                             f"members {members}")  # fmt: skip
    contexts, edible = load_mushroom(args.data_dir)
    hidden = tuple(settings["--hidden"])
    net = bandit_net(contexts.shape[1], hidden)
    inputs = all_inputs(contexts)
    stored = min(int(source["interactions"]), source["buffer_y"].shape[1])
    lr = args.lr or settings["--lr"]
    out: dict[str, Any] = {"checkpoint": str(args.checkpoint), "kl_divisor": args.kl_divisor}
    out |= {"lr": lr, "buffers": {}}
    for buffer in args.buffers:
        runner = LockstepBandit(
            contexts, edible, agents=list(dict.fromkeys(a for a, _ in args.members)),
            seeds=list(dict.fromkeys(s for _, s in args.members)), hidden=hidden,
            buffer_size=source["buffer_y"].shape[1], batch_size=settings["--batch-size"],
            num_batches=settings["--num-batches"], num_particles=settings["--particles"],
            lr=lr, pi=settings["--pi"],
            init_scale=settings["--init-scale"],
            sigma1=sigma_from_neg_log(settings["--neg-log-sigma1"], "--neg-log-sigma1"),
            sigma2=sigma_from_neg_log(settings["--neg-log-sigma2"], "--neg-log-sigma2"),
            noise=settings["--noise"], kl_size="seen", rng_seed=args.seed,
        )  # fmt: skip
        picked = member_state(source, members, runner)
        # N of the KL weighting: the interactions "seen", the buffer's size times the divisor
        picked["interactions"] = torch.tensor(stored * args.kl_divisor)
        sizes = []
        for m in range(len(runner.members)):  # keep rows first, the rest never drawn
            x, y = picked["buffer_x"][m, :stored], picked["buffer_y"][m, :stored]
            keep = torch.ones(stored, dtype=torch.bool)
            if buffer == "no-poisonous-meals":
                keep = ~poisonous_meals(x, contexts, edible)
            sizes.append(int(keep.sum()))
            picked["buffer_x"][m, : sizes[-1]] = x[keep]
            picked["buffer_y"][m, : sizes[-1]] = y[keep]
        runner.load_state_dict(picked)
        size = torch.tensor(sizes, dtype=torch.float32).unsqueeze(1)  # (E, 1)
        gen = torch.Generator().manual_seed(args.seed)
        reports = {0: _reports(runner, net, inputs, edible, args.draws, gen)}
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            for k in range(runner.num_batches):
                shape = (len(runner.members), runner.batch_size)
                rows = (torch.rand(shape, generator=gen) * size).long()
                eps = torch.randn(
                    runner.num_bbb, runner.num_particles, runner.num_weights, generator=gen
                )
                runner.update(rows, eps, k)
            if step % args.every == 0 or step == args.steps:
                reports[step] = _reports(runner, net, inputs, edible, args.draws, gen)
                print(f"{buffer}, step {step} ({time.perf_counter() - t0:.0f} s): " + ", ".join(
                    f"{r['agent']}/{r['seed']} {r['mean_net_eats_poisonous']}"
                    for r in reports[step]
                ), flush=True)  # fmt: skip
        out["buffers"][buffer] = {
            "rows": dict(zip((f"{a}:{s}" for a, s in runner.members), sizes, strict=True)),
            "reports": {str(k): v for k, v in reports.items()},
        }
    return out


def _reports(
    runner: LockstepBandit, net: torch.nn.Module, inputs: Tensor, edible: Tensor, draws: int,
    gen: torch.Generator,
) -> list[dict[str, Any]]:  # fmt: skip
    flat = runner.params.detach()
    return [
        member_report(runner, m, flat, net, inputs, edible, draws, gen)
        for m in range(len(runner.members))
    ]


def table(result: dict[str, Any]) -> str:
    """The markdown report: the mean network's poisonous mushrooms eaten (and for BBB the
    implied regret per 1,000 steps) by member, buffer and step."""
    lines = [
        "# Mushroom bandit: how fast trained agents forget the poisonous mushrooms",
        "",
        f"Command: `{result['command']}`",
        "",
        "Each cell: the mean network's poisonous mushrooms eaten (of 3,916); for BBB also the "
        "regret per 1,000 steps that Thompson sampling implies on a uniform stream.",
        "",
    ]
    for buffer, block in result["buffers"].items():
        steps = list(block["reports"])
        lines += [
            f"## Buffer: {buffer} (rows kept: "
            + ", ".join(f"{m} {n:,}" for m, n in block["rows"].items())
            + ")",
            "",
            "| member | " + " | ".join(f"step {s}" for s in steps) + " |",
            "|---|" + "---|" * len(steps),
        ]
        for m, first in enumerate(block["reports"][steps[0]]):
            cells = []
            for s in steps:
                r = block["reports"][s][m]
                cell = f"{r['mean_net_eats_poisonous']}"
                if "p_eat_poisonous" in r:
                    cell += f" ({r['implied_regret_per_1000']:.0f})"
                cells.append(cell)
            lines.append(f"| {first['agent']} seed {first['seed']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a lockstep run's checkpoint.pt")
    p.add_argument("--members", type=_source, nargs="+", required=True, help="AGENT:SEED ...")
    p.add_argument("--steps", type=int, default=200, help="bandit steps of training")
    p.add_argument("--every", type=int, default=20, help="steps between readings")
    p.add_argument("--buffers", nargs="+", choices=BUFFERS, default=list(BUFFERS))
    p.add_argument("--lr", type=float, default=None, help="Adam's rate (default: the run's)")
    p.add_argument("--kl-divisor", type=int, default=1, help="KL as for D x the buffer's size")
    p.add_argument("--draws", type=int, default=100, help="Thompson draws per reading")
    p.add_argument("--seed", type=int, default=0, help="seed of minibatches, noise and draws")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with mushroom/")
    p.add_argument("--name", default="mushroom_forgetting", help="results file name")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if min(args.steps, args.every, args.draws, args.kl_divisor) < 1:
        p.error("--steps, --every, --draws and --kl-divisor must be >= 1")
    if args.lr is not None and not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = {"command": shlex.join(["mushroom_forgetting.py", *sys.argv[1:]])} | run(args)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.results_dir / f"{args.name}.md").write_text(table(result))
    print(table(result))
    return result


if __name__ == "__main__":
    main()

"""What the Mushroom agents have learnt: a lockstep run's checkpoint, read on the CPU.

For each member of a ``pyro-dwp mushroom --engine lockstep`` run (the checkpoint's parameters,
whichever device wrote them), over all 8,124 mushrooms:

- every agent: how many poisonous mushrooms the mean network (``bbb``: the posterior mean)
  would eat and how many edible ones it would pass (for the others also the regret per 1,000
  steps that its greedy choices imply, as below);
- ``bbb`` and its variants ``bbb:<label>``: the quantiles of the posterior sigmas, the
  probability that a Thompson draw eats a poisonous mushroom (overall and per odour) or an
  edible one, the sd of a draw's value of eating, and the regret per 1,000 steps these
  probabilities imply on a uniform stream (``15 P(poisonous) P(eat | poisonous) + 5 P(edible)
  P(pass | edible)``).

Prints a markdown table and writes ``mushroom_posterior.{md,json}`` to ``--results-dir``
(``benchmarks/results``)::

    python benchmarks/mushroom_posterior.py --checkpoint runs/mushroom/checkpoint.pt \\
        --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from pyro_dwp.data.mushroom import MUSHROOM_ATTRIBUTES, load_mushroom
from pyro_dwp.experiments.bandit_lockstep import LockstepBandit, agent_epsilon
from pyro_dwp.experiments.bandits import EAT, PASS, bandit_net, network_inputs
from pyro_dwp.infer.checkpoint import load_checkpoint

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_ODOUR = [name for name, _ in MUSHROOM_ATTRIBUTES].index("odor")
_ODOUR_START = sum(len(values) for _, values in MUSHROOM_ATTRIBUTES[:_ODOUR])
_ODOUR_VALUES = MUSHROOM_ATTRIBUTES[_ODOUR][1]


def load_lockstep(
    checkpoint: Path,
) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, int]]]:
    """A lockstep run's checkpoint: its runner state, its settings (the job's options) and
    its members ``(agent, seed)``, in the runner's order.

    Raises:
        ValueError: If ``checkpoint`` is not a checkpoint of ``--engine lockstep``.
    """
    state = load_checkpoint(checkpoint)
    if state.get("engine") != "lockstep":
        raise ValueError(f"{checkpoint} is not a checkpoint of --engine lockstep")
    runner_state = state["runner"]
    return runner_state, state["fingerprint"], [tuple(m) for m in runner_state["members"]]


def read(checkpoint: Path, data_dir: Path | None, draws: int, seed: int) -> list[dict[str, Any]]:
    """One report per member (see the module's docstring), in the checkpoint's member order."""
    runner_state, settings, members = load_lockstep(checkpoint)
    contexts, edible = load_mushroom(data_dir)
    runner = LockstepBandit(
        contexts, edible, agents=list(dict.fromkeys(a for a, _ in members)),
        seeds=list(dict.fromkeys(s for _, s in members)), hidden=tuple(settings["--hidden"]),
    )  # fmt: skip
    if runner.members != members or runner.params.shape != runner_state["params"].shape:
        raise ValueError(f"{checkpoint}: its members or networks are not a lockstep run's")
    flat = runner_state["params"].float()
    net = bandit_net(contexts.shape[1], tuple(settings["--hidden"]))
    inputs = all_inputs(contexts)
    gen = torch.Generator().manual_seed(seed)
    return [
        member_report(runner, m, flat, net, inputs, edible, draws, gen) for m in range(len(members))
    ]


@torch.no_grad()
def member_report(
    runner: LockstepBandit,
    member: int,
    flat: Tensor,
    net: torch.nn.Module,
    inputs: Tensor,
    edible: Tensor,
    draws: int,
    gen: torch.Generator,
) -> dict[str, Any]:
    """The report of ``runner``'s member ``member`` on the flat parameters ``flat`` (``net``:
    its network; ``inputs (2N, D + 2)`` of :func:`all_inputs`; ``edible (N,)``): the mean
    network's mistakes, and for ``bbb`` agents :func:`bbb_report`'s figures."""
    agent, seed = runner.members[member]
    params = runner.named_parameters(member, flat)
    report: dict[str, Any] = {"agent": agent, "seed": seed}
    if agent_epsilon(agent) is not None:  # not bbb or a bbb:<label> variant
        eat = _eats(functional_call(net, params, (inputs,)), len(edible))
        return (
            report
            | _mistakes(eat, edible)
            | {"implied_regret_per_1000": implied_regret(eat.float(), edible)}
        )
    loc = {k[4:]: v for k, v in params.items() if k.startswith("loc.")}
    sigma = {k[4:]: torch.nn.functional.softplus(v) for k, v in params.items() if k[:4] == "rho."}
    return report | bbb_report(net, loc, sigma, inputs, edible, draws, gen)


def poisonous_meals(x: Tensor, contexts: Tensor, edible: Tensor) -> Tensor:
    """Which rows of a buffer's inputs ``x (S, D + 2)`` are meals of a poisonous mushroom, the
    mushroom found by its context among ``contexts (N, D)`` (``edible (N,)``): bool ``(S,)``."""
    d = contexts.shape[1]
    index = {tuple(c.nonzero().flatten().tolist()): i for i, c in enumerate(contexts)}
    rows = torch.tensor([index[tuple(r[:d].nonzero().flatten().tolist())] for r in x])
    return (x[:, d + EAT] == 1) & ~edible[rows]


def all_inputs(contexts: Tensor) -> Tensor:
    """The network inputs of every mushroom eaten, then passed: ``(2N, D + 2)`` from
    ``contexts (N, D)``."""
    n = len(contexts)
    return torch.cat(
        [network_inputs(contexts, torch.full((n,), a, dtype=torch.long)) for a in (EAT, PASS)]
    )


def bbb_report(
    net: torch.nn.Module,
    loc: dict[str, Tensor],
    sigma: dict[str, Tensor],
    inputs: Tensor,
    edible: Tensor,
    draws: int,
    gen: torch.Generator,
) -> dict[str, Any]:
    """A BBB posterior (``loc`` and ``sigma`` per parameter of ``net``) over every mushroom
    (``inputs (2N, D + 2)`` of :func:`all_inputs`, ``edible (N,)``): the mean network's
    mistakes, the sigma quantiles and ``draws`` Thompson draws' eat rates (see the module's
    docstring)."""
    n = len(edible)
    odour = inputs[:n, _ODOUR_START : _ODOUR_START + len(_ODOUR_VALUES)].argmax(1)
    report: dict[str, Any] = _mistakes(_eats(functional_call(net, loc, (inputs,)), n), edible)
    every = torch.cat([s.flatten() for s in sigma.values()])
    report["sigma_quantiles"] = every.quantile(torch.tensor([0.1, 0.5, 0.9, 0.99])).tolist()
    eats, eat_values = [], []
    for _ in range(draws):
        w = {k: v + sigma[k] * torch.randn(v.shape, generator=gen) for k, v in loc.items()}
        values = functional_call(net, w, (inputs,))
        eats.append(_eats(values, n).float())
        eat_values.append(values[:n, 0])
    p_eat = torch.stack(eats).mean(0)
    sd = torch.stack(eat_values).std(0)
    poisonous = ~edible
    return report | {
        "p_eat_poisonous": float(p_eat[poisonous].mean()),
        "p_eat_edible": float(p_eat[edible].mean()),
        "draw_sd_of_eating_poisonous": float(sd[poisonous].median()),
        "draw_sd_of_eating_edible": float(sd[edible].median()),
        "p_eat_poisonous_by_odour": {
            _ODOUR_VALUES[o]: float(p_eat[poisonous & (odour == o)].mean())
            for o in range(len(_ODOUR_VALUES))
            if bool((poisonous & (odour == o)).any())
        },
        "implied_regret_per_1000": implied_regret(p_eat, edible),
    }


def implied_regret(p_eat: Tensor, edible: Tensor) -> float:
    """Regret per 1,000 steps of a policy eating mushroom ``i`` with probability ``p_eat[i]``
    (``(N,)``), on a uniform stream: ``15 P(poisonous) P(eat | poisonous) + 5 P(edible)
    P(pass | edible)``."""
    poisonous = ~edible
    return (
        1000
        * float(15 * (p_eat * poisonous).sum() + 5 * ((1 - p_eat) * edible).sum())
        / len(edible)
    )


def _eats(values: Tensor, n: int) -> Tensor:
    """bool ``(N,)``: whether eating is worth more than passing, from values ``(2N, 1)``."""
    return values[:n, 0] > values[n:, 0]


def _mistakes(eat: Tensor, edible: Tensor) -> dict[str, int]:
    return {
        "mean_net_eats_poisonous": int((eat & ~edible).sum()),
        "mean_net_passes_edible": int((~eat & edible).sum()),
    }


def table(reports: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`read`'s reports."""
    lines = [
        "| member | mean net: poisonous eaten / edible passed | sigma q10 / 50 / 90 / 99 | "
        "P(eat) poisonous / edible (Thompson) | implied regret per 1,000 steps |",
        "|---|---|---|---|---|",
    ]
    for r in reports:
        mistakes = f"{r['mean_net_eats_poisonous']} / {r['mean_net_passes_edible']}"
        if "sigma_quantiles" not in r:  # not a bbb agent: its greedy policy's regret
            regret = r["implied_regret_per_1000"]
            lines.append(f"| {r['agent']} seed {r['seed']} | {mistakes} | | | {regret:.0f} |")
            continue
        q = " / ".join(f"{v:.4f}" for v in r["sigma_quantiles"])
        lines.append(
            f"| {r['agent']} seed {r['seed']} | {mistakes} | {q} | {r['p_eat_poisonous']:.4f} / "
            f"{r['p_eat_edible']:.4f} | {r['implied_regret_per_1000']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a lockstep run's checkpoint.pt")
    p.add_argument("--data-dir", type=Path, help="folder with mushroom/ (else PYRO_DWP_DATA)")
    p.add_argument("--draws", type=int, default=200, help="Thompson draws per bbb member")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.draws < 2:
        raise ValueError(f"--draws must be >= 2, got {args.draws}")
    reports = read(args.checkpoint, args.data_dir, args.draws, args.seed)
    command = shlex.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    text = f"# Mushroom agents read from {args.checkpoint}\n\nCommand: `{command}`\n\n"
    text += table(reports)
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "mushroom_posterior.md").write_text(text)
    result = {"checkpoint": str(args.checkpoint), "command": command, "members": reports}
    (args.results_dir / "mushroom_posterior.json").write_text(json.dumps(result, indent=2) + "\n")
    return reports


if __name__ == "__main__":
    main()

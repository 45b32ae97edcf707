"""``pyro-dwp mushroom``: the Mushroom contextual bandit of Blundell et al. (2015), Section 5.3.

Agents decide to eat or pass on a seeded stream of UCI mushrooms
(:mod:`pyro_dwp.experiments.bandits`), all on the same mushrooms and coin flips, each learning
online from the last ``--buffer-size`` interactions with ``--num-batches`` minibatches of
``--batch-size`` per step: ``bbb`` (Bayes by Backprop, Thompson sampling), ``greedy`` and ``eps<E>``
(epsilon-greedy, e.g. ``eps0.05``).

Presets: ``quick`` (the default: 2,000 steps of 4 minibatches, for a CPU), ``paper`` (50,000
steps of 64 minibatches, for a GPU) and ``tuned`` (``paper`` with the lowest BBB regret measured:
``--engine lockstep --kl-size capacity --lr-final-factor 0.01 --lr-decay-steps 3000
--scale-lr-factor 0.1``); a flag given overrides its preset's value.

Writes to ``--out``: ``regret.json`` (settings, steps done and, per agent, the cumulative regret
every 100 steps and at the end), ``regret.md`` (the table at the last step, beside the paper's
values at 50,000 steps), ``regret.png`` (cumulative regret against steps, log scale, as the
paper's Figure 5) and ``checkpoint.pt`` (every ``--checkpoint-every`` steps and at the end).

Engines (``--engine``): ``compiled`` (the default) and ``pyro`` run one agent object each (the
BBB agent's steps compiled to plain PyTorch, or through Pyro's SVI: equal to float rounding);
``lockstep`` runs every agent on every seed as one batched network, a bandit step captured as a
CUDA graph on ``--device cuda`` (:mod:`pyro_dwp.experiments.bandit_lockstep`: the same losses
and updates, its own random draws). ``--seeds S [S ...]`` runs several seeds in one lockstep
run; ``regret.json`` then holds the mean over the seeds (``regret``, ``curves``) and each seed's
(``per_seed``, ``per_seed_curves``).

Resume: explicit. ``--resume`` continues the run in ``--out`` from its ``checkpoint.pt`` (up to
``--steps``, which may differ) and gives the same result as an uninterrupted run; other settings
are refused. Without ``--resume`` the run starts afresh.
"""

from __future__ import annotations

import argparse
from typing import Any

from pyro_dwp.experiments.mushroom import add_arguments, run

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment with the parsed options; return its result (printed as JSON)."""
    return run(args)

"""The gradient step of the deterministic training loops (the MNIST baselines, the kernel VAE,
the DWP source nets): Adam, optionally with the rate decayed linearly to 0."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["AdamSteps"]


class AdamSteps:
    """Adam steps on ``params`` that keep the optimiser, the schedule and their state between
    calls, so a loop may stop and go on (and checkpoint ``optimizer.state_dict()``).

    Args:
        params: The parameters to train.
        lr: The (initial) learning rate.
        decay_steps: If given, the rate after ``t`` steps is ``lr * (1 - t / decay_steps)``
            (``torch.optim.lr_scheduler.LambdaLR``); else constant.
    """

    def __init__(
        self, params: Iterable[Tensor], lr: float, *, decay_steps: int | None = None
    ) -> None:
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.schedule = (
            None
            if decay_steps is None
            else torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda step: 1 - step / decay_steps
            )
        )

    def step(self, loss: Tensor) -> None:
        """One update down the gradient of the scalar ``loss``, then the schedule's step."""
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()

"""The gradient step of the deterministic training loops (the MNIST baselines, the kernel VAE,
the DWP source nets): Adam or SGD, optionally with the rate decayed linearly to 0."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor

__all__ = ["GradientSteps", "OptimizerName"]

OptimizerName = Literal["adam", "sgd"]
"""``torch.optim.Adam``, or ``torch.optim.SGD`` (with ``momentum``)."""


class GradientSteps:
    """Gradient steps on ``params`` that keep the optimiser, the schedule and their state
    between calls, so a loop may stop and go on (and checkpoint ``optimizer.state_dict()``).

    Args:
        params: The parameters to train.
        lr: The (initial) learning rate.
        decay_steps: If given, the rate after ``t`` steps is ``lr * (1 - t / decay_steps)``
            (``torch.optim.lr_scheduler.LambdaLR``); else constant.
        optimizer: ``"adam"`` or ``"sgd"``.
        momentum: SGD's momentum factor in ``[0, 1)`` (0 with Adam).

    Raises:
        ValueError: For another ``optimizer``, or a ``momentum`` out of range or given to Adam.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        *,
        decay_steps: int | None = None,
        optimizer: OptimizerName = "adam",
        momentum: float = 0.0,
    ) -> None:
        if optimizer == "adam":
            if momentum != 0:
                raise ValueError(f"momentum is SGD's; Adam was given momentum {momentum}")
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
        elif optimizer == "sgd":
            if not 0 <= momentum < 1:
                raise ValueError(f"momentum must be in [0, 1), got {momentum}")
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
        else:
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
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

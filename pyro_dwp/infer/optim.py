"""An optimiser for SVI that updates every parameter in one fused step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim
from torch import Tensor

__all__ = ["JointAdam"]


class JointAdam(PyroOptim):
    """Adam over all parameters at once, a drop-in for ``pyro.optim.Adam``.

    ``pyro.optim.Adam`` keeps one ``torch.optim.Adam`` per parameter and steps them one by one;
    this keeps a single ``torch.optim.Adam`` (``fused=True`` by default: one multi-tensor kernel)
    and adds parameters to it as SVI first sees them. The update is the same Adam update.
    States are saved per parameter name, as ``PyroOptim`` does, so checkpoints resume exactly.

    Args:
        lr: Learning rate.
        fused: Use PyTorch's fused implementation (CPU and CUDA).
        **kwargs: Other ``torch.optim.Adam`` arguments (``betas``, ``eps``, ``weight_decay``).
    """

    def __init__(self, lr: float = 1e-3, *, fused: bool = True, **kwargs: Any) -> None:
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        super().__init__(torch.optim.Adam, {"lr": lr, "fused": fused, **kwargs})
        self._optim: torch.optim.Adam | None = None
        self._seen: set[Tensor] = set()

    def __call__(self, params: Iterable[Tensor], *args, **kwargs) -> None:
        new = [p for p in params if p not in self._seen]
        if new:
            store = pyro.get_param_store()
            new.sort(key=store.param_name)  # a set from SVI: fix the order
            if self._optim is None:
                self._optim = torch.optim.Adam(new, **self.pt_optim_args)
            else:
                self._optim.add_param_group({"params": new})
            self._seen.update(new)
            for p in new:
                state = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
                if state is not None:
                    self._optim.state[p] = {k: v.to(p.device, copy=True) for k, v in state.items()}
        if self._optim is not None:
            self._optim.step()

    def get_state(self) -> dict[str, dict[str, Tensor]]:
        """``{param name: Adam state}`` of every parameter seen so far."""
        if self._optim is None:
            return dict(self._state_waiting_to_be_consumed)
        store = pyro.get_param_store()
        return {
            store.param_name(p): {k: v.detach().clone() for k, v in s.items()}
            for p, s in self._optim.state.items()
        }

    def set_state(self, state: dict[str, dict[str, Tensor]]) -> None:
        """Load states saved by :meth:`get_state`; applied when each parameter is first seen."""
        self._state_waiting_to_be_consumed = dict(state)

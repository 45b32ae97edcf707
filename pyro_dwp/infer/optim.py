"""Optimisers for SVI that update every parameter in one fused step (Adam or SGD)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim
from torch import Tensor

__all__ = ["JointAdam", "JointOptimizer", "JointSGD", "linear_decay", "name_rate_factor"]


def linear_decay(epoch: int, epochs: int) -> float:
    """The rate factor ``1 - epoch / epochs``: a rate decayed linearly to 0 over ``epochs``
    schedule steps (``JointAdam(lr, lr_lambda=functools.partial(linear_decay, epochs=E))``,
    stepped once per epoch; the last of ``E`` epochs runs at ``lr / E``)."""
    return 1 - epoch / epochs


def name_rate_factor(name: str, *, contains: str, factor: float) -> float:
    """``factor`` for a parameter whose store name contains ``contains``, else 1: an
    ``lr_factor`` of :class:`JointOptimizer` (``functools.partial(name_rate_factor,
    contains=".scales.", factor=K)``: ``K`` times the rate for :class:`~pyro_dwp.guides.BBBNormal`'s
    posterior scales)."""
    return factor if contains in name else 1.0


class JointOptimizer(PyroOptim):
    """One ``torch.optim`` optimiser over all parameters at once, a drop-in for Pyro's wrappers.

    ``pyro.optim.Adam`` (and every ``pyro.optim`` wrapper) keeps one ``torch.optim`` optimiser
    per parameter and steps them one by one; this keeps a single one (``fused=True`` by
    default: one multi-tensor kernel) and adds parameters to it as SVI first sees them. The
    update is the same. States are saved per parameter name, as ``PyroOptim`` does, so
    checkpoints resume exactly. Subclasses name the optimiser (:class:`JointAdam`,
    :class:`JointSGD`).

    With ``lr_lambda`` it is also a drop-in for ``pyro.optim.LambdaLR`` (one scheduler per
    parameter there): the rate is ``lr * lr_lambda(e)`` after ``e`` calls of :meth:`step`, the
    schedule's step (e.g. once per epoch); its count is saved with the state.

    With ``lr_factor`` each parameter's rate is multiplied by ``lr_factor(name)`` of its store
    name (one parameter group per factor): a drop-in for a ``pyro.optim`` wrapper whose
    arguments are a function of the parameter's name.

    Args:
        torch_optimizer: The ``torch.optim`` class.
        lr: Learning rate.
        fused: Use PyTorch's fused implementation (CPU and CUDA).
        lr_lambda: Optional schedule ``e -> factor`` of the rate, as ``torch.optim.lr_scheduler
            .LambdaLR``'s.
        lr_factor: Optional ``name -> factor > 0`` of each parameter's rate (e.g.
            :func:`name_rate_factor`).
        **kwargs: Other arguments of ``torch_optimizer``.
    """

    STATE_KEYS: frozenset[str] = frozenset()
    """The keys of one parameter's state that this optimiser keeps (a state with others was
    saved by another optimiser)."""

    SCHEDULE_KEY = "__schedule__"
    """The key of :meth:`get_state` that holds the schedule's step count (no parameter's name)."""

    def __init__(
        self,
        torch_optimizer: type[torch.optim.Optimizer],
        lr: float = 1e-3,
        *,
        fused: bool = True,
        lr_lambda: Callable[[int], float] | None = None,
        lr_factor: Callable[[str], float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0 < lr < math.inf:
            raise ValueError(f"learning rate must be finite and > 0, got {lr}")
        super().__init__(torch_optimizer, {"lr": lr, "fused": fused, **kwargs})
        self._optim: torch.optim.Optimizer | None = None
        self._seen: set[Tensor] = set()
        self.lr_lambda = lr_lambda
        self.lr_factor = lr_factor
        self._schedule_steps = 0
        self._capture_device: torch.device | None = None  # see make_capturable

    @property
    def current_lr(self) -> float:
        """The rate now: ``lr``, times ``lr_lambda`` of the schedule's step count."""
        lr = self.pt_optim_args["lr"]
        return lr if self.lr_lambda is None else lr * self.lr_lambda(self._schedule_steps)

    def step(self) -> None:
        """Advance the learning-rate schedule by one step (``LambdaLR.step``).

        Raises:
            RuntimeError: If the optimiser has no ``lr_lambda``.
        """
        if self.lr_lambda is None:
            raise RuntimeError(
                f"{type(self).__name__}.step advances a schedule: build it with lr_lambda="
            )
        self._schedule_steps += 1
        self._apply_lr()

    def _apply_lr(self) -> None:
        """Set every parameter group's rate to :attr:`current_lr` times the group's factor (a
        device tensor in place: a captured step reads it from there)."""
        if self._optim is not None:
            for group in self._optim.param_groups:
                rate = self.current_lr * group.get("lr_factor", 1.0)
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(rate)
                else:
                    group["lr"] = rate

    def make_capturable(self, device: torch.device) -> None:
        """Let a CUDA graph capture the update (:class:`~pyro_dwp.infer.graphs.GraphedSVI`):
        the rate a ``()`` float32 tensor on ``device`` that the schedule fills in place, so that
        a replayed update reads the rate of the moment (and, for Adam, ``torch.optim.Adam``'s
        ``capturable`` mode, its step counts on the device as the fused update keeps them
        already). The update is the same as before. Idempotent.

        Raises:
            RuntimeError: Before the first update (no parameters yet), or if not ``fused``.
        """
        if self._optim is None:
            raise RuntimeError("make_capturable needs the parameters: take one update first")
        if not self.pt_optim_args["fused"]:
            raise RuntimeError("only the fused update (fused=True) is made capturable")
        self._capture_device = device
        self._capturable_groups()

    def _capturable_groups(self) -> None:
        """Put every parameter group in the mode of :meth:`make_capturable`, once it was asked."""
        if self._optim is None or self._capture_device is None:
            return
        for group in self._optim.param_groups:
            if "capturable" in group:  # Adam's flag; SGD keeps no step count
                group["capturable"] = True
            if not isinstance(group["lr"], Tensor):
                lr = torch.tensor(group["lr"], dtype=torch.float32, device=self._capture_device)
                group["lr"] = lr

    def __call__(self, params: Iterable[Tensor], *args, **kwargs) -> None:
        new = [p for p in params if p not in self._seen]
        if new:
            store = pyro.get_param_store()
            new.sort(key=store.param_name)  # a set from SVI: fix the order
            for group in self._new_groups(new):
                if self._optim is None:
                    args = {**self.pt_optim_args, "lr": self.current_lr}
                    self._optim = self.pt_optim_constructor([group], **args)
                else:
                    self._optim.add_param_group(group)
            self._capturable_groups()
            self._seen.update(new)
            for p in new:
                state = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
                if state is not None:
                    self._optim.state[p] = {k: v.to(p.device, copy=True) for k, v in state.items()}
        if self._optim is not None:
            self._optim.step()

    def _new_groups(self, params: list[Tensor]) -> list[dict[str, Any]]:
        """Parameter groups for ``params``: one at the current rate, or with ``lr_factor`` one
        per factor (its rate and ``"lr_factor"``), in the order of ``params``.

        Raises:
            ValueError: If ``lr_factor`` gives a parameter a factor that is not > 0.
        """
        if self.lr_factor is None:
            return [{"params": params, "lr": self.current_lr}]
        store = pyro.get_param_store()
        by_factor: dict[float, list[Tensor]] = {}
        for p in params:
            name = store.param_name(p)
            factor = float(self.lr_factor(name))
            if not factor > 0:
                raise ValueError(f"lr_factor gives parameter {name!r} the factor {factor}")
            by_factor.setdefault(factor, []).append(p)
        return [
            {"params": ps, "lr": self.current_lr * f, "lr_factor": f} for f, ps in by_factor.items()
        ]

    def get_state(self) -> dict[str, dict[str, Tensor]]:
        """``{param name: optimiser state}`` of every parameter seen so far (and, with a schedule,
        ``{SCHEDULE_KEY: {"steps": n}}``)."""
        if self._optim is None:
            state = dict(self._state_waiting_to_be_consumed)
        else:
            store = pyro.get_param_store()
            state = {
                store.param_name(p): {k: v.detach().clone() for k, v in s.items()}
                for p, s in self._optim.state.items()
            }
        if self.lr_lambda is not None:
            state[self.SCHEDULE_KEY] = {"steps": torch.tensor(self._schedule_steps)}
        return state

    def set_state(self, state: dict[str, dict[str, Tensor]]) -> None:
        """Load states saved by :meth:`get_state`; applied when each parameter is first seen.

        Raises:
            ValueError: If the state has a schedule's count and this optimiser no schedule, or
                the other way round; or a parameter's state has keys this optimiser does not
                keep (another optimiser's state).
        """
        state = dict(state)
        schedule = state.pop(self.SCHEDULE_KEY, None)
        for name, s in state.items():
            if not set(s) <= self.STATE_KEYS:
                raise ValueError(
                    f"the optimiser state of {name!r} has keys {sorted(s)}, not those of "
                    f"{type(self).__name__} ({sorted(self.STATE_KEYS)}): a state saved by "
                    "another optimiser"
                )
        if (schedule is None) != (self.lr_lambda is None):
            raise ValueError(
                "an optimiser state "
                + ("without" if schedule is None else "with")
                + f" a learning-rate schedule, for a {type(self).__name__} "
                + ("with" if schedule is None else "without")
                + " one (lr_lambda)"
            )
        if schedule is not None:
            self._schedule_steps = int(schedule["steps"])
            self._apply_lr()
        self._state_waiting_to_be_consumed = state


class JointAdam(JointOptimizer):
    """Adam over all parameters at once (:class:`JointOptimizer`), a drop-in for
    ``pyro.optim.Adam`` (and, with ``lr_lambda``, for ``pyro.optim.LambdaLR`` over Adam).

    Args:
        lr: Learning rate.
        fused: Use PyTorch's fused implementation (CPU and CUDA).
        lr_lambda: Optional schedule ``e -> factor`` of the rate (see :class:`JointOptimizer`).
        lr_factor: Optional ``name -> factor`` of each parameter's rate (see
            :class:`JointOptimizer`).
        **kwargs: Other ``torch.optim.Adam`` arguments (``betas``, ``eps``, ``weight_decay``).
    """

    STATE_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})

    def __init__(
        self,
        lr: float = 1e-3,
        *,
        fused: bool = True,
        lr_lambda: Callable[[int], float] | None = None,
        lr_factor: Callable[[str], float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            torch.optim.Adam, lr, fused=fused, lr_lambda=lr_lambda, lr_factor=lr_factor, **kwargs
        )


class JointSGD(JointOptimizer):
    """Stochastic gradient descent, optionally with momentum, over all parameters at once
    (:class:`JointOptimizer`), a drop-in for ``pyro.optim.SGD``: the optimiser Blundell et al.
    (2015) trained with. Unlike Adam's, its steps scale with the loss: on a loss that sums over
    a dataset of ``N`` examples (SVI's -ELBO), ``lr`` is ``N`` times smaller than the rate of the
    same update on the mean loss per example.

    Args:
        lr: Learning rate.
        momentum: Momentum factor in ``[0, 1)`` (0: plain SGD).
        fused: Use PyTorch's fused implementation (CPU and CUDA).
        lr_lambda: Optional schedule ``e -> factor`` of the rate (see :class:`JointOptimizer`).
        lr_factor: Optional ``name -> factor`` of each parameter's rate (see
            :class:`JointOptimizer`).
        **kwargs: Other ``torch.optim.SGD`` arguments (``nesterov``, ``weight_decay``).

    Raises:
        ValueError: If ``momentum`` is not in ``[0, 1)``.
    """

    STATE_KEYS = frozenset({"momentum_buffer"})

    def __init__(
        self,
        lr: float = 1e-3,
        *,
        momentum: float = 0.0,
        fused: bool = True,
        lr_lambda: Callable[[int], float] | None = None,
        lr_factor: Callable[[str], float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(
            torch.optim.SGD,
            lr,
            momentum=momentum,
            fused=fused,
            lr_lambda=lr_lambda,
            lr_factor=lr_factor,
            **kwargs,
        )

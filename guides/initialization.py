"""Per-site initialisers for guide means (``def init_x(site=None, ...)`` as in Pyro)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from pyro.infer.autoguide.initialization import init_to_sample
from torch import Tensor

__all__ = ["init_to_module"]


def init_to_module(
    site: dict | None = None, *, fallback: Callable[[dict], Tensor] = init_to_sample
) -> Tensor | Callable[[dict], Tensor]:
    """Initialise a weight site at the value of the network parameter it replaces.

    :class:`~pyro_dwp.bnn.BNN` puts the parameter's current value in
    ``site["infer"]["init_value"]``, so a guide starts from the network's own initialisation
    (Kaiming-uniform for ``nn.Linear``).
    Sites without it, e.g. in hand-written ``PyroModule`` models, use ``fallback``.

    Use ``functools.partial(init_to_module, fallback=init_to_median)`` to change the fallback.
    """
    if site is None:
        return functools.partial(init_to_module, fallback=fallback)
    value = site["infer"].get("init_value")
    if value is None:
        return fallback(site)
    return value.detach().clone()

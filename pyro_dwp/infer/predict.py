"""Posterior predictive sampling through ``pyro.infer.Predictive``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from torch import Tensor

__all__ = ["predict"]


@torch.no_grad()
def predict(
    model: Callable,
    guide: Callable,
    x: Tensor,
    *,
    num_samples: int = 100,
    return_sites: Sequence[str] = ("obs", "_RETURN"),
    parallel: bool = False,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """Draw from the posterior predictive ``p(y | x, D) ~= E_q p(y | x, w)``.

    Args:
        model: ``model(x, y=None)``, e.g. a :class:`~pyro_dwp.bnn.BNN`.
        guide: The fitted guide.
        x: Inputs ``(B, *in_shape)``.
        num_samples: Number S of weight samples.
        return_sites: Sites to return; ``"_RETURN"`` is the network output.
        parallel: Vectorise over samples (needs a vectorisable model, which ``BNN`` is).
        batch_size: Evaluate ``x`` in chunks of this many rows to bound memory; the same
            weight samples are used for every chunk.

    Returns:
        ``{site: (S, B, ...)}``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    weights = Predictive(guide, num_samples=num_samples, parallel=parallel)(x[:1])
    weights.pop("_RETURN", None)
    # Predictive first traces the model once to count its plates; conditioning that trace on one
    # posterior draw keeps it from sampling the prior, which an improper prior (LogUniform)
    # cannot do. Predictive's own conditioning on every draw takes precedence.
    first = poutine.condition(model, data={k: v[0] for k, v in weights.items()})
    predictive = Predictive(
        first, posterior_samples=weights, return_sites=list(return_sites), parallel=parallel
    )
    chunks = [x] if batch_size is None else list(torch.split(x, batch_size))
    parts = [predictive(chunk) for chunk in chunks]
    return {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}

"""ArviZ ``InferenceData`` from a fitted guide: posterior, predictive checks, log-likelihood."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import arviz as az
import numpy as np
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from torch import Tensor

__all__ = ["to_inference_data"]


@torch.no_grad()
def to_inference_data(
    model: Callable,
    guide: Callable,
    x: Tensor,
    y: Tensor,
    *,
    num_samples: int = 100,
    sites: Sequence[str] | None = None,
    max_elements: int = 20,
    obs_site: str = "obs",
    output_name: str | None = None,
    output_fn: Callable[[Tensor], Tensor] | None = None,
    num_chains: int = 2,
) -> az.InferenceData:
    """Build an ``InferenceData`` for ``model(x, y)`` under the fitted ``guide``.

    Groups (``num_samples`` independent draws of the weights from the guide, split into
    ``num_chains`` chains so that ArviZ's between-chain diagnostics are defined):

    - ``posterior``: for each weight site in ``sites`` (default: all of the guide's), its first
      ``max_elements`` entries in row-major order, dim ``"<site>_element"`` (the full posterior
      of a large network is too big for ArviZ summaries; the guide keeps all of it).
    - ``posterior_predictive``: ``obs`` sampled from the likelihood, dims ``("example", ...)``,
      and, if ``output_name`` is given, the network output under that name (e.g. ``"logits"``),
      or ``output_fn`` of it (e.g. class probabilities, ``"probs"`` with
      ``output_fn=partial(torch.softmax, dim=-1)``).
    - ``observed_data``: ``y``.
    - ``log_likelihood``: ``log p(y_i | x_i, w_s)`` per draw and example, so that ``az.loo`` and
      ``az.waic`` work.

    Args:
        model: ``model(x, y)`` with observed site ``obs_site``, vectorisable over leading sample
            dimensions of its weights (as :class:`~pyro_dwp.bnn.BNN` is).
        guide: Fitted guide.
        x: Inputs ``(B, *in_shape)``.
        y: Targets ``(B, *target_shape)``.
        num_samples: Number of draws.
        sites: Weight sites to put in ``posterior``.
        max_elements: Entries kept per site (>= 1).
        obs_site: Name of the observed site.
        output_name: Name for the network output in ``posterior_predictive``, or ``None``.
        output_fn: Applied to the network output ``(S, B, *out_shape)`` before it is stored
            under ``output_name``; ``None`` stores it as is.
        num_chains: Number of chains; must divide ``num_samples``.
    """
    if output_fn is not None and output_name is None:
        raise ValueError("output_fn needs an output_name to store its result under")
    if num_samples % num_chains:
        raise ValueError(f"num_chains={num_chains} must divide num_samples={num_samples}")
    if max_elements < 1:
        raise ValueError(f"max_elements must be >= 1, got {max_elements}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    weights = Predictive(guide, num_samples=num_samples)(x[:1])
    weights.pop("_RETURN", None)
    chosen = list(weights) if sites is None else list(sites)
    missing = [s for s in chosen if s not in weights]
    if missing:
        raise KeyError(f"no weight site(s) {missing}; the guide's sites are {list(weights)}")

    trace = poutine.trace(poutine.condition(model, data=weights)).get_trace(x, y)
    if obs_site not in trace.nodes:
        raise KeyError(f"the model has no observed site {obs_site!r}")
    fn = trace.nodes[obs_site]["fn"]
    log_lik = fn.log_prob(y)  # (S, B)
    predicted = fn.sample()  # (S, B, *target_shape)

    target_dims = [f"{obs_site}_dim_{i}" for i in range(y.dim() - 1)]
    dims = {obs_site: ["example", *target_dims]}
    posterior = {}
    for s in chosen:
        flat = weights[s].reshape(num_samples, -1)[:, :max_elements]
        posterior[s] = _np(flat, num_chains)
        dims[s] = [f"{s}_element"]
    pp = {obs_site: _np(predicted, num_chains)}
    if output_name is not None:
        out = trace.nodes["_RETURN"]["value"]
        out = out if output_fn is None else output_fn(out)
        pp[output_name] = _np(out, num_chains)
        dims[output_name] = ["example", *[f"{output_name}_dim_{i}" for i in range(out.dim() - 2)]]
    return az.from_dict(
        posterior=posterior,
        posterior_predictive=pp,
        observed_data={obs_site: y.detach().cpu().numpy()},
        log_likelihood={obs_site: _np(log_lik, num_chains)},
        dims=dims,
    )


def _np(t: Tensor, num_chains: int) -> np.ndarray:
    """``(S, ...)`` tensor -> ``(num_chains, S // num_chains, ...)`` array."""
    a = t.detach().cpu().numpy()
    return a.reshape((num_chains, a.shape[0] // num_chains) + a.shape[1:])

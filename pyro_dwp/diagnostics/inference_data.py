"""ArviZ ``InferenceData`` from a fitted guide: posterior, predictive checks, log-likelihood."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import arviz as az
import numpy as np
import pyro
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
    obs_site: str = "obs",
    output_name: str | None = None,
    output_fn: Callable[[Tensor], Tensor] | None = None,
) -> az.InferenceData:
    """Build an ``InferenceData`` for ``model(x, y)`` under the fitted ``guide``.

    The ``num_samples`` weight draws from the guide are independent: they form one chain
    (``chain`` of size 1, ``draw`` of size S), so ``r_hat`` is not defined and ``ess`` is S.

    - ``posterior``: every latent sample site of the *model* in ``sites`` (default: all; sites
      only the guide has, such as an ``AutoDiagonalNormal``'s latent vector, are left out), full
      shape ``(1, S, *site_shape)``. Dims are named: a layer's ``"<layer>.weight"`` has
      ``("<layer>.out", "<layer>.in")`` (plus ``"<layer>.kh", "<layer>.kw"`` for a kernel) and
      its bias ``("<layer>.out",)``; other sites ``"<site>_dim_<i>"``.
    - ``posterior_predictive``: ``obs`` sampled from the likelihood, dims ``("example", ...)``,
      and, if ``output_name`` is given, the network output under that name (e.g. ``"logits"``),
      or ``output_fn`` of it (e.g. class probabilities, ``"probs"`` with
      ``output_fn=partial(torch.softmax, dim=-1)``).
    - ``log_likelihood``: ``log p(y_i | x_i, w_s)`` per draw and example (``az.loo``, ``az.waic``).
    - ``observed_data``: ``y``; ``constant_data``: ``x`` and the model's point estimates (its
      ``pyro.param`` sites, e.g. a learned ``noise_scale`` or a BNN's deterministic layers).
    - attributes (of the ``InferenceData`` and of each group) ``inference_library="pyro"``,
      ``inference_library_version``, ``method="svi"`` and ``guide`` (its type name).

    The model is run once on all draws (vectorised over a leading sample dimension, as a
    :class:`~pyro_dwp.bnn.BNN` is); a model that cannot be is run draw by draw.

    Args:
        model: ``model(x, y)`` with observed site ``obs_site``.
        guide: Fitted guide.
        x: Inputs ``(B, *in_shape)``.
        y: Targets ``(B, *target_shape)``.
        num_samples: Number S of draws.
        sites: Latent sites of the model to put in ``posterior``.
        obs_site: Name of the observed site.
        output_name: Name for the network output in ``posterior_predictive``, or ``None``.
        output_fn: Applied to the network output ``(S, B, *out_shape)`` before it is stored
            under ``output_name``; ``None`` stores it as is.
    """
    if output_fn is not None and output_name is None:
        raise ValueError("output_fn needs an output_name to store its result under")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    draws = Predictive(guide, num_samples=num_samples)(x[:1])
    draws.pop("_RETURN", None)
    first = _trace(model, {k: v[0] for k, v in draws.items()}, x, y)
    if obs_site not in first.nodes:
        raise KeyError(f"the model has no observed site {obs_site!r}")
    latent = [n for n, node in first.nodes.items() if node["type"] == "sample" and n in draws]
    chosen = latent if sites is None else list(sites)
    missing = [s for s in chosen if s not in latent]
    if missing:
        raise KeyError(f"no latent site(s) {missing} of the model; they are {latent}")
    log_lik, predicted, out = _run(model, {k: draws[k] for k in latent}, x, y, obs_site)

    dims = {obs_site: ["example", *[f"{obs_site}_dim_{i}" for i in range(y.dim() - 1)]]}
    dims["x"] = ["example", *[f"x_dim_{i}" for i in range(x.dim() - 1)]]
    posterior = {s: _chain(draws[s]) for s in chosen}
    dims.update({s: _site_dims(s, draws[s].dim() - 1) for s in chosen})
    params = {n: node["value"] for n, node in first.nodes.items() if node["type"] == "param"}
    dims.update({n: _site_dims(n, v.dim()) for n, v in params.items()})
    pp = {obs_site: _chain(predicted)}
    if output_name is not None:
        out = out if output_fn is None else output_fn(out)
        pp[output_name] = _chain(out)
        dims[output_name] = ["example", *[f"{output_name}_dim_{i}" for i in range(out.dim() - 2)]]
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "method": "svi",
        "guide": type(guide).__name__,
    }
    idata = az.from_dict(
        posterior=posterior,
        posterior_predictive=pp,
        observed_data={obs_site: _np(y)},
        constant_data={"x": _np(x), **{n: _np(v) for n, v in params.items()}},
        log_likelihood={obs_site: _chain(log_lik)},
        dims=dims,
        attrs=attrs,
    )
    for group in idata.groups():  # as az.from_pyro: on every group too
        idata[group].attrs.update(attrs)
    return idata


def _trace(model: Callable, values: dict[str, Tensor], x: Tensor, y: Tensor) -> poutine.Trace:
    return poutine.trace(poutine.condition(model, data=values)).get_trace(x, y)


def _run(
    model: Callable, draws: dict[str, Tensor], x: Tensor, y: Tensor, obs_site: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``log p(y | x, w_s)`` ``(S, B)``, ``y`` sampled ``(S, B, ...)`` and the model's return
    value ``(S, B, ...)``; vectorised over the draws, else draw by draw."""
    num_samples = next(iter(draws.values())).shape[0]
    try:
        trace = _trace(model, draws, x, y)
        fn = trace.nodes[obs_site]["fn"]
        log_lik = fn.log_prob(y)
        if log_lik.shape == (num_samples, x.shape[0]):
            return log_lik, fn.sample(), trace.nodes["_RETURN"]["value"]
    except (RuntimeError, ValueError):  # shape errors of a model that is not vectorisable
        pass
    parts = []
    for s in range(num_samples):
        trace = _trace(model, {k: v[s] for k, v in draws.items()}, x, y)
        fn = trace.nodes[obs_site]["fn"]
        parts.append((fn.log_prob(y), fn.sample(), trace.nodes["_RETURN"]["value"]))
    log_lik, predicted, out = (torch.stack(p) for p in zip(*parts, strict=True))
    return log_lik, predicted, out


def _site_dims(site: str, ndim: int) -> list[str]:
    """Named dims of a site's value (without sample dims): see :func:`to_inference_data`."""
    layer, _, kind = site.rpartition(".")
    if layer and kind == "weight" and ndim in (2, 4):
        return [f"{layer}.{d}" for d in ("out", "in", "kh", "kw")[:ndim]]
    if layer and kind == "bias" and ndim == 1:
        return [f"{layer}.out"]
    return [f"{site}_dim_{i}" for i in range(ndim)]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _chain(t: Tensor) -> np.ndarray:
    """``(S, ...)`` draws -> ``(1, S, ...)``: one chain of independent draws."""
    return _np(t)[None]

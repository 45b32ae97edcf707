"""Per-site initialisers for guide means (``def init_x(site=None, ...)`` as in Pyro)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from pyro.infer.autoguide.initialization import init_to_sample
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["init_to_module", "init_to_prior_sample"]


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


def init_to_prior_sample(
    site: dict | None = None,
    *,
    priors: Mapping[str, Distribution] | None = None,
    fallback: Callable[[dict], Tensor] = init_to_module,
) -> Tensor | Callable[[dict], Tensor]:
    r"""Initialise a weight site with a draw from a prior, e.g. kernels of a deep weight prior.

    With ``priors``, a site named there gets ``priors[name].sample(batch)``, where the prior's
    event shape is a suffix of the site's shape and ``batch`` the rest: a
    :class:`~pyro_dwp.distributions.DeepWeightPrior` over ``(k, k)`` kernels fills a layer's
    ``(out, in, k, k)`` weight (use its ``sample_mean=True`` for the decoder means, noise-free
    kernels); other sites use ``fallback``. Without ``priors`` every site draws from its own
    distribution ``site["fn"]``; under :class:`~pyro_dwp.infer.DeepWeightPriorReparam` that is
    :math:`p(w \mid z)` with ``z ~ p(z)``, i.e. a sample of the deep weight prior.

    Use ``functools.partial(init_to_prior_sample, priors={"conv1.weight": dwp1})``.

    Raises:
        ValueError: If a prior's event shape is not a suffix of its site's shape.
    """
    if site is None:
        return functools.partial(init_to_prior_sample, priors=priors, fallback=fallback)
    if priors is None:
        return site["fn"].sample().detach()
    prior = priors.get(site["name"])
    if prior is None:
        return fallback(site)
    shape = site["fn"].shape()
    event = tuple(prior.event_shape)
    if tuple(shape[len(shape) - len(event) :]) != event or len(event) > len(shape):
        raise ValueError(
            f"cannot initialise site {site['name']!r} of shape {tuple(shape)} from a prior over "
            f"{event}: the site's trailing dimensions must equal the prior's event shape"
        )
    with torch.no_grad():
        value = prior.sample(shape[: len(shape) - len(event)])
    # BNN sites carry the parameter they replace: match its device and dtype.
    ref = site["infer"].get("init_value")
    return value if ref is None else value.to(device=ref.device, dtype=ref.dtype)

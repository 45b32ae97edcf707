"""The gap between the ELBO and its auxiliary bound (Appendix F of the DWP paper)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from pyro_dwp.bnn import BNN
from pyro_dwp.distributions.deep_weight_prior import DeepWeightPrior, iwae_log_marginal
from pyro_dwp.guides.reverse import ReverseModelGuide

__all__ = ["dwp_bound_gap", "kernel_bound_terms"]


@torch.no_grad()
def kernel_bound_terms(
    encoder: nn.Module,
    decoder: nn.Module,
    w: Tensor,
    num_samples: int,
    *,
    chunk_size: int = 65_536,
    log_p_z: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Per kernel, the IWAE estimate of :math:`\log p(w)` and the auxiliary term, jointly.

    :func:`~pyro_dwp.distributions.deep_weight_prior.iwae_log_marginal` with the reverse model
    :math:`r(z \mid w)` (``encoder``) as the proposal, without gradients, in chunks of at most
    ``chunk_size`` decoder evaluations (samples x kernels):

    - ``iwae`` :math:`= \log \frac{1}{K} \sum_k e^{\ell_k}`, the importance-weighted bound on
      :math:`\log p(w)` (eq. 18), tight as ``K`` grows;
    - ``aux`` :math:`= \frac{1}{K} \sum_k \ell_k`, an unbiased estimate of the auxiliary bound's
      per-kernel prior term :math:`\mathbb{E}_r[\log p(w \mid z) + \log p(z) - \log r(z \mid w)]`.

    ``iwae - aux >= 0`` for every draw (Jensen), and its expectation is a lower bound on the
    per-kernel gap :math:`\mathrm{KL}(r(z \mid w) \,\|\, p(z \mid w))` that tends to it as ``K``
    grows.

    Args:
        encoder: ``(..., k, k) -> (loc, scale)`` of :math:`r(z \mid w)`, each ``(..., z_dim)``.
        decoder: ``(..., z_dim) -> (loc, scale)`` of :math:`p(w \mid z)`, each ``(..., k, k)``.
        w: Kernels ``(..., k, k)``.
        num_samples: ``K`` (>= 1).
        chunk_size: Decoder evaluations (samples x kernels) per chunk, to bound memory.
        log_p_z: ``z (..., z_dim) -> log p(z) (...)`` of the prior's code prior, ``None`` for
            :math:`\mathcal{N}(0, I)` (:meth:`DeepWeightPrior.log_p_z
            <pyro_dwp.distributions.DeepWeightPrior.log_p_z>`).

    Returns:
        ``(iwae, aux)``, each of shape ``(...)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    per_chunk = max(1, chunk_size // max(1, math.prod(w.shape[:-2])))
    return iwae_log_marginal(
        encoder, decoder, w, num_samples, chunk_size=per_chunk, log_p_z=log_p_z
    )


@torch.no_grad()
def dwp_bound_gap(
    model: BNN,
    guide: ReverseModelGuide,
    *args: Any,
    num_samples: int = 1000,
    num_weight_samples: int = 1,
    chunk_size: int = 65_536,
) -> dict[str, dict[str, float]]:
    r"""Estimate :math:`G = \mathcal{L} - \mathcal{L}^{aux}` per deep-weight-prior layer (App. F).

    The data term and :math:`H(q)` are common to both bounds, so (eq. 16-19)

    .. math::

        G \ge \sum_{ij} \mathbb{E}_{q(w_{ij})} \Big[ \mathcal{L}^{IWAE}_K(w_{ij})
        - \mathbb{E}_{r(z \mid w_{ij})} \big( \log p(w_{ij} \mid z) + \log p(z)
        - \log r(z \mid w_{ij}) \big) \Big],

    estimated by :func:`kernel_bound_terms` with the guide's reverse model as the proposal, for
    ``num_weight_samples`` draws of the weights from the guide's :math:`q(w)`. If the prior keeps
    its VAE encoder (``DeepWeightPrior.from_vae(vae)``), the same is done with that encoder as
    :math:`r`: the gap of a reverse model frozen at the VAE encoder (the public code), against
    which a trained reverse model (the paper) can be compared on the same :math:`q(w)`.

    Args:
        model: The :class:`~pyro_dwp.bnn.BNN` with deep-weight-prior sites.
        guide: Its fitted :class:`~pyro_dwp.guides.ReverseModelGuide`.
        *args: Model inputs, e.g. ``(x[:1], y[:1])`` (only used to run the guide).
        num_samples: ``K`` codes per kernel (the paper uses 10,000).
        num_weight_samples: Draws of the weights from :math:`q(w)`.
        chunk_size: See :func:`kernel_bound_terms`.

    Returns:
        ``{site: {"log_p_w": ..., "aux": ..., "gap": ..., "kernels": ...}}`` in nats, summed over
        the layer's kernels and averaged over the weight draws, plus ``"aux_frozen"``,
        ``"gap_frozen"`` (and the IWAE value ``"log_p_w_frozen"``) when the prior has an
        encoder, and a ``"total"`` entry summing the layers.

    Raises:
        ValueError: If a site of the guide has no deep weight prior in ``model``.
    """
    encoders = dict(zip(guide.site_names, guide.encoders.values(), strict=True))

    def estimates(site: str, w: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        prior = model.priors.get(site)
        if not isinstance(prior, DeepWeightPrior):
            raise ValueError(f"site {site!r} has no DeepWeightPrior in the model")
        proposals = {"": encoders[site]}
        if prior.encoder is not None:
            proposals["_frozen"] = prior.encoder
        return {
            suffix: kernel_bound_terms(
                proposal,
                prior.decoder,
                w,
                num_samples,
                chunk_size=chunk_size,
                log_p_z=prior.log_p_z(),
            )
            for suffix, proposal in proposals.items()
        }

    return _bound_gap_table(
        lambda: guide.base(*args), guide.site_names, estimates, num_weight_samples
    )


def _bound_gap_table(
    draw_weights: Callable[[], dict[str, Tensor]],
    site_names: Sequence[str],
    estimates: Callable[[str, Tensor], dict[str, tuple[Tensor, Tensor]]],
    num_weight_samples: int,
) -> dict[str, dict[str, float]]:
    """The table of :func:`dwp_bound_gap` and of the Markov-chain prior's
    :func:`~pyro_dwp.infer.markov_chain_gap.markov_chain_bound_gap`: for ``num_weight_samples``
    draws of the weights ``draw_weights()`` (``{site: w}``, run under ``poutine.block``), per
    site the estimates of each proposal, ``estimates(site, w)`` -> ``{suffix: (iwae, aux)}``
    each of shape ``w.shape[:-2]`` (suffix ``""`` for the guide's reverse model,
    ``"_frozen"`` for the prior's own), summed over the kernels and averaged over the draws.

    Returns:
        ``{site: {"kernels", "log_p_w" + suffix, "aux" + suffix, "gap" + suffix}}`` and a
        ``"total"`` entry summing the sites.

    Raises:
        ValueError: If ``num_weight_samples`` < 1.
    """
    if num_weight_samples < 1:
        raise ValueError(f"num_weight_samples must be >= 1, got {num_weight_samples}")
    results: dict[str, dict[str, float]] = {}
    for _ in range(num_weight_samples):
        with poutine.block():
            weights = draw_weights()
        for site in site_names:
            w = weights[site]
            row = results.setdefault(site, {"kernels": float(math.prod(w.shape[:-2]))})
            for suffix, (iwae, aux) in estimates(site, w).items():
                for key, value in (("log_p_w", iwae), ("aux", aux), ("gap", iwae - aux)):
                    name = key + suffix
                    row[name] = row.get(name, 0.0) + value.sum().item() / num_weight_samples
    total: dict[str, float] = {}
    for row in results.values():
        for key, value in row.items():
            total[key] = total.get(key, 0.0) + value
    results["total"] = total
    return results

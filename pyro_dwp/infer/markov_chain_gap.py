"""The gap between the ELBO and the auxiliary bound of a Markov-chain prior (Appendices A, F)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pyro_dwp.bnn import BNN
from pyro_dwp.distributions.markov_chain_prior import MarkovChainPrior, markov_chain_log_marginal
from pyro_dwp.guides.reverse_chain import ReverseChainGuide

from .dwp_gap import _bound_gap_table

__all__ = ["markov_chain_bound_gap"]


@torch.no_grad()
def markov_chain_bound_gap(
    model: BNN,
    guide: ReverseChainGuide,
    *args: Any,
    num_samples: int = 1000,
    num_weight_samples: int = 1,
    chunk_size: int = 65_536,
) -> dict[str, dict[str, float]]:
    r"""Estimate :math:`G = \mathcal{L} - \mathcal{L}^{aux}` per Markov-chain-prior layer.

    As :func:`~pyro_dwp.infer.dwp_gap.dwp_bound_gap` for the deep weight prior: the data term
    and :math:`H(q)` are common to both bounds, so per kernel the gap is
    :math:`\mathbb{E}_{q(w)} \mathrm{KL}(r(z_{0:T} \mid w) \,\|\, p(z_{0:T} \mid w))`, bounded
    below by

    .. math::

        \sum_{ij} \mathbb{E}_{q(w_{ij})} \Big[ \mathcal{L}^{IWAE}_K(w_{ij})
        - \mathbb{E}_{r(z_{0:T} \mid w_{ij})} \big( \log p(w_{ij}, z_{0:T})
        - \log r(z_{0:T} \mid w_{ij}) \big) \Big],

    tight as ``K`` grows, estimated by
    :func:`~pyro_dwp.distributions.markov_chain_prior.markov_chain_log_marginal` with the
    guide's reverse chain as the proposal (``K`` chains per kernel), for ``num_weight_samples``
    draws of the weights from :math:`q(w)`. If the prior keeps the reverse chain of its VAE
    (``MarkovChainPrior.from_vae(vae)``), the same is done with that chain: the ``_frozen``
    entries. ``T = 0`` gives ``dwp_bound_gap``'s numbers.

    Args:
        model: The :class:`~pyro_dwp.bnn.BNN` with Markov-chain-prior sites.
        guide: Its fitted :class:`~pyro_dwp.guides.reverse_chain.ReverseChainGuide`.
        *args: Model inputs, e.g. ``(x[:1], y[:1])`` (only used to run the guide).
        num_samples: ``K`` chains per kernel.
        num_weight_samples: Draws of the weights from :math:`q(w)`.
        chunk_size: Decoder evaluations (chains x kernels) per chunk, to bound memory.

    Returns:
        ``{site: {"log_p_w", "aux", "gap", "kernels"}}`` in nats, summed over the layer's kernels
        and averaged over the weight draws, plus ``"log_p_w_frozen"``, ``"aux_frozen"``,
        ``"gap_frozen"`` when the prior has a reverse chain, and a ``"total"`` entry.

    Raises:
        ValueError: If a site of the guide has no Markov-chain prior in ``model``, or
            ``num_weight_samples`` / ``chunk_size`` < 1.
    """
    if num_weight_samples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_weight_samples and chunk_size must be >= 1, got {num_weight_samples}, "
            f"{chunk_size}"
        )
    chains = dict(zip(guide.site_names, guide.chains.values(), strict=True))

    def estimates(site: str, w: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        prior = model.priors.get(site)
        if not isinstance(prior, MarkovChainPrior):
            raise ValueError(f"site {site!r} has no MarkovChainPrior in the model")
        proposals = {"": (chains[site]["encoder"], chains[site]["reverse"])}
        if prior.encoder is not None and prior.reverse is not None:
            proposals["_frozen"] = (prior.encoder, prior.reverse)
        per_chunk = max(1, chunk_size // max(1, math.prod(w.shape[:-2])))
        return {
            suffix: markov_chain_log_marginal(
                encoder,
                reverse,
                prior.decoder,
                prior.transitions,
                w,
                num_samples,
                chunk_size=per_chunk,
            )
            for suffix, (encoder, reverse) in proposals.items()
        }

    return _bound_gap_table(
        lambda: guide.base(*args), guide.site_names, estimates, num_weight_samples
    )

"""The guide of the Markov-chain prior's auxiliary bound: a base guide over weights and reverse
chains over the latent chains (Appendix A of Atanov et al., 2019)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.distributions as dist
from pyro.infer.autoguide import AutoGuide
from torch import Tensor, nn

from pyro_dwp.models.markov_chain_vae import MarkovChainVAE

from .reverse import _AuxiliaryGuide

__all__ = ["ReverseChainGuide", "chain_site_name"]


def chain_site_name(name: str, t: int) -> str:
    """Name of the site of state ``z_t`` of the chain behind a Markov-chain-prior site ``name``.

    :class:`~pyro_dwp.infer.markov_chain_reparam.MarkovChainReparam` adds the sites ``t = 0 ..
    T``, :class:`ReverseChainGuide` samples them: ``("conv1.weight", 2) -> "conv1.weight_z2"``.
    """
    return f"{name}_z{t}"


class ReverseChainGuide(_AuxiliaryGuide):
    r"""Guide :math:`q(w) \, r(z_T \mid w) \prod_{t=1}^T r(z_{t-1} \mid z_t, w)` for models
    with Markov-chain-prior sites.

    For each weight site ``name`` rewritten by
    :class:`~pyro_dwp.infer.markov_chain_reparam.MarkovChainReparam` (model sites
    :func:`chain_site_name` ``(name, 0 .. T)`` and ``name``), the base guide samples
    ``w ~ q(w)``, then the reverse chain samples ``z_T`` from the encoder and each ``z_{t-1}``
    from the reverse transition given ``z_t`` and ``w``, one chain per kernel, reparameterised.
    ``Trace_ELBO`` of the model against this guide is the auxiliary bound of Appendix A:

    .. math::

        \mathcal{L}^{aux} = \mathbb{E}_{q(w) r(z_{0:T} \mid w)} \Big[ \log p(D \mid w)
        + \log p(w \mid z_T) + \sum_{t=1}^T \log p(z_t \mid z_{t-1}) + \log p(z_0)
        - \log q(w) - \log r(z_T \mid w) - \sum_{t=1}^T \log r(z_{t-1} \mid z_t, w) \Big].

    With ``T = 0`` this is :class:`~pyro_dwp.guides.reverse.ReverseModelGuide` (the same draws
    for the same seed). As there, the chain sites are ordinary latent sites of the rewritten
    model, sampled here as matched sites (not ``is_auxiliary``: Pyro reserves that for
    guide-only sites).

    Args:
        model: The model, with the Markov-chain-prior sites reparameterised.
        base_guide_builder: ``model -> AutoGuide`` for the weights, built on the model with the
            chain sites hidden, e.g. ``functools.partial(AutoNormal, init_scale=1e-3)``.
        chains: ``{weight site name: MarkovChainVAE}`` (or any module with ``encoder``,
            ``(..., k, k) -> (loc, scale)`` each ``(..., z_dim)``, and ``reverse``, ``T``
            modules ``(z_t, w) -> (loc, scale)``); their reverse chains are deep-copied.
        trainable: Train the copies with the guide (registered with ``pyro.module``) or keep
            them frozen at their initial values.
        name: Name under which ``pyro.module`` registers the reverse chains.

    Raises:
        ValueError: If ``chains`` is empty or two site names clash once dots become ``__``.
        TypeError: If the builder does not return an ``AutoGuide``.
    """

    modules_attribute = "chains"
    module_noun = "a reverse chain"

    def __init__(
        self,
        model: Callable[..., Any],
        base_guide_builder: Callable[[Callable[..., Any]], AutoGuide],
        chains: Mapping[str, MarkovChainVAE],
        *,
        trainable: bool = True,
        name: str = "reverse_chain",
    ) -> None:
        if not chains:
            raise ValueError("ReverseChainGuide needs at least one {site name: MarkovChainVAE}")
        copies = {
            n: nn.ModuleDict(
                {"encoder": copy.deepcopy(c.encoder), "reverse": copy.deepcopy(c.reverse)}
            )
            for n, c in chains.items()
        }
        super().__init__(model, base_guide_builder, copies, trainable=trainable, name=name)

    def _code_sites(self, site: str, module: nn.Module) -> list[str]:
        return [chain_site_name(site, t) for t in range(len(module["reverse"]) + 1)]

    def _sample_codes(
        self, site: str, module: nn.Module, w: Tensor, event_dim: int
    ) -> dict[str, Tensor]:
        """The reverse chain of ``site``: ``z_T ~ r(z_T | w)``, then each
        ``z_{t-1} ~ r(z_{t-1} | z_t, w)``, one chain per kernel."""
        codes = {}
        steps = len(module["reverse"])
        loc_scale = module["encoder"](w)
        for t in range(steps, -1, -1):
            z_name = chain_site_name(site, t)
            codes[z_name] = pyro.sample(z_name, dist.Normal(*loc_scale).to_event(event_dim))
            if t > 0:
                loc_scale = module["reverse"][t - 1](codes[z_name], w)
        return codes

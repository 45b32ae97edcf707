"""Reparameterisation of Markov-chain-prior sites into their latent chains and conditional
weights (Appendix A of Atanov et al., 2019), and the strategy that picks it for every such site."""

from __future__ import annotations

import pyro
import torch
from pyro.infer.reparam.reparam import Reparam, ReparamMessage
from pyro.infer.reparam.strategies import Strategy
from torch import Tensor

from pyro_dwp.distributions.markov_chain_prior import MarkovChainPrior
from pyro_dwp.guides.reverse_chain import chain_site_name
from pyro_dwp.infer.reparam import KernelPriorReparam, _unwrap

__all__ = ["MarkovChainReparam", "MarkovChainStrategy", "chain_site_name"]


class MarkovChainReparam(KernelPriorReparam[MarkovChainPrior]):
    r"""Rewrites a weight site ``w ~ MarkovChainPrior`` into its chain ``z_0, ..., z_T`` and
    ``w ~ p(w | z_T)``.

    The site's distribution must be a
    :class:`~pyro_dwp.distributions.markov_chain_prior.MarkovChainPrior`, possibly expanded and
    wrapped in ``Independent`` (typically ``prior.expand((out, in)).to_event(2)``, event shape
    ``(out, in, k, k)``). The site ``name`` becomes

    - latent sites :func:`chain_site_name` ``(name, t)`` (``f"{name}_z{t}"``), ``t = 0 .. T``,
      in that order: ``z_0 ~ N(0, I)``, then ``z_t ~ p(z_t | z_{t-1})``, each over
      ``(out, in, z_dim)``, all of it event (in general: the original batch shape and the
      original event shape with ``(k, k)`` replaced by ``(z_dim,)``), followed by
    - the original site ``name`` with its value left alone and its distribution replaced by the
      decoder's :math:`p(w \mid z_T)`, the original event shape.

    The model's joint density is then
    :math:`p(z_0) \prod_t p(z_t \mid z_{t-1}) \, p(w \mid z_T)`; with the guide
    :class:`~pyro_dwp.guides.reverse_chain.ReverseChainGuide`, ``pyro.infer.Trace_ELBO`` is the
    auxiliary bound of Appendix A (one Monte Carlo sample per particle).
    ``TraceMeanField_ELBO`` is *not* valid: the guide's chain depends on ``w``. ``T = 0`` is
    :class:`~pyro_dwp.infer.reparam.DeepWeightPriorReparam` (with the code site named
    ``f"{name}_z0"`` instead of ``f"{name}_z"``).
    """

    prior_type = MarkovChainPrior

    def _code(
        self, name: str, prior: MarkovChainPrior, batch_shape: torch.Size, extra_event_dims: int
    ) -> Tensor:
        """The chain's sites :func:`chain_site_name` ``(name, t)``, ``t = 0 .. T``; ``z_T``."""
        z = pyro.sample(
            chain_site_name(name, 0), prior.latent(batch_shape).to_event(extra_event_dims)
        )
        for t in range(1, prior.steps + 1):
            z = pyro.sample(
                chain_site_name(name, t), prior.transition(t, z).to_event(extra_event_dims)
            )
        return z


class MarkovChainStrategy(Strategy):
    """Reparameterises every site whose prior is a (possibly expanded, ``Independent``)
    :class:`~pyro_dwp.distributions.markov_chain_prior.MarkovChainPrior` with
    :class:`MarkovChainReparam`, and leaves other sites alone.

    ``BNN(net, prior, likelihood, reparam=MarkovChainStrategy())`` or
    ``poutine.reparam(model, config=MarkovChainStrategy())``.
    """

    def configure(self, msg: ReparamMessage) -> Reparam | None:
        _, prior = _unwrap(msg["fn"])
        return MarkovChainReparam() if isinstance(prior, MarkovChainPrior) else None

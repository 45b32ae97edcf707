"""Reparameterisation of deep-weight-prior sites into latent codes and conditional weights, and
the strategy that chooses it for every such site (as ``pyro.infer.reparam.strategies`` does)."""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

import pyro
import torch
from pyro.distributions import Distribution, ExpandedDistribution
from pyro.infer.reparam.reparam import Reparam, ReparamMessage, ReparamResult
from pyro.infer.reparam.strategies import Strategy
from torch import Tensor
from torch.distributions import Independent

from pyro_dwp.distributions._kernel_prior import KernelPrior
from pyro_dwp.distributions.deep_weight_prior import DeepWeightPrior
from pyro_dwp.guides.reverse import latent_site_name

__all__ = [
    "DeepWeightPriorReparam",
    "DeepWeightPriorStrategy",
    "KernelPriorReparam",
    "latent_site_name",
]

_P = TypeVar("_P", bound=KernelPrior)


def _unwrap(fn: Distribution) -> tuple[Distribution, Distribution]:
    """``fn`` without its ``Independent`` wrappers, then also without ``expand``: the batched
    distribution and the base prior."""
    batched = fn
    while isinstance(batched, Independent):
        batched = batched.base_dist
    prior = batched
    while isinstance(prior, ExpandedDistribution):
        prior = prior.base_dist
    return batched, prior


class KernelPriorReparam(Reparam, Generic[_P]):
    """Base of :class:`DeepWeightPriorReparam` and
    :class:`~pyro_dwp.infer.markov_chain_reparam.MarkovChainReparam`: rewrites a site whose
    distribution is a :attr:`prior_type` (possibly expanded and wrapped in ``Independent``) into
    latent code sites (:meth:`_code`) followed by the original site with the decoder's
    :math:`p(w \\mid z)`, its value and observation left alone."""

    prior_type: ClassVar[type[KernelPrior]]

    def _code(self, name: str, prior: _P, batch_shape: torch.Size, extra_event_dims: int) -> Tensor:
        """Sample the code sites of site ``name``, of batch shape ``batch_shape`` and
        ``extra_event_dims`` of it reinterpreted as event; return the decoder's code."""
        raise NotImplementedError

    def apply(self, msg: ReparamMessage) -> ReparamResult:
        name, fn = msg["name"], msg["fn"]
        batched, prior = _unwrap(fn)
        if not isinstance(prior, self.prior_type):
            raise TypeError(
                f"{type(self).__name__} at site {name!r} expects a {self.prior_type.__name__}, "
                f"possibly expanded and wrapped in Independent; got {fn}"
            )
        # Batch dimensions of the prior that the site reinterprets as event dimensions.
        extra_event_dims = fn.event_dim - prior.event_dim
        z = self._code(name, prior, batched.batch_shape, extra_event_dims)
        new_fn = prior.conditional(z).to_event(extra_event_dims)
        return {"fn": new_fn, "value": msg["value"], "is_observed": msg["is_observed"]}


class DeepWeightPriorReparam(KernelPriorReparam[DeepWeightPrior]):
    r"""Rewrites a weight site ``w ~ DWP`` into ``z ~ p(z)`` and ``w ~ p(w | z)``.

    The site's distribution must be a
    :class:`~pyro_dwp.distributions.deep_weight_prior.DeepWeightPrior`, possibly expanded and
    wrapped in ``Independent``: typically ``DWP.expand((out, in)).to_event(2)`` with event shape
    ``(out, in, k, k)``. Under ``poutine.reparam(config={name: DeepWeightPriorReparam()})`` (or
    ``config=DeepWeightPriorStrategy()``, which picks it for every such site) the site
    ``name`` becomes

    - a new latent site :func:`latent_site_name` (``f"{name}_z"``) with distribution
      :math:`\mathcal{N}(0, I)` over ``(out, in, z_dim)``, all of it event (in general: the
      original batch shape, and the original event shape with ``(k, k)`` replaced by
      ``(z_dim,)``), followed by
    - the original site ``name``, still latent (or observed, as it was), with its value left
      alone (``None``, or the value a guide replays or an initialiser sets) and its distribution
      replaced by the decoder's :math:`p(w \mid z)`: an ``Independent`` Normal with the original
      event shape.

    The model's joint density is then :math:`p(z) p(w \mid z)` instead of the intractable
    :math:`p(w)`. With a guide :math:`q(w) r(z \mid w)` (see
    :class:`~pyro_dwp.guides.reverse.ReverseModelGuide`), ``pyro.infer.Trace_ELBO`` is exactly
    the auxiliary bound :math:`\mathcal{L}^{aux}` (eq. 8 / 14 of Atanov et al., 2019), one
    Monte Carlo sample per particle. ``TraceMeanField_ELBO`` is *not* valid here: the guide's
    ``z`` depends on ``w``, so the analytic ``KL(q(w) || p(w | z))`` it would use is wrong.

    Leading batch dimensions (vectorised particles) are supported: ``z`` of shape
    ``(P, out, in, z_dim)`` gives :math:`p(w \mid z)` a batch shape ``(P,)``.
    """

    prior_type = DeepWeightPrior

    def _code(
        self, name: str, prior: DeepWeightPrior, batch_shape: torch.Size, extra_event_dims: int
    ) -> Tensor:
        """The code site :func:`latent_site_name` ``(name)``, ``z ~ p(z)`` (the prior's
        :meth:`~pyro_dwp.distributions.DeepWeightPrior.latent`)."""
        return pyro.sample(
            latent_site_name(name), prior.latent(batch_shape).to_event(extra_event_dims)
        )


class DeepWeightPriorStrategy(Strategy):
    """Reparameterises every site whose prior is a (possibly expanded, ``Independent``)
    :class:`~pyro_dwp.distributions.deep_weight_prior.DeepWeightPrior` with
    :class:`DeepWeightPriorReparam`, and leaves other sites alone: an ``isinstance`` dispatch on
    the site's distribution, as Pyro's ``MinimalReparam``.

    Give it to a model as ``BNN(net, prior, likelihood, reparam=DeepWeightPriorStrategy())`` or
    use it as ``poutine.reparam(model, config=DeepWeightPriorStrategy())``.
    """

    def configure(self, msg: ReparamMessage) -> Reparam | None:
        _, prior = _unwrap(msg["fn"])
        return DeepWeightPriorReparam() if isinstance(prior, DeepWeightPrior) else None

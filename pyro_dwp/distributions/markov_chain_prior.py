"""A Markov-chain implicit prior over convolutional kernels (Appendix A of Atanov et al., 2019).

:math:`p(w) = \\int p(w \\mid z_T) \\prod_{t=1}^{T} p(z_t \\mid z_{t-1}) \\, p(z_0) \\, dz_{0:T}`:
the deep weight prior's latent code :math:`z` replaced by the last state of a chain with learned
Gaussian transitions. With ``T = 0`` it is the deep weight prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ._kernel_prior import KernelPrior, chunked_iwae, frozen

__all__ = ["MarkovChainPrior", "chain_log_weights", "markov_chain_log_marginal"]


def _normal(loc_scale: tuple[Tensor, Tensor]) -> dist.Independent:
    """A diagonal Gaussian over the last dimension from a network's ``(loc, scale)``."""
    return dist.Normal(*loc_scale).to_event(1)


def chain_log_weights(
    encoder: nn.Module,
    reverse: Sequence[nn.Module],
    decoder: nn.Module,
    transitions: Sequence[nn.Module],
    w: Tensor,
    num_samples: int,
) -> Tensor:
    r"""Log importance weights of ``num_samples`` reverse chains drawn for each kernel.

    With :math:`z_T \sim r(z_T \mid w)` (``encoder``) and
    :math:`z_{t-1} \sim r(z_{t-1} \mid z_t, w)` (``reverse[t - 1]``), reparameterised,

    .. math::

        \ell = \log p(w \mid z_T) + \sum_{t=1}^{T} \log p(z_t \mid z_{t-1}) + \log p(z_0)
        - \log r(z_T \mid w) - \sum_{t=1}^{T} \log r(z_{t-1} \mid z_t, w),

    the integrand of the auxiliary bound of Appendix A; :math:`p(z_0) = \mathcal{N}(0, I)`.

    Args:
        encoder: ``(..., k, k) -> (loc, scale)``, each ``(..., z_dim)``.
        reverse: ``T`` modules ``(z_t (K, ..., z_dim), w (..., k, k)) -> (loc, scale)`` of
            :math:`r(z_{t-1} \mid z_t, w)`, each ``(K, ..., z_dim)``.
        decoder: ``(..., z_dim) -> (loc, scale)``, each ``(..., k, k)``.
        transitions: ``T`` modules ``z_{t-1} (..., z_dim) -> (loc, scale)`` of
            :math:`p(z_t \mid z_{t-1})`, each ``(..., z_dim)``.
        w: Kernels ``(..., k, k)``.
        num_samples: Chains ``K`` per kernel.

    Returns:
        ``(K, ...)``, differentiable.

    Raises:
        ValueError: If ``reverse`` and ``transitions`` differ in length.
    """
    if len(reverse) != len(transitions):
        raise ValueError(
            f"a chain of {len(transitions)} transitions needs as many reverse transitions, "
            f"got {len(reverse)}"
        )
    q = _normal(encoder(w))
    z = q.rsample((num_samples,))
    log_weight = dist.Normal(*decoder(z)).to_event(2).log_prob(w) - q.log_prob(z)
    for transition, backward in zip(reversed(transitions), reversed(reverse), strict=True):
        r = _normal(backward(z, w))
        previous = r.rsample()
        log_weight = log_weight + _normal(transition(previous)).log_prob(z) - r.log_prob(previous)
        z = previous
    standard = dist.Normal(torch.zeros_like(z), torch.ones_like(z)).to_event(1)
    return log_weight + standard.log_prob(z)


def markov_chain_log_marginal(
    encoder: nn.Module,
    reverse: Sequence[nn.Module],
    decoder: nn.Module,
    transitions: Sequence[nn.Module],
    w: Tensor,
    num_samples: int,
    *,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    r"""Importance-weighted estimate of :math:`\log p(w)` under a Markov-chain prior, and the
    mean log-weight.

    With ``K = num_samples`` reverse chains as the proposal and the log-weights
    :math:`\ell_k` of :func:`chain_log_weights`:

    - ``iwae`` :math:`= \log \frac{1}{K} \sum_k e^{\ell_k}`, the IWAE bound of Burda et al.
      (2016) over the whole chain :math:`z_{0:T}`: a lower bound on :math:`\log p(w)` in
      expectation, non-decreasing in ``K`` and consistent as ``K`` grows;
    - ``mean_log_weight`` :math:`= \frac{1}{K} \sum_k \ell_k`, an unbiased estimate of the
      auxiliary bound's per-kernel prior term (Appendix A).

    ``T = 0`` is :func:`~pyro_dwp.distributions.deep_weight_prior.iwae_log_marginal` (the same
    draws for the same seed). Chains are drawn in chunks of ``chunk_size``.

    Args:
        encoder, reverse, decoder, transitions: As in :func:`chain_log_weights`.
        w: Kernels ``(..., k, k)``.
        num_samples: ``K`` (>= 1).
        chunk_size: Chains evaluated at once.

    Returns:
        ``(iwae, mean_log_weight)``, each ``(...)``.
    """

    def log_weights(n: int) -> Tensor:
        return chain_log_weights(encoder, reverse, decoder, transitions, w, n)

    return chunked_iwae(log_weights, w.shape[:-2], num_samples, chunk_size, like=w)


class MarkovChainPrior(KernelPrior):
    r"""A Markov-chain implicit prior over ``k x k`` kernels (Appendix A of *The Deep Weight
    Prior*, Atanov et al., 2019):

    .. math::

        p(w) = \int p(w \mid z_T) \prod_{t=1}^{T} p(z_t \mid z_{t-1}) \, p(z_0) \, dz_{0:T},

    :math:`p(z_0) = \mathcal{N}(0, I_{z\_dim})`, each transition
    :math:`p(z_t \mid z_{t-1}) = \mathcal{N}(\mu_t(z_{t-1}), \mathrm{diag}\,\sigma_t(z_{t-1})^2)`
    a learned network, :math:`p(w \mid z_T)` a kernel decoder's diagonal Gaussian. With no
    transitions (``T = 0``) this is the
    :class:`~pyro_dwp.distributions.deep_weight_prior.DeepWeightPrior` of the same decoder: the
    same :meth:`sample` and :meth:`log_prob` for the same seed. Event shape ``(k, k)``, batch
    shape ``()``: ``expand`` / ``to_event`` it to a layer's ``(out, in, k, k)`` weight.

    For variational inference
    :class:`~pyro_dwp.infer.markov_chain_reparam.MarkovChainStrategy` rewrites the weight site
    into the chain ``z_0, ..., z_T, w``; with the reverse chain
    :math:`r(z_T \mid w) \prod_t r(z_{t-1} \mid z_t, w)` in the guide
    (:class:`~pyro_dwp.guides.reverse_chain.ReverseChainGuide`) ``Trace_ELBO`` is the auxiliary
    bound of Appendix A. :meth:`log_prob` is only an *estimate* and needs the reverse chain.

    An :class:`torch.nn.Module` like the deep weight prior, on the same base (the decoder,
    :meth:`latent`, :meth:`conditional`, :meth:`sample` with the chain in between):
    ``.to(device)`` moves the networks, ``state_dict`` saves them; they are deep-copied and
    frozen (the prior is fixed during variational inference).

    Args:
        decoder: ``(..., z_dim) -> (loc, scale)`` of :math:`p(w \mid z_T)`, each
            ``(..., k, k)``, with integer attributes ``kernel_size`` and ``z_dim``.
        transitions: ``T >= 0`` modules ``z_{t-1} (..., z_dim) -> (loc, scale)`` of
            :math:`p(z_t \mid z_{t-1})`, each ``(..., z_dim)``.
        encoder: Optional ``(..., k, k) -> (loc, scale)`` of :math:`r(z_T \mid w)`, each
            ``(..., z_dim)``; with ``reverse``, needed by :meth:`log_prob` only.
        reverse: Optional ``T`` modules ``(z_t (..., z_dim), w (..., k, k)) -> (loc, scale)``
            of :math:`r(z_{t-1} \mid z_t, w)` (``reverse[t - 1]``), each ``(..., z_dim)``;
            given with ``encoder``.
        num_samples: Importance samples (chains) ``K`` per kernel in :meth:`log_prob`.
        chunk_size: Chains evaluated at once in :meth:`log_prob`.
        sample_mean: If true, :meth:`sample` returns the decoder mean :math:`\mu(z_T)`.
        validate_args: Whether to validate values passed to :meth:`log_prob`.

    Raises:
        ValueError: If ``reverse`` is given without ``encoder`` (or the other way round), its
            length differs from ``transitions``', or ``num_samples`` / ``chunk_size`` < 1.
    """

    def __init__(
        self,
        decoder: nn.Module,
        transitions: Sequence[nn.Module],
        encoder: nn.Module | None = None,
        reverse: Sequence[nn.Module] | None = None,
        *,
        num_samples: int = 100,
        chunk_size: int = 1024,
        sample_mean: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        if (encoder is None) != (reverse is None):
            raise ValueError(
                "the reverse chain is an encoder r(z_T | w) and T reverse transitions: give "
                "both or neither"
            )
        if reverse is not None and len(reverse) != len(transitions):
            raise ValueError(
                f"{len(transitions)} transitions need {len(transitions)} reverse transitions, "
                f"got {len(reverse)}"
            )
        super().__init__(
            decoder,
            num_samples=num_samples,
            chunk_size=chunk_size,
            sample_mean=sample_mean,
            validate_args=validate_args,
        )
        self.steps = len(transitions)
        self.transitions = nn.ModuleList(frozen(t) for t in transitions)
        self.encoder = None if encoder is None else frozen(encoder)
        self.reverse = None if reverse is None else nn.ModuleList(frozen(r) for r in reverse)

    @classmethod
    def from_vae(
        cls, vae: nn.Module, *, with_encoder: bool = True, **kwargs: Any
    ) -> MarkovChainPrior:
        """The prior of a trained :class:`~pyro_dwp.models.markov_chain_vae.MarkovChainVAE`.

        Args:
            vae: A module with ``decoder``, ``transitions``, ``encoder`` and ``reverse``
                attributes (copied).
            with_encoder: Keep the reverse chain (``encoder``, ``reverse``) for
                :meth:`log_prob`.
            **kwargs: Keyword arguments of :class:`MarkovChainPrior`.
        """
        if with_encoder:
            return cls(vae.decoder, vae.transitions, vae.encoder, vae.reverse, **kwargs)
        return cls(vae.decoder, vae.transitions, **kwargs)

    def transition(self, t: int, z: Tensor) -> dist.Independent:
        """:math:`p(z_t \\mid z_{t-1})`, ``1 <= t <= T``: ``z_{t-1}`` ``(..., z_dim)`` to batch
        ``(...)``, event ``(z_dim,)``."""
        if not 1 <= t <= self.steps:
            raise ValueError(f"transitions are numbered 1 to {self.steps}, got {t}")
        self._check_device(z)
        return _normal(self.transitions[t - 1](z))

    def _code(self, z0: Tensor) -> Tensor:
        """The chain's last state ``z_T``: ``z_t ~ p(z_t | z_{t-1})`` from ``z0`` ``(...,
        z_dim)``, so that :meth:`sample` draws the chain, then ``w ~ p(w | z_T)``."""
        z = z0
        for t in range(1, self.steps + 1):
            z = self.transition(t, z).sample()
        return z

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Importance-weighted (IWAE) estimate of :math:`\log p(w)`, ``(..., k, k) -> (...)``.

        The estimator of Burda et al. (2016, *Importance Weighted Autoencoders*) with the
        reverse chain :math:`r(z_T \mid w) \prod_t r(z_{t-1} \mid z_t, w)` as the proposal over
        :math:`z_{0:T}` and ``K = num_samples`` chains (:func:`markov_chain_log_marginal`):
        random, a *lower bound* on :math:`\log p(w)` in expectation, consistent as ``K`` grows.
        A diagnostic, not a training objective (see
        :class:`~pyro_dwp.infer.markov_chain_reparam.MarkovChainStrategy`).

        Raises:
            RuntimeError: If the prior has no reverse chain, or ``value`` is on another device.
            ValueError: If ``value``'s last two dimensions are not ``(k, k)``.
        """
        self._check_value(value)
        if self.encoder is None or self.reverse is None:
            raise RuntimeError(
                "MarkovChainPrior.log_prob needs the reverse chain (encoder and reverse "
                "transitions) for its importance-weighted estimate: build the prior with "
                "MarkovChainPrior.from_vae(vae); variational inference reparameterises the site "
                "instead (MarkovChainStrategy)"
            )
        iwae, _ = markov_chain_log_marginal(
            self.encoder,
            self.reverse,
            self.decoder,
            self.transitions,
            value,
            self.num_samples,
            chunk_size=self.chunk_size,
        )
        return iwae

"""The deep weight prior: an implicit prior over convolutional kernels (Atanov et al., 2019)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ._kernel_prior import KernelPrior, chunked_iwae, frozen
from .code_prior import GaussianMixtureCodePrior

__all__ = ["DeepWeightPrior", "iwae_log_marginal"]


def iwae_log_marginal(
    encoder: nn.Module,
    decoder: nn.Module,
    w: Tensor,
    num_samples: int,
    *,
    chunk_size: int = 1024,
    log_p_z: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Importance-weighted estimate of :math:`\log p(w) = \log \int p(w \mid z) p(z) \, dz`,
    and the mean log-weight.

    With ``K = num_samples`` codes :math:`z_k \sim q(z \mid w)` (the proposal, ``encoder``),
    :math:`p(z) = \mathcal{N}(0, I)` and log-weights
    :math:`\ell_k = \log p(w \mid z_k) + \log p(z_k) - \log q(z_k \mid w)`:

    - ``iwae`` :math:`= \log \frac{1}{K} \sum_k e^{\ell_k}`, the IWAE bound of Burda et al.
      (2016): a lower bound on :math:`\log p(w)` in expectation, non-decreasing in ``K`` and
      consistent as ``K`` grows;
    - ``mean_log_weight`` :math:`= \frac{1}{K} \sum_k \ell_k`, an unbiased estimate of the
      ELBO-like term :math:`\mathbb{E}_q[\log p(w \mid z) + \log p(z) - \log q(z \mid w)]`
      (the auxiliary bound's per-kernel prior term when :math:`q` is the reverse model).

    Samples are drawn in chunks of ``chunk_size`` (a running log-sum-exp), so memory stays
    bounded for ``K`` in the thousands (Appendix F uses 10,000). The Markov-chain prior's
    :func:`~pyro_dwp.distributions.markov_chain_prior.markov_chain_log_marginal` is the same
    estimate over a chain of codes.

    Args:
        encoder: ``(..., k, k) -> (loc, scale)``, each ``(..., z_dim)``.
        decoder: ``(..., z_dim) -> (loc, scale)``, each ``(..., k, k)``.
        w: Kernels ``(..., k, k)``.
        num_samples: Number ``K`` of importance samples per kernel (>= 1).
        chunk_size: Importance samples evaluated at once.
        log_p_z: ``z (..., z_dim) -> log p(z) (...)`` for another code prior than
            :math:`\mathcal{N}(0, I)` (the default).

    Returns:
        ``(iwae, mean_log_weight)``, each of shape ``(...)``, differentiable (reparameterised
        samples).
    """
    q = dist.Normal(*encoder(w)).to_event(1)

    def log_weights(n: int) -> Tensor:
        z = q.rsample((n,))
        prior = (
            dist.Normal(torch.zeros_like(z), torch.ones_like(z)).to_event(1).log_prob(z)
            if log_p_z is None
            else log_p_z(z)
        )
        return dist.Normal(*decoder(z)).to_event(2).log_prob(w) + prior - q.log_prob(z)

    return chunked_iwae(log_weights, w.shape[:-2], num_samples, chunk_size, like=w)


class DeepWeightPrior(KernelPrior):
    r"""The deep weight prior over ``k x k`` kernels, :math:`p(w) = \int p(w \mid z) p(z) dz`.

    :math:`p(z) = \mathcal{N}(0, I_{z\_dim})` (the paper's; or a fitted
    :class:`~pyro_dwp.distributions.code_prior.GaussianMixtureCodePrior`) and :math:`p(w \mid z)`
    is the diagonal Gaussian given by a kernel VAE's decoder (Section 3.1 of *The Deep Weight
    Prior*, Atanov et al., 2019). The event shape is ``(k, k)`` and the batch shape ``()``; use
    ``expand`` / ``to_event`` (or :func:`pyro_dwp.priors.expand_to_param`) for a layer's
    ``(out, in, k, k)`` weight.

    It is the :class:`~pyro_dwp.distributions.markov_chain_prior.MarkovChainPrior` with no
    transitions (``T = 0``); both build on the same base (the decoder, :meth:`latent`,
    :meth:`conditional`, :meth:`sample`).

    The marginal density is intractable. For variational inference, the reparameterisation
    strategy :class:`~pyro_dwp.infer.reparam.DeepWeightPriorStrategy` (``BNN(..., reparam=...)``)
    rewrites the weight site into ``z ~ p(z)``, ``w ~ p(w | z)``, and with a reverse model
    :math:`r(z \mid w)` in the guide (``pyro_dwp.guides.reverse``) ``Trace_ELBO`` optimises the
    auxiliary bound :math:`\mathcal{L}^{aux}` of eq. 8. :meth:`log_prob` is only an *estimate*
    (see there) and needs an encoder.

    Like GPyTorch priors this is also an :class:`torch.nn.Module`: ``.to(device)`` moves the
    networks and the latent prior's buffers, and ``state_dict`` / ``load_state_dict`` save and
    restore the networks. The networks are deep-copied and frozen (``requires_grad=False``):
    the prior is fixed during variational inference (Section 3.2).

    Args:
        decoder: ``(..., z_dim) -> (loc, scale)`` of :math:`p(w \mid z)`, each ``(..., k, k)``;
            must have integer attributes ``kernel_size`` and ``z_dim`` (as
            :class:`~pyro_dwp.models.kernel_vae.KernelDecoder`).
        encoder: Optional ``(..., k, k) -> (loc, scale)`` of :math:`q(z \mid w)`, each
            ``(..., z_dim)``; needed by :meth:`log_prob` only.
        code_prior: :math:`p(z)` instead of :math:`\mathcal{N}(0, I)`, e.g. a mixture fitted to
            the source kernels' codes (:func:`pyro_dwp.infer.code_prior.fit_code_prior`).
        num_samples: Importance samples ``K`` per kernel in :meth:`log_prob`.
        chunk_size: Importance samples evaluated at once in :meth:`log_prob`.
        sample_mean: If true, :meth:`sample` returns the decoder mean :math:`\mu(z)` instead of
            a draw from :math:`p(w \mid z)`: noise-free kernels, e.g. for plots or initialisation.
        validate_args: Whether to validate values passed to :meth:`log_prob`.
    """

    def __init__(
        self,
        decoder: nn.Module,
        encoder: nn.Module | None = None,
        *,
        code_prior: GaussianMixtureCodePrior | None = None,
        num_samples: int = 100,
        chunk_size: int = 1024,
        sample_mean: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(
            decoder,
            num_samples=num_samples,
            chunk_size=chunk_size,
            sample_mean=sample_mean,
            validate_args=validate_args,
        )
        self.encoder = None if encoder is None else frozen(encoder)
        if code_prior is not None and code_prior.z_dim != self.z_dim:
            raise ValueError(
                f"a code prior of dimension {code_prior.z_dim} for a decoder of z_dim {self.z_dim}"
            )
        self.code_prior = None if code_prior is None else frozen(code_prior)

    def latent(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        """:math:`p(z)`: the code prior if there is one, else :math:`\\mathcal{N}(0, I)`; batch
        shape ``batch_shape``, event ``(z_dim,)``."""
        if self.code_prior is None:
            return super().latent(batch_shape)
        return self.code_prior.distribution(batch_shape)

    def log_p_z(self) -> Callable[[Tensor], Tensor] | None:
        """``z (..., z_dim) -> log p(z) (...)`` of the code prior, or ``None`` for
        :math:`\\mathcal{N}(0, I)` (the argument ``log_p_z`` of :func:`iwae_log_marginal`)."""
        return None if self.code_prior is None else self.code_prior.log_prob

    @classmethod
    def from_vae(
        cls, vae: nn.Module, *, with_encoder: bool = True, **kwargs: Any
    ) -> DeepWeightPrior:
        """The prior of a trained kernel VAE (:class:`~pyro_dwp.models.kernel_vae.KernelVAE`).

        Args:
            vae: A module with ``decoder`` and ``encoder`` attributes as described above, and
                optionally ``code_prior`` (copied, so later training of ``vae`` does not change
                the prior).
            with_encoder: Keep the encoder too (for :meth:`log_prob`).
            **kwargs: Keyword arguments of :class:`DeepWeightPrior`.
        """
        kwargs.setdefault("code_prior", getattr(vae, "code_prior", None))
        return cls(vae.decoder, vae.encoder if with_encoder else None, **kwargs)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Importance-weighted (IWAE) estimate of :math:`\log p(w)`, ``(..., k, k) -> (...)``.

        The estimator of Burda et al. (2016, *Importance Weighted Autoencoders*) with the
        encoder :math:`q(z \mid w)` as proposal and ``K = num_samples``:
        :math:`\log \frac{1}{K} \sum_k p(w \mid z_k) p(z_k) / q(z_k \mid w)`. It is random, and a
        *lower bound* on :math:`\log p(w)` in expectation (its exponential is unbiased), tight
        as ``K`` grows or when :math:`q(z \mid w)` is the exact posterior (Appendix F of the
        paper estimates the bound gap this way with ``K = 10,000``). It is a diagnostic, not a
        training objective: see :class:`~pyro_dwp.infer.reparam.DeepWeightPriorStrategy`.

        Raises:
            RuntimeError: If the prior has no encoder, or ``value`` is on another device.
            ValueError: If ``value``'s last two dimensions are not ``(k, k)``.
        """
        self._check_value(value)
        if self.encoder is None:
            raise RuntimeError(
                "DeepWeightPrior.log_prob needs an encoder q(z|w) for its importance-weighted "
                "estimate: build the prior with DeepWeightPrior.from_vae(vae) or encoder=...; "
                "variational inference reparameterises the site instead (DeepWeightPriorStrategy), "
                "which needs no encoder"
            )
        iwae, _ = iwae_log_marginal(
            self.encoder,
            self.decoder,
            value,
            self.num_samples,
            chunk_size=self.chunk_size,
            log_p_z=self.log_p_z(),
        )
        return iwae

"""The VAE behind the Markov-chain implicit prior (Appendix A of Atanov et al., 2019).

The kernel VAE's latent code becomes the last state :math:`z_T` of a chain
:math:`z_0 \\to \\dots \\to z_T` with learned Gaussian transitions, inferred by a reverse chain
:math:`r(z_T \\mid w) \\prod_t r(z_{t-1} \\mid z_t, w)`. The kernel networks are the kernel VAE's
(:class:`~pyro_dwp.models.kernel_vae.KernelEncoder`, ``KernelDecoder``); the transitions are
small MLPs of our own choice (the paper gives none).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_dwp.distributions.markov_chain_prior import chain_log_weights, markov_chain_log_marginal
from pyro_dwp.models.kernel_vae import KernelDecoder, KernelEncoder, KernelVAE

__all__ = ["GaussianTransition", "MarkovChainVAE"]


class GaussianTransition(nn.Module):
    r"""A Gaussian transition :math:`\mathcal{N}(z + \delta(z, c), \mathrm{diag}\,\sigma(z, c)^2)`.

    A two-layer ELU MLP of the state ``z`` and an optional context ``c`` (the kernel, for a
    reverse transition :math:`r(z_{t-1} \mid z_t, w)`) gives a residual mean shift and, through
    softplus, the scale. The shift starts at 0 and the scale at ``init_scale`` everywhere, so a
    new chain starts close to the identity: its prior is then nearly the deep weight prior of
    the same decoder.

    Args:
        z_dim: Latent dimension.
        hidden: Width of the MLP.
        context_shape: Trailing shape of the context, e.g. ``(k, k)``; ``()`` for none.
        init_scale: Initial scale of the transition (> 0).
    """

    def __init__(
        self,
        z_dim: int,
        hidden: int,
        context_shape: tuple[int, ...] = (),
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if z_dim < 1 or hidden < 1 or init_scale <= 0:
            raise ValueError(
                f"z_dim and hidden must be >= 1 and init_scale > 0, got {z_dim}, {hidden}, "
                f"{init_scale}"
            )
        self.z_dim, self.context_shape = z_dim, tuple(context_shape)
        in_features = z_dim + math.prod(self.context_shape) if self.context_shape else z_dim
        self.features = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU()
        )
        self.shift = nn.Linear(hidden, z_dim)
        self.scale = nn.Linear(hidden, z_dim)
        for head in (self.shift, self.scale):
            nn.init.zeros_(head.weight)
        nn.init.zeros_(self.shift.bias)
        nn.init.constant_(self.scale.bias, math.log(math.expm1(init_scale)))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and scale of the next state: ``z (..., z_dim)``, ``context (..., *context_shape)``
        (broadcast against ``z``'s leading dimensions) -> ``2 x (..., z_dim)``."""
        if self.context_shape:
            if context is None or tuple(context.shape[-len(self.context_shape) :]) != (
                self.context_shape
            ):
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"{type(self).__name__} needs a context (..., {self.context_shape}), got {got}"
                )
            flat = context.flatten(-len(self.context_shape))
            h = self.features(torch.cat((z, flat.expand(z.shape[:-1] + flat.shape[-1:])), -1))
        else:
            h = self.features(z)
        return z + self.shift(h), F.softplus(self.scale(h))


class MarkovChainVAE(nn.Module):
    r"""A VAE over ``k x k`` kernels whose latent code ends a Markov chain of ``steps`` (``T``)
    learned Gaussian transitions.

    Generative model :math:`p(z_0) \prod_{t=1}^T p(z_t \mid z_{t-1}) \, p(w \mid z_T)`,
    :math:`p(z_0) = \mathcal{N}(0, I)`; inference model (the reverse chain)
    :math:`r(z_T \mid w) \prod_{t=1}^T r(z_{t-1} \mid z_t, w)`. ``T = 0`` is a
    :class:`~pyro_dwp.models.kernel_vae.KernelVAE` (with a Monte Carlo KL in :meth:`elbo`).
    :meth:`elbo` has the training interface of ``KernelVAE``, so
    :func:`~pyro_dwp.infer.markov_chain_vae.fit_markov_chain_vae` trains it with the kernel
    VAE's loop; :class:`~pyro_dwp.distributions.MarkovChainPrior.from_vae` makes it a prior.

    Attributes:
        encoder: :math:`r(z_T \mid w)`, a ``KernelEncoder``.
        decoder: :math:`p(w \mid z_T)`, a ``KernelDecoder``.
        transitions: ``T`` :class:`GaussianTransition` s, ``transitions[t - 1]`` is
            :math:`p(z_t \mid z_{t-1})`.
        reverse: ``T`` :class:`GaussianTransition` s with the kernel as context,
            ``reverse[t - 1]`` is :math:`r(z_{t-1} \mid z_t, w)`.

    Args:
        kernel_size: Side ``k`` of the square kernels (3, 5 or 7).
        z_dim: Latent dimension.
        hidden: Width of the kernel networks (as ``KernelVAE``).
        steps: Number of transitions ``T >= 0``.
        transition_hidden: Width of the transitions' MLPs.
        init_scale: Initial scale of every transition, forward and reverse.
    """

    def __init__(
        self,
        kernel_size: int,
        z_dim: int,
        hidden: int,
        steps: int,
        *,
        transition_hidden: int = 32,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if steps < 0:
            raise ValueError(f"a Markov chain needs steps T >= 0 transitions, got {steps}")
        if z_dim < 1 or hidden < 1:
            raise ValueError(f"z_dim and hidden must be >= 1, got {z_dim}, {hidden}")
        self.kernel_size, self.z_dim, self.hidden, self.steps = kernel_size, z_dim, hidden, steps
        self.encoder = KernelEncoder(kernel_size, z_dim, hidden)
        self.decoder = KernelDecoder(kernel_size, z_dim, hidden)
        self.transitions = nn.ModuleList(
            GaussianTransition(z_dim, transition_hidden, init_scale=init_scale)
            for _ in range(steps)
        )
        self.reverse = nn.ModuleList(
            GaussianTransition(
                z_dim, transition_hidden, (kernel_size, kernel_size), init_scale=init_scale
            )
            for _ in range(steps)
        )

    @classmethod
    def from_kernel_vae(
        cls,
        vae: KernelVAE,
        steps: int,
        *,
        transition_hidden: int = 32,
        init_scale: float = 0.1,
    ) -> MarkovChainVAE:
        """A chain of ``steps`` new transitions around a trained kernel VAE's networks (copied):
        a warm start whose prior is nearly the deep weight prior of ``vae``.

        Args:
            vae: The kernel VAE.
            steps: ``T >= 0``.
            transition_hidden: Width of the transitions' MLPs.
            init_scale: Initial scale of every transition.
        """
        chain = cls(
            vae.kernel_size,
            vae.z_dim,
            vae.hidden,
            steps,
            transition_hidden=transition_hidden,
            init_scale=init_scale,
        )
        chain.encoder.load_state_dict(vae.encoder.state_dict())
        chain.decoder.load_state_dict(vae.decoder.state_dict())
        return chain.to(next(vae.parameters()).device)

    def elbo(self, w: Tensor, num_samples: int = 1) -> Tensor:
        r"""Evidence lower bound per kernel, ``(..., k, k) -> (...)``: the mean over
        ``num_samples`` reverse chains of :math:`\log p(w, z_{0:T}) - \log r(z_{0:T} \mid w)`
        (:func:`~pyro_dwp.distributions.markov_chain_prior.chain_log_weights`), differentiable.
        """
        return chain_log_weights(
            self.encoder, self.reverse, self.decoder, self.transitions, w, num_samples
        ).mean(0)

    def iwae_bound(self, w: Tensor, k_samples: int, *, chunk_size: int = 1024) -> Tensor:
        """Importance-weighted estimate of ``log p(w)`` per kernel, ``(..., k, k) -> (...)``,
        with ``k_samples`` reverse chains
        (:func:`~pyro_dwp.distributions.markov_chain_prior.markov_chain_log_marginal`)."""
        iwae, _ = markov_chain_log_marginal(
            self.encoder,
            self.reverse,
            self.decoder,
            self.transitions,
            w,
            k_samples,
            chunk_size=chunk_size,
        )
        return iwae

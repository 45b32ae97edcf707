"""Fitting the Markov-chain prior's VAE to a kernel set (Appendix A of Atanov et al., 2019)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pyro_dwp.infer.kernel_vae import fit_kernel_vae
from pyro_dwp.models.markov_chain_vae import MarkovChainVAE

__all__ = ["fit_markov_chain_vae"]


def fit_markov_chain_vae(
    vae: MarkovChainVAE,
    train_kernels: Tensor,
    valid_kernels: Tensor | None,
    **kwargs: Any,
) -> dict[str, Any]:
    r"""Train a :class:`~pyro_dwp.models.markov_chain_vae.MarkovChainVAE` on kernels ``(N, k, k)``.

    The kernel VAE's loop (:func:`~pyro_dwp.infer.kernel_vae.fit_kernel_vae`: Adam on the summed
    negative ELBO of each minibatch, linear learning-rate decay, best-validation selection) on
    the chain's ELBO :math:`\mathbb{E}_r[\log p(w, z_{0:T}) - \log r(z_{0:T} \mid w)]`, which
    trains the decoder, the transitions and the reverse chain jointly. ``T = 0`` is the kernel
    VAE's objective with a Monte Carlo instead of a closed-form KL.

    Args:
        vae: The model, trained in place.
        train_kernels: Training kernels ``(N, k, k)``.
        valid_kernels: Validation kernels ``(M, k, k)`` or ``None``.
        **kwargs: ``epochs`` or ``steps``, and the other options of ``fit_kernel_vae``.

    Returns:
        ``fit_kernel_vae``'s history, plus ``"chain_steps": T``.

    Raises:
        ValueError: As ``fit_kernel_vae`` (e.g. kernels of another size than the VAE's).
    """
    history = fit_kernel_vae(vae, train_kernels, valid_kernels, **kwargs)
    history["chain_steps"] = vae.steps
    return history

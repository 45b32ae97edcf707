"""Training the kernel VAE behind the deep weight prior (Section 3.3 / Appendix D of Atanov
et al., 2019): plain PyTorch Adam on the negative ELBO, with optional symmetry augmentation."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pyro_dwp.io import progress_bar
from pyro_dwp.models.kernel_vae import KernelVAE, check_kernel_shape
from pyro_dwp.models.markov_chain_vae import MarkovChainVAE

from .steps import GradientSteps

__all__ = ["dihedral_augment", "fit_kernel_vae"]


def dihedral_augment(w: Tensor) -> Tensor:
    """Each kernel of ``(N, k, k)`` under a random element of the dihedral group of the square
    (a random transpose, then random left-right and up-down flips: 8 equally likely images)."""
    n = len(w)

    def coin() -> Tensor:
        return (torch.rand(n, device=w.device) < 0.5)[:, None, None]

    w = torch.where(coin(), w.transpose(-1, -2), w)
    w = torch.where(coin(), w.flip(-1), w)
    return torch.where(coin(), w.flip(-2), w)


def fit_kernel_vae(
    vae: KernelVAE | MarkovChainVAE,
    train_kernels: Tensor,
    valid_kernels: Tensor | None,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int | None = None,
    augment: bool = False,
    select: bool = True,
    valid_samples: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a :class:`KernelVAE` (or a ``MarkovChainVAE``) on a set of kernels, as in Section
    3.3 / Appendix D.

    Adam on the summed negative ELBO of each minibatch, the learning rate decayed linearly to 0
    over all steps; a shared decoder scale starts at the training kernels' per-pixel standard
    deviation and a polar decoder mean at their mean norm
    (:meth:`~pyro_dwp.models.kernel_vae.KernelDecoder.init_from_kernels`). The length
    is ``epochs`` passes over ``train_kernels`` or, with ``steps``,
    ``ceil(steps / steps per epoch)`` epochs: a budget in optimisation steps that does not
    shrink with the size of the kernel set (300 epochs of the ~1,800 published 7x7 kernels are
    only 4,200 steps, too few: the VAE underfits). With ``valid_kernels`` and ``select`` (the
    default), the VAE's state after the epoch of the best validation ELBO is restored at the
    end (early stopping on held-out kernels, as the DWP authors keep their best test-ELBO
    VAE): on small kernel sets a long run overfits. This is plain PyTorch rather than Pyro SVI:
    the VAE is an ordinary amortised model whose Gaussian KL is available in closed form, and
    it is fitted once, before (and independently of) the Bayesian network that uses it.

    Args:
        vae: The model, trained in place (on its current device).
        train_kernels: Training kernels ``(N, k, k)``, ``N >= 1``.
        valid_kernels: Validation kernels ``(M, k, k)`` (for the history and the selection), or
            ``None``.
        epochs: Number of passes over ``train_kernels`` (>= 1); exactly one of ``epochs`` and
            ``steps``.
        steps: Number of optimisation steps (>= 1), rounded up to whole epochs.
        batch_size: Minibatch size.
        lr: Initial learning rate.
        seed: Seeds ``torch`` (shuffling and sampling) if given.
        augment: Train on each minibatch under random symmetries of the square
            (:func:`dihedral_augment`); validation kernels are not augmented.
        select: Restore the best-validation state (needs ``valid_kernels``).
        valid_samples: Samples of ``z`` per kernel in the validation ELBO.
        progress: Show a progress bar.

    Returns:
        ``{"train_elbo": [...], "valid_elbo": [...], "best_epoch": e, "epochs": E,
        "steps": S}``: mean ELBO per kernel for each epoch (the training value averaged over
        the epoch's minibatches; the validation value after the epoch; an empty list without
        ``valid_kernels``), the 1-based epoch whose state the VAE holds at the end, the
        number of epochs and steps run.

    Raises:
        ValueError: If kernels are not ``(N, k, k)`` with ``k`` the VAE's kernel size, the
            training set is empty, or the length is not given exactly once.
    """
    for name, kernels in (("train_kernels", train_kernels), ("valid_kernels", valid_kernels)):
        if kernels is not None and kernels.dim() != 3:
            raise ValueError(f"{name} must have shape (N, k, k), got {tuple(kernels.shape)}")
        if kernels is not None:
            check_kernel_shape(kernels, vae.kernel_size, f"KernelVAE ({name})")
        if kernels is not None and len(kernels) == 0:
            raise ValueError(f"{name} is empty: a kernel VAE needs at least one kernel")
    if (epochs is None) == (steps is None):
        raise ValueError("fit_kernel_vae needs exactly one of epochs and steps")
    if (epochs is not None and epochs < 1) or (steps is not None and steps < 1):
        raise ValueError(f"epochs and steps must be >= 1, got {epochs}, {steps}")
    if batch_size < 1 or valid_samples < 1:
        raise ValueError(
            f"batch_size and valid_samples must be >= 1, got {batch_size}, {valid_samples}"
        )
    if seed is not None:
        torch.manual_seed(seed)
    device = next(vae.parameters()).device
    train = train_kernels.to(device)
    valid = None if valid_kernels is None else valid_kernels.to(device)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    epochs = epochs if epochs is not None else math.ceil(steps / steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    vae.decoder.init_from_kernels(train)
    steps = GradientSteps(vae.parameters(), lr, decay_steps=total_steps)
    history: dict[str, Any] = {"train_elbo": [], "valid_elbo": []}
    best, best_state = -math.inf, None
    for epoch in progress_bar(range(epochs), desc="kernel VAE", disable=not progress):
        epoch_sum = torch.zeros((), device=device)
        for idx in torch.randperm(len(train), device=device).split(batch_size):
            w = dihedral_augment(train[idx]) if augment else train[idx]
            loss = -vae.elbo(w).sum()
            steps.step(loss)
            epoch_sum -= loss.detach()
        history["train_elbo"].append(epoch_sum.item() / len(train))
        if valid is not None:
            with torch.no_grad():
                history["valid_elbo"].append(vae.elbo(valid, valid_samples).mean().item())
            if select and history["valid_elbo"][-1] > best:
                best, history["best_epoch"] = history["valid_elbo"][-1], epoch + 1
                best_state = {k: v.clone() for k, v in vae.state_dict().items()}
    if best_state is not None:
        vae.load_state_dict(best_state)
    else:
        history["best_epoch"] = epochs
    history.update(epochs=epochs, steps=total_steps)
    return history

"""The variational auto-encoder of convolutional kernels behind the deep weight prior.

Architectures follow Appendix D (Table 1) of *The Deep Weight Prior* (Atanov et al., 2019).
With the paper's sizes the parameter counts match the table exactly: 7x7 kernels
(``z_dim=2, hidden=32``): encoder 56,004, decoder 56,674; 5x5 kernels (``z_dim=4, hidden=64``):
encoder 260,040, decoder 304,194. All layers are separated by ELU. The table's caption also
mentions 2x2 max-pooling in the encoders, which the layer sizes leave no room for (unpadded
3x3 convolutions already reduce the kernel to 1x1), so there is none. 3x3 kernels are not in
the paper; their small architecture here is our own choice, built the same way.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import kl_divergence
from tqdm.auto import tqdm

from pyro_dwp.io import read_torch_file

__all__ = [
    "KernelDecoder",
    "KernelEncoder",
    "KernelVAE",
    "dihedral_augment",
    "fit_kernel_vae",
    "iwae_log_marginal",
    "load_kernel_vae",
    "save_kernel_vae",
]

# (z_dim, hidden) of the paper for each kernel size; 3x3 is our own choice.
_DEFAULTS = {3: (2, 32), 5: (4, 64), 7: (2, 32)}


def _check_kernel_shape(w: Tensor, kernel_size: int, what: str) -> None:
    if w.dim() < 2 or tuple(w.shape[-2:]) != (kernel_size, kernel_size):
        got = "x".join(map(str, w.shape[-2:])) if w.dim() >= 2 else f"shape {tuple(w.shape)}"
        raise ValueError(
            f"{what} for {kernel_size}x{kernel_size} kernels applied to {got} kernels "
            f"(input of shape {tuple(w.shape)})"
        )


def _check_kernel_size(kernel_size: int) -> None:
    if kernel_size not in _DEFAULTS:
        raise ValueError(f"kernel_size must be one of {sorted(_DEFAULTS)}, got {kernel_size}")


def _encoder_features(kernel_size: int, hidden: int) -> nn.Sequential:
    h, h2 = hidden, 2 * hidden
    if kernel_size == 7:  # 7 -> 5 -> 3 -> 1
        layers = [nn.Conv2d(1, h, 3), nn.Conv2d(h, h2, 3), nn.Conv2d(h2, h2, 3)]
    elif kernel_size == 5:  # 5 -> 5 -> 5 -> 3 -> 1
        layers = [
            nn.Conv2d(1, h, 3, padding=1),
            nn.Conv2d(h, h, 3, padding=1),
            nn.Conv2d(h, h2, 3),
            nn.Conv2d(h2, h2, 3),
        ]
    else:  # 3 -> 3 -> 1
        layers = [nn.Conv2d(1, h, 3, padding=1), nn.Conv2d(h, h2, 3)]
    return nn.Sequential(*(m for layer in layers for m in (layer, nn.ELU())))


def _decoder_features(kernel_size: int, z_dim: int, hidden: int) -> tuple[nn.Sequential, int]:
    h, h2 = hidden, 2 * hidden
    if kernel_size == 7:  # 1 -> 3 -> 5 -> 7
        layers = [
            nn.ConvTranspose2d(z_dim, h2, 3),
            nn.ConvTranspose2d(h2, h2, 3),
            nn.ConvTranspose2d(h2, h, 3),
        ]
    elif kernel_size == 5:  # 1 -> 1 -> 3 -> 5 -> 5
        layers = [
            nn.Conv2d(z_dim, h2, 1),
            nn.ConvTranspose2d(h2, h2, 3),
            nn.ConvTranspose2d(h2, h2, 3),
            nn.ConvTranspose2d(h2, h, 1),
        ]
    else:  # 1 -> 1 -> 3
        layers = [nn.Conv2d(z_dim, h2, 1), nn.ConvTranspose2d(h2, h, 3)]
    return nn.Sequential(*(m for layer in layers for m in (layer, nn.ELU()))), h


class KernelEncoder(nn.Module):
    """Inference network of :math:`q(z \\mid w)`: kernels to a diagonal Gaussian over ``z``.

    Convolutions reduce a kernel to a ``2 * hidden``-channel 1x1 map, then two linear heads give
    the mean and (through softplus) the scale.

    Args:
        kernel_size: Side ``k`` of the square kernels (3, 5 or 7).
        z_dim: Latent dimension.
        hidden: Width ``h`` of the network (channels ``h`` and ``2h``).
    """

    def __init__(self, kernel_size: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        _check_kernel_size(kernel_size)
        self.kernel_size, self.z_dim = kernel_size, z_dim
        self.features = _encoder_features(kernel_size, hidden)
        self.loc = nn.Linear(2 * hidden, z_dim)
        self.scale = nn.Linear(2 * hidden, z_dim)

    def forward(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of :math:`q(z \\mid w)`: ``(..., k, k) -> 2 x (..., z_dim)``."""
        _check_kernel_shape(w, self.kernel_size, type(self).__name__)
        k = self.kernel_size
        h = self.features(w.reshape(-1, 1, k, k)).flatten(1)
        shape = w.shape[:-2] + (self.z_dim,)
        return self.loc(h).reshape(shape), F.softplus(self.scale(h)).reshape(shape)


class KernelDecoder(nn.Module):
    """Reconstruction network of :math:`p(w \\mid z)`: a diagonal Gaussian over kernel pixels.

    Transposed convolutions grow the latent code (a ``z_dim``-channel 1x1 map) to ``k x k``,
    then two 1x1 heads give the per-pixel mean and (through softplus) scale.

    Args:
        kernel_size: Side ``k`` of the square kernels (3, 5 or 7).
        z_dim: Latent dimension.
        hidden: Width ``h`` of the network (channels ``h`` and ``2h``).
    """

    def __init__(self, kernel_size: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        _check_kernel_size(kernel_size)
        self.kernel_size, self.z_dim = kernel_size, z_dim
        self.features, channels = _decoder_features(kernel_size, z_dim, hidden)
        # 1x1 heads: transposed in the 7x7 table, plain in the 5x5 one (the same maps).
        head = nn.ConvTranspose2d if kernel_size == 7 else nn.Conv2d
        self.loc = head(channels, 1, 1)
        self.scale = head(channels, 1, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of :math:`p(w \\mid z)`: ``(..., z_dim) -> 2 x (..., k, k)``."""
        if z.dim() < 1 or z.shape[-1] != self.z_dim:
            raise ValueError(
                f"{type(self).__name__} expects latent codes (..., {self.z_dim}), "
                f"got shape {tuple(z.shape)}"
            )
        h = self.features(z.reshape(-1, self.z_dim, 1, 1))
        shape = z.shape[:-1] + (self.kernel_size, self.kernel_size)
        return self.loc(h).reshape(shape), F.softplus(self.scale(h)).reshape(shape)


def _standard_normal(like: Tensor) -> dist.Independent:
    return dist.Normal(torch.zeros_like(like), torch.ones_like(like)).to_event(1)


def iwae_log_marginal(
    encoder: nn.Module,
    decoder: nn.Module,
    w: Tensor,
    num_samples: int,
    *,
    chunk_size: int = 1024,
) -> Tensor:
    r"""Importance-weighted estimate of :math:`\log p(w) = \log \int p(w \mid z) p(z) \, dz`.

    The IWAE bound of Burda et al. (2016) with proposal :math:`q(z \mid w)` and
    :math:`p(z) = \mathcal{N}(0, I)`:

    .. math::

        \log \frac{1}{K} \sum_{k=1}^K \frac{p(w \mid z_k) \, p(z_k)}{q(z_k \mid w)},
        \qquad z_k \sim q(z \mid w).

    It is a lower bound on :math:`\log p(w)` in expectation, non-decreasing in ``K`` and
    consistent as ``K`` grows. Samples are drawn in chunks of ``chunk_size`` (a running
    log-sum-exp), so memory stays bounded for ``K`` in the thousands (Appendix F uses 10,000).

    Args:
        encoder: ``(..., k, k) -> (loc, scale)``, each ``(..., z_dim)``.
        decoder: ``(..., z_dim) -> (loc, scale)``, each ``(..., k, k)``.
        w: Kernels ``(..., k, k)``.
        num_samples: Number ``K`` of importance samples per kernel (>= 1).
        chunk_size: Importance samples evaluated at once.

    Returns:
        Estimates of shape ``(...)``, differentiable (reparameterised samples).
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_samples and chunk_size must be >= 1, got {num_samples}, {chunk_size}"
        )
    q = dist.Normal(*encoder(w)).to_event(1)
    total = None
    for start in range(0, num_samples, chunk_size):
        z = q.rsample((min(chunk_size, num_samples - start),))
        log_weight = (
            dist.Normal(*decoder(z)).to_event(2).log_prob(w)
            + _standard_normal(z).log_prob(z)
            - q.log_prob(z)
        )
        chunk = log_weight.logsumexp(0)
        total = chunk if total is None else torch.logaddexp(total, chunk)
    return total - math.log(num_samples)


class KernelVAE(nn.Module):
    """A VAE over ``k x k`` convolutional kernels with latent prior :math:`\\mathcal{N}(0, I)`.

    Its decoder defines the deep weight prior :math:`p(w) = \\int p(w \\mid z) p(z) dz`; its
    encoder initialises the reverse model :math:`r(z \\mid w)` of the auxiliary bound.

    Args:
        kernel_size: Side ``k`` of the square kernels (3, 5 or 7).
        z_dim: Latent dimension.
        hidden: Network width (see :class:`KernelEncoder`, :class:`KernelDecoder`).

    Example::

        vae = KernelVAE.for_kernel_size(7)  # z_dim 2, hidden 32 (Appendix D)
        history = fit_kernel_vae(vae, train, valid, epochs=300, seed=0)
    """

    def __init__(self, kernel_size: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        _check_kernel_size(kernel_size)
        if z_dim < 1 or hidden < 1:
            raise ValueError(f"z_dim and hidden must be >= 1, got {z_dim}, {hidden}")
        self.kernel_size, self.z_dim, self.hidden = kernel_size, z_dim, hidden
        self.encoder = KernelEncoder(kernel_size, z_dim, hidden)
        self.decoder = KernelDecoder(kernel_size, z_dim, hidden)

    @classmethod
    def for_kernel_size(cls, kernel_size: int, z_dim: int | None = None) -> KernelVAE:
        """The paper's VAE for ``k x k`` kernels: 7 -> (z_dim 2, hidden 32), 5 -> (4, 64).

        3x3 (not in the paper) gets z_dim 2, hidden 32. ``z_dim`` overrides the latent
        dimension (the width stays the paper's).
        """
        _check_kernel_size(kernel_size)
        default_z_dim, hidden = _DEFAULTS[kernel_size]
        return cls(kernel_size, default_z_dim if z_dim is None else z_dim, hidden)

    def encode(self, w: Tensor) -> dist.Independent:
        """:math:`q(z \\mid w)`: kernels ``(..., k, k)`` to a Normal with batch shape ``(...)``
        and event shape ``(z_dim,)``."""
        return dist.Normal(*self.encoder(w)).to_event(1)

    def decode(self, z: Tensor) -> dist.Independent:
        """:math:`p(w \\mid z)`: codes ``(..., z_dim)`` to a Normal with batch shape ``(...)``
        and event shape ``(k, k)``."""
        return dist.Normal(*self.decoder(z)).to_event(2)

    def elbo(self, w: Tensor, num_samples: int = 1) -> Tensor:
        """Evidence lower bound per kernel, ``(..., k, k) -> (...)``.

        :math:`\\mathbb{E}_q \\log p(w \\mid z) - \\mathrm{KL}(q(z \\mid w) \\| p(z))` with the
        reconstruction term averaged over ``num_samples`` reparameterised samples and the
        Gaussian KL in closed form.
        """
        q = self.encode(w)
        z = q.rsample((num_samples,))
        reconstruction = self.decode(z).log_prob(w).mean(0)
        return reconstruction - kl_divergence(q, _standard_normal(q.mean))

    def iwae_bound(self, w: Tensor, k_samples: int, *, chunk_size: int = 1024) -> Tensor:
        """Importance-weighted estimate of ``log p(w)`` per kernel, ``(..., k, k) -> (...)``.

        See :func:`iwae_log_marginal` (Burda et al., 2016); ``k_samples`` is ``K``.
        """
        return iwae_log_marginal(self.encoder, self.decoder, w, k_samples, chunk_size=chunk_size)


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
    vae: KernelVAE,
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
    """Train a :class:`KernelVAE` on a set of kernels, as in Section 3.3 / Appendix D.

    Adam on the summed negative ELBO of each minibatch, the learning rate decayed linearly to 0
    over all steps. The length is ``epochs`` passes over ``train_kernels`` or, with ``steps``,
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
            _check_kernel_shape(kernels, vae.kernel_size, f"KernelVAE ({name})")
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
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    history: dict[str, Any] = {"train_elbo": [], "valid_elbo": []}
    best, best_state = -math.inf, None
    for epoch in tqdm(range(epochs), desc="kernel VAE", disable=not progress):
        epoch_sum = torch.zeros((), device=device)
        for idx in torch.randperm(len(train), device=device).split(batch_size):
            w = dihedral_augment(train[idx]) if augment else train[idx]
            loss = -vae.elbo(w).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
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


_FILE_FORMAT = "pyro_dwp.kernel_vae"
_FILE_VERSION = 1
# Keys of a kernel VAE file that describe the network; everything else is the caller's metadata.
_RESERVED = ("format", "version", "state_dict", "kernel_size", "z_dim", "hidden")


def save_kernel_vae(path: str | os.PathLike[str], vae: KernelVAE, **meta: Any) -> None:
    """Write a trained :class:`KernelVAE` and metadata to ``path`` (atomically).

    The file is a ``torch.save`` dict ``{"format": "pyro_dwp.kernel_vae", "version": 1,
    "state_dict", "kernel_size", "z_dim", "hidden", **meta}`` (tensors on the CPU), read back by
    :func:`load_kernel_vae`. ``meta`` should hold plain Python values and tensors only (e.g.
    ``layer``, ``provenance``, ``history``), so that it loads with ``weights_only=True``.

    Raises:
        ValueError: If a ``meta`` key is one of the reserved keys above.
    """
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved in a kernel VAE file")
    # Imported here: pyro_dwp.infer imports the deep weight prior, which imports this module.
    from pyro_dwp.infer.fit import save_checkpoint

    state = {k: v.detach().cpu() for k, v in vae.state_dict().items()}
    save_checkpoint(
        path,
        {
            "format": _FILE_FORMAT,
            "version": _FILE_VERSION,
            "state_dict": state,
            "kernel_size": vae.kernel_size,
            "z_dim": vae.z_dim,
            "hidden": vae.hidden,
            **meta,
        },
    )


def load_kernel_vae(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[KernelVAE, dict[str, Any]]:
    """Read a :class:`KernelVAE` written by :func:`save_kernel_vae` (``pyro-dwp dwp-prior``).

    Args:
        path: The file, e.g. ``runs/dwp_prior/vae_conv1.pt``.
        map_location: Device of the returned VAE.

    Returns:
        The VAE (in eval mode) and its metadata: ``kernel_size``, ``z_dim``, ``hidden`` and the
        ``meta`` passed to :func:`save_kernel_vae`.

    Raises:
        FileNotFoundError: If there is no file at ``path`` (the message says how to make one).
        ValueError: If the file is truncated, corrupt or not a kernel VAE file.
    """
    path = Path(path)
    state = read_torch_file(
        path,
        what="kernel VAE file",
        remedy="train the prior with "
        f"`pyro-dwp dwp-prior --kernels KERNEL_DIR --out {path.parent}`",
    )
    if not isinstance(state, dict) or state.get("format") != _FILE_FORMAT:
        raise ValueError(f"{path} is not a kernel VAE file written by save_kernel_vae")
    if state.get("version") != _FILE_VERSION:
        raise ValueError(
            f"kernel VAE file {path} has version {state.get('version')!r}; this code reads "
            f"version {_FILE_VERSION}"
        )
    try:
        vae = KernelVAE(state["kernel_size"], state["z_dim"], state["hidden"])
        vae.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"kernel VAE file {path} is inconsistent: {type(e).__name__}: {e}") from e
    meta = {k: v for k, v in state.items() if k not in ("format", "version", "state_dict")}
    return vae.to(map_location).eval(), meta

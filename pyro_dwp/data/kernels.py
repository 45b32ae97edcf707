"""Sets of convolution kernels ``(N, k, k)``, the data of the deep weight prior's VAEs: their
train / test split and statistics of how structured they are (used by ``pyro-dwp dwp-source``
for the source kernels, ``pyro-dwp dwp-prior`` for prior samples, and the shipped prior's
metadata)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "kernel_similarity",
    "kernel_smoothness",
    "kernel_stats",
    "select_kernels",
    "split_kernels",
]


def split_kernels(kernels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of kernels ``(N, k, k)`` into train ``(N - m, k, k)`` and test
    ``(m, k, k)``, ``m = round(test_fraction * N)``."""
    perm = torch.randperm(len(kernels), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(kernels))
    return kernels[perm[n_test:]].clone(), kernels[perm[:n_test]].clone()


def _pooled_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the pairs ``(a_i, b_i)`` of two tensors of one shape."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.square().sum() * b.square().sum()).sqrt().clamp_min(1e-300)


def kernel_smoothness(kernels: Tensor) -> float:
    """Mean correlation of horizontally and vertically adjacent pixels of kernels ``(N, k, k)``.

    The Pearson correlation of all pairs ``(w[n, i, j], w[n, i, j + 1])`` pooled over kernels
    and positions, and the same for ``(w[n, i, j], w[n, i + 1, j])``; their mean. White noise
    gives about 0; smooth edges, bars and blobs (the paper's Figure 1) give clearly positive
    values; a checkerboard gives -1.

    Raises:
        ValueError: If ``kernels`` is not ``(N, k, k)`` with ``N >= 1`` and ``k >= 2``.
    """
    if kernels.dim() != 3 or len(kernels) == 0 or kernels.shape[-1] < 2:
        raise ValueError(f"kernels must have shape (N, k, k), N >= 1, k >= 2; got {kernels.shape}")
    horizontal = _pooled_correlation(kernels[:, :, :-1], kernels[:, :, 1:])
    vertical = _pooled_correlation(kernels[:, :-1, :], kernels[:, 1:, :])
    return float((horizontal + vertical) / 2)


@torch.no_grad()
def kernel_similarity(kernels: Tensor, max_kernels: int = 1024) -> float:
    """Mean absolute cosine similarity of distinct kernels ``(N, k, k)``, ``N >= 2``.

    0 for orthogonal kernels, 1 when every kernel is a multiple of one kernel: a filter bank
    collapsed onto one filter (what the pull of a prior with one dominant mode does to the
    kernel means). Kernels of zero norm count as orthogonal to all others. Only the first
    ``max_kernels`` kernels are compared (the statistic is a mean over pairs; ``N = 4096``
    would need a 4096 x 4096 matrix).
    """
    if kernels.dim() != 3 or len(kernels) < 2:
        raise ValueError(
            f"kernel_similarity needs kernels (N >= 2, k, k), got {tuple(kernels.shape)}"
        )
    f = kernels[:max_kernels].flatten(1).double()
    u = f / f.norm(dim=1, keepdim=True).clamp_min(torch.finfo(f.dtype).tiny)
    c = (u @ u.T).abs()
    n = len(f)
    return ((c.sum() - c.diagonal().sum()) / (n * (n - 1))).item()


def kernel_stats(kernels: Tensor) -> dict[str, float]:
    """``{"n", "std", "mean_norm", "smoothness"}`` of kernels ``(N, k, k)``: their number, the
    std of all their pixels, their mean L2 norm and :func:`kernel_smoothness`."""
    return {
        "n": len(kernels),
        "std": kernels.std().item() if kernels.numel() > 1 else float("nan"),
        "mean_norm": kernels.flatten(1).norm(dim=1).mean().item(),
        "smoothness": kernel_smoothness(kernels),
    }


def select_kernels(
    kernels: Tensor, *, keep_fraction: float | None = None, min_norm: float | None = None
) -> tuple[Tensor, float]:
    """The norm filter: which kernels ``(N, k, k)`` to keep, ``-> ((N,) bool mask, floor)``.

    Exactly one of the two rules:

    - ``keep_fraction=f``: the ``round(f * N)`` kernels of largest L2 (Frobenius) norm (ties
      broken by index); the floor returned is the smallest kept norm;
    - ``min_norm=m``: the kernels of norm ``>= m``; the floor returned is ``m``.

    Raises:
        ValueError: If not exactly one rule is given, ``f`` is not in ``(0, 1]``, ``m < 0``, or
            the rule keeps no kernel (the message names the floor and the largest norm).
    """
    if (keep_fraction is None) == (min_norm is None):
        raise ValueError("select_kernels needs exactly one of keep_fraction and min_norm")
    norms = kernels.flatten(1).norm(dim=1)
    if keep_fraction is not None:
        if not 0 < keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        n_keep = round(keep_fraction * len(kernels))
        keep = torch.zeros(len(kernels), dtype=torch.bool)
        keep[norms.argsort(descending=True, stable=True)[:n_keep]] = True
        floor = norms[keep].min().item() if n_keep else float("inf")
    else:
        if min_norm < 0:
            raise ValueError(f"min_norm must be >= 0, got {min_norm}")
        keep, floor = norms >= min_norm, min_norm
    if not keep.any():
        largest = norms.max().item() if len(norms) else float("nan")
        raise ValueError(
            f"the norm filter keeps none of {len(kernels)} kernels (floor {floor:.4g}, largest "
            f"norm {largest:.4g}): lower --min-norm or raise --keep-fraction"
        )
    return keep, floor

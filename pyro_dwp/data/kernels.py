"""Sets of convolution kernels ``(N, k, k)``, the data of the deep weight prior's VAEs."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["split_kernels"]


def split_kernels(kernels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of kernels ``(N, k, k)`` into train ``(N - m, k, k)`` and test
    ``(m, k, k)``, ``m = round(test_fraction * N)``."""
    perm = torch.randperm(len(kernels), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(kernels))
    return kernels[perm[n_test:]].clone(), kernels[perm[:n_test]].clone()

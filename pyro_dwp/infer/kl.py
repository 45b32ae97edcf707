"""Minibatch weighting of the prior/entropy (KL) terms, Blundell et al. (2015), Sec. 3.4."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor

__all__ = ["KLScaleMessenger", "KLScheme", "kl_weights"]

KLScheme = Literal["uniform", "blundell"]


def kl_weights(num_batches: int, scheme: KLScheme = "uniform") -> Tensor:
    r"""Weights :math:`\pi_i` of the KL term of minibatch ``i = 1..M`` of an epoch; they sum to 1.

    - ``"uniform"``: :math:`\pi_i = 1/M`.
    - ``"blundell"``: :math:`\pi_i = 2^{M-i} / (2^M - 1) = 2^{-i} / (1 - 2^{-M})`, computed in
      log space so that it neither overflows nor produces NaN for any ``M`` (weights of late
      minibatches underflow to exactly 0 for ``M`` beyond ~1000, which is their value to
      double precision).

    Args:
        num_batches: Number of minibatches per epoch ``M`` (>= 1).
        scheme: ``"uniform"`` or ``"blundell"``.

    Returns:
        A float64 tensor of shape ``(M,)``.
    """
    if not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}")
    if scheme == "uniform":
        return torch.full((num_batches,), 1.0 / num_batches, dtype=torch.float64)
    if scheme == "blundell":
        i = torch.arange(1, num_batches + 1, dtype=torch.float64)
        log2 = math.log(2.0)
        log_norm = math.log1p(-math.exp(-num_batches * log2))  # log(1 - 2^-M)
        return torch.exp(-i * log2 - log_norm)
    raise ValueError(f"unknown KL scheme {scheme!r}; choose 'uniform' or 'blundell'")


class KLScaleMessenger(Messenger):
    """Multiply the log-densities of latent (unobserved) sample sites by ``scale``.

    Applied to both model and guide, it scales the prior and entropy terms of the ELBO, i.e. the
    KL term, and leaves the data term alone; with the data term scaled by ``N / B`` through a
    subsampled plate, ``scale = M * pi_i`` gives the minibatch objective of Blundell et al.
    ``scale`` is an attribute that a training loop updates between steps.

    Args:
        scale: Positive factor.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]

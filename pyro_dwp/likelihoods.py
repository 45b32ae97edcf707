"""Observation models: the ``pyro.sample`` site of the data given the network output."""

from __future__ import annotations

from abc import ABC, abstractmethod

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.constraints import positive
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["Categorical", "Gaussian", "Likelihood"]


class Likelihood(ABC):
    """The data site ``obs`` inside a subsampled ``pyro.plate("data", dataset_size)``.

    The plate scales the minibatch log-likelihood by ``dataset_size / batch_size``, so a
    minibatch step estimates the full-data ELBO.

    Args:
        dataset_size: Number of training examples N (> 0).
        event_dim: Number of trailing output dimensions that form one observation.
        site: Name of the observed site.
    """

    def __init__(self, dataset_size: int, *, event_dim: int, site: str = "obs") -> None:
        if int(dataset_size) != dataset_size or int(dataset_size) <= 0:
            raise ValueError(f"dataset_size must be a positive integer, got {dataset_size}")
        self.dataset_size = int(dataset_size)
        self.event_dim = event_dim
        self.site = site
        self._arange: dict[tuple[int, torch.device], Tensor] = {}

    @abstractmethod
    def distribution(self, out: Tensor) -> Distribution:
        """Predictive distribution of one target per example; batch shape ``out.shape[:-1]``."""

    def __call__(self, out: Tensor, y: Tensor | None = None) -> Tensor:
        """Sample or observe the targets.

        Args:
            out: Network output, ``(*particles, B, *out_shape)``.
            y: Targets ``(B, *target_shape)`` or ``None`` to sample them; ``target_shape`` is
                the distribution's event shape (``Gaussian``: ``out``'s last dimension,
                ``Categorical``: none).

        Returns:
            The observed or sampled targets.

        Raises:
            ValueError: If ``y``'s shape is not ``(B, *target_shape)`` (a ``(B,)`` target for a
                ``(B, 1)`` output would otherwise broadcast against every other example).
        """
        d = self.distribution(out)
        batch = d.batch_shape[-1]
        if y is not None and y.shape[0] != batch:
            raise ValueError(f"got {batch} network outputs but {y.shape[0]} targets")
        if y is not None and tuple(y.shape) != (batch, *d.event_shape):
            raise ValueError(
                f"targets of shape {tuple(y.shape)} for network outputs of shape "
                f"{tuple(out.shape)}: {type(self).__name__} needs targets of shape "
                f"{(batch, *d.event_shape)}"
            )
        size = max(self.dataset_size, batch)
        # The minibatch is already drawn: a given subsample spares the plate a randperm of N.
        with pyro.plate("data", size, subsample=self._positions(batch, out.device), dim=-1):
            return pyro.sample(self.site, d, obs=y)

    def _positions(self, batch: int, device: torch.device) -> Tensor:
        key = (batch, device)
        if key not in self._arange:
            self._arange[key] = torch.arange(batch, device=device)
        return self._arange[key]


class Gaussian(Likelihood):
    """Homoskedastic Gaussian regression: ``y ~ N(out, scale^2)``, event ``(D,)``.

    Args:
        dataset_size: Number of training examples.
        scale: Fixed noise standard deviation, or ``None`` to learn it as a point estimate
            (a positive ``pyro.param`` named ``"noise_scale"``, initialised to ``init_scale``).
    """

    def __init__(
        self, dataset_size: int, scale: float | None = None, *, init_scale: float = 0.1
    ) -> None:
        super().__init__(dataset_size, event_dim=1)
        for label, v in (("scale", scale), ("init_scale", init_scale)):
            if v is not None and not v > 0:
                raise ValueError(f"Gaussian likelihood {label} must be > 0, got {v}")
        self.scale = scale
        self.init_scale = init_scale

    def noise_scale(self, like: Tensor) -> Tensor:
        """The noise standard deviation, a scalar tensor on ``like``'s device."""
        if self.scale is not None:
            return torch.tensor(self.scale, dtype=like.dtype, device=like.device)
        init = torch.tensor(self.init_scale, dtype=like.dtype, device=like.device)
        return pyro.param("noise_scale", init, constraint=positive)

    def distribution(self, out: Tensor) -> Distribution:
        return dist.Normal(out, self.noise_scale(out)).to_event(1)


class Categorical(Likelihood):
    """Classification: ``y ~ Categorical(logits=out)``, ``out`` of shape ``(..., B, C)``."""

    def __init__(self, dataset_size: int) -> None:
        super().__init__(dataset_size, event_dim=0)

    def distribution(self, out: Tensor) -> Distribution:
        return dist.Categorical(logits=out)

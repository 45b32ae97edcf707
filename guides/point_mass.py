"""A point-mass guide: maximum a posteriori weights, the deterministic network with a penalty."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

import torch
from pyro.infer.autoguide import AutoDelta
from pyro.nn import pyro_method
from torch import Tensor

from .initialization import init_to_module

__all__ = ["PointMass"]


class PointMass(AutoDelta):
    r"""``q(w) = \delta(w - \mu)`` per latent site, Pyro's ``AutoDelta`` with the accessors of
    :class:`~pyro_dwp.guides.BBBNormal` (:attr:`site_names`, :meth:`loc`, :meth:`scale`).

    With ``Trace_ELBO`` the loss is :math:`-\log p(y \mid x, \mu) - \log p(\mu)`: maximum a
    posteriori estimation, a deterministic network whose penalty is the prior's negative
    log-density. Under the standard-normal prior that is the L2 penalty
    :math:`\lVert \mu \rVert^2 / 2` on the summed loss: the "deterministic + L2" network of
    Figure 2 of Atanov et al. (2019), there started from samples of the deep weight prior
    (``init_loc_fn=init_to_prior_sample(...)``).

    Args:
        model: A Pyro model, e.g. a :class:`~pyro_dwp.bnn.BNN`.
        init_loc_fn: Per-site initialiser of ``mu``; by default the network's own
            initialisation (:func:`~pyro_dwp.guides.init_to_module`).

    Its parameters live in Pyro's param store under ``f"{type name}.{site}"``.
    """

    def __init__(
        self, model: Callable, *, init_loc_fn: Callable[[dict], Tensor] = init_to_module
    ) -> None:
        super().__init__(model, init_loc_fn=init_loc_fn)

    @property
    def site_names(self) -> list[str]:
        """Names of the latent sites this guide covers (after its first call)."""
        self._check_ready()
        return [name for name, _ in self.prototype_trace.iter_stochastic_nodes()]

    @pyro_method
    def loc(self, name: str) -> Tensor:
        """The point ``mu`` of site ``name`` (same shape as the site), as held by the param
        store."""
        self._check_ready(name)
        return attrgetter(name)(self)

    def scale(self, name: str) -> Tensor:
        """The standard deviation of the point mass at site ``name``: zeros like ``mu``."""
        return torch.zeros_like(self.loc(name))

    def _check_ready(self, name: str | None = None) -> None:
        if self.prototype_trace is None:
            raise RuntimeError("the guide has not been run yet: call it once with model inputs")
        if name is not None and name not in self.site_names:
            raise KeyError(f"no site {name!r}; the guide's sites are {self.site_names}")

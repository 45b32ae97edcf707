"""The Bayes by Backprop guide: a factorised Gaussian with ``sigma = softplus(rho)``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from operator import attrgetter

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule, PyroParam, pyro_method
from torch import Tensor

from .initialization import init_to_module

__all__ = ["BBBNormal"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class _ReparameterizedNormal(dist.Normal):
    """A ``Normal`` that keeps the noise of its last draw ``w = loc + scale * eps``.

    At that draw ``log_prob`` is ``-eps^2 / 2 - log(scale) - log(2 pi) / 2``: the same value as
    the generic formula and the same gradients (through ``w``, the terms in ``loc`` cancel and
    ``d/dscale = -1/scale``), in three passes over the weights instead of about eight. Any other
    value takes the generic formula.
    """

    _draw: tuple[Tensor, Tensor] | None = None

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        w = torch.addcmul(self.loc, self.scale, eps)
        self._draw = (w, eps)
        return w

    def log_prob(self, value: Tensor) -> Tensor:
        if self._draw is None or value is not self._draw[0]:
            return super().log_prob(value)
        eps = self._draw[1]
        return torch.addcmul(self.scale.log().neg_().sub_(_HALF_LOG_2PI), eps, eps, value=-0.5)


def _replace_stale_params(prefix: str, owner: str) -> None:
    """Remove the param store's values under ``prefix`` (an earlier guide's of the same name),
    so that a guide being set up starts from its own initial values; warn if there were any.

    A guide is set up on its first call, before a checkpoint's or a saved model's values are
    loaded into the store (:func:`~pyro_dwp.infer.fit`, :func:`~pyro_dwp.load`): those values
    then take the place of the initial ones.
    """
    store = pyro.get_param_store()
    stale = [k for k in store.keys() if k.startswith(prefix)]
    for k in stale:
        del store[k]
    if stale:
        warnings.warn(
            f"{owner}: the param store held {len(stale)} parameters of an earlier guide with this "
            f"guide's names ({stale[0]}, ...); they were replaced by this guide's initial values "
            "and the earlier guide now reads these: call pyro.clear_param_store() before "
            "building a new model and guide",
            UserWarning,
            stacklevel=3,
        )


class BBBNormal(AutoGuide):
    r"""Fully factorised Gaussian guide of Blundell et al. (2015).

    Each latent site ``w`` (real support) gets ``q(w) = N(mu, sigma^2)`` elementwise with
    ``sigma = log(1 + exp(rho))``; ``mu`` and ``rho`` are the optimised parameters (``rho`` is the
    unconstrained value of a ``softplus_positive`` ``PyroParam``), and ``w = mu + sigma * eps``
    with ``eps ~ N(0, I)``, so backpropagation gives the paper's gradients
    ``d/dmu = df/dw + df/dmu`` and ``d/drho = df/dw * eps / (1 + exp(-rho)) + df/drho``.

    Args:
        model: A Pyro model, e.g. a :class:`~pyro_dwp.bnn.BNN`.
        init_loc_fn: Per-site initialiser of ``mu``; by default the network's own
            initialisation (:func:`~pyro_dwp.guides.init_to_module`).
        init_scale: Initial ``sigma`` (> 0); the paper needs it small.
        create_plates: As in :class:`~pyro.infer.autoguide.AutoNormal`.

    Its parameters live in Pyro's param store under ``f"{type name}.locs.{site}"`` and
    ``f"{type name}.scales.{site}"``. A new guide, on its first call, replaces values an earlier
    guide left there under the same names (with a warning): call ``pyro.clear_param_store()``
    before building a new model and guide. The accessors (:meth:`loc`, :meth:`scale`,
    :meth:`rho`, :meth:`median`, :meth:`signal_to_noise`) read the param store too, through the
    guide's Pyro context (``pyro.nn.pyro_method``): values put there after the guide's last call
    (``set_state`` by a load or a resume) are the ones they return, not the copies the guide's
    modules kept from that call.

    Subclasses change the scale parameterisation by overriding :attr:`scale_constraint`, whose
    ``biject_to`` transform maps the optimised unconstrained parameter to ``sigma`` (see
    :class:`~pyro_dwp.guides.LogVarianceNormal`).
    """

    scale_constraint: constraints.Constraint = constraints.softplus_positive
    """Constraint of ``sigma``; its bijection defines the optimised parameter (here ``rho``)."""

    def __init__(
        self,
        model: Callable,
        *,
        init_loc_fn: Callable[[dict], Tensor] = init_to_module,
        init_scale: float = 1e-3,
        create_plates: Callable | None = None,
    ) -> None:
        if not isinstance(init_scale, int | float) or not 0 < init_scale < math.inf:
            raise ValueError(f"init_scale must be a finite float > 0, got {init_scale!r}")
        self.init_loc_fn = init_loc_fn
        self._init_scale = float(init_scale)
        super().__init__(InitMessenger(init_loc_fn)(model), create_plates=create_plates)

    def _setup_prototype(self, *args, **kwargs) -> None:
        # The prototype trace is kept (its sites describe the model); without gradients, its
        # values and distributions do not keep that first run's autograd graph alive (which
        # pins the parameters' gradient accumulators to the CUDA stream of that run, where a
        # CUDA graph captured on another stream cannot use them).
        with torch.no_grad():
            super()._setup_prototype(*args, **kwargs)
        _replace_stale_params(f"{self._pyro_name}.", type(self).__name__)
        self.locs = PyroModule()
        self.scales = PyroModule()
        self._event_dims: dict[str, int] = {}
        self._frames: dict[str, list] = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            support = site["fn"].support
            while isinstance(support, constraints.independent):
                support = support.base_constraint
            if support is not constraints.real:
                raise ValueError(
                    f"BBBNormal needs real-valued sites, but {name!r} has support "
                    f"{site['fn'].support}"
                )
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and (frame.full_size or frame.size) != frame.size:
                    raise ValueError(
                        f"BBBNormal does not support subsampled plates around latent site {name!r}"
                    )
            loc = site["value"].detach().clone()
            self._event_dims[name] = site["fn"].event_dim
            self._frames[name] = [f for f in site["cond_indep_stack"] if f.vectorized]
            event_dim = site["fn"].event_dim
            deep_setattr(self.locs, name, PyroParam(loc, constraints.real, event_dim))
            scale = torch.full_like(loc, self._init_scale)
            deep_setattr(self.scales, name, PyroParam(scale, self.scale_constraint, event_dim))

    @property
    def site_names(self) -> list[str]:
        """Names of the latent sites this guide covers (after its first call)."""
        self._check_ready()
        return list(self._event_dims)

    @pyro_method
    def loc(self, name: str) -> Tensor:
        """Posterior mean ``mu`` of site ``name`` (same shape as the site), as held by the param
        store."""
        self._check_ready(name)
        return attrgetter(name)(self.locs)

    @pyro_method
    def scale(self, name: str) -> Tensor:
        """Posterior standard deviation ``sigma = softplus(rho)`` of site ``name``."""
        self._check_ready(name)
        return attrgetter(name)(self.scales)

    @pyro_method
    def rho(self, name: str) -> Tensor:
        """The unconstrained scale parameter of site ``name``, the one actually optimised.

        ``rho`` with ``sigma = softplus(rho)`` here; in general ``biject_to(scale_constraint)``
        maps it to ``sigma``.
        """
        self._check_ready(name)
        self.scale(name)  # syncs the module with the param store
        path, _, attr = name.rpartition(".")
        owner = attrgetter(path)(self.scales) if path else self.scales
        return getattr(owner, attr + "_unconstrained")

    def _check_ready(self, name: str | None = None) -> None:
        if self.prototype_trace is None:
            raise RuntimeError("the guide has not been run yet: call it once with model inputs")
        if name is not None and name not in self._event_dims:
            raise KeyError(f"no site {name!r}; the guide's sites are {list(self._event_dims)}")

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        """Sample every latent site: ``w = mu + softplus(rho) * eps``.

        Returns:
            ``{site name: sampled value}``.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, event_dim in self._event_dims.items():
            with ExitStack() as stack:
                for frame in self._frames[name]:
                    stack.enter_context(plates[frame.name])
                q = _ReparameterizedNormal(self.loc(name), self.scale(name), validate_args=False)
                q = q.to_event(event_dim)
                result[name] = pyro.sample(name, q)
        return result

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        """Posterior means ``{site: mu}`` (the median of a Gaussian)."""
        return {name: self.loc(name).detach() for name in self.site_names}

    @torch.no_grad()
    def signal_to_noise(self) -> dict[str, Tensor]:
        """``|mu| / sigma`` per weight, the pruning criterion of Blundell et al. (2015)."""
        return {n: self.loc(n).abs() / self.scale(n) for n in self.site_names}

"""The guide of the auxiliary bound: a base guide over weights and reverse models over codes."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer.autoguide import AutoGuide
from torch import Tensor, nn

from .bbb import _replace_stale_params

__all__ = ["ReverseModelGuide", "latent_site_name"]


def latent_site_name(name: str) -> str:
    """Name of the latent-code site of a reparameterised deep-weight-prior site ``name``.

    :class:`~pyro_dwp.infer.reparam.DeepWeightPriorReparam` adds it, :class:`ReverseModelGuide`
    samples it: ``"conv1.weight" -> "conv1.weight_z"``.
    """
    return f"{name}_z"


class ReverseModelGuide(nn.Module):
    r"""Guide :math:`q(w) \, r(z \mid w; \psi)` for models with deep-weight-prior sites.

    For each weight site ``name`` reparameterised by
    :class:`~pyro_dwp.infer.reparam.DeepWeightPriorReparam` (model sites ``f"{name}_z"`` and
    ``name``), the base guide samples ``w ~ q(w)`` and then the reverse model samples
    ``z ~ r(z | w) = N(mu_psi(w), diag sigma_psi(w)^2)``, one code per kernel, reparameterised
    (Algorithm 1 of Atanov et al., 2019). ``Trace_ELBO`` of the model against this guide is
    the auxiliary bound :math:`\mathcal{L}^{aux}` of eq. 8 / 14.

    The base guide is built by ``base_guide_builder`` on the model with the ``f"{name}_z"``
    sites hidden (``poutine.block``), so it covers the weights (and any other latent sites)
    only. It must be a Pyro ``AutoGuide`` whose call returns ``{site name: value}``, e.g.
    ``functools.partial(AutoNormal, init_scale=1e-3)``.

    The ``z`` sites are ordinary latent sites of the reparameterised model (with prior
    :math:`\mathcal{N}(0, I)`), so the guide samples them as ordinary, matched sites. Marking
    them ``infer={"is_auxiliary": True}`` would be wrong: Pyro's ``check_model_guide_match``
    reserves that for guide-only sites and warns ``Found auxiliary vars in the model``.

    Args:
        model: The model, with the deep-weight-prior sites reparameterised.
        base_guide_builder: ``model -> AutoGuide`` for the weights.
        encoders: ``{weight site name: encoder}``; an encoder maps kernels ``(..., k, k)`` to
            ``(loc, scale)`` of the code, each ``(..., z_dim)`` (e.g. a kernel VAE's encoder).
            Deep-copied.
        trainable: If true (the paper), the copies' parameters :math:`\psi` are unfrozen,
            registered with ``pyro.module`` (taking the param store's values, so a resumed run
            continues with the trained reverse model) and trained with the guide (even if the
            originals were frozen, as a ``DeepWeightPrior``'s encoder is). If false (the
            authors' code), they stay frozen at their initial values and are not registered.
        name: Name under which ``pyro.module`` registers the encoders.

    Raises:
        ValueError: If ``encoders`` is empty.
        TypeError: If the builder does not return an ``AutoGuide``.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        base_guide_builder: Callable[[Callable[..., Any]], AutoGuide],
        encoders: Mapping[str, nn.Module],
        *,
        trainable: bool = True,
        name: str = "reverse_model",
    ) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("ReverseModelGuide needs at least one {site name: encoder}")
        self.site_names = tuple(encoders)
        self.trainable, self.name = trainable, name
        # Module names cannot contain dots: "conv1.weight" is stored as "conv1__weight".
        self.encoders = nn.ModuleDict(
            {n.replace(".", "__"): copy.deepcopy(e) for n, e in encoders.items()}
        )
        if len(self.encoders) != len(self.site_names):
            raise ValueError(f"site names {self.site_names} clash once dots become '__'")
        # Copies of a DeepWeightPrior's encoder arrive frozen: set both ways explicitly.
        self.encoders.requires_grad_(trainable)
        hidden = [latent_site_name(n) for n in self.site_names]
        base = base_guide_builder(poutine.block(model, hide=hidden))
        if not isinstance(base, AutoGuide):
            raise TypeError(
                f"base_guide_builder must return a pyro AutoGuide, got {type(base).__name__}"
            )
        self.base = base
        self._registered = False

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample the base guide, then each code ``z ~ r(z | w)``.

        Returns:
            ``{site name: value}`` of the base guide, plus ``f"{name}_z"`` codes of shape
            ``(*particles, *w.shape[:-2], z_dim)`` for each weight site ``name``.
        """
        values = self.base(*args, **kwargs)
        if self.trainable and not self._registered:  # an earlier guide's encoders: not ours
            _replace_stale_params(f"{self.name}$$$", type(self).__name__)
            self._registered = True
        if self.trainable:
            # update_module_params: after a resume (or any set_state of the param store) the
            # store holds the trained values; without it the encoders would keep their own.
            pyro.module(self.name, self.encoders, update_module_params=True)
        for site, encoder in zip(self.site_names, self.encoders.values(), strict=True):
            if site not in values:
                raise KeyError(
                    f"ReverseModelGuide has an encoder for {site!r} but the base guide sampled "
                    f"only {sorted(values)}"
                )
            # Event dims of z: those of w in the model, with (k, k) replaced by (z_dim,).
            event_dim = self.base.prototype_trace.nodes[site]["fn"].event_dim - 1
            loc, scale = encoder(values[site])
            z_name = latent_site_name(site)
            values[z_name] = pyro.sample(z_name, dist.Normal(loc, scale).to_event(event_dim))
        return values

"""The guide of the auxiliary bound: a base guide over weights and reverse models over codes."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

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


class _AuxiliaryGuide(nn.Module):
    r"""Base of the guides of the auxiliary bounds, :class:`ReverseModelGuide` (the deep weight
    prior) and :class:`~pyro_dwp.guides.reverse_chain.ReverseChainGuide` (the Markov-chain
    prior; ``T = 0`` is the former): a base guide :math:`q(w)` over the weights, built on the
    model with the code sites hidden, and per weight site a module that samples the site's codes
    given the weights, reparameterised.

    The per-site modules live in a ``ModuleDict`` named by :attr:`modules_attribute` (site
    ``"conv1.weight"`` stored as ``"conv1__weight"``: module names cannot contain dots), trained
    with the guide or frozen (``trainable``). A subclass names its code sites
    (:meth:`_code_sites`) and samples them (:meth:`_sample_codes`).

    Args:
        model: The model, with the prior's sites reparameterised.
        base_guide_builder: ``model -> AutoGuide`` for the weights.
        per_site: ``{weight site name: module}``, already copied.
        trainable: Unfreeze the modules and register them with ``pyro.module`` under ``name``
            (taking the param store's values, so a resumed run continues with the trained
            ones), or freeze them at their initial values, unregistered.
        name: Name under which ``pyro.module`` registers the modules.

    Raises:
        ValueError: If two site names clash once dots become ``__``.
        TypeError: If the builder does not return an ``AutoGuide``.
    """

    modules_attribute: ClassVar[str]
    """Attribute (and ``state_dict`` prefix) of the per-site ``ModuleDict``."""
    module_noun: ClassVar[str]
    """What a per-site module is, for messages (e.g. ``"an encoder"``)."""

    def __init__(
        self,
        model: Callable[..., Any],
        base_guide_builder: Callable[[Callable[..., Any]], AutoGuide],
        per_site: Mapping[str, nn.Module],
        *,
        trainable: bool,
        name: str,
    ) -> None:
        super().__init__()
        self.site_names = tuple(per_site)
        self.trainable, self.name = trainable, name
        modules = nn.ModuleDict({n.replace(".", "__"): m for n, m in per_site.items()})
        if len(modules) != len(self.site_names):
            raise ValueError(f"site names {self.site_names} clash once dots become '__'")
        # Copies of a prior's networks arrive frozen: set both ways explicitly.
        modules.requires_grad_(trainable)
        setattr(self, self.modules_attribute, modules)
        hidden = [
            code
            for site, module in zip(self.site_names, modules.values(), strict=True)
            for code in self._code_sites(site, module)
        ]
        base = base_guide_builder(poutine.block(model, hide=hidden))
        if not isinstance(base, AutoGuide):
            raise TypeError(
                f"base_guide_builder must return a pyro AutoGuide, got {type(base).__name__}"
            )
        self.base = base
        self._registered = False

    def _code_sites(self, site: str, module: nn.Module) -> list[str]:
        """The model's code sites of weight site ``site`` (hidden from the base guide)."""
        raise NotImplementedError

    def _sample_codes(
        self, site: str, module: nn.Module, w: Tensor, event_dim: int
    ) -> dict[str, Tensor]:
        """Sample the codes of ``site`` given its weights ``w`` with ``module``; each site's
        event dimensions ``event_dim``; return ``{code site: value}``."""
        raise NotImplementedError

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample the base guide, then each weight site's codes given its weights.

        Returns:
            ``{site name: value}`` of the base guide, plus the code sites of each weight site
            ``name``, each of shape ``(*particles, *w.shape[:-2], z_dim)``.
        """
        values = self.base(*args, **kwargs)
        modules = getattr(self, self.modules_attribute)
        if self.trainable and not self._registered:  # an earlier guide's modules: not ours
            _replace_stale_params(f"{self.name}$$$", type(self).__name__)
            self._registered = True
        if self.trainable:
            # update_module_params: after a resume (or any set_state of the param store) the
            # store holds the trained values; without it the modules would keep their own.
            pyro.module(self.name, modules, update_module_params=True)
        for site, module in zip(self.site_names, modules.values(), strict=True):
            if site not in values:
                raise KeyError(
                    f"{type(self).__name__} has {self.module_noun} for {site!r} but the base "
                    f"guide sampled only {sorted(values)}"
                )
            # Event dims of the codes: those of w in the model, (k, k) replaced by (z_dim,).
            event_dim = self.base.prototype_trace.nodes[site]["fn"].event_dim - 1
            values.update(self._sample_codes(site, module, values[site], event_dim))
        return values


class ReverseModelGuide(_AuxiliaryGuide):
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

    modules_attribute = "encoders"
    module_noun = "an encoder"

    def __init__(
        self,
        model: Callable[..., Any],
        base_guide_builder: Callable[[Callable[..., Any]], AutoGuide],
        encoders: Mapping[str, nn.Module],
        *,
        trainable: bool = True,
        name: str = "reverse_model",
    ) -> None:
        if not encoders:
            raise ValueError("ReverseModelGuide needs at least one {site name: encoder}")
        super().__init__(
            model,
            base_guide_builder,
            {n: copy.deepcopy(e) for n, e in encoders.items()},
            trainable=trainable,
            name=name,
        )

    def _code_sites(self, site: str, module: nn.Module) -> list[str]:
        return [latent_site_name(site)]

    def _sample_codes(
        self, site: str, module: nn.Module, w: Tensor, event_dim: int
    ) -> dict[str, Tensor]:
        """The code ``z ~ r(z | w)`` of ``site``, one per kernel."""
        loc, scale = module(w)
        z_name = latent_site_name(site)
        return {z_name: pyro.sample(z_name, dist.Normal(loc, scale).to_event(event_dim))}

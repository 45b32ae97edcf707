"""Declarative choice of the prior of each parameter of a network.

A prior specification is one of

- a :class:`~torch.distributions.Distribution` (used for every parameter),
- a mapping from :func:`fnmatch.fnmatchcase` patterns over parameter names to distributions,
  e.g. ``{"conv1.weight": DeepWeightPrior(...), "*.bias": None, "*": ScaleMixtureNormal(...)}``,
  where the first matching pattern wins and ``None`` keeps the parameter a point estimate,
- or a :class:`Prior` object (TyXe style) that decides per parameter in code.

The deep weight priors that ship with the package are loaded by
:func:`pyro_dwp.pretrained.pretrained` (``"notmnist"``).

A parameter that no rule selects stays deterministic (a ``pyro.param``).
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Mapping

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = [
    "Prior",
    "PriorSpec",
    "SelectorPrior",
    "as_prior",
    "expand_to_param",
]


class Prior(ABC):
    """Decides which parameters of a network are Bayesian, and their prior.

    Subclasses implement :meth:`prior_dist`; ``None`` keeps a parameter deterministic.
    """

    @abstractmethod
    def prior_dist(self, name: str, module: nn.Module, param: Tensor) -> Distribution | None:
        """The prior of parameter ``name`` (e.g. ``"0.weight"``) of ``module``, or ``None``.

        The returned distribution may be univariate (batch shape ``()``) or have an event shape
        equal to the trailing dimensions of ``param`` (a kernel prior with event ``(kH, kW)``).
        """

    def check(self, names: list[str]) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Raise ``ValueError`` if the prior refers to a parameter that ``names`` lacks."""


class SelectorPrior(Prior):
    """Priors chosen by name patterns, first match wins.

    Args:
        rules: ``{pattern: distribution or None}``, patterns as in :func:`fnmatch.fnmatchcase`.
    """

    def __init__(self, rules: Mapping[str, Distribution | None]) -> None:
        if not rules:
            raise ValueError("a prior selector needs at least one rule, e.g. {'*': Normal(0, 1)}")
        for pattern, d in rules.items():
            if d is not None and not isinstance(d, Distribution):
                raise TypeError(
                    f"prior for {pattern!r} must be a torch Distribution or None, got {type(d)}"
                )
        self.rules = dict(rules)

    def prior_dist(self, name: str, module: nn.Module, param: Tensor) -> Distribution | None:
        for pattern, d in self.rules.items():
            if fnmatch.fnmatchcase(name, pattern):
                return d
        return None

    def check(self, names: list[str]) -> None:
        unused = [p for p in self.rules if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unused:
            raise ValueError(
                f"prior selector(s) {unused} match no parameter; the parameters are {names}"
            )


PriorSpec = Distribution | Mapping[str, Distribution | None] | Prior


def as_prior(spec: PriorSpec) -> Prior:
    """Normalise a prior specification to a :class:`Prior`."""
    if isinstance(spec, Prior):
        return spec
    if isinstance(spec, Distribution):
        return SelectorPrior({"*": spec})
    if isinstance(spec, Mapping):
        return SelectorPrior(spec)
    raise TypeError(
        "prior must be a Distribution, a {pattern: Distribution} mapping or a Prior, "
        f"got {type(spec).__name__}"
    )


def expand_to_param(
    prior: Distribution, shape: torch.Size, name: str = "parameter"
) -> Distribution:
    """Expand ``prior`` into a distribution whose event shape is a parameter's ``shape``.

    A prior with event shape ``E`` is expanded over the leading ``shape[:-len(E)]`` dimensions,
    which are then reinterpreted as event dimensions: the result has batch shape ``()`` and event
    shape ``shape``.

    Raises:
        ValueError: if the prior's event shape is not a suffix of ``shape``.
    """
    event = prior.event_shape
    n = len(event)
    if tuple(shape[len(shape) - n :]) != tuple(event) or n > len(shape):
        dims = "x".join(map(str, event))
        raise ValueError(
            f"prior {type(prior).__name__} has event shape {dims} but {name} has shape "
            f"{tuple(shape)}: its trailing dimensions must equal the prior's event shape"
        )
    batch = torch.Size(shape[: len(shape) - n])
    d = prior.expand(batch) if prior.batch_shape != batch else prior
    return dist.Independent(d, len(batch)) if len(batch) else d

"""Turn an ordinary ``torch.nn.Module`` into a Pyro model with ``pyro.sample`` weight sites."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.reparam.reparam import Reparam
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.func import functional_call, vmap

from pyro_dwp.likelihoods import Likelihood
from pyro_dwp.priors import PriorSpec, as_prior, expand_to_param

__all__ = ["BNN", "ReparamConfig", "move_distribution"]

ReparamConfig = Mapping[str, Reparam] | Callable[[dict], Reparam | None]
"""What ``poutine.reparam(config=...)`` takes: ``{site name: Reparam}`` or a strategy."""


def move_distribution(d: Distribution, device: torch.device) -> Distribution:
    """Return ``d`` with its tensor parameters on ``device``.

    Distributions that are also ``nn.Module`` s (priors owning a network, such as the deep weight
    prior) are moved in place with ``.to``; others are rebuilt from their ``arg_constraints``.
    """
    if isinstance(d, nn.Module):
        return d.to(device)
    params = {k: getattr(d, k) for k in d.arg_constraints if k in d.__dict__}
    if all(v.device == device for v in params.values() if isinstance(v, Tensor)):
        return d
    moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in params.items()}
    try:
        return type(d)(**moved, validate_args=False)
    except TypeError as e:
        raise TypeError(
            f"cannot move prior {type(d).__name__} to {device}: build it on that device instead"
        ) from e


class BNN(nn.Module):
    """A Bayesian neural network as a Pyro model.

    Every parameter of ``net`` that the prior selects becomes a ``pyro.sample`` site of the same
    name (``"0.weight"``, ``"conv1.weight"``...), with event shape equal to the parameter's shape;
    the others stay point estimates registered as ``pyro.param`` (same names). With ``reparam``
    the weight sites are rewritten through ``poutine.reparam`` (an implicit, hierarchical prior
    such as the deep weight prior: ``reparam=DeepWeightPriorStrategy()`` from
    :mod:`pyro_dwp.infer.reparam`).

    Calling the model runs the network with sampled weights and, if a likelihood is given, adds
    the observed site. Weights sampled with extra leading (particle) dimensions, as under
    ``Trace_ELBO(vectorize_particles=True)`` or ``Predictive(parallel=True)``, are mapped over with
    ``torch.func.vmap``.

    Args:
        net: The deterministic network, ``(B, *in_shape) -> (B, *out_shape)``.
        prior: A prior specification (see :mod:`pyro_dwp.priors`).
        likelihood: Observation model; ``None`` makes the model return network outputs only.
        reparam: ``poutine.reparam`` configuration of the weight sites: ``{site name: Reparam}``
            or a strategy (a callable ``site message -> Reparam | None``); ``None``: none.

    Example::

        net = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 1))
        model = BNN(net, ScaleMixtureNormal(0.5, 1.0, math.exp(-6)), Gaussian(len(x), 0.05))
    """

    def __init__(
        self,
        net: nn.Module,
        prior: PriorSpec,
        likelihood: Likelihood | None = None,
        *,
        reparam: ReparamConfig | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.likelihood = likelihood
        spec = as_prior(prior)
        params = dict(net.named_parameters())
        spec.check(list(params))
        priors: dict[str, Distribution] = {}
        for name, p in params.items():
            owner = net.get_submodule(name.rpartition(".")[0])
            d = spec.prior_dist(name, owner, p)
            if d is not None:
                expand_to_param(d, p.shape, name)  # fail now on a shape mismatch
                priors[name] = d
        if not priors:
            raise ValueError(
                f"the prior selects no parameter of the network; they are {list(params)}"
            )
        self.priors = priors
        # Distributions that own modules move with the BNN and are saved in its state_dict.
        self.prior_modules = nn.ModuleDict(
            {name.replace(".", "__"): d for name, d in priors.items() if isinstance(d, nn.Module)}
        )
        self.deterministic = [n for n in params if n not in priors]
        self._reparam = reparam
        self._site_fns: dict[tuple[torch.device, torch.dtype], dict[str, Distribution]] = {}
        self._params: dict[str, Tensor] | None = None

    @property
    def reparam(self) -> ReparamConfig | None:
        """The ``poutine.reparam`` configuration of the weight sites, or ``None``."""
        return self._reparam

    def _net_params(self) -> dict[str, Tensor]:
        """``net``'s parameters by name, looked up once (and again after ``.to()``)."""
        if self._params is None:
            self._params = dict(self.net.named_parameters())
        return self._params

    def site_distributions(self) -> dict[str, Distribution]:
        """The prior of each weight site, expanded to the parameter's shape, on its device."""
        params = self._net_params()
        ref = next(iter(params.values()))
        key = (ref.device, ref.dtype)
        if key not in self._site_fns:
            fns = {}
            for n, d in self.priors.items():
                prior = move_distribution(d, ref.device)
                fn = expand_to_param(prior, params[n].shape, n)
                # The prior's parameters were validated when it was built; checking every
                # weight sample against the support each step costs two passes over the weights.
                part = fn
                while part is not None and part is not prior:
                    part._validate_args = False
                    part = getattr(part, "base_dist", None)
                fns[n] = fn
            self._site_fns[key] = fns
        return self._site_fns[key]

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .double()...: rebuild the caches
        self._site_fns.clear()
        self._params = None
        return super()._apply(fn, recurse)

    def sample_weights(self) -> dict[str, Tensor]:
        """Sample every weight site; values ``(*particles, *param_shape)``."""
        params = self._net_params()
        return {
            n: pyro.sample(n, d, infer={"init_value": params[n].detach()})
            for n, d in self.site_distributions().items()
        }

    def network(self, x: Tensor) -> Tensor:
        """Run the network with sampled weights: ``(B, *in) -> (*particles, B, *out)``."""
        params = self._net_params()
        fixed = {n: pyro.param(n, params[n]) for n in self.deterministic}
        if self._reparam is not None:
            with poutine.reparam(config=self._reparam):
                sampled = self.sample_weights()
        else:
            sampled = self.sample_weights()
        particles = {v.shape[: v.dim() - params[n].dim()] for n, v in sampled.items()}
        if len(particles) > 1:
            raise ValueError(f"weight samples have inconsistent particle shapes {particles}")
        (batch,) = particles
        if not batch:
            return functional_call(self.net, {**fixed, **sampled}, (x,))
        # A trailing singleton is the data plate's dim (-1), where the weights are broadcast.
        lead = batch[:-1] if len(batch) >= 2 and batch[-1] == 1 else batch
        flat = {n: v.reshape((-1,) + params[n].shape) for n, v in sampled.items()}

        def run(weights: dict[str, Tensor]) -> Tensor:
            return functional_call(self.net, {**fixed, **weights}, (x,))

        out = vmap(run, randomness="different")(flat)
        return out.reshape(lead + out.shape[1:])

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Model: weights ~ prior, ``out = net(x)``, then ``y ~ likelihood(out)`` if one is set.

        Args:
            x: Inputs ``(B, *in_shape)``.
            y: Targets ``(B, ...)`` or ``None``.

        Returns:
            Network outputs ``(*particles, B, *out_shape)``.
        """
        try:
            out = self.network(x)
        except RuntimeError as e:
            if "shape" not in str(e) and "size" not in str(e):
                raise
            raise ValueError(
                f"{type(self.net).__name__} cannot take an input of shape {tuple(x.shape)}: {e}"
            ) from e
        if self.likelihood is not None:
            self.likelihood(out, y)
        return out

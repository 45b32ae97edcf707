"""A compiled SVI step: Pyro's ELBO for a :class:`~pyro_dwp.bnn.BNN` as plain PyTorch.

:func:`compile_svi` traces the guide and the model once with Pyro, checks that it recognises
every site (the BNN's weight sites and their priors, the deep weight prior's codes, its
likelihood, the guide's family (Gaussian, or a point mass) and reverse models, the local
reparameterisation) and returns a :class:`CompiledSVI` whose step evaluates the same estimator
as ``Trace_ELBO`` (or ``TraceMeanField_ELBO``) with the same noise (the same draws from the same
generators, in Pyro's order), from the same tensors of Pyro's param store, and steps the same
optimiser: no Pyro messages, traces or replays per step. Anything it does not recognise raises
:class:`NotCompilableError` naming the reason, and :func:`~pyro_dwp.infer.fit` then runs Pyro's
SVI instead.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import PyroOptim
from pyro.params import param_with_module_name
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import Distribution, constraints, kl_divergence, transform_to
from torch.func import functional_call, vmap

from pyro_dwp.bnn import BNN, move_distribution
from pyro_dwp.distributions import DeepWeightPrior, ScaleMixtureNormal
from pyro_dwp.guides import BBBNormal, LogVarianceNormal, PointMass, ReverseModelGuide
from pyro_dwp.guides.log_variance import TruncatedAlphaNormal
from pyro_dwp.guides.reverse import latent_site_name
from pyro_dwp.likelihoods import Categorical, Gaussian

from .checkpoint import get_rng_state, set_rng_state
from .kl import KLScaleMessenger
from .local_reparam import LocalReparameterizationMessenger
from .reparam import DeepWeightPriorStrategy

__all__ = ["CompiledSVI", "NotCompilableError", "compile_or_warn", "compile_svi"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_GUIDES = (BBBNormal, LogVarianceNormal, TruncatedAlphaNormal, PointMass)
_ELBOS = (Trace_ELBO, TraceMeanField_ELBO)
_CHECK_RTOL = 1e-4  # compiled against Pyro's loss on the first batch, in float32
_INDUCTOR_GRAD_RTOL = 1e-3  # torch.compile's gradients against the eager pass's, per parameter
_FUSE_MAX = 1 << 16
"""Largest site (elements) evaluated in a fused run: for small sites the step's cost is the
number of kernels, for large ones the memory traffic, which the fused run's copies add to (one CPU
thread, 784-1200-1200-10 MLP: 99 ms a step site by site, 129 ms with every site fused; the
bandit's 2 x 100 net: 4.0 ms site by site, 3.1-3.2 ms fused)."""
_Moments = Callable[[Tensor], tuple[Tensor, Tensor]]
"""A network ``input -> (loc, scale)`` of a diagonal Gaussian."""


class NotCompilableError(ValueError):
    """A model, guide or setting that the compiled engine does not handle; the message says
    which, and why."""


@dataclass(frozen=True)
class _WeightSite:
    """One weight site: the guide's ``q(w) = N(loc, scale(loc, raw)^2)`` and the model's prior.

    ``loc`` and ``raw`` are the (unconstrained) leaf tensors of Pyro's param store, of the
    site's shape; a point-mass guide's site (:class:`~pyro_dwp.guides.PointMass`) has no
    ``raw`` nor ``scale`` (``None``): ``w = loc`` and its term is ``-log p(loc)``.
    ``log_prior`` maps a weight of that shape to its summed prior log-density (``None`` at a
    deep-weight-prior site, see :class:`_CodeSite`); ``kl``, where set (the registered KL under
    ``TraceMeanField_ELBO``), maps ``(loc, scale)`` to the summed ``KL(q || p)`` that replaces
    the Monte Carlo ``log q(w) - log p(w)``.
    """

    name: str
    loc: Tensor
    raw: Tensor | None
    scale: Callable[[Tensor, Tensor], Tensor] | None
    log_prior: Callable[[Tensor], Tensor] | None
    kl: Callable[[Tensor, Tensor], Tensor] | None = None
    prior_key: tuple | None = None
    """Equal (not ``None``) at sites whose elementwise prior is the same scalar-parameter
    distribution: the step then evaluates them as one flat vector (:meth:`CompiledSVI._fused`)."""


@dataclass(frozen=True)
class _CodeSite:
    """A deep-weight-prior site ``name`` rewritten into ``z ~ p(z)``, ``w ~ p(w | z)``.

    ``reverse`` maps kernels ``(..., k, k)`` to ``(loc, scale)`` of the guide's
    ``r(z | w)``, each ``(..., z_dim)``; ``decoder`` maps codes to ``(loc, scale)`` of the
    prior's ``p(w | z)``, each ``(..., k, k)``; ``log_p_z`` maps codes ``(..., z_dim)`` to
    ``log p(z)`` ``(...)``, ``None`` for ``N(0, I)`` (computed inline).
    """

    name: str
    reverse: _Moments
    decoder: _Moments
    log_p_z: Callable[[Tensor], Tensor] | None = None


class CompiledSVI:
    """One SVI step of ``Trace_ELBO`` (or ``TraceMeanField_ELBO``) on a BNN as plain PyTorch.

    Built by :func:`compile_svi`, which documents what it covers. Per particle the step draws,
    in Pyro's order, ``eps ~ N(0, I)`` for each weight site (``w = loc + scale * eps``, as
    :class:`~pyro_dwp.guides.BBBNormal` does), then each deep-weight-prior site's code
    ``z = mu(w) + sigma(w) * eps`` from its reverse model (as
    :class:`~pyro_dwp.guides.ReverseModelGuide` does), then runs the network (with the local
    reparameterisation's draws where its handler is given) and returns

    ``loss = kl_scale * sum_sites (log q(w) - log p(w)) - (N / B) * log p(y | x, w)``

    averaged over particles, where at a deep-weight-prior site ``log q(w) - log p(w)`` is the
    auxiliary bound's ``log q(w) + log r(z | w) - log p(z) - log p(w | z)``, and under
    ``TraceMeanField_ELBO`` a registered ``KL(q || p)`` replaces it: the value and gradients of
    Pyro's ELBO under :class:`~pyro_dwp.infer.KLScaleMessenger` (``kl_scale``) and the
    likelihood's subsampled data plate (``N / B``, ``N`` the likelihood's ``dataset_size`` at
    the time of the step, as Pyro reads it: a bandit's growing buffer changes it).

    Attributes:
        params: The unconstrained leaf tensors of Pyro's param store that the step trains.
    """

    def __init__(
        self,
        model: BNN,
        sites: list[_WeightSite],
        codes: list[_CodeSite],
        fixed: dict[str, Tensor],
        log_likelihood: Callable[[Tensor, Tensor], Tensor],
        optim: PyroOptim | None,
        num_particles: int,
        vectorize_particles: bool,
        local_reparam: LocalReparameterizationMessenger | None,
        params: list[Tensor],
    ) -> None:
        self._net = model.net
        self._likelihood = model.likelihood  # its dataset_size is read at every step
        self._groups = _fusable_groups(sites)
        self._codes = codes
        self._fixed = fixed
        self._log_likelihood = log_likelihood
        self._optim = optim
        # Vectorised particles: one pass over a (P, 1) batch of weights, as Pyro's particle plate
        # (dim -2) draws them, the network mapped over it with vmap (as BNN does).
        vectorized = vectorize_particles and num_particles > 1
        self._passes = 1 if vectorized else num_particles
        self._lead = (num_particles, 1) if vectorized else ()
        self._local_reparam = local_reparam
        self.params = params
        # torch.compile of a pass (use_torch_compile), until it has run once without failing
        self._inductor: Callable[..., tuple[Tensor, Tensor]] | None = None
        self._inductor_ran = False

    def loss(self, x: Tensor, y: Tensor, kl_scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
        """The differentiable loss (-ELBO) and the scaled data term (detached), both ``()``.

        Args:
            x: Inputs ``(B, *in_shape)``.
            y: Targets ``(B, ...)``.
            kl_scale: Factor of the KL term (``M * pi_i`` of :func:`~pyro_dwp.infer.kl_weights`),
                a float or a ``()`` tensor.
        """
        total: Tensor | float = 0.0
        data: Tensor | float = 0.0
        for _ in range(self._passes):
            loss, log_lik = self._pass(x, y, kl_scale)
            total, data = total + loss, data + log_lik.detach()
        return total / self._passes, data / self._passes

    def use_torch_compile(self) -> None:
        """Run each pass through ``torch.compile`` (inductor) from now on.

        Inductor fuses the pass's elementwise work (the guide's scales, the draws' ``w``,
        ``log q``, the prior's log-density and their gradients) into a few loops. On a CPU that
        work, not Pyro's bookkeeping, sets the step's time. The noise still comes from the eager
        generators (inductor's ``fallback_random``): the same draws, so the same loss to float32
        rounding. The first call compiles (about 20-30 s on 2 CPU cores) and is checked: the
        compiled pass's loss and every parameter's gradient must equal the eager pass's on the
        same draws (:meth:`_inductor_mismatch`; torch 2.11's inductor, for one, returns the
        right loss with wrong gradients). If compiling fails (e.g. no C++ compiler) or the check
        does, a ``UserWarning`` names the reason and the pass runs eagerly.
        """
        self._inductor = torch.compile(self._particle_loss, options={"fallback_random": True})

    @property
    def uses_torch_compile(self) -> bool:
        """Whether the passes run through ``torch.compile``: after :meth:`use_torch_compile`,
        until its first call fails or is refused (then they run eagerly)."""
        return self._inductor is not None

    def _pass(self, x: Tensor, y: Tensor, kl_scale: Tensor | float) -> tuple[Tensor, Tensor]:
        """:meth:`_particle_loss`, through ``torch.compile`` after :meth:`use_torch_compile`."""
        if self._inductor is None:
            return self._particle_loss(x, y, kl_scale)
        if not isinstance(kl_scale, Tensor):  # a float would be a constant of the graph
            kl_scale = torch.tensor(kl_scale, dtype=x.dtype, device=x.device)
        if self._inductor_ran:
            return self._inductor(x, y, kl_scale)
        try:
            mismatch = self._inductor_mismatch(x, y, kl_scale)
        except Exception as e:  # noqa: BLE001 (a missing compiler, an unsupported operation)
            mismatch = f"it failed: {type(e).__name__}: {str(e)[:300]}"
        if mismatch is not None:
            warnings.warn(
                f"torch.compile of the compiled step is not used, the step runs without: "
                f"{mismatch}",
                UserWarning,
                stacklevel=4,
            )
            self._inductor = None
            return self._particle_loss(x, y, kl_scale)
        self._inductor_ran = True
        return self._inductor(x, y, kl_scale)

    def _inductor_mismatch(self, x: Tensor, y: Tensor, kl_scale: Tensor) -> str | None:
        """The first pass through ``torch.compile`` against the eager pass, both on the draws that
        the pass would make now (the RNG states are left as they were): ``None`` if the losses agree
        to ``1e-4`` relative and each parameter's gradient to ``1e-3`` of its largest entry,
        else what differs (in words)."""
        rng = get_rng_state(x.device)
        runs = []
        try:
            for fn in (self._particle_loss, self._inductor):
                set_rng_state(rng, x.device)
                with torch.enable_grad():
                    loss = fn(x, y, kl_scale)[0]
                    grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                runs.append((float(loss.detach()), grads))
        finally:
            set_rng_state(rng, x.device)
        (expected, eager), (got, compiled) = runs
        if not abs(got - expected) <= _CHECK_RTOL * max(1.0, abs(expected)):
            return f"its loss {got:.6g} differs from the eager pass's {expected:.6g}"
        worst, bad = 0.0, 0
        for a, b in zip(eager, compiled, strict=True):
            if a is None or b is None:
                bad += (a is None) != (b is None)
                continue
            rel = float((a - b).abs().max()) / max(float(a.abs().max()), 1e-12)
            worst = max(worst, rel)
            bad += not rel <= _INDUCTOR_GRAD_RTOL
        if bad:
            return (
                f"the gradients of {bad} of {len(eager)} parameters differ from the eager pass's "
                f"on the same draws (largest difference {worst:.3g} of the gradient's largest "
                f"entry; torch {torch.__version__})"
            )
        return None

    def _particle_loss(
        self, x: Tensor, y: Tensor, kl_scale: Tensor | float
    ) -> tuple[Tensor, Tensor]:
        """One pass's loss and scaled data term ``(N / B) log p(y | x, w)``, both ``()``,
        averaged over its vectorised particles."""
        kl, log_lik = self._particle(x, y)
        particles = math.prod(self._lead)
        size = self._likelihood.dataset_size
        log_lik = log_lik * (max(size, x.shape[0]) / x.shape[0] / particles)
        return kl * (kl_scale / particles) - log_lik, log_lik

    def _particle(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One pass: the KL term ``sum (log q - log p)`` and ``log p(y | x, w)``, ``()``, summed
        over its vectorised particles (if any)."""
        weights: dict[str, Tensor] = {}
        draws = []
        kl: Tensor | float = 0.0
        particles = math.prod(self._lead)
        for group in self._groups:
            if len(group) > 1:
                kl = kl + self._fused(group, weights, draws)
                continue
            site = group[0]
            if site.scale is None or site.raw is None:  # a point mass: w = loc, no entropy
                w = site.loc.expand(self._lead + site.loc.shape)
                kl = kl if site.log_prior is None else kl - site.log_prior(w)
                weights[site.name] = w
                continue
            scale = site.scale(site.loc, site.raw)
            shape = self._lead + site.loc.shape
            eps = torch.randn(shape, dtype=site.loc.dtype, device=site.loc.device)
            w = torch.addcmul(site.loc, scale, eps)
            if site.kl is not None:
                kl = kl + site.kl(site.loc, scale) * particles
            else:
                kl = kl + self._log_q(eps, scale)
                kl = kl if site.log_prior is None else kl - site.log_prior(w)
            weights[site.name] = w
            draws.append((w, site.loc, scale))
        for code in self._codes:
            w = weights[code.name]
            loc, scale = code.reverse(w)
            eps = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device)
            z = loc + eps * scale  # as Normal.rsample
            n = eps.numel() * _HALF_LOG_2PI
            flat, zs = eps.reshape(-1), z.reshape(-1)
            log_r = (flat.dot(flat) * 0.5 + n + scale.log().sum()).neg()
            if code.log_p_z is None:
                log_p_z = (zs.dot(zs) * 0.5 + n).neg()
            else:
                log_p_z = code.log_p_z(z).sum()
            w_loc, w_scale = code.decoder(z)
            log_p_w = dist.Normal(w_loc, w_scale, validate_args=False).log_prob(w).sum()
            kl = kl + (log_r - log_p_z - log_p_w)
        if self._lead:
            # As BNN: vmap over the particles; the local reparameterisation does not apply.
            flat = {n: w.reshape((-1,) + w.shape[2:]) for n, w in weights.items()}
            out = vmap(self._run, randomness="different", in_dims=(0, None))(flat, x)
            return kl, self._log_likelihood(out, y)
        with ExitStack() as stack:
            if self._local_reparam is not None:
                stack.enter_context(self._local_reparam)
                for w, loc, scale in draws:
                    self._local_reparam.record(w, loc, scale)
            out = self._run(weights, x)
        return kl, self._log_likelihood(out, y)

    def _log_q(self, eps: Tensor, scale: Tensor) -> Tensor:
        """``sum log q(w)`` at the draw ``w = loc + scale * eps``, ``()``: ``sum -eps^2 / 2 -
        log(scale) - log(2 pi) / 2`` over ``eps`` ``(*lead, n...)`` and the particles."""
        flat = eps.reshape(-1)
        log_q = flat.dot(flat) * 0.5 + eps.numel() * _HALF_LOG_2PI
        return (log_q + scale.log().sum() * math.prod(self._lead)).neg()

    def _fused(
        self,
        group: list[_WeightSite],
        weights: dict[str, Tensor],
        draws: list[tuple[Tensor, Tensor, Tensor]],
    ) -> Tensor:
        """Sites of one prior as one flat vector: ``sum (log q(w) - log p(w))``, ``()``.

        Each site's noise is drawn on its own, in Pyro's order (the same draws as site by
        site); the guide's scale, the draw ``w``, ``log q`` and ``log p`` then run once over the
        concatenation, in a handful of kernels instead of a handful per site. ``weights`` and
        ``draws`` get each site's views ``(*lead, *shape)`` of the flat draw.
        """
        lead = self._lead
        eps = [
            torch.randn(lead + s.loc.shape, dtype=s.loc.dtype, device=s.loc.device) for s in group
        ]
        loc = torch.cat([s.loc.reshape(-1) for s in group])
        scale = group[0].scale(loc, torch.cat([s.raw.reshape(-1) for s in group]))
        noise = torch.cat([e.reshape(lead + (-1,)) for e in eps], dim=-1)
        w = torch.addcmul(loc, scale, noise)  # (*lead, total)
        sizes = [s.loc.numel() for s in group]
        parts = zip(group, w.split(sizes, -1), scale.split(sizes), strict=True)
        for site, w_site, scale_site in parts:
            w_site = w_site.reshape(lead + site.loc.shape)
            weights[site.name] = w_site
            draws.append((w_site, site.loc, scale_site.reshape(site.loc.shape)))
        return self._log_q(noise, scale) - group[0].log_prior(w)

    def _run(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        """The network with ``weights``: ``(B, *in) -> (B, *out)``."""
        return functional_call(self._net, {**self._fixed, **weights}, (x,))

    def step(self, x: Tensor, y: Tensor, kl_scale: float = 1.0) -> tuple[float, Tensor]:
        """A gradient step of the optimiser; the loss (-ELBO, a float) and the scaled data term.

        As ``pyro.infer.SVI.step``: every trained parameter gets a gradient (zero if unused)
        before the optimiser's step; the gradients are then cleared.

        Raises:
            RuntimeError: If compiled without an optimiser (``optim=None``): use :meth:`loss`.
        """
        loss, data = self.update(x, y, kl_scale)
        for p in self.params:
            p.grad = None
        return loss.item(), data

    def update(self, x: Tensor, y: Tensor, kl_scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
        """:meth:`step` without a host synchronisation: the loss and the scaled data term as
        detached ``()`` tensors on the device; the gradients are left in ``.grad`` (the
        function :class:`GraphedSVI` captures). ``kl_scale`` may be a ``()`` tensor.

        Raises:
            RuntimeError: If compiled without an optimiser (``optim=None``): use :meth:`loss`.
        """
        if self._optim is None:
            raise RuntimeError("compiled with optim=None: step your optimiser on loss()")
        loss, data = self.loss(x, y, kl_scale)
        loss.backward()
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._optim(self.params)
        return loss.detach(), data

    @property
    def dataset_size(self) -> int:
        """The likelihood's ``dataset_size`` now (read by every step for the ``N / B`` factor)."""
        return self._likelihood.dataset_size

    @property
    def optim(self) -> PyroOptim | None:
        """The optimiser the step steps."""
        return self._optim


def _log_prior(name: str, prior: Distribution) -> Callable[[Tensor], Tensor]:
    """``w -> sum log p(w)`` for a weight ``w`` (any shape) under the univariate Normal or
    scale-mixture ``prior`` as the user gave it (its batch shape broadcasts against ``w``'s),
    without the per-step validation of the sample; else :class:`NotCompilableError`."""
    if prior.event_shape:
        raise NotCompilableError(
            f"unsupported prior with event shape {tuple(prior.event_shape)} at site {name!r}"
        )
    kind = type(prior)
    if kind is ScaleMixtureNormal:  # its fused log-density where the parameters are scalars
        d = ScaleMixtureNormal(prior.pi, prior.sigma1, prior.sigma2, validate_args=False)
        return lambda w: d.log_prob(w).sum()
    if kind not in (dist.Normal, torch.distributions.Normal):
        raise NotCompilableError(
            f"unsupported prior {kind.__name__} at site {name!r} (compiled: Normal, "
            "ScaleMixtureNormal)"
        )
    if prior.loc.numel() == 1 and prior.scale.numel() == 1 and not prior.scale.requires_grad:
        # sum -(w - loc)^2 / (2 scale^2) - log(scale) - log(2 pi) / 2, in two passes over w.
        loc, scale = float(prior.loc), float(prior.scale)
        const = -math.log(scale) - _HALF_LOG_2PI
        factor = -0.5 / scale**2
        if loc == 0.0:
            return lambda w: w.square().sum() * factor + w.numel() * const
        return lambda w: (w - loc).square().sum() * factor + w.numel() * const
    d = dist.Normal(prior.loc, prior.scale, validate_args=False)
    return lambda w: d.log_prob(w).sum()


def _prior_key(prior: Distribution) -> tuple | None:
    """A key equal for elementwise priors of the same type and scalar parameters (whose
    ``sum log p`` over several sites is the ``sum log p`` of their concatenation), else
    ``None``."""
    params = {
        ScaleMixtureNormal: ("pi", "sigma1", "sigma2"),
        dist.Normal: ("loc", "scale"),
        torch.distributions.Normal: ("loc", "scale"),
    }.get(type(prior))
    if params is None or prior.event_shape:
        return None
    values = [getattr(prior, name) for name in params]
    if any(v.numel() != 1 or v.requires_grad for v in values):
        return None
    return (type(prior).__name__, *(float(v) for v in values))


def _fusable_groups(sites: list[_WeightSite]) -> list[list[_WeightSite]]:
    """``sites`` in order, in runs of consecutive sites that :meth:`CompiledSVI._fused`
    evaluates together (at most ``_FUSE_MAX`` elements each, the same ``prior_key``, the same
    guide scale, dtype and device, the Monte Carlo term); every other site alone."""
    groups: list[list[_WeightSite]] = []
    for site in sites:
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and site.prior_key is not None
            and max(site.loc.numel(), last.loc.numel()) <= _FUSE_MAX
            and site.prior_key == last.prior_key
            and site.scale is last.scale
            and (site.loc.dtype, site.loc.device) == (last.loc.dtype, last.loc.device)
        ):
            groups[-1].append(site)
        else:
            groups.append([site])
    return groups


def _categorical(out: Tensor, y: Tensor) -> Tensor:
    """``sum log Categorical(y | logits=out)``: ``out (*particles, B, C)``, ``y (B,)`` -> ``()``."""
    targets = y.expand(out.shape[:-1]).reshape(-1)
    return -F.cross_entropy(out.reshape(-1, out.shape[-1]), targets, reduction="sum")


def _gaussian(noise: Callable[[], Tensor | float]) -> Callable[[Tensor, Tensor], Tensor]:
    """``(out, y) -> sum log N(y | out, s^2)`` with ``s = noise()``; ``out (*particles, B, D)``,
    ``y (B, D)``."""

    def log_lik(out: Tensor, y: Tensor) -> Tensor:
        s = noise()
        log_s = s.log() if isinstance(s, Tensor) else math.log(s)
        diff = y - out
        return diff.square().sum() * (-0.5 / s**2) - diff.numel() * (log_s + _HALF_LOG_2PI)

    return log_lik


def _leaf(name: str) -> Tensor:
    """The unconstrained tensor that Pyro's param store keeps (and optimises) for ``name``."""
    return pyro.get_param_store().get_param(name).unconstrained()


def _likelihood(model: BNN, model_trace: poutine.Trace, y: Tensor, fixed: dict[str, Tensor]):
    """The data term of ``model``'s likelihood, checked against the traced observed site."""
    lik = model.likelihood
    site = model_trace.nodes[lik.site]
    if tuple(site["value"].shape) != tuple(site["fn"].shape()):  # as traced: one particle
        raise NotCompilableError(
            f"targets of shape {tuple(site['value'].shape)} broadcast against the likelihood's "
            f"shape {tuple(site['fn'].shape())} (compiled: equal shapes)"
        )
    if type(lik) is Categorical:
        if y.is_floating_point():
            raise NotCompilableError("floating-point targets of a Categorical likelihood")
        return _categorical
    if type(lik) is Gaussian:
        if lik.scale is not None:
            return _gaussian(lambda: lik.scale)
        leaf = fixed.pop("noise_scale")
        positive = transform_to(constraints.positive)
        return _gaussian(lambda: positive(leaf))
    raise NotCompilableError(
        f"unsupported likelihood {type(lik).__name__} (compiled: Categorical, Gaussian)"
    )


def _check_setting(
    model: object,
    guide: object,
    elbo: type[ELBO],
    vectorize_particles: bool,
    handlers: Sequence[AbstractContextManager],
) -> LocalReparameterizationMessenger | None:
    """Refuse what the compiled step does not cover; the local reparameterisation, if any."""
    if elbo not in _ELBOS:
        raise NotCompilableError(
            f"unsupported ELBO {elbo.__name__} (compiled: Trace_ELBO, TraceMeanField_ELBO)"
        )
    if type(model) is not BNN:
        raise NotCompilableError(
            f"unsupported model {type(model).__name__} (compiled: pyro_dwp.BNN)"
        )
    if model.reparam is not None and type(model.reparam) is not DeepWeightPriorStrategy:
        raise NotCompilableError(
            f"unsupported reparameterisation {type(model.reparam).__name__} (compiled: "
            "DeepWeightPriorStrategy)"
        )
    if model.reparam is not None and vectorize_particles:
        raise NotCompilableError(
            "unsupported vectorize_particles=True with a reparameterised prior (compiled: "
            "particles in a loop)"
        )
    if model.reparam is not None and elbo is not Trace_ELBO:
        raise NotCompilableError(
            f"unsupported ELBO {elbo.__name__} with a reparameterised prior (compiled: "
            "Trace_ELBO, the auxiliary bound)"
        )
    base = guide.base if type(guide) is ReverseModelGuide else guide
    if type(base) not in _GUIDES:
        names = ", ".join(g.__name__ for g in _GUIDES)
        raise NotCompilableError(
            f"unsupported guide {type(base).__name__} (compiled: {names}, and "
            "ReverseModelGuide on either)"
        )
    local = [h for h in handlers if type(h) is LocalReparameterizationMessenger]
    other = [type(h).__name__ for h in handlers if type(h) is not LocalReparameterizationMessenger]
    if other or len(local) > 1:
        raise NotCompilableError(
            f"unsupported handler(s) {other or ['a second LocalReparameterizationMessenger']} "
            "(compiled: one LocalReparameterizationMessenger)"
        )
    return local[0] if local else None


def _base_guide(guide: BBBNormal | ReverseModelGuide) -> BBBNormal:
    """The guide of the weights: ``guide`` itself, or a reverse-model guide's base."""
    return guide.base if isinstance(guide, ReverseModelGuide) else guide


def _sites(trace: poutine.Trace, kind: str) -> list[str]:
    return [n for n, s in trace.nodes.items() if s["type"] == kind]


def compile_svi(
    model: BNN,
    guide: BBBNormal | ReverseModelGuide,
    x: Tensor,
    y: Tensor,
    *,
    optim: PyroOptim | None,
    elbo: type[ELBO] = Trace_ELBO,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    handlers: Sequence[AbstractContextManager] = (),
    kl_scale: float = 1.0,
    torch_compile: bool = False,
) -> CompiledSVI:
    """Compile the SVI step of ``model`` and ``guide`` on the batch ``(x, y)``.

    Covered: a :class:`~pyro_dwp.bnn.BNN` with ``Normal`` and ``ScaleMixtureNormal`` priors (one
    for all, or chosen per parameter; unselected parameters stay point estimates) and
    :class:`~pyro_dwp.distributions.DeepWeightPrior` s rewritten by
    :class:`~pyro_dwp.infer.DeepWeightPriorStrategy`, a ``Categorical`` or ``Gaussian`` (fixed
    or learned noise) likelihood; the guides :class:`~pyro_dwp.guides.BBBNormal`,
    :class:`~pyro_dwp.guides.LogVarianceNormal`,
    :class:`~pyro_dwp.guides.log_variance.TruncatedAlphaNormal` and the point mass
    :class:`~pyro_dwp.guides.PointMass` (MAP; with the priors that have a log-density here),
    alone or as the base of a :class:`~pyro_dwp.guides.ReverseModelGuide` (trainable or frozen
    reverse models);
    ``Trace_ELBO``, or ``TraceMeanField_ELBO`` (without a deep weight prior: the registered KL
    where there is one, e.g. Normal or ``LogUniform`` priors, else the Monte Carlo term), with
    ``num_particles`` in a loop or vectorised (``vectorize_particles``, not with a deep weight
    prior; as in Pyro, the local reparameterisation then does not apply);
    ``handlers`` empty or one :class:`~pyro_dwp.infer.LocalReparameterizationMessenger`; any Pyro
    optimiser (stepped as ``SVI`` steps it, so its state and checkpoints are those of Pyro's
    engine).

    The guide is set up if it was not (its parameters enter Pyro's param store); the guide and
    the model are traced once on ``(x, y)`` (the RNG states, the CUDA generator of ``x``'s
    device included, are restored afterwards): the traced sites must be exactly those of the
    BNN (else a data-dependent or custom structure), and the
    compiled loss must equal Pyro's on that trace's noise to a relative ``1e-4`` (where finite;
    Pyro's validation is off, as in every step of :func:`~pyro_dwp.infer.fit` after the first).

    Args:
        model: The model.
        guide: Its guide.
        x: A batch of inputs ``(B, *in_shape)``.
        y: Its targets ``(B, ...)``.
        optim: The Pyro optimiser to step, or ``None`` for a caller that steps its own optimiser
            on :meth:`CompiledSVI.loss` (the Lightning module of ``infer.distributed``).
        elbo: The ELBO class.
        num_particles: Particles per step.
        vectorize_particles: Vectorise the particles, as ``fit`` asks Pyro to.
        handlers: Handlers around each step, as :func:`~pyro_dwp.infer.fit` takes them.
        kl_scale: The KL factor of the check against Pyro's loss.
        torch_compile: Run the step's passes through ``torch.compile``
            (:meth:`CompiledSVI.use_torch_compile`; the check above is of the eager pass).

    Raises:
        NotCompilableError: naming what the compiled engine does not cover.
    """
    local = _check_setting(model, guide, elbo, vectorize_particles, handlers)
    rng = get_rng_state(x.device)  # the noise is drawn on the data's device
    try:
        if _base_guide(guide).prototype_trace is None:
            with torch.no_grad(), poutine.block():
                guide(x, y)
            set_rng_state(rng, x.device)
        model_trace, guide_trace = _traces(model, guide, x, y, handlers, kl_scale)
        program = _build(
            model, guide, model_trace, guide_trace, y, optim, elbo, num_particles,
            vectorize_particles, local,
        )  # fmt: skip
        set_rng_state(rng, x.device)
        if vectorize_particles and num_particles > 1:  # one pass of all particles, as fit's
            loss = elbo(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
        else:
            loss = elbo()
        expected = _pyro_loss(model, guide, x, y, handlers, loss, kl_scale)
        set_rng_state(rng, x.device)
        with torch.no_grad():
            compiled = float(program._particle_loss(x, y, kl_scale)[0])  # one pass, as Pyro's
    finally:
        set_rng_state(rng, x.device)
    # A non-finite loss is left to the step, which reports it.
    if math.isfinite(expected) and not abs(compiled - expected) <= _CHECK_RTOL * max(
        1.0, abs(expected)
    ):
        raise NotCompilableError(
            f"the compiled loss {compiled:.6g} differs from Pyro's {expected:.6g} on the first "
            "batch"
        )
    if torch_compile:
        program.use_torch_compile()
    return program


def compile_or_warn(
    engine: str, *args: Any, stacklevel: int = 2, **kwargs: Any
) -> CompiledSVI | None:
    """:func:`compile_svi` (same arguments), or ``None`` after a ``UserWarning`` ``"engine=...
    falls back to Pyro's SVI: <reason>"`` when the model is not covered or compiling fails:
    what breaks the compiler may still run in Pyro. ``engine`` is the caller's option, for the
    message; ``stacklevel`` as :func:`warnings.warn`'s, counted from the caller."""
    try:
        return compile_svi(*args, **kwargs)
    except NotCompilableError as e:
        reason = str(e)
    except Exception as e:  # noqa: BLE001
        reason = f"compiling failed with {type(e).__name__}: {e}"
    warnings.warn(
        f"engine={engine!r} falls back to Pyro's SVI: {reason}",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    return None


def _pyro_loss(
    model: BNN,
    guide: BBBNormal | ReverseModelGuide,
    x: Tensor,
    y: Tensor,
    handlers: Sequence[AbstractContextManager],
    elbo: ELBO,
    kl_scale: float,
) -> float:
    """Pyro's loss of one pass on ``(x, y)``, as the step of :func:`~pyro_dwp.infer.fit`
    evaluates it (handlers active, KL scaled), without gradients or validation; a NaN is left
    to the step, which reports it."""
    kl = KLScaleMessenger(kl_scale)
    with torch.no_grad(), pyro.validation_enabled(False), poutine.block(), ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        for handler in handlers:
            stack.enter_context(handler)
        return elbo.loss(kl(model), kl(guide), x, y)


def _traces(
    model: BNN,
    guide: BBBNormal | ReverseModelGuide,
    x: Tensor,
    y: Tensor,
    handlers: Sequence[AbstractContextManager],
    kl_scale: float,
) -> tuple[poutine.Trace, poutine.Trace]:
    """The guide's and the replayed model's traces of one Pyro particle, as ``Trace_ELBO``
    draws them (handlers active, KL scaled), subsample sites pruned."""
    kl = KLScaleMessenger(kl_scale)
    with torch.no_grad(), pyro.validation_enabled(False), poutine.block(), ExitStack() as stack:
        for handler in handlers:
            stack.enter_context(handler)
        guide_trace = poutine.trace(kl(guide)).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(kl(model), trace=guide_trace)).get_trace(x, y)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _build(
    model: BNN,
    guide: BBBNormal | ReverseModelGuide,
    model_trace: poutine.Trace,
    guide_trace: poutine.Trace,
    y: Tensor,
    optim: PyroOptim | None,
    elbo: type[ELBO],
    num_particles: int,
    vectorize_particles: bool,
    local: LocalReparameterizationMessenger | None,
) -> CompiledSVI:
    """Match the traces against the BNN's structure and build the step's program."""
    names = list(model.priors)
    base = _base_guide(guide)
    coded = [n for n in names if isinstance(model.priors[n], DeepWeightPrior)]
    if coded and model.reparam is None:
        raise NotCompilableError(f"a deep weight prior without its reparameterisation: {coded}")
    store = pyro.get_param_store()
    locs = {n: base.loc(n).unconstrained() for n in names}
    point = isinstance(base, PointMass)
    raws: dict[str, Tensor | None] = {n: None if point else base.rho(n) for n in names}
    guide_params = [store.param_name(t) for t in [*locs.values(), *raws.values()] if t is not None]
    reverse: dict[str, _Moments] = {}
    if isinstance(guide, ReverseModelGuide):
        reverse = _reverse_models(guide)
        if guide.trainable:
            guide_params += [
                param_with_module_name(guide.name, n) for n, _ in guide.encoders.named_parameters()
            ]
    codes = [latent_site_name(n) for n in reverse]
    expected = {
        "guide sample": [*names, *codes],
        "guide param": guide_params,
        "model sample": [*names, *[latent_site_name(n) for n in coded], model.likelihood.site],
        "model param": [
            *model.deterministic,
            *(
                ["noise_scale"]
                if type(model.likelihood) is Gaussian and model.likelihood.scale is None
                else []
            ),
        ],
    }
    traced = {
        "guide sample": _sites(guide_trace, "sample"),
        "guide param": _sites(guide_trace, "param"),
        "model sample": _sites(model_trace, "sample"),
        "model param": _sites(model_trace, "param"),
    }
    for key, want in expected.items():
        if set(traced[key]) != set(want):
            extra = sorted(set(traced[key]) ^ set(want))
            raise NotCompilableError(
                f"the traced {key} sites differ from the BNN's: {', '.join(extra)}"
            )
    if base.create_plates is not None:
        raise NotCompilableError("unsupported plates around the guide's sites (create_plates)")
    fixed = {n: _leaf(n) for n in expected["model param"]}
    log_likelihood = _likelihood(model, model_trace, y, fixed)
    scale = None if point else _guide_scale(base)
    device = next(iter(locs.values())).device
    site_fns = model.site_distributions()
    sites = []
    for n in base.site_names:  # the guide's order: Pyro's order of the draws
        raw = raws[n]
        kl = (
            None
            if elbo is Trace_ELBO or scale is None or raw is None
            else _registered_kl(site_fns[n], locs[n], scale(locs[n], raw))
        )
        log_prior, key = None, None
        if n not in coded and kl is None:
            prior = move_distribution(model.priors[n], device)
            log_prior, key = _log_prior(n, prior), _prior_key(prior)
        key = None if point else key  # a point mass is not fused: it draws no noise
        sites.append(_WeightSite(n, locs[n], raws[n], scale, log_prior, kl, key))
    code_sites = []
    for n, f in reverse.items():  # the reverse-model guide's order: Pyro's order
        prior = move_distribution(model.priors[n], device)
        code_sites.append(_CodeSite(n, f, prior.decoder, prior.log_p_z()))
    for site in sites:
        if site.loc.shape != guide_trace.nodes[site.name]["value"].shape:
            raise NotCompilableError(f"particle dimensions at site {site.name!r}")
    params = [_leaf(n) for n in expected["model param"] + guide_params]
    return CompiledSVI(
        model, sites, code_sites, fixed, log_likelihood, optim, num_particles,
        vectorize_particles, local, params,
    )  # fmt: skip


def _guide_scale(guide: BBBNormal) -> Callable[[Tensor, Tensor], Tensor]:
    """``(loc, raw) -> sigma`` of the guide's family, from the param store's leaves."""
    to_scale = transform_to(type(guide).scale_constraint)
    if type(guide) is TruncatedAlphaNormal:  # sigma = sqrt(alpha) (|mu| + tiny)
        return lambda loc, raw: to_scale(raw).sqrt() * (loc.abs() + torch.finfo(loc.dtype).tiny)
    return lambda loc, raw: to_scale(raw)


def _registered_kl(
    site_fn: Distribution, loc: Tensor, scale: Tensor
) -> Callable[[Tensor, Tensor], Tensor] | None:
    """``(loc, scale) -> sum KL(N(loc, scale^2) || prior)`` where ``TraceMeanField_ELBO`` finds
    a registered KL between the guide's and the model's distributions at the site (``site_fn``,
    event shape the weight's), else ``None`` (it then takes the Monte Carlo term)."""
    event_dim = len(site_fn.event_shape)
    with torch.no_grad():
        try:
            kl_divergence(dist.Normal(loc, scale).to_event(event_dim), site_fn)
        except NotImplementedError:
            return None
    return lambda m, s: kl_divergence(
        dist.Normal(m, s, validate_args=False).to_event(event_dim), site_fn
    ).sum()


def _reverse_models(guide: ReverseModelGuide) -> dict[str, _Moments]:
    """``{weight site: w -> (loc, scale) of r(z | w)}``; a trainable reverse model runs on the
    param store's tensors (those that ``pyro.module`` registers and the optimiser steps)."""
    out = {}
    for site, (key, encoder) in zip(guide.site_names, guide.encoders.items(), strict=True):
        if not guide.trainable:
            out[site] = encoder
            continue
        leaves = {
            n: _leaf(param_with_module_name(guide.name, f"{key}.{n}"))
            for n, _ in encoder.named_parameters()
        }
        out[site] = functools.partial(functional_call, encoder, leaves)
    return out

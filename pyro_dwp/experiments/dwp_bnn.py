"""The Bayesian ConvNet of the deep weight prior's experiments: model, guide and ELBO per prior."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Literal, NamedTuple

from pyro.infer import ELBO
from torch import nn
from torch.distributions import Distribution

from pyro_dwp.bnn import BNN
from pyro_dwp.distributions.deep_weight_prior import DeepWeightPrior
from pyro_dwp.experiments.prior_recipes import (
    PRIOR_RECIPES,
    PriorRecipe,
    PriorSettings,
    prior_names,
)
from pyro_dwp.guides import LogVarianceNormal, PointMass, ReverseModelGuide, init_to_module
from pyro_dwp.guides.initialization import init_to_prior_sample
from pyro_dwp.guides.log_variance import TruncatedAlphaNormal
from pyro_dwp.infer.reparam import DeepWeightPriorStrategy
from pyro_dwp.likelihoods import Categorical
from pyro_dwp.models.dwp_cnn import conv_layers
from pyro_dwp.models.kernel_vae import KernelVAE

__all__ = ["LOG_UNIFORM_FAMILIES", "DWPSetup", "make_dwp_cnn_model"]

LogUniformFamily = Literal["truncated-alpha", "additive"]
LOG_UNIFORM_FAMILIES: tuple[LogUniformFamily, ...] = ("truncated-alpha", "additive")
"""Guides of the log-uniform prior: ``N(mu, alpha mu^2), alpha <= 1`` or ``(mu, log sigma^2)``."""
_MIXABLE = {"log-variance", "reverse"}
"""Guide families that share a network: the reverse guide's base guide is the log-variance one."""


class DWPSetup(NamedTuple):
    """What :func:`make_dwp_cnn_model` builds: ``fit(model, guide, ..., elbo=elbo)``."""

    model: BNN
    guide: nn.Module
    elbo: type[ELBO]


def make_dwp_cnn_model(
    net: nn.Module,
    prior: str | Mapping[str, str] = "dwp",
    *,
    dataset_size: int,
    vaes: Mapping[str, KernelVAE] | None = None,
    trainable_reverse: bool = True,
    init: Literal["module", "dwp"] = "module",
    init_log_variance: float = -10.0,
    log_uniform_family: LogUniformFamily = "truncated-alpha",
    init_alpha_logit: float = -2.0,
) -> DWPSetup:
    r"""The Bayesian ConvNet of Section 4.1 of Atanov et al. (2019) with one of its priors.

    The kernels of every square ``nn.Conv2d`` of ``net`` (``conv1.weight`` ``(c1, 1, 7, 7)``,
    ``conv2.weight`` ``(c2, c1, 5, 5)`` for :class:`~pyro_dwp.models.DWPConvNet`) are Bayesian;
    the convolutions' biases and the classifier stay point estimates. The guide is the paper's
    :class:`~pyro_dwp.guides.LogVarianceNormal` (``mu``, ``log sigma^2``); the data term's local
    reparameterisation is a separate handler,
    :class:`~pyro_dwp.infer.local_reparam.LocalReparameterizationMessenger`.

    The priors are the entries of :data:`~pyro_dwp.experiments.prior_recipes.PRIOR_RECIPES`
    offered to the ``"dwp"`` experiments; each entry gives the distribution, the ELBO and the
    guide family (``"log-variance"``: the guide above; ``"reverse"``: it plus reverse models,
    with the sites reparameterised by
    :class:`~pyro_dwp.infer.reparam.DeepWeightPriorStrategy`). The paper's three:

    - ``"dwp"``: a :class:`~pyro_dwp.distributions.DeepWeightPrior` per layer from ``vaes``,
      rewritten into :math:`p(z) p(w \mid z)`; the guide is a
      :class:`~pyro_dwp.guides.ReverseModelGuide` whose reverse models start at the VAEs'
      encoders; ``Trace_ELBO`` is then the auxiliary bound :math:`\mathcal{L}^{aux}`.
    - ``"normal"``: :math:`\mathcal{N}(0, 1)` per weight, ``Trace_ELBO``.
    - ``"log-uniform"``: :class:`~pyro_dwp.distributions.LogUniform`, ``TraceMeanField_ELBO``
      (the improper prior needs the registered approximate KL of Molchanov et al., 2017). By
      default (``log_uniform_family="truncated-alpha"``) the guide is
      :class:`~pyro_dwp.guides.log_variance.TruncatedAlphaNormal`, ``N(mu, alpha mu^2)`` with
      ``alpha = sigmoid(a) <= 1``, as in the DWP authors' baseline (``MuTruncAlphaFFGConv2d``):
      the KL then depends on ``alpha`` only. With ``"additive"`` (``mu, log sigma^2``) the KL,
      a function of ``sigma^2 / mu^2``, drives every mean to 0 (sparse variational dropout) and
      on few examples the network collapses to chance (measured: N=50, 0.23 accuracy).

    And the paper's deterministic contender: ``"deterministic-l2"``, the standard normal with
    the guide :class:`~pyro_dwp.guides.PointMass` (maximum a posteriori weights: a deterministic
    network with the penalty ``|w|^2 / 2``), ``Trace_ELBO``; ``init="dwp"`` starts it from
    samples of the deep weight prior, as Figure 2 does.

    Args:
        net: The deterministic network, e.g. ``DWPConvNet()``; its current parameters are the
            point estimates' and (``init="module"``) the guide means' initial values.
        prior: A registered prior's name (``"dwp"``, ``"normal"``, ``"log-uniform"``...) for
            every Bayesian kernel, or one per layer, ``{layer name: prior}`` with every square
            convolution named, e.g. ``{"conv1": "dwp", "conv2": "normal"}`` (the deep weight
            prior on some layers only; the reverse models then cover those layers). Priors
            whose ELBOs or guide families differ (``"log-uniform"`` and the others) cannot be
            mixed.
        dataset_size: Number of training examples ``N`` (scales the data term by ``N / B``).
        vaes: ``{weight name: KernelVAE}`` for every Bayesian kernel, on ``net``'s device, e.g.
            ``{"conv1.weight": vae7, "conv2.weight": vae5}``; needed by the priors that read a
            VAE (``"dwp"``) and ``init="dwp"``, ignored otherwise.
        trainable_reverse: Train the reverse models :math:`r(z \mid w; \psi)` jointly with
            :math:`q` (the paper) or keep them frozen at the VAE encoders (the public code).
        init: Guide means from the network's initialisation (``"module"``) or from the decoder
            means of deep-weight-prior samples (``"dwp"``, any prior; biases and classifier keep
            the module's values).
        init_log_variance: Initial ``log sigma^2`` of every Bayesian weight (not used by the
            truncated-alpha guide of the log-uniform prior).
        log_uniform_family: The log-uniform prior's guide: ``"truncated-alpha"`` or
            ``"additive"`` (see above); ignored by the other priors.
        init_alpha_logit: Initial ``a`` (``alpha = sigmoid(a)``) of the truncated-alpha guide.

    Returns:
        ``DWPSetup(model, guide, elbo)``.

    Raises:
        ValueError: On an unknown prior or init, a per-layer ``prior`` that misses or invents a
            layer or mixes priors that cannot be mixed, a missing or unknown VAE, a VAE
            whose kernel size differs from its layer's, or a VAE on another device than ``net``.
    """
    if log_uniform_family not in LOG_UNIFORM_FAMILIES:
        raise ValueError(
            f"unknown log_uniform_family {log_uniform_family!r}; choose one of "
            f"{LOG_UNIFORM_FAMILIES}"
        )
    if init not in ("module", "dwp"):
        raise ValueError(f"unknown init {init!r}; choose 'module' or 'dwp'")
    kernels = {f"{name}.weight": k for name, k in conv_layers(net).items()}
    if not kernels:
        raise ValueError(f"{type(net).__name__} has no square nn.Conv2d layer to make Bayesian")
    recipes = _layer_priors(prior, kernels)
    reverse_sites = [n for n, r in recipes.items() if r.guide == "reverse"]
    needs_vaes = list(kernels) if init == "dwp" else [n for n, r in recipes.items() if r.needs_vae]
    if needs_vaes:
        _check_vaes(net, kernels, needs_vaes, vaes)
    rules: dict[str, Distribution | None] = {
        n: r.build(PriorSettings(vae=vaes[n] if r.needs_vae else None)) for n, r in recipes.items()
    }
    reparam = DeepWeightPriorStrategy() if reverse_sites else None
    model = BNN(net, rules, Categorical(dataset_size), reparam=reparam)
    if init == "dwp":
        means = {
            n: DeepWeightPrior.from_vae(vaes[n], with_encoder=False, sample_mean=True)
            for n in kernels
        }
        init_loc_fn = partial(init_to_prior_sample, priors=means)
    else:
        init_loc_fn = init_to_module
    builder = partial(
        LogVarianceNormal, init_loc_fn=init_loc_fn, init_log_variance=init_log_variance
    )
    families = {r.guide for r in recipes.values()}
    if reverse_sites:
        encoders = {n: vaes[n].encoder for n in reverse_sites}
        guide = ReverseModelGuide(model, builder, encoders, trainable=trainable_reverse)
    elif "point-mass" in families:
        guide = PointMass(model, init_loc_fn=init_loc_fn)
    elif "log-uniform" in families and log_uniform_family == "truncated-alpha":
        guide = TruncatedAlphaNormal(
            model, init_loc_fn=init_loc_fn, init_alpha_logit=init_alpha_logit
        )
    else:
        guide = builder(model)
    (elbo,) = {r.elbo for r in recipes.values()}  # one ELBO: checked by _layer_priors
    return DWPSetup(model, guide, elbo)


def _layer_priors(
    prior: str | Mapping[str, str], kernels: dict[str, int]
) -> dict[str, PriorRecipe]:
    """``{weight name: recipe}`` of every Bayesian kernel from ``prior`` (one or per layer)."""
    if isinstance(prior, str):
        per_layer = {n.removesuffix(".weight"): prior for n in kernels}
    else:
        per_layer = dict(prior)
        layers = [n.removesuffix(".weight") for n in kernels]
        missing, extra = set(layers) - set(per_layer), set(per_layer) - set(layers)
        if missing or extra:
            raise ValueError(
                f"a per-layer prior must name every Bayesian layer {layers}; missing "
                f"{sorted(missing)}, unknown {sorted(extra)}"
            )
    names = prior_names("dwp")
    for name, p in per_layer.items():
        if p not in names:
            raise ValueError(f"unknown prior {p!r} for {name}; choose one of {names}")
    recipes = {f"{name}.weight": PRIOR_RECIPES[p] for name, p in per_layer.items()}
    families = {r.guide for r in recipes.values()}
    if len({r.elbo for r in recipes.values()}) > 1 or (
        len(families) > 1 and not families <= _MIXABLE
    ):
        used = sorted(set(per_layer.values()))
        odd = [p for p in used if PRIOR_RECIPES[p].guide not in _MIXABLE] or used
        raise ValueError(
            f"the {', '.join(odd)} prior cannot be mixed with other priors ({per_layer}): "
            "priors on one network need one ELBO and guide families that combine"
        )
    return recipes


def _check_vaes(
    net: nn.Module,
    kernels: dict[str, int],
    needed: list[str],
    vaes: Mapping[str, KernelVAE] | None,
) -> None:
    """Check that ``vaes`` has a VAE of the right kernel size and device for each of the
    kernels ``needed`` of ``net``."""
    if vaes is None:
        raise ValueError(
            f"the deep weight prior needs a kernel VAE for each of {needed}: pass "
            "vaes={weight name: KernelVAE} (e.g. from load_kernel_vae on dwp-prior's outputs)"
        )
    missing, extra = set(needed) - set(vaes), set(vaes) - set(kernels)
    if missing or extra:
        raise ValueError(
            f"vaes must have one KernelVAE per deep-weight-prior kernel {needed}; "
            f"missing {sorted(missing)}, unknown {sorted(extra)}"
        )
    device = next(net.parameters()).device
    for name in needed:
        k, vae = kernels[name], vaes[name]
        if vae.kernel_size != k:
            raise ValueError(
                f"the VAE for {name} models {vae.kernel_size}x{vae.kernel_size} kernels but "
                f"{name} has {k}x{k} kernels: pass the VAE trained on that layer's kernels"
            )
        vae_device = next(vae.parameters()).device
        if vae_device != device:
            raise ValueError(
                f"the VAE for {name} is on {vae_device} but the network is on {device}: move it "
                f"with vae.to({str(device)!r}) (or load it with map_location)"
            )

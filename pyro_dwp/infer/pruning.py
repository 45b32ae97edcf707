"""Weight pruning by signal-to-noise ratio, as in Blundell et al. (2015), Section 5.1.

A weight with posterior ``N(mu, sigma^2)`` is ranked by ``|mu| / sigma``; the lowest fraction of
all Bayesian weights (every site of the guide together, one global threshold) is removed, i.e.
its mean and its variance are set to 0. The pruned posterior is evaluated through its mean
network (:func:`posterior_mean_network`) or an ensemble of sampled networks
(:func:`sample_weights` + :func:`sampled_outputs`), and exported as a deterministic module with
compactly stored sparse ``nn.Linear`` weights (:func:`pruned_network`,
:class:`~pyro_dwp.models.SparseLinear`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import pyro
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from pyro_dwp.bnn import BNN
from pyro_dwp.guides import BBBNormal
from pyro_dwp.models.sparse import sparsify

__all__ = [
    "posterior_mean_network",
    "pruned_network",
    "sample_weights",
    "sampled_outputs",
    "snr_masks",
    "sparsify",
]


def snr_masks(guide: BBBNormal, fraction: float) -> dict[str, Tensor]:
    """Keep-masks removing the ``fraction`` of weights with the lowest ``|mu| / sigma``.

    All of the guide's sites are ranked together (one global threshold). Exactly
    ``round(fraction * total)`` weights are removed; ties are broken by position (a stable sort
    over the sites in the guide's order, each flattened row-major).

    Args:
        guide: A fitted :class:`~pyro_dwp.guides.BBBNormal` (run at least once).
        fraction: Fraction of weights to remove, in ``[0, 1)``.

    Returns:
        ``{site: mask}``, boolean, each of the site's shape; ``True`` = kept.

    Raises:
        ValueError: If ``fraction`` is not a number in ``[0, 1)``.
    """
    if not isinstance(fraction, int | float) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"the pruned fraction must be a number in [0, 1), got {fraction!r}")
    snr = guide.signal_to_noise()
    flat = torch.cat([v.flatten() for v in snr.values()])
    keep = torch.ones_like(flat, dtype=torch.bool)
    removed = round(fraction * flat.numel())
    if removed:
        keep[torch.argsort(flat, stable=True)[:removed]] = False
    parts = torch.split(keep, [v.numel() for v in snr.values()])
    return {name: part.view(v.shape) for (name, v), part in zip(snr.items(), parts, strict=True)}


def sample_weights(
    guide: BBBNormal, num_samples: int, masks: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Draw weights ``w = (mu + sigma * eps) * mask`` from the (pruned) guide.

    Args:
        guide: A fitted :class:`~pyro_dwp.guides.BBBNormal`.
        num_samples: Number S of draws (>= 1).
        masks: Keep-masks from :func:`snr_masks`, or ``None`` for the unpruned posterior.

    Returns:
        ``{site: (S, *site_shape)}``, detached, on the guide's device.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    out = {}
    with torch.no_grad():
        for name in guide.site_names:
            loc, scale = guide.loc(name).detach(), guide.scale(name).detach()
            w = loc + scale * torch.randn((num_samples, *loc.shape), device=loc.device)
            out[name] = w * masks[name] if masks is not None else w
    return out


@torch.no_grad()
def sampled_outputs(
    net: nn.Module, weights: Mapping[str, Tensor], x: Tensor, *, batch_size: int = 1000
) -> Tensor:
    """Run ``net`` once per weight sample, in chunks of ``batch_size`` inputs.

    Args:
        net: The deterministic network; parameters not in ``weights`` keep their values.
        weights: ``{parameter name: (S, *param_shape)}``, e.g. from :func:`sample_weights`.
        x: Inputs ``(N, *in_shape)``.
        batch_size: Rows of ``x`` per chunk, to bound memory.

    Returns:
        Outputs ``(S, N, *out_shape)``.
    """

    def run(w: dict[str, Tensor], chunk: Tensor) -> Tensor:
        return functional_call(net, w, (chunk,))

    batched = vmap(run, in_dims=(0, None))
    return torch.cat([batched(dict(weights), c) for c in torch.split(x, batch_size)], dim=1)


def posterior_mean_network(
    model: BNN, guide: BBBNormal, masks: Mapping[str, Tensor] | None = None
) -> nn.Module:
    """A deterministic copy of ``model.net`` whose Bayesian weights are ``mu * mask``.

    Point-estimate parameters take their fitted values from the Pyro param store (else keep the
    network's). The copy is in eval mode, on the guide's device, with ``requires_grad=False``.

    Args:
        model: The :class:`~pyro_dwp.bnn.BNN`.
        guide: Its fitted :class:`~pyro_dwp.guides.BBBNormal`.
        masks: Keep-masks from :func:`snr_masks`, or ``None``.

    Returns:
        The network ``(B, *in_shape) -> (B, *out_shape)``.
    """
    net = copy.deepcopy(model.net)
    store = pyro.get_param_store()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name in guide.site_names:
                value = guide.loc(name).detach()
                value = value * masks[name] if masks is not None else value
            elif name in store:
                value = store[name].detach()
            else:
                value = param
            param.data = value.clone()
            param.requires_grad_(False)
    return net.to(guide.loc(guide.site_names[0]).device).eval()


def pruned_network(model: BNN, guide: BBBNormal, masks: Mapping[str, Tensor]) -> nn.Module:
    """The pruned posterior-mean network, exported with sparse ``nn.Linear`` weights.

    Its outputs equal those of ``posterior_mean_network(model, guide, masks)``; save it with
    ``torch.save(net, path)`` and load it with ``torch.load(path, weights_only=False)`` (the
    class :class:`~pyro_dwp.models.SparseLinear` must be importable).

    Args:
        model: The :class:`~pyro_dwp.bnn.BNN`.
        guide: Its fitted :class:`~pyro_dwp.guides.BBBNormal`.
        masks: Keep-masks from :func:`snr_masks`.

    Returns:
        A deterministic module in eval mode, ``(B, *in_shape) -> (B, *out_shape)``.
    """
    return sparsify(posterior_mean_network(model, guide, masks)).eval()

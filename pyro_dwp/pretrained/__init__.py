"""Deep weight priors that ship with the package: kernel VAEs our own pipeline learned.

Each prior is a folder of this package holding ``vae_conv1.pt`` (7x7 kernels) and
``vae_conv2.pt`` (5x5 kernels), written by ``pyro-dwp dwp-prior``, and ``metadata.json``: the
commands and commit that made them, the source kernels' statistics, the VAEs' held-out fit and
each file's SHA-256. Loading checks every checksum first, so a truncated or altered file is an
error, never a silently different prior.

- ``"notmnist"``: source ConvNets of 256 / 512 channels trained on notMNIST (the DWP authors'
  recipe, see ``pyro-dwp dwp-source``), kernels of the first (7x7) and second (5x5) layer
  rescaled to the He scale of the paper's 32 / 128-channel target, VAEs with a decoder scale
  shared by all codes (``pyro-dwp dwp-prior --decoder-scale shared``).

Usage, a deep weight prior on the kernels of any conv net with 7x7 and 5x5 layers::

    priors = pyro_dwp.pretrained.pretrained("notmnist")        # {"conv1": DWP 7x7, "conv2": 5x5}
    # on a second layer of other input channels: pretrained(..., fan_in={"conv2": C * 5 * 5})
    model = BNN(net, {"features.0.weight": priors["conv1"], "features.3.weight": priors["conv2"]},
                Categorical(n), reparam=DeepWeightPriorStrategy())  # from pyro_dwp.infer.reparam

or from the command line, ``pyro-dwp dwp-classify --pretrained notmnist ...``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from pyro_dwp.distributions import DeepWeightPrior
from pyro_dwp.models.kernel_vae import KernelVAE, load_kernel_vae

__all__ = [
    "PRETRAINED",
    "he_gauge_fan_in",
    "match_fan_in",
    "pretrained",
    "pretrained_dir",
    "pretrained_metadata",
    "sha256",
]

PRETRAINED: tuple[str, ...] = ("notmnist",)
"""Names of the priors shipped with the package."""

METADATA = "metadata.json"
LAYERS = ("conv1", "conv2")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _folder(name: str) -> Path:
    if name not in PRETRAINED:
        raise ValueError(f"no shipped prior named {name!r}; the shipped priors are {PRETRAINED}")
    return Path(str(resources.files(__name__).joinpath(name)))


def pretrained_metadata(name: str = "notmnist") -> dict[str, Any]:
    """The ``metadata.json`` of a shipped prior (provenance, statistics, checksums).

    Raises:
        ValueError: If ``name`` is not in :data:`PRETRAINED` or the metadata is unreadable.
    """
    path = _folder(name) / METADATA
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"shipped prior {name!r}: cannot read {path} ({e}); reinstall pyro-dwp"
        ) from e


def pretrained_dir(name: str = "notmnist") -> Path:
    """The folder of a shipped prior (``vae_conv1.pt``, ``vae_conv2.pt``), checksums verified.

    This is what ``pyro-dwp dwp-classify --vae-dir`` reads.

    Raises:
        ValueError: If ``name`` is unknown, a file is missing, or a file's SHA-256 differs from
            the one recorded in its metadata (a corrupt or altered prior).
    """
    folder = _folder(name)
    for file, expected in pretrained_metadata(name)["sha256"].items():
        path = folder / file
        if not path.is_file():
            raise ValueError(f"shipped prior {name!r}: {path} is missing; reinstall pyro-dwp")
        got = sha256(path)
        if got != expected:
            raise ValueError(
                f"shipped prior {name!r}: {path} has SHA-256 {got}, its metadata records "
                f"{expected}: the file is corrupt or was altered; reinstall pyro-dwp"
            )
    return folder


def he_gauge_fan_in(meta: Mapping[str, Any]) -> int | None:
    """The fan-in whose He scale :math:`\\sqrt{2 / \\text{fan-in}}` a kernel VAE's source kernels
    were rescaled to (``pyro-dwp dwp-source --kernel-gauge he``), or ``None`` if they were not.

    Read from the metadata of the VAE's file (``load_kernel_vae(path)[1]``): its ``layer``
    (``conv1``: one input channel, the images; ``conv2``: the first target channel count),
    ``kernel_size`` and provenance (``kernel_gauge``, ``target_channels``).
    """
    provenance = meta.get("provenance") or {}
    if provenance.get("kernel_gauge") != "he":
        return None
    in_channels = [1, *provenance["target_channels"]][LAYERS.index(meta["layer"])]
    return int(in_channels * meta["kernel_size"] ** 2)


def match_fan_in(vae: KernelVAE, meta: Mapping[str, Any], fan_in: int) -> float:
    """Rescale ``vae`` (in place, :meth:`KernelVAE.rescale_`) from the He scale its source
    kernels were gauged to onto a layer of ``fan_in`` (``in_channels * k * k``): by
    :math:`\\sqrt{\\text{gauged fan-in} / \\text{fan-in}}`. The factor applied (1 for a VAE of
    kernels as trained, whose scale no fan-in defines).

    Raises:
        ValueError: If ``fan_in`` is not a positive integer.
    """
    if isinstance(fan_in, bool) or not isinstance(fan_in, int) or fan_in < 1:
        raise ValueError(f"a layer's fan-in must be a positive integer, got {fan_in!r}")
    gauged = he_gauge_fan_in(meta)
    factor = 1.0 if gauged is None else math.sqrt(gauged / fan_in)
    vae.rescale_(factor)
    return factor


def pretrained(
    name: str = "notmnist",
    *,
    device: str | torch.device = "cpu",
    num_samples: int = 100,
    fan_in: Mapping[str, int] | None = None,
) -> dict[str, DeepWeightPrior]:
    """The per-layer deep weight priors of a shipped prior, checksums verified.

    Args:
        name: One of :data:`PRETRAINED`.
        device: Where the priors' networks live (``prior.to(device)`` moves them later).
        num_samples: Importance samples per kernel of :meth:`DeepWeightPrior.log_prob`.
        fan_in: ``{"conv1": f1, "conv2": f2}`` (either or both): the fan-in ``in_channels * k *
            k`` of the layer each prior goes on. The shipped kernels were rescaled to the He
            scale of the paper's 32 / 128-channel net (fan-ins 49 and 800); a prior named here
            is rescaled to its layer's (:func:`match_fan_in`), e.g. ``{"conv2": 16 * 25}`` for
            a second layer with 16 input channels. Left out: as shipped.

    Returns:
        ``{"conv1": DeepWeightPrior over 7x7 kernels, "conv2": ... over 5x5 kernels}``: event
        shape ``(k, k)``; put one on a layer's ``(out, in, k, k)`` weight through a prior
        mapping (``{"features.0.weight": priors["conv1"]}``). A layer whose kernels are not
        ``k x k`` is refused when the model is built.

    Raises:
        ValueError: As :func:`pretrained_dir`; or if ``fan_in`` names a layer the prior does not
            have or gives a fan-in that is not a positive integer.
    """
    fan_in = dict(fan_in or {})
    unknown = sorted(set(fan_in) - set(LAYERS))
    if unknown:
        raise ValueError(f"fan_in names layers {unknown}; the shipped priors' layers are {LAYERS}")
    folder = pretrained_dir(name)
    priors = {}
    for layer in LAYERS:
        vae, meta = load_kernel_vae(folder / f"vae_{layer}.pt", map_location=device)
        if layer in fan_in:
            match_fan_in(vae, meta, fan_in[layer])
        priors[layer] = DeepWeightPrior.from_vae(vae, num_samples=num_samples)  # + code prior
    return priors

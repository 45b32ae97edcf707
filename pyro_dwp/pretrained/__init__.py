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
    model = BNN(net, {"features.0.weight": priors["conv1"], "features.3.weight": priors["conv2"]},
                Categorical(n), reparam=DeepWeightPriorStrategy())  # from pyro_dwp.infer.reparam

or from the command line, ``pyro-dwp dwp-classify --pretrained notmnist ...``.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from pyro_dwp.distributions import DeepWeightPrior
from pyro_dwp.models.kernel_vae import load_kernel_vae

__all__ = ["PRETRAINED", "pretrained", "pretrained_dir", "pretrained_metadata", "sha256"]

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


def pretrained(
    name: str = "notmnist",
    *,
    device: str | torch.device = "cpu",
    num_samples: int = 100,
) -> dict[str, DeepWeightPrior]:
    """The per-layer deep weight priors of a shipped prior, checksums verified.

    Args:
        name: One of :data:`PRETRAINED`.
        device: Where the priors' networks live (``prior.to(device)`` moves them later).
        num_samples: Importance samples per kernel of :meth:`DeepWeightPrior.log_prob`.

    Returns:
        ``{"conv1": DeepWeightPrior over 7x7 kernels, "conv2": ... over 5x5 kernels}``: event
        shape ``(k, k)``; put one on a layer's ``(out, in, k, k)`` weight through a prior
        mapping (``{"features.0.weight": priors["conv1"]}``). A layer whose kernels are not
        ``k x k`` is refused when the model is built.

    Raises:
        ValueError: As :func:`pretrained_dir`.
    """
    folder = pretrained_dir(name)
    priors = {}
    for layer in LAYERS:
        vae, _ = load_kernel_vae(folder / f"vae_{layer}.pt", map_location=device)
        priors[layer] = DeepWeightPrior.from_vae(vae, num_samples=num_samples)  # + code prior
    return priors

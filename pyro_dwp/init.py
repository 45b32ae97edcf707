"""Initialise the convolution kernels of any ``torch.nn.Module`` (*The Deep Weight Prior*, 4.2-4.3).

Atanov et al. (2019) initialise a ConvNet's kernels with samples of the deep weight prior, or with
kernels of the source networks ("filters"), and compare with Xavier: for random feature
extraction (Figure 3: the convolutions frozen, only the classifier trained) and for the speed of
training (Figure 4). Each function below fills the weight ``(out, in, k, k)`` of named
:class:`torch.nn.Conv2d` layers in place, one ``k x k`` kernel per ``(out, in)`` slice, so the
layers may have any widths; biases are left alone. Layers are module names as in
``module.named_modules()`` (``"conv1"``, ``"features.0"``), not parameter names.

    net = DWPConvNet((8, 32))
    init_from_prior(net, pretrained("notmnist"), seed=0)          # {"conv1": 7x7, "conv2": 5x5}
    init_from_kernels(net, {"conv1": k7, "conv2": k5}, seed=0)    # stored kernels (n, k, k)
    xavier(net, seed=0)                                           # every Conv2d, Xavier-normal

With ``seed`` the draws use their own random stream (the global one is left untouched);
without it, the global stream.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["init_from_kernels", "init_from_prior", "xavier"]


def init_from_prior(
    module: nn.Module,
    priors: Mapping[str, Distribution],
    *,
    scale: float = 1.0,
    seed: int | None = None,
) -> nn.Module:
    """Fill each named conv layer's weight with independent samples of a kernel prior.

    Layer ``name`` of weight ``(out, in, k, k)`` gets ``scale * priors[name].sample((out, in))``:
    one kernel of the prior per ``(out, in)`` slice. With a
    :class:`~pyro_dwp.distributions.DeepWeightPrior` a kernel is the decoder's draw from
    :math:`p(w \\mid z)`, ``z ~ p(z)``; build the prior with ``sample_mean=True`` for the
    noise-free decoder means :math:`\\mu(z)`.

    Args:
        module: Any module; its named layers must be :class:`torch.nn.Conv2d`.
        priors: ``{layer name: distribution with event shape (k, k)}``, e.g. the dict of
            :func:`pyro_dwp.pretrained.pretrained` for :class:`~pyro_dwp.models.DWPConvNet`.
        scale: Multiplies every kernel (> 0); 1 keeps the prior's own scale.
        seed: Seed of the draws (``None``: the global random stream).

    Returns:
        ``module``, changed in place.

    Raises:
        ValueError: If a layer is missing or not a ``Conv2d``, if a prior's event shape is not
            ``(k, k)`` of the layer's kernel size, or if ``scale`` is not positive.
    """
    _check_scale(scale)
    targets = {name: _conv_weight(module, name) for name in priors}
    for name, weight in targets.items():
        event = tuple(priors[name].event_shape)
        _check_kernel_size(name, weight, event, "prior's event shape")
    with _rng(seed), torch.no_grad():
        for name, weight in targets.items():
            kernels = priors[name].sample(tuple(weight.shape[:2]))  # (out, in, k, k)
            weight.copy_(scale * kernels.to(device=weight.device, dtype=weight.dtype))
    return module


def init_from_kernels(
    module: nn.Module,
    kernels: Mapping[str, Tensor],
    *,
    scale: float = 1.0,
    seed: int | None = None,
) -> nn.Module:
    """Fill each named conv layer's weight with kernels drawn at random from a stored set.

    Layer ``name`` of weight ``(out, in, k, k)`` gets ``scale * kernels[name][idx]`` with
    ``idx`` of shape ``(out, in)`` drawn uniformly with replacement: the paper's "filters"
    initialisation, e.g. with the ``"train"`` kernels of ``pyro-dwp dwp-source``'s
    ``kernels_conv1.pt`` (7x7) and ``kernels_conv2.pt`` (5x5).

    Args:
        module: Any module; its named layers must be :class:`torch.nn.Conv2d`.
        kernels: ``{layer name: kernels (n, k, k)}``, ``n >= 1``.
        scale: Multiplies every kernel (> 0).
        seed: Seed of the draws (``None``: the global random stream).

    Returns:
        ``module``, changed in place.

    Raises:
        ValueError: If a layer is missing or not a ``Conv2d``, if a kernel set is not a
            non-empty ``(n, k, k)`` tensor of the layer's kernel size, or if ``scale`` is not
            positive.
    """
    _check_scale(scale)
    targets = {name: _conv_weight(module, name) for name in kernels}
    for name, weight in targets.items():
        bank = kernels[name]
        if not isinstance(bank, Tensor) or bank.dim() != 3 or bank.shape[0] == 0:
            shape = tuple(bank.shape) if isinstance(bank, Tensor) else type(bank).__name__
            raise ValueError(
                f"kernels for layer {name!r} must be a non-empty tensor (n, k, k), got {shape}"
            )
        _check_kernel_size(name, weight, tuple(bank.shape[1:]), "kernel set's kernel size")
    with _rng(seed), torch.no_grad():
        for name, weight in targets.items():
            bank = kernels[name]
            idx = torch.randint(bank.shape[0], tuple(weight.shape[:2]))  # (out, in)
            weight.copy_(scale * bank[idx].to(device=weight.device, dtype=weight.dtype))
    return module


def xavier(
    module: nn.Module,
    layers: Iterable[str] | None = None,
    *,
    gain: float = 1.0,
    seed: int | None = None,
) -> nn.Module:
    """Xavier-normal (Glorot) initialisation of conv weights, the paper's baseline.

    Each weight ``(out, in, k, k)`` gets i.i.d. ``N(0, gain^2 * 2 / (fan_in + fan_out))`` with
    ``fan_in = in * k * k`` and ``fan_out = out * k * k``
    (:func:`torch.nn.init.xavier_normal_`).

    Args:
        module: Any module.
        layers: Names of its ``Conv2d`` layers; ``None`` for every ``Conv2d`` of ``module``.
        gain: Multiplies the standard deviation (> 0).
        seed: Seed of the draws (``None``: the global random stream).

    Returns:
        ``module``, changed in place.

    Raises:
        ValueError: If a named layer is missing or not a ``Conv2d``, or ``gain`` is not
            positive.
    """
    _check_scale(gain, "gain")
    if layers is None:
        layers = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    targets = [_conv_weight(module, name) for name in layers]
    with _rng(seed), torch.no_grad():
        for weight in targets:
            nn.init.xavier_normal_(weight, gain=gain)
    return module


def _check_scale(value: float, what: str = "scale") -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive finite number, got {value}")


def _conv_weight(module: nn.Module, name: str) -> Tensor:
    """The weight ``(out, in / groups, kH, kW)`` of the ``Conv2d`` named ``name`` in ``module``."""
    try:
        layer = module.get_submodule(name)
    except AttributeError:
        convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
        raise ValueError(
            f"{type(module).__name__} has no layer {name!r}; its Conv2d layers are {convs}"
        ) from None
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(
            f"layer {name!r} is a {type(layer).__name__}, not a Conv2d: only conv kernels "
            "can be initialised from a kernel prior or kernel set"
        )
    return layer.weight


def _check_kernel_size(name: str, weight: Tensor, kernel: tuple[int, ...], what: str) -> None:
    if len(kernel) != 2 or tuple(weight.shape[2:]) != kernel:
        raise ValueError(
            f"layer {name!r} has {_size(weight.shape[2:])} kernels (weight {tuple(weight.shape)}) "
            f"but its {what} is {_size(kernel)}"
        )


def _size(shape: Iterable[int]) -> str:
    return "x".join(map(str, shape))


@contextlib.contextmanager
def _rng(seed: int | None) -> Iterator[None]:
    """A private random stream seeded with ``seed`` for the block; the global one if ``None``."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield

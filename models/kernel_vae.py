"""The variational auto-encoder of convolutional kernels behind the deep weight prior.

Architectures follow Appendix D (Table 1) of *The Deep Weight Prior* (Atanov et al., 2019).
With the paper's sizes the parameter counts match the table exactly: 7x7 kernels
(``z_dim=2, hidden=32``): encoder 56,004, decoder 56,674; 5x5 kernels (``z_dim=4, hidden=64``):
encoder 260,040, decoder 304,194. All layers are separated by ELU. The table's caption also
mentions 2x2 max-pooling in the encoders, which the layer sizes leave no room for (unpadded
3x3 convolutions already reduce the kernel to 1x1), so there is none. 3x3 kernels are not in
the paper; their small architecture here is our own choice, built the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import kl_divergence

from pyro_dwp.distributions.code_prior import GaussianMixtureCodePrior
from pyro_dwp.distributions.deep_weight_prior import iwae_log_marginal
from pyro_dwp.io import read_torch_file, save_checkpoint

__all__ = [
    "DecoderMean",
    "DecoderScale",
    "KernelDecoder",
    "KernelEncoder",
    "KernelVAE",
    "check_kernel_shape",
    "load_kernel_vae",
    "save_kernel_vae",
]

# (z_dim, hidden) of the paper for each kernel size; 3x3 is our own choice.
_DEFAULTS = {3: (2, 32), 5: (4, 64), 7: (2, 32)}

DecoderScale = Literal["per-code", "shared"]
"""How the decoder's scale depends on the code: ``"per-code"`` (the paper's Appendix D: a head
of the decoder network, a function of ``z``) or ``"shared"`` (one learned scale per kernel pixel,
the same for every code)."""


DecoderMean = Literal["direct", "polar"]
"""How the decoder's mean is formed: ``"direct"`` (the paper's Appendix D: a 1x1 head) or
``"polar"`` (a norm head times the unit direction of that map: ``n(z) m(z) / ||m(z)||``, with
``n(z)`` at least the smallest training kernel's norm). A direct mean decodes some codes to
near-zero kernels, and with decoder noise as large as the kernels the density is then highest
near the zero kernel even when the source set has no small kernels (the ``zero_kernel_gap`` of
``pyro-dwp dwp-prior``); a polar mean keeps every mean's norm at or above the floor."""


def check_kernel_shape(w: Tensor, kernel_size: int, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``w`` is ``(..., kernel_size, kernel_size)``."""
    if w.dim() < 2 or tuple(w.shape[-2:]) != (kernel_size, kernel_size):
        got = "x".join(map(str, w.shape[-2:])) if w.dim() >= 2 else f"shape {tuple(w.shape)}"
        raise ValueError(
            f"{what} for {kernel_size}x{kernel_size} kernels applied to {got} kernels "
            f"(input of shape {tuple(w.shape)})"
        )


def _check_kernel_size(kernel_size: int) -> None:
    if kernel_size not in _DEFAULTS:
        raise ValueError(f"kernel_size must be one of {sorted(_DEFAULTS)}, got {kernel_size}")


class _ToPointConv2d(nn.Conv2d):
    """A convolution (stride 1, no padding: the only arguments are the sizes) whose ``k x k``
    input is one kernel-sized window: a ``1 x 1`` output, computed as the linear map it is,
    ``(N, C, k, k) -> (N, O, 1, 1)``.

    The same parameters (and ``state_dict``) as :class:`torch.nn.Conv2d`; one matrix product
    instead of a convolution over a single position, faster on a CPU for the thousands of
    kernels a deep weight prior encodes each step (``benchmarks/dwp_step_time.py`` times the
    networks beside copies with these layers as convolutions). Other inputs (another size,
    unbatched) take the convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)  # stride 1, no padding

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-2:] != self.weight.shape[-2:]:
            return super().forward(x)
        return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)[..., None, None]


class _FromPointConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution (stride 1, no padding) of a ``1 x 1`` input: ``(N, C, 1, 1) ->
    (N, O, k, k)``, computed as the linear map it is (each output pixel a weighted sum of the
    ``C`` inputs).

    The same parameters (and ``state_dict``) as :class:`torch.nn.ConvTranspose2d`; other inputs
    (another size, unbatched) take the transposed convolution. On a CPU the output comes in the
    channels-last memory layout (its shape is the usual ``(N, O, k, k)``), which the decoder's
    following convolutions keep: the 5x5 decoder on 4,096 codes, forward and backward, took 885
    ms against 1,139 with this output in the default layout (2 cores, 2026-12-02, six
    interleaved rounds), and 772 ms against 908 for a copy with convolutions in
    ``benchmarks/dwp_step_time.py``. Elsewhere the output keeps the default layout (on an H200
    the decoder takes about 3 ms either way: kernel launches, not arithmetic).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)  # stride 1, no padding

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if x.dim() != 4 or x.shape[-2:] != (1, 1):
            return super().forward(x)
        c, o, k, _ = self.weight.shape
        if x.device.type != "cpu":
            out = (x.flatten(1) @ self.weight.flatten(1)).unflatten(1, (o, k, k))
            return out if self.bias is None else out + self.bias[:, None, None]
        out = (x.flatten(1) @ self.weight.permute(0, 2, 3, 1).reshape(c, -1)).unflatten(
            1, (k, k, o)
        )
        return (out if self.bias is None else out + self.bias).permute(0, 3, 1, 2)


def _encoder_features(kernel_size: int, hidden: int) -> nn.Sequential:
    h, h2 = hidden, 2 * hidden
    if kernel_size == 7:  # 7 -> 5 -> 3 -> 1
        layers = [nn.Conv2d(1, h, 3), nn.Conv2d(h, h2, 3), _ToPointConv2d(h2, h2, 3)]
    elif kernel_size == 5:  # 5 -> 5 -> 5 -> 3 -> 1
        layers = [
            nn.Conv2d(1, h, 3, padding=1),
            nn.Conv2d(h, h, 3, padding=1),
            nn.Conv2d(h, h2, 3),
            _ToPointConv2d(h2, h2, 3),
        ]
    else:  # 3 -> 3 -> 1
        layers = [nn.Conv2d(1, h, 3, padding=1), _ToPointConv2d(h, h2, 3)]
    return nn.Sequential(*(m for layer in layers for m in (layer, nn.ELU())))


def _decoder_features(kernel_size: int, z_dim: int, hidden: int) -> tuple[nn.Sequential, int]:
    h, h2 = hidden, 2 * hidden
    if kernel_size == 7:  # 1 -> 3 -> 5 -> 7
        layers = [
            _FromPointConvTranspose2d(z_dim, h2, 3),
            nn.ConvTranspose2d(h2, h2, 3),
            nn.ConvTranspose2d(h2, h, 3),
        ]
    elif kernel_size == 5:  # 1 -> 1 -> 3 -> 5 -> 5
        layers = [
            _ToPointConv2d(z_dim, h2, 1),
            _FromPointConvTranspose2d(h2, h2, 3),
            nn.ConvTranspose2d(h2, h2, 3),
            nn.ConvTranspose2d(h2, h, 1),
        ]
    else:  # 1 -> 1 -> 3
        layers = [_ToPointConv2d(z_dim, h2, 1), _FromPointConvTranspose2d(h2, h, 3)]
    return nn.Sequential(*(m for layer in layers for m in (layer, nn.ELU()))), h


class KernelEncoder(nn.Module):
    """Inference network of :math:`q(z \\mid w)`: kernels to a diagonal Gaussian over ``z``.

    Convolutions reduce a kernel to a ``2 * hidden``-channel 1x1 map, then two linear heads give
    the mean and (through softplus) the scale. Kernels are divided by :attr:`input_scale` first
    (1 unless the VAE was rescaled, :meth:`KernelVAE.rescale_`).

    Args:
        kernel_size: Side ``k`` of the square kernels (3, 5 or 7).
        z_dim: Latent dimension.
        hidden: Width ``h`` of the network (channels ``h`` and ``2h``).
    """

    def __init__(self, kernel_size: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        _check_kernel_size(kernel_size)
        self.kernel_size, self.z_dim = kernel_size, z_dim
        self.features = _encoder_features(kernel_size, hidden)
        self.loc = nn.Linear(2 * hidden, z_dim)
        self.scale = nn.Linear(2 * hidden, z_dim)
        self.input_scale = 1.0

    def forward(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of :math:`q(z \\mid w)`: ``(..., k, k) -> 2 x (..., z_dim)``."""
        check_kernel_shape(w, self.kernel_size, type(self).__name__)
        k = self.kernel_size
        if self.input_scale != 1.0:  # a rescaled VAE (no work on the hot path otherwise)
            w = w / self.input_scale
        h = self.features(w.reshape(-1, 1, k, k)).flatten(1)
        shape = w.shape[:-2] + (self.z_dim,)
        return self.loc(h).reshape(shape), F.softplus(self.scale(h)).reshape(shape)


def _check_choice(name: str, value: str, choices: Any) -> None:
    if value not in get_args(choices):
        raise ValueError(f"{name} must be one of {list(get_args(choices))}, got {value!r}")


class KernelDecoder(nn.Module):
    """Reconstruction network of :math:`p(w \\mid z)`: a diagonal Gaussian over kernel pixels.

    Transposed convolutions grow the latent code (a ``z_dim``-channel 1x1 map) to ``k x k``,
    then a 1x1 head gives the per-pixel mean. The per-pixel scale is, through softplus, either a
    second 1x1 head (``decoder_scale="per-code"``, the paper's) or a learned ``(k, k)`` parameter
    shared by all codes (``"shared"``). With a per-code scale the density
    :math:`p(w) = \\int p(w \\mid z) p(z) dz` is highest where the decoder is most certain, and
    :math:`-\\sum \\log \\sigma(z)` rewards moving every kernel to those few codes; with a shared
    scale only :math:`\\log p(z)` and the distance to the decoder's manifold of means remain
    (``benchmarks/results/dwp_mnist_ablation.md``, section 10).

    With ``decoder_mean="polar"`` the mean is :math:`n(z)\\, m(z) / \\lVert m(z) \\rVert`: the
    1x1 head's map ``m`` gives the direction and a norm head its length, ``n(z) = floor +
    softplus(.)`` of a linear map of the spatially averaged features, with ``floor`` the smallest
    norm of the training kernels (:meth:`init_from_kernels`): no code decodes to a kernel
    smaller than any source kernel, so the density has no mode at the zero kernel (the
    ``zero_kernel_gap`` of ``pyro-dwp dwp-prior``'s report; ablation section 11). This changes
    the decoder's architecture only; :math:`p(z)` and the Gaussian :math:`p(w \\mid z)` stay the
    paper's. Mean and scale are multiplied by :attr:`output_scale` last (1 unless the VAE was
    rescaled, :meth:`KernelVAE.rescale_`).

    Args:
        kernel_size: Side ``k`` of the square kernels (3, 5 or 7).
        z_dim: Latent dimension.
        hidden: Width ``h`` of the network (channels ``h`` and ``2h``).
        decoder_scale: ``"per-code"`` or ``"shared"`` (see :data:`DecoderScale`).
        decoder_mean: ``"direct"`` or ``"polar"`` (see :data:`DecoderMean`).
    """

    def __init__(
        self,
        kernel_size: int,
        z_dim: int,
        hidden: int,
        decoder_scale: DecoderScale = "per-code",
        decoder_mean: DecoderMean = "direct",
    ) -> None:
        super().__init__()
        _check_kernel_size(kernel_size)
        _check_choice("decoder_scale", decoder_scale, DecoderScale)
        _check_choice("decoder_mean", decoder_mean, DecoderMean)
        self.kernel_size, self.z_dim = kernel_size, z_dim
        self.decoder_scale, self.decoder_mean = decoder_scale, decoder_mean
        self.features, channels = _decoder_features(kernel_size, z_dim, hidden)
        # 1x1 heads: transposed in the 7x7 table, plain in the 5x5 one (the same maps).
        head = nn.ConvTranspose2d if kernel_size == 7 else nn.Conv2d
        self.loc = head(channels, 1, 1)
        self.norm: nn.Linear | None = None
        self.norm_floor: Tensor
        if decoder_mean == "polar":
            self.norm = nn.Linear(channels, 1)
            self.register_buffer("norm_floor", torch.zeros(()))
        self.scale: nn.Module | nn.Parameter
        if decoder_scale == "per-code":
            self.scale = head(channels, 1, 1)
        else:  # softplus(0.5413) = 1, the per-code head's typical scale at initialisation
            self.scale = nn.Parameter(torch.full((kernel_size, kernel_size), 0.5413))
        self.output_scale = 1.0

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of :math:`p(w \\mid z)`: ``(..., z_dim) -> 2 x (..., k, k)``."""
        if z.dim() < 1 or z.shape[-1] != self.z_dim:
            raise ValueError(
                f"{type(self).__name__} expects latent codes (..., {self.z_dim}), "
                f"got shape {tuple(z.shape)}"
            )
        h = self.features(z.reshape(-1, self.z_dim, 1, 1))
        shape = z.shape[:-1] + (self.kernel_size, self.kernel_size)
        loc = self.loc(h).reshape(shape)
        if self.norm is not None:
            length = self.norm_floor + F.softplus(self.norm(h.mean((-2, -1))))
            length = length.reshape(z.shape[:-1] + (1, 1))
            loc = length * loc / loc.flatten(-2).norm(dim=-1)[..., None, None].clamp_min(1e-12)
        if isinstance(self.scale, nn.Parameter):
            scale = F.softplus(self.scale).expand(shape)
        else:
            scale = F.softplus(self.scale(h)).reshape(shape)
        if self.output_scale != 1.0:  # a rescaled VAE
            return loc * self.output_scale, scale * self.output_scale
        return loc, scale

    @torch.no_grad()
    def init_from_kernels(self, kernels: Tensor) -> None:
        """Start the decoder at the statistics of the training ``kernels`` ``(N, k, k)``: a
        shared scale at their per-pixel standard deviation (the scale of a decoder that explains
        nothing yet; kernel sets differ in scale by 100x, so a fixed start would cost thousands
        of Adam steps); a polar mean's floor at their smallest L2 norm and its norm at their
        mean norm. No-op for a per-code scale and a direct mean.
        """
        check_kernel_shape(kernels, self.kernel_size, type(self).__name__)
        flat = kernels.reshape(-1, self.kernel_size, self.kernel_size)
        if isinstance(self.scale, nn.Parameter):
            std = flat.std(0, correction=0).clamp_min(1e-6).to(self.scale)
            self.scale.copy_(_softplus_inverse(std))
        if self.norm is not None:
            norms = flat.flatten(1).norm(dim=1).to(self.norm.bias)
            self.norm_floor.copy_(norms.min())
            self.norm.weight.zero_()
            self.norm.bias.copy_(_softplus_inverse((norms.mean() - norms.min()).clamp_min(1e-6)))


def _softplus_inverse(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def _standard_normal(like: Tensor) -> dist.Independent:
    return dist.Normal(torch.zeros_like(like), torch.ones_like(like)).to_event(1)


class KernelVAE(nn.Module):
    """A VAE over ``k x k`` convolutional kernels with latent prior :math:`\\mathcal{N}(0, I)`.

    Its decoder defines the deep weight prior :math:`p(w) = \\int p(w \\mid z) p(z) dz`; its
    encoder initialises the reverse model :math:`r(z \\mid w)` of the auxiliary bound.

    After training, :attr:`code_prior` may replace :math:`\\mathcal{N}(0, I)` by a mixture
    fitted to the training kernels' codes (:func:`pyro_dwp.infer.code_prior.fit_code_prior`,
    ``pyro-dwp dwp-prior --code-prior-components``): :meth:`elbo`, :meth:`iwae_bound`,
    :meth:`sample_codes`, the saved file and :meth:`DeepWeightPrior.from_vae
    <pyro_dwp.distributions.DeepWeightPrior.from_vae>` then use it.

    Args:
        kernel_size: Side ``k`` of the square kernels (3, 5 or 7).
        z_dim: Latent dimension.
        hidden: Network width (see :class:`KernelEncoder`, :class:`KernelDecoder`).
        decoder_scale: ``"per-code"`` (the paper's) or ``"shared"`` (see :class:`KernelDecoder`).
        decoder_mean: ``"direct"`` (the paper's) or ``"polar"`` (see :class:`KernelDecoder`).

    Example::

        vae = KernelVAE.for_kernel_size(7)  # z_dim 2, hidden 32 (Appendix D)
        history = pyro_dwp.infer.fit_kernel_vae(vae, train, valid, epochs=300, seed=0)
    """

    def __init__(
        self,
        kernel_size: int,
        z_dim: int,
        hidden: int,
        decoder_scale: DecoderScale = "per-code",
        decoder_mean: DecoderMean = "direct",
    ) -> None:
        super().__init__()
        _check_kernel_size(kernel_size)
        if z_dim < 1 or hidden < 1:
            raise ValueError(f"z_dim and hidden must be >= 1, got {z_dim}, {hidden}")
        self.kernel_size, self.z_dim, self.hidden = kernel_size, z_dim, hidden
        self.encoder = KernelEncoder(kernel_size, z_dim, hidden)
        self.decoder = KernelDecoder(kernel_size, z_dim, hidden, decoder_scale, decoder_mean)
        self.code_prior: GaussianMixtureCodePrior | None = None

    def set_code_prior(self, code_prior: GaussianMixtureCodePrior | None) -> None:
        """Use ``code_prior`` as :math:`p(z)` (``None``: :math:`\\mathcal{N}(0, I)`), on the
        VAE's device.

        Raises:
            ValueError: If its dimension is not :attr:`z_dim`.
        """
        if code_prior is not None and code_prior.z_dim != self.z_dim:
            raise ValueError(
                f"a code prior of dimension {code_prior.z_dim} for a VAE of z_dim {self.z_dim}"
            )
        device = next(self.parameters()).device
        self.code_prior = None if code_prior is None else code_prior.to(device)

    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes from :math:`p(z)`, ``(n, z_dim)``, on the VAE's device (drawn on the
        CPU with ``generator``)."""
        if self.code_prior is not None:
            return self.code_prior.sample((n,), generator)
        device = next(self.parameters()).device
        return torch.randn(n, self.z_dim, generator=generator).to(device)

    def _log_p_z(self) -> Callable[[Tensor], Tensor] | None:
        """``log p(z)`` of :attr:`code_prior`, or ``None`` for :math:`\\mathcal{N}(0, I)`."""
        return None if self.code_prior is None else self.code_prior.log_prob

    @property
    def kernel_scale(self) -> float:
        """The factor :meth:`rescale_` applied to the kernels the VAE was trained on (1: none)."""
        return self.decoder.output_scale

    @torch.no_grad()
    def rescale_(self, factor: float) -> KernelVAE:
        """Make this VAE the law of ``factor * w``, ``w`` from the VAE as it was; in place.

        The decoder's mean and scale are multiplied by ``factor`` and the encoder sees kernels
        divided by it, so that :math:`p'(c\\,w \\mid z) = p(w \\mid z) / c^{k^2}` and
        :math:`q'(z \\mid c\\,w) = q(z \\mid w)`: the ELBO and IWAE bounds of ``c * w`` are
        those of ``w`` minus :math:`k^2 \\log c`, exactly. Rescaling by ``c`` puts a prior learned
        on kernels of one RMS (e.g. the He scale :math:`\\sqrt{2 / \\text{fan-in}}` of the source
        kernels' target layer) onto a layer of another fan-in
        (:func:`pyro_dwp.pretrained.pretrained`). Factors compose: :attr:`kernel_scale` is their
        product. Returns ``self``.

        Raises:
            ValueError: If ``factor`` is not a finite positive number.
        """
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(
                f"a kernel VAE's rescaling factor must be finite and > 0, got {factor!r}"
            )
        self.encoder.input_scale *= factor
        self.decoder.output_scale *= factor
        return self

    @property
    def decoder_scale(self) -> DecoderScale:
        """``"per-code"`` or ``"shared"``: the decoder's (see :class:`KernelDecoder`)."""
        return self.decoder.decoder_scale

    @property
    def decoder_mean(self) -> DecoderMean:
        """``"direct"`` or ``"polar"``: the decoder's (see :class:`KernelDecoder`)."""
        return self.decoder.decoder_mean

    @classmethod
    def for_kernel_size(
        cls,
        kernel_size: int,
        z_dim: int | None = None,
        decoder_scale: DecoderScale = "per-code",
        decoder_mean: DecoderMean = "direct",
    ) -> KernelVAE:
        """The paper's VAE for ``k x k`` kernels: 7 -> (z_dim 2, hidden 32), 5 -> (4, 64).

        3x3 (not in the paper) gets z_dim 2, hidden 32. ``z_dim`` overrides the latent
        dimension (the width stays the paper's); the decoder options as :class:`KernelDecoder`.
        """
        _check_kernel_size(kernel_size)
        default_z_dim, hidden = _DEFAULTS[kernel_size]
        z_dim = default_z_dim if z_dim is None else z_dim
        return cls(kernel_size, z_dim, hidden, decoder_scale, decoder_mean)

    def encode(self, w: Tensor) -> dist.Independent:
        """:math:`q(z \\mid w)`: kernels ``(..., k, k)`` to a Normal with batch shape ``(...)``
        and event shape ``(z_dim,)``."""
        return dist.Normal(*self.encoder(w)).to_event(1)

    def decode(self, z: Tensor) -> dist.Independent:
        """:math:`p(w \\mid z)`: codes ``(..., z_dim)`` to a Normal with batch shape ``(...)``
        and event shape ``(k, k)``."""
        return dist.Normal(*self.decoder(z)).to_event(2)

    def elbo(self, w: Tensor, num_samples: int = 1) -> Tensor:
        """Evidence lower bound per kernel, ``(..., k, k) -> (...)``.

        :math:`\\mathbb{E}_q \\log p(w \\mid z) - \\mathrm{KL}(q(z \\mid w) \\| p(z))` with the
        reconstruction term averaged over ``num_samples`` reparameterised samples and the
        Gaussian KL in closed form (with a :attr:`code_prior`, the KL's Monte Carlo estimate on
        the same samples).
        """
        q = self.encode(w)
        z = q.rsample((num_samples,))
        reconstruction = self.decode(z).log_prob(w).mean(0)
        if self.code_prior is not None:
            return reconstruction + (self.code_prior.log_prob(z) - q.log_prob(z)).mean(0)
        return reconstruction - kl_divergence(q, _standard_normal(q.mean))

    def iwae_bound(self, w: Tensor, k_samples: int, *, chunk_size: int = 1024) -> Tensor:
        """Importance-weighted estimate of ``log p(w)`` per kernel, ``(..., k, k) -> (...)``.

        See :func:`~pyro_dwp.distributions.deep_weight_prior.iwae_log_marginal` (Burda et al.,
        2016); ``k_samples`` is ``K``.
        """
        iwae, _ = iwae_log_marginal(
            self.encoder,
            self.decoder,
            w,
            k_samples,
            chunk_size=chunk_size,
            log_p_z=self._log_p_z(),
        )
        return iwae


_FILE_FORMAT = "pyro_dwp.kernel_vae"
_FILE_VERSION = 1
# Keys of a kernel VAE file that describe the network; everything else is the caller's metadata.
_RESERVED = (
    "format",
    "version",
    "state_dict",
    "kernel_size",
    "z_dim",
    "hidden",
    "decoder_scale",
    "decoder_mean",
    "code_prior_components",
    "kernel_scale",
)


def save_kernel_vae(path: str | os.PathLike[str], vae: KernelVAE, **meta: Any) -> None:
    """Write a trained :class:`KernelVAE` and metadata to ``path`` (atomically).

    The file is a ``torch.save`` dict ``{"format": "pyro_dwp.kernel_vae", "version": 1,
    "state_dict", "kernel_size", "z_dim", "hidden", "decoder_scale", "decoder_mean",
    "code_prior_components", "kernel_scale", **meta}`` (``code_prior_components``: the code
    prior's number of components, or ``None`` for the standard normal; its buffers are in the
    state dict; ``kernel_scale``: :attr:`KernelVAE.kernel_scale`, 1 in files written before it)
    (tensors on the CPU), read back by :func:`load_kernel_vae` (files written before the decoder
    options existed read as the paper's: ``"per-code"``, ``"direct"``). ``meta`` should hold
    plain Python values and tensors only (e.g. ``layer``, ``provenance``, ``history``), so that
    it loads with ``weights_only=True``.

    Raises:
        ValueError: If a ``meta`` key is one of the reserved keys above.
    """
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved in a kernel VAE file")
    state = {k: v.detach().cpu() for k, v in vae.state_dict().items()}
    save_checkpoint(
        path,
        {
            "format": _FILE_FORMAT,
            "version": _FILE_VERSION,
            "state_dict": state,
            "kernel_size": vae.kernel_size,
            "z_dim": vae.z_dim,
            "hidden": vae.hidden,
            "decoder_scale": vae.decoder_scale,
            "decoder_mean": vae.decoder_mean,
            "code_prior_components": (
                None if vae.code_prior is None else vae.code_prior.components
            ),
            "kernel_scale": vae.kernel_scale,
            **meta,
        },
    )


def load_kernel_vae(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[KernelVAE, dict[str, Any]]:
    """Read a :class:`KernelVAE` written by :func:`save_kernel_vae` (``pyro-dwp dwp-prior``).

    Args:
        path: The file, e.g. ``runs/dwp_prior/vae_conv1.pt``.
        map_location: Device of the returned VAE.

    Returns:
        The VAE (in eval mode) and its metadata: ``kernel_size``, ``z_dim``, ``hidden``,
        ``decoder_scale`` (when the file records it) and the
        ``meta`` passed to :func:`save_kernel_vae`.

    Raises:
        FileNotFoundError: If there is no file at ``path`` (the message says how to make one).
        ValueError: If the file is truncated, corrupt or not a kernel VAE file.
    """
    path = Path(path)
    state = read_torch_file(
        path,
        what="kernel VAE file",
        remedy="train the prior with "
        f"`pyro-dwp dwp-prior --kernels KERNEL_DIR --out {path.parent}`",
    )
    if not isinstance(state, dict) or state.get("format") != _FILE_FORMAT:
        raise ValueError(f"{path} is not a kernel VAE file written by save_kernel_vae")
    if state.get("version") != _FILE_VERSION:
        raise ValueError(
            f"kernel VAE file {path} has version {state.get('version')!r}; this code reads "
            f"version {_FILE_VERSION}"
        )
    try:
        vae = KernelVAE(
            state["kernel_size"],
            state["z_dim"],
            state["hidden"],
            state.get("decoder_scale", "per-code"),
            state.get("decoder_mean", "direct"),
        )
        components = state.get("code_prior_components")
        if components is not None:
            vae.set_code_prior(GaussianMixtureCodePrior.empty(components, vae.z_dim))
        vae.load_state_dict(state["state_dict"])
        vae.rescale_(state.get("kernel_scale", 1.0))
        if vae.code_prior is not None:
            vae.code_prior.check()
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"kernel VAE file {path} is inconsistent: {type(e).__name__}: {e}") from e
    meta = {k: v for k, v in state.items() if k not in ("format", "version", "state_dict")}
    return vae.to(map_location).eval(), meta

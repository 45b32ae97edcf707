"""A Gaussian-mixture prior over a kernel VAE's codes, in place of :math:`\\mathcal{N}(0, I)`.

A deep weight prior :math:`p(w) = \\int p(w \\mid z) p(z) dz` with :math:`p(z) = \\mathcal{N}(0,
I)` is densest at the kernels decoded near :math:`z = 0`, and with few labels a filter bank under
it drifts there (all filters one direction; ``benchmarks/results/dwp_mnist_ablation.md``,
sections 10-12). The codes of the source kernels do not fill :math:`\\mathcal{N}(0, I)`
(the VAE's "holes"); a mixture fitted to them (a two-stage VAE's second stage) spreads the
prior's mass over the source kernels' families instead. The mixture is fitted by
:func:`pyro_dwp.infer.code_prior.fit_code_prior`.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor, nn

__all__ = ["GaussianMixtureCodePrior"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class GaussianMixtureCodePrior(nn.Module):
    r""":math:`p(z) = \sum_c \pi_c \, \mathcal{N}(z \mid m_c, \mathrm{diag}(s_c^2))`.

    The parameters are buffers (a prior is fixed during inference; ``.to(device)`` moves them,
    ``state_dict`` saves them).

    Args:
        logits: Unnormalised log mixture weights ``(C,)``.
        loc: Component means ``(C, z_dim)``.
        scale: Component standard deviations ``(C, z_dim)``, positive.

    Raises:
        ValueError: On mismatched shapes, or non-finite or non-positive values.
    """

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        self._check(logits, loc, scale)
        self.register_buffer("logits", logits.detach().clone())
        self.register_buffer("loc", loc.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def check(self) -> None:
        """Raise ``ValueError`` unless the buffers are a valid mixture (e.g. after
        ``load_state_dict`` of a file that may be corrupt)."""
        self._check(self.logits, self.loc, self.scale)

    @staticmethod
    def _check(logits: Tensor, loc: Tensor, scale: Tensor) -> None:
        if logits.dim() != 1 or loc.dim() != 2 or loc.shape != scale.shape:
            raise ValueError(
                "a Gaussian-mixture code prior needs logits (C,), loc (C, z_dim) and scale "
                f"(C, z_dim); got {tuple(logits.shape)}, {tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        if loc.shape[0] != logits.shape[0] or loc.shape[0] < 1:
            raise ValueError(
                f"logits have {logits.shape[0]} components and loc {loc.shape[0]}: they must "
                "agree, and be at least one"
            )
        finite = all(bool(t.isfinite().all()) for t in (logits, loc, scale))
        if not finite or not bool((scale > 0).all()):
            raise ValueError("code prior parameters must be finite, with every scale > 0")

    @classmethod
    def empty(cls, components: int, z_dim: int) -> GaussianMixtureCodePrior:
        """A placeholder of the right shapes (equal weights, standard components), to
        ``load_state_dict`` into."""
        return cls(
            torch.zeros(components), torch.zeros(components, z_dim), torch.ones(components, z_dim)
        )

    @property
    def components(self) -> int:
        """``C``."""
        return self.loc.shape[0]

    @property
    def z_dim(self) -> int:
        """The code's dimension."""
        return self.loc.shape[1]

    def distribution(self, batch_shape: tuple[int, ...] = ()) -> dist.MixtureSameFamily:
        """:math:`p(z)` with batch shape ``batch_shape`` and event shape ``(z_dim,)``."""
        mixture = dist.MixtureSameFamily(
            dist.Categorical(logits=self.logits),
            dist.Normal(self.loc, self.scale).to_event(1),
        )
        return mixture.expand(torch.Size(batch_shape))

    def log_prob(self, z: Tensor) -> Tensor:
        """:math:`\\log p(z)`: codes ``(..., z_dim)`` to ``(...)``."""
        if z.shape[-1:] != self.loc.shape[-1:]:
            raise ValueError(
                f"codes of dimension {z.shape[-1] if z.dim() else None} given to a code prior of "
                f"dimension {self.z_dim}"
            )
        diff = (z.unsqueeze(-2) - self.loc) / self.scale  # (..., C, z_dim)
        per_component = -0.5 * diff.pow(2).sum(-1) - self.scale.log().sum(-1)  # (..., C)
        log_weights = torch.log_softmax(self.logits, -1)
        return torch.logsumexp(per_component + log_weights, -1) - self.z_dim * _HALF_LOG_2PI

    def sample(
        self, sample_shape: tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Codes ``sample_shape + (z_dim,)`` on the buffers' device, drawn on the CPU (with
        ``generator`` if given: a component per code, then its Gaussian noise)."""
        shape = torch.Size(sample_shape)
        n = shape.numel()
        with torch.no_grad():
            probs = self.logits.softmax(-1).cpu()
            picks = torch.multinomial(probs, n, replacement=True, generator=generator)
            noise = torch.randn(n, self.z_dim, generator=generator)
            codes = self.loc.cpu()[picks] + self.scale.cpu()[picks] * noise
        return codes.reshape(shape + (self.z_dim,)).to(self.loc.device)

"""What the implicit priors over ``k x k`` convolution kernels share.

:math:`p(w) = \\int p(w \\mid z) \\, p(z) \\, dz` with a kernel decoder's diagonal Gaussian
:math:`p(w \\mid z)`: the deep weight prior draws :math:`z \\sim \\mathcal{N}(0, I)`, the
Markov-chain prior takes the last state :math:`z_T` of a chain started there; the deep weight
prior is the chain with no transitions (``T = 0``, Appendix A of Atanov et al., 2019).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

__all__ = ["KernelPrior", "chunked_iwae", "frozen"]


def frozen(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with ``requires_grad=False``: a prior is fixed during
    variational inference (Section 3.2)."""
    return copy.deepcopy(module).requires_grad_(False)


def chunked_iwae(
    log_weights: Callable[[int], Tensor],
    batch_shape: torch.Size,
    num_samples: int,
    chunk_size: int,
    *,
    like: Tensor,
) -> tuple[Tensor, Tensor]:
    r"""The IWAE estimate :math:`\log \frac{1}{K} \sum_k e^{\ell_k}` and the mean log-weight
    :math:`\frac{1}{K} \sum_k \ell_k` of ``K = num_samples`` importance samples, drawn in
    chunks of at most ``chunk_size`` (a running log-sum-exp, so memory stays bounded).

    Args:
        log_weights: ``n -> (n, *batch_shape)``, the log-weights of ``n`` new samples.
        batch_shape: Shape of the estimates (one per kernel).
        num_samples: ``K`` (>= 1).
        chunk_size: Samples drawn at once (>= 1).
        like: A tensor of the estimates' dtype and device.

    Returns:
        ``(iwae, mean_log_weight)``, each ``batch_shape``.
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_samples and chunk_size must be >= 1, got {num_samples}, {chunk_size}"
        )
    log_sum_exp, total = None, torch.zeros(batch_shape, dtype=like.dtype, device=like.device)
    for start in range(0, num_samples, chunk_size):
        log_weight = log_weights(min(chunk_size, num_samples - start))
        chunk = log_weight.logsumexp(0)
        log_sum_exp = chunk if log_sum_exp is None else torch.logaddexp(log_sum_exp, chunk)
        total = total + log_weight.sum(0)
    return log_sum_exp - math.log(num_samples), total / num_samples


class KernelPrior(TorchDistribution, nn.Module):
    r"""Base of :class:`~pyro_dwp.distributions.DeepWeightPrior` and
    :class:`~pyro_dwp.distributions.MarkovChainPrior`: an implicit prior over ``k x k`` kernels
    whose decoder :math:`p(w \mid z)` reads a code started at :math:`z_0 \sim \mathcal{N}(0, I)`.

    It holds the frozen copy of the decoder and the latent prior's buffers (an
    :class:`torch.nn.Module`, as GPyTorch priors: ``.to(device)`` moves them, ``state_dict``
    saves the networks), draws :meth:`sample` and checks values (their last two dimensions
    ``(k, k)``, their device the prior's; the messages name the subclass). Event shape
    ``(k, k)``, batch shape ``()``. A subclass adds the path from :math:`z_0` to the decoder's
    code (:meth:`_code`) and the :meth:`log_prob` estimate.

    Args:
        decoder: ``(..., z_dim) -> (loc, scale)``, each ``(..., k, k)``, with integer
            attributes ``kernel_size`` and ``z_dim``.
        num_samples: Importance samples ``K`` per kernel in ``log_prob``.
        chunk_size: Importance samples evaluated at once in ``log_prob``.
        sample_mean: If true, :meth:`sample` returns the decoder mean instead of a draw from
            :math:`p(w \mid z)`: noise-free kernels, e.g. for plots or initialisation.
        validate_args: Whether to validate values passed to ``log_prob``.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = False

    def __init__(
        self,
        decoder: nn.Module,
        *,
        num_samples: int,
        chunk_size: int,
        sample_mean: bool,
        validate_args: bool | None,
    ) -> None:
        kernel_size, z_dim = int(decoder.kernel_size), int(decoder.z_dim)
        if num_samples < 1 or chunk_size < 1:
            raise ValueError(
                f"num_samples and chunk_size must be >= 1, got {num_samples}, {chunk_size}"
            )
        # Module first. Distribution.__init__ ends with super().__init__(), which reaches
        # Module.__init__ again through the MRO: harmless, as nothing is registered yet.
        nn.Module.__init__(self)
        TorchDistribution.__init__(
            self, torch.Size(), torch.Size((kernel_size, kernel_size)), validate_args=validate_args
        )
        self.kernel_size, self.z_dim = kernel_size, z_dim
        self.num_samples, self.chunk_size, self.sample_mean = num_samples, chunk_size, sample_mean
        self.decoder = frozen(decoder)
        # The latent prior N(0, I) as buffers, so that .to() moves it with the networks.
        ref = next(self.decoder.parameters(), torch.empty(0))
        self.register_buffer("latent_loc", ref.new_zeros(z_dim), persistent=False)
        self.register_buffer("latent_scale", ref.new_ones(z_dim), persistent=False)

    def latent(self, batch_shape: tuple[int, ...] = ()) -> dist.Independent:
        """:math:`p(z_0) = \\mathcal{N}(0, I)`: batch shape ``batch_shape``, event ``(z_dim,)``."""
        base = dist.Normal(self.latent_loc, self.latent_scale)
        return base.expand(torch.Size(batch_shape) + (self.z_dim,)).to_event(1)

    def conditional(self, z: Tensor) -> dist.Independent:
        """:math:`p(w \\mid z)`: codes ``(..., z_dim)`` to batch ``(...)``, event ``(k, k)``."""
        self._check_device(z)
        return dist.Normal(*self.decoder(z)).to_event(2)

    def _code(self, z0: Tensor) -> Tensor:
        """The decoder's code drawn from a start ``z0`` ``(..., z_dim)``: ``z0`` itself here."""
        return z0

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """Draw ``z_0 ~ p(z_0)``, the code from it (:meth:`_code`), then ``w ~ p(w | code)``
        (or its mean): ``sample_shape + batch_shape + (k, k)``."""
        with torch.no_grad():
            z = self._code(self.latent(torch.Size(sample_shape) + self.batch_shape).sample())
            p_w = self.conditional(z)
            return p_w.mean if self.sample_mean else p_w.sample()

    def _check_value(self, value: Tensor) -> None:
        """The checks at the top of ``log_prob``: :meth:`_check_kernels`, then the support if
        ``validate_args``."""
        self._check_kernels(value)
        if self._validate_args:
            self._validate_sample(value)

    def _check_kernels(self, value: Tensor) -> None:
        """Raise ``ValueError`` unless ``value`` is ``(..., k, k)``; then :meth:`_check_device`."""
        k = self.kernel_size
        if value.dim() < 2 or tuple(value.shape[-2:]) != (k, k):
            got = "x".join(map(str, value.shape[-2:])) if value.dim() >= 2 else "non-matrix"
            raise ValueError(
                f"{type(self).__name__} for {k}x{k} kernels applied to {got} kernels "
                f"(value of shape {tuple(value.shape)})"
            )
        self._check_device(value)

    def _check_device(self, value: Tensor) -> None:
        """Raise ``RuntimeError`` if ``value`` is not on the prior's device."""
        device = self.latent_loc.device
        if value.device != device:
            raise RuntimeError(
                f"{type(self).__name__} is on {device} but its input is on {value.device}: "
                f"move the prior with .to({str(value.device)!r}) (or the value to {device})"
            )

"""Input checks shared by the implicit priors over ``k x k`` convolution kernels."""

from __future__ import annotations

from torch import Tensor

__all__ = ["KernelChecks"]


class KernelChecks:
    """Mixin of :class:`~pyro_dwp.distributions.DeepWeightPrior` and
    :class:`~pyro_dwp.distributions.MarkovChainPrior`: the value's last two dimensions must be the
    prior's ``kernel_size`` and its device that of the prior's buffers (``latent_loc``); the
    messages name the prior's class."""

    kernel_size: int
    latent_loc: Tensor

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

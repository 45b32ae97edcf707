"""The improper log-uniform prior and its approximate KL divergence from a Gaussian."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.util import broadcast_shape
from torch import Tensor
from torch.distributions import Normal, constraints, register_kl

__all__ = ["LogUniform"]

# Constants of the sigmoid approximation of Molchanov et al. (2017), eq. 14.
_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695


class LogUniform(TorchDistribution):
    r"""The improper log-uniform ("scale-invariant") prior over real weights.

    .. math::

        p(w) \propto \frac{1}{|w|}, \qquad w \in \mathbb{R} \setminus \{0\}

    It has no parameters and integrates to infinity, so ``log_prob(w) = -log|w|`` is defined
    only up to an (infinite) additive constant, and :meth:`sample` is undefined. It is the prior
    of sparse variational dropout (Molchanov et al., 2017) and the log-uniform baseline of the
    deep weight prior paper (Atanov et al., 2019).

    Because the density is improper, a Monte Carlo ELBO (``pyro.infer.Trace_ELBO``) with this
    prior is meaningless. Use ``pyro.infer.TraceMeanField_ELBO``: it picks up the approximate
    ``kl_divergence(Normal, LogUniform)`` registered by this module (Molchanov et al., 2017;
    also through ``Independent``) for a mean-field Normal guide. Pyro's ``init_to_feasible``
    and ``init_to_sample`` call :meth:`sample` and therefore fail on this prior: initialise
    guides with ``init_to_value`` or another strategy that does not sample the prior.

    Args:
        batch_shape: Batch shape of the (parameter-free) distribution.
        validate_args: Whether to validate samples passed to :meth:`log_prob`.
    """

    arg_constraints = {}
    support = constraints.real
    has_rsample = False

    def __init__(
        self,
        batch_shape: tuple[int, ...] = (),
        *,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(torch.Size(batch_shape), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> LogUniform:
        new = self._get_checked_instance(LogUniform, _instance)
        super(LogUniform, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        """Unnormalised log-density ``-log|value|``, shape ``sample_shape + batch_shape``.

        Improper: the normalising constant is infinite, so only differences of this log-density
        are meaningful. It is ``+inf`` at ``value == 0``.
        """
        if self._validate_args:
            self._validate_sample(value)
        shape = broadcast_shape(value.shape, self.batch_shape)
        return -value.abs().log().expand(shape)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        raise NotImplementedError(
            "LogUniform is an improper distribution and cannot be sampled; use it as a prior "
            "with pyro.infer.TraceMeanField_ELBO and a Normal guide"
        )


@register_kl(Normal, LogUniform)
def _kl_normal_log_uniform(p: Normal, q: LogUniform) -> Tensor:
    r"""Approximate :math:`\mathrm{KL}(\mathcal{N}(\mu, \sigma^2) \,\|\, \mathrm{LogUniform})`.

    The KL divergence is infinite (the prior is improper); up to its infinite constant it
    depends only on :math:`\alpha = \sigma^2 / \mu^2`, and Molchanov et al. (2017, *Variational
    Dropout Sparsifies Deep Neural Networks*) fit

    .. math::

        \mathrm{KL} \approx -\left(k_1 \, \mathrm{sigmoid}(k_2 + k_3 \log\alpha)
        - \tfrac{1}{2} \log(1 + \alpha^{-1}) - k_1\right),

    with :math:`k_1 = 0.63576, k_2 = 1.87320, k_3 = 1.48695`. This is an approximation (a curve
    fitted to Monte Carlo estimates), shifted so that it tends to 0 as :math:`\alpha \to \infty`.
    :math:`\log\alpha = 2\log\sigma - 2\log(|\mu| + \epsilon)` with :math:`\epsilon` the smallest
    positive normal float, so :math:`\mu = 0` gives a finite result (about 0).

    Returns:
        Elementwise KL of shape ``broadcast(p.batch_shape, q.batch_shape)``.
    """
    tiny = torch.finfo(p.loc.dtype).tiny
    log_alpha = 2 * p.scale.log() - 2 * (p.loc.abs() + tiny).log()
    # 0.5 * log1p(1 / alpha) == 0.5 * softplus(-log alpha), stable for any log alpha.
    kl = (
        _K1
        - _K1 * torch.sigmoid(_K2 + _K3 * log_alpha)
        + 0.5 * torch.nn.functional.softplus(-log_alpha)
    )
    return kl.expand(broadcast_shape(p.batch_shape, q.batch_shape))

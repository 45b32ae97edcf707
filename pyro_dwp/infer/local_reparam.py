"""The local reparameterisation trick (Kingma et al., 2015) as a Pyro effect handler."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pyro.distributions import Normal
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.distributions import Independent

__all__ = ["LocalReparameterizationMessenger"]

_ORIGINAL = {"linear": F.linear, "conv2d": F.conv2d}


def _as_normal(fn: Any) -> Normal | None:
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, Normal) else None


class LocalReparameterizationMessenger(Messenger):
    r"""Sample the pre-activations of Gaussian-weight ``Linear`` / ``Conv2d`` layers directly.

    For a layer whose weight :math:`w \sim \mathcal{N}(\mu, \sigma^2)` (elementwise,
    independent) the output :math:`b = x \star w + c` is Gaussian given the input, with mean
    :math:`x \star \mu + c` and variance :math:`x^2 \star \sigma^2`, independently per output
    element; sampling it as :math:`b = x \star \mu + c + \sqrt{x^2 \star \sigma^2} \odot
    \epsilon` gives the same expected data term with a lower-variance gradient (Kingma et al.,
    2015, *Variational Dropout and the Local Reparameterization Trick*; Section 4.1 of Atanov
    et al., 2019). The approach follows TyXe's ``LocalReparameterizationMessenger``.

    While the handler is active it records every value that a ``pyro.sample`` site draws from a
    Normal (possibly wrapped in ``Independent``) together with that Normal's ``loc`` and
    ``scale``, and the value of every other latent site as not Gaussian; the first record of a
    tensor wins, so the guide's :math:`q(w)` is kept and a model's prior at the replayed site
    (also a Normal, e.g. a standard-normal prior) is ignored, for a point-mass guide
    (``AutoDelta``, :class:`~pyro_dwp.guides.PointMass`) too, whose weights then stay fixed.
    When ``torch.nn.functional.linear`` or ``conv2d`` (what ``nn.Linear`` and ``nn.Conv2d``
    call) receives a recorded tensor as its ``weight``, the handler returns the locally
    reparameterised output instead; any other call runs unchanged. The weight sample itself is
    untouched, so the model's prior (KL) term still uses the sampled weights.

    Wrap the whole ELBO evaluation, guide and model together (the records live from
    ``__enter__`` to ``__exit__``), e.g. around ``svi.step`` or through ``fit(...,
    handlers=[LocalReparameterizationMessenger()])``::

        with LocalReparameterizationMessenger():
            loss = svi.step(x, y)

    Limitations: weights with particle dimensions that :class:`~pyro_dwp.bnn.BNN` maps over
    with ``vmap`` (vectorised particles) are not recognised and fall back to plain weight
    sampling; ``conv2d`` with ``padding_mode != "zeros"`` (which pads before the call) works,
    as the padded input is what the handler sees. The variance is floored at the smallest
    normal float before the square root, so all-zero input patches give zero gradient, not NaN.
    """

    def __init__(self) -> None:
        super().__init__()
        # id -> (weight, loc, scale), or (value, None, None) for a value drawn from no Normal
        self._records: dict[int, tuple[Tensor, Tensor | None, Tensor | None]] = {}

    def __enter__(self) -> LocalReparameterizationMessenger:
        self._records = {}
        F.linear, F.conv2d = self._linear, self._conv2d
        return super().__enter__()

    def __exit__(self, *args: Any) -> Any:
        F.linear, F.conv2d = _ORIGINAL["linear"], _ORIGINAL["conv2d"]
        self._records = {}
        return super().__exit__(*args)

    def _pyro_post_sample(self, msg: dict) -> None:
        value = msg["value"]
        if msg["is_observed"] or not isinstance(value, Tensor) or id(value) in self._records:
            return
        normal = _as_normal(msg["fn"])
        if normal is None:  # e.g. a point mass: its value must not take a replayed prior's moments
            self._records[id(value)] = (value, None, None)
            return
        self.record(value, normal.loc.expand(value.shape), normal.scale.expand(value.shape))

    def record(self, weight: Tensor, loc: Tensor, scale: Tensor) -> None:
        """Mark ``weight ~ N(loc, scale^2)`` (all three of one shape) for the local
        reparameterisation while the handler is active; what a sample site does, and what the
        compiled engine (:mod:`pyro_dwp.infer.compiled`) calls for each guide draw."""
        # Keep the tensor alive with its record, so that its id cannot be reused meanwhile.
        self._records[id(weight)] = (weight, loc, scale)

    def _moments(self, weight: Tensor) -> tuple[Tensor, Tensor] | None:
        record = self._records.get(id(weight))
        if record is None or record[0] is not weight or record[1] is None or record[2] is None:
            return None
        return record[1], record[2]

    @staticmethod
    def _sample(mean: Tensor, var: Tensor) -> Tensor:
        std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
        return mean + std * torch.randn_like(mean)

    def _linear(self, input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``(..., in) -> (..., out)``; locally reparameterised for a recorded ``weight``."""
        moments = self._moments(weight)
        if moments is None:
            return _ORIGINAL["linear"](input, weight, bias)
        loc, scale = moments
        mean = _ORIGINAL["linear"](input, loc, bias)
        return self._sample(mean, _ORIGINAL["linear"](input.square(), scale.square()))

    def _conv2d(
        self,
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None = None,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
    ) -> Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H', W')``; locally reparameterised if recorded."""
        moments = self._moments(weight)
        conv = _ORIGINAL["conv2d"]
        if moments is None:
            return conv(input, weight, bias, stride, padding, dilation, groups)
        loc, scale = moments
        mean = conv(input, loc, bias, stride, padding, dilation, groups)
        var = conv(input.square(), scale.square(), None, stride, padding, dilation, groups)
        return self._sample(mean, var)

"""Every guide of ``guides/`` through the generic suite of :class:`pyro_dwp.testing.GuideTestCase`.

One small class per guide declares what differs (its builder, prior, ELBO, the model's
reparameterisation); :func:`test_every_guide_has_a_test_case` fails for a guide class without one.
"""

from __future__ import annotations

import inspect
import pkgutil
from collections.abc import Callable
from functools import partial

import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuide, AutoNormal
from torch import nn

import pyro_dwp.guides
from pyro_dwp.distributions import DeepWeightPrior, LogUniform, MarkovChainPrior
from pyro_dwp.guides import (
    BBBNormal,
    LogVarianceNormal,
    PointMass,
    ReverseChainGuide,
    ReverseModelGuide,
    init_to_module,
)
from pyro_dwp.guides.log_variance import TruncatedAlphaNormal
from pyro_dwp.infer.markov_chain_reparam import MarkovChainStrategy
from pyro_dwp.infer.reparam import DeepWeightPriorStrategy
from pyro_dwp.models.kernel_vae import KernelVAE
from pyro_dwp.models.markov_chain_vae import MarkovChainVAE
from pyro_dwp.testing import GuideTestCase


class TestBBBNormal(GuideTestCase):
    guide_class = BBBNormal

    def make_guide(self, model: Callable) -> BBBNormal:
        return BBBNormal(model, init_scale=0.05)


class TestLogVarianceNormal(GuideTestCase):
    guide_class = LogVarianceNormal

    def make_guide(self, model: Callable) -> LogVarianceNormal:
        return LogVarianceNormal(model, init_log_variance=-6.0)


class TestPointMass(GuideTestCase):
    guide_class = PointMass
    stochastic = False


class TestTruncatedAlphaNormal(GuideTestCase):
    guide_class = TruncatedAlphaNormal
    prior = LogUniform()
    elbo = TraceMeanField_ELBO


# The module-level networks are drawn from a fixed seed: torch's generator starts from a
# different seed in every process, and a suite of another draw in each run can pass or fail.
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    _VAE = KernelVAE(5, 2, 4)
    _CHAIN = MarkovChainVAE(5, 2, 4, 2)
    for _transition in [*_CHAIN.transitions, *_CHAIN.reverse]:
        # the heads start at zero (identity transitions), which would block the gradient to the
        # layers below them; random heads let the suite check that every parameter is reached
        nn.init.normal_(_transition.shift.weight, std=0.3)
        nn.init.normal_(_transition.scale.weight, std=0.3)


class TestReverseModelGuide(GuideTestCase):
    """The deep weight prior on the 5x5 convolution, the auxiliary bound's guide."""

    guide_class = ReverseModelGuide
    prior = {"0.weight": DeepWeightPrior.from_vae(_VAE), "*": GuideTestCase.prior}
    reparam = DeepWeightPriorStrategy()

    def make_guide(self, model: Callable) -> ReverseModelGuide:
        base = partial(LogVarianceNormal, init_log_variance=-6.0)
        return ReverseModelGuide(model, base, {"0.weight": _VAE.encoder})


class TestReverseChainGuide(GuideTestCase):
    """A Markov-chain prior (T = 2) on the 5x5 convolution, its reverse chain as the guide."""

    guide_class = ReverseChainGuide
    prior = {"0.weight": MarkovChainPrior.from_vae(_CHAIN), "*": GuideTestCase.prior}
    reparam = MarkovChainStrategy()

    def make_guide(self, model: Callable) -> ReverseChainGuide:
        base = partial(LogVarianceNormal, init_log_variance=-6.0)
        return ReverseChainGuide(model, base, {"0.weight": _CHAIN})


class TestAutoNormal(GuideTestCase):
    """Pyro's own mean-field guide, started at the network's weights, works as ours do."""

    guide_class = AutoNormal

    def make_guide(self, model: Callable) -> AutoNormal:
        return AutoNormal(model, init_loc_fn=init_to_module, init_scale=0.05)


def _guide_classes() -> set[type]:
    """The public guide classes defined in ``guides/``."""
    found = set()
    for info in pkgutil.iter_modules(pyro_dwp.guides.__path__, "pyro_dwp.guides."):
        module = __import__(info.name, fromlist=["__all__"])
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, AutoGuide | nn.Module):
                found.add(obj)
    return found


def test_every_guide_has_a_test_case():
    tested = {cls.guide_class for cls in GuideTestCase.__subclasses__()}
    missing = sorted(c.__name__ for c in _guide_classes() - tested)
    assert not missing, f"guides without a GuideTestCase subclass: {missing}"
    assert {BBBNormal, LogVarianceNormal, TruncatedAlphaNormal, ReverseModelGuide} <= tested


def test_the_suite_catches_a_guide_that_misses_a_site():
    """The mixin is not vacuous: a guide that leaves the model's bias sites out fails it."""

    class Incomplete(GuideTestCase):
        guide_class = BBBNormal

        def make_guide(self, model: Callable) -> Callable:
            weights_only = poutine.block(model, hide_fn=lambda m: m["name"].endswith("bias"))
            return AutoNormal(weights_only, init_loc_fn=init_to_module, init_scale=0.05)

    with pytest.raises(AssertionError):
        Incomplete().test_covers_every_latent_site_with_its_shape()

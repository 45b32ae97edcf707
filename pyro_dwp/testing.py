"""A reusable test suite for guides: a new guide gets it by declaring a few attributes.

As GPyTorch's ``gpytorch/test/variational_test_case.py``: subclass :class:`GuideTestCase` in a
pytest module, name the class ``Test...`` and declare what differs from the defaults::

    class TestMyGuide(GuideTestCase):
        guide_class = MyGuide

        def make_guide(self, model):
            return MyGuide(model, init_scale=0.05)

Every ``test_*`` method then runs on a small Bayesian ConvNet (:meth:`GuideTestCase.make_model`,
prior :attr:`GuideTestCase.prior`) and checks that the guide covers the model's latent sites
with the right shapes, returns what it samples, repeats its draws under a seed, gives a finite
ELBO whose gradient reaches every parameter, lowers the loss under :func:`~pyro_dwp.infer.fit`,
and survives :func:`pyro_dwp.save` / :func:`pyro_dwp.load`. The tests assume a fresh param
store and a seeded RNG (the suite's autouse fixture).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, Trace_ELBO
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

from pyro_dwp.bnn import BNN
from pyro_dwp.infer import fit
from pyro_dwp.likelihoods import Categorical
from pyro_dwp.priors import PriorSpec
from pyro_dwp.saving import load, save

__all__ = ["GuideTestCase"]


class GuideTestCase:
    """Mixin of generic guide tests; a subclass declares the attributes below.

    Attributes:
        guide_class: The class under test (the suite checks that every guide has a test case).
        prior: The model's prior specification (:mod:`pyro_dwp.priors`).
        elbo: The ELBO class the guide trains with.
        reparam: The model's ``reparam=`` (e.g. a deep-weight-prior strategy), or ``None``.
        num_data: Examples of the toy data set.
        fit_epochs: Full-batch epochs of :meth:`test_fit_lowers_the_loss`.
        stochastic: Whether the guide draws at random (``False`` for a point mass, whose draws
            are the same under every seed).
    """

    guide_class: type
    prior: PriorSpec = dist.Normal(0.0, 1.0)
    elbo: type[ELBO] = Trace_ELBO
    reparam: Any = None
    num_data: int = 12
    fit_epochs: int = 15
    stochastic: bool = True

    def make_guide(self, model: Callable) -> Callable:
        """The guide of ``model``; by default ``guide_class(model)``."""
        return self.guide_class(model)

    def make_net(self) -> nn.Module:
        """``(B, 1, 6, 6) -> (B, 3)``: a 5x5 convolution with 2 channels, then a linear layer."""
        return nn.Sequential(nn.Conv2d(1, 2, 5), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))

    def make_model(self) -> BNN:
        """The Bayesian network of :meth:`make_net` under :attr:`prior`, Categorical outputs."""
        return BNN(self.make_net(), self.prior, Categorical(self.num_data), reparam=self.reparam)

    def make_data(self) -> tuple[Tensor, Tensor]:
        """Seeded toy data: images ``(num_data, 1, 6, 6)`` and labels ``(num_data,)`` in 0..2."""
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(self.num_data, 1, 6, 6, generator=generator)
        return x, torch.randint(0, 3, (self.num_data,), generator=generator)

    def _setup(self) -> tuple[BNN, Callable, Tensor, Tensor]:
        model = self.make_model()
        return model, self.make_guide(model), *self.make_data()

    @staticmethod
    def _latent_sites(trace: poutine.Trace) -> dict[str, dict]:
        return {
            name: site
            for name, site in trace.nodes.items()
            if site["type"] == "sample"
            and not site["is_observed"]
            and not site_is_subsample(site)
            and not site["infer"].get("is_auxiliary")
        }

    def test_covers_every_latent_site_with_its_shape(self) -> None:
        model, guide, x, y = self._setup()
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
        in_model = self._latent_sites(model_trace)
        in_guide = self._latent_sites(guide_trace)
        assert set(in_guide) == set(in_model)
        for name, site in in_model.items():
            assert in_guide[name]["value"].shape == site["fn"].shape(), name

    def test_returns_what_it_samples(self) -> None:
        _, guide, x, y = self._setup()
        guide(x, y)  # set up
        pyro.set_rng_seed(1)
        trace = poutine.trace(guide).get_trace(x, y)
        pyro.set_rng_seed(1)
        values = guide(x, y)
        assert set(values) == set(self._latent_sites(trace))
        for name, value in values.items():
            torch.testing.assert_close(value, trace.nodes[name]["value"])

    def test_seeded_draws_repeat_and_differ_between_seeds(self) -> None:
        _, guide, x, y = self._setup()
        guide(x, y)  # set up
        draws = []
        for seed in (1, 1, 2):
            pyro.set_rng_seed(seed)
            draws.append(torch.cat([v.flatten() for v in guide(x, y).values()]))
        assert torch.equal(draws[0], draws[1])
        assert torch.equal(draws[0], draws[2]) != self.stochastic

    def test_elbo_is_finite_and_reaches_every_parameter(self) -> None:
        model, guide, x, y = self._setup()
        loss = self.elbo().differentiable_loss(model, guide, x, y)
        assert torch.isfinite(loss)
        params = {name: pyro.param(name).unconstrained() for name in pyro.get_param_store().keys()}
        assert params, "the guide registered no parameters in the param store"
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, grad in zip(params, grads, strict=True):
            assert grad is not None and torch.isfinite(grad).all(), name
            assert grad.abs().sum() > 0, name

    def test_fit_lowers_the_loss(self) -> None:
        model, guide, x, y = self._setup()
        history = fit(
            model, guide, x, y, epochs=self.fit_epochs, batch_size=self.num_data, lr=2e-2,
            elbo=self.elbo, progress=False,
        )  # fmt: skip
        losses = torch.tensor([h["loss"] for h in history])
        assert torch.isfinite(losses).all()
        assert losses[-3:].mean() < losses[:3].mean()

    def test_save_and_load_give_the_same_draws(self, tmp_path: Path) -> None:
        model, guide, x, y = self._setup()
        guide(x, y)
        pyro.set_rng_seed(3)
        before = guide(x, y)
        save(tmp_path / "model.pt", model, guide)
        pyro.clear_param_store()
        _, loaded = load(tmp_path / "model.pt")
        pyro.set_rng_seed(3)
        after = loaded(x, y)
        assert set(after) == set(before)
        for name in before:
            torch.testing.assert_close(after[name], before[name])

"""Classifiers and their test metrics, the same for every method: the mean network, the
ensemble (``log mean_s softmax``), calibration and out-of-distribution detection."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor, nn
from torch.func import functional_call

from pyro_dwp.bnn import BNN
from pyro_dwp.diagnostics import auroc, expected_calibration_error, predictive_entropy
from pyro_dwp.guides import BBBNormal, ReverseModelGuide
from pyro_dwp.infer.local_reparam import LocalReparameterizationMessenger
from pyro_dwp.infer.pruning import posterior_mean_network, sample_weights, sampled_outputs

__all__ = [
    "CHANCE_MARGIN",
    "ECE_BINS",
    "EVALUATIONS",
    "MIN_STEPS_TO_LEARN",
    "Classifier",
    "baseline_classifier",
    "bbb_classifier",
    "ensemble_log_probs",
    "error_rate",
    "evaluate",
    "guide_classifier",
    "network_logits",
    "not_learning_warnings",
]

ECE_BINS = 15
"""Bins of the expected calibration error and the reliability diagram."""
CHANCE_MARGIN = 0.1
"""An error rate within this of chance's, ``1 - 1 / K`` for ``K`` classes, is at chance level
(:func:`not_learning_warnings`)."""
MIN_STEPS_TO_LEARN = 500
"""Optimiser steps after which a classifier still at chance level is reported as not learning
(a smoke test's few steps are not judged)."""
_EVAL_CHUNK = 1000
"""Rows per forward pass in evaluation."""
EVALUATIONS = {
    "lrt": "ensemble with the local reparameterisation at test time (fresh noise per activation, "
    "the DWP authors')",
    "weights": "ensemble of weight draws from q (one draw per member, shared by all test images)",
}
"""The test-time ensembles of :func:`guide_classifier`, in words."""


@dataclass
class Classifier:
    """What :func:`evaluate` needs of a trained classifier, whatever the method.

    Attributes:
        mean_net: A deterministic network ``(N, 784) -> (N, 10)`` logits.
        sample_logits: ``(x, S) -> (S, N, 10)`` logits of S sampled networks.
    """

    mean_net: nn.Module
    sample_logits: Callable[[Tensor, int], Tensor]


def bbb_classifier(
    model: BNN, guide: BBBNormal, masks: dict[str, Tensor] | None = None
) -> Classifier:
    """The posterior-mean network and weight-sample ensemble of a (pruned) BBB guide."""
    mean_net = posterior_mean_network(model, guide, masks)

    def sample_logits(x: Tensor, num_samples: int) -> Tensor:
        weights = sample_weights(guide, num_samples, masks)
        return sampled_outputs(mean_net, weights, x, batch_size=_EVAL_CHUNK)

    return Classifier(mean_net, sample_logits)


def guide_classifier(
    model: BNN, guide: nn.Module, evaluation: str = "weights", chunk: int = _EVAL_CHUNK
) -> Classifier:
    """The posterior-mean network and the ensemble of a guide with ``loc`` / ``scale`` per weight
    site (a :class:`~pyro_dwp.guides.BBBNormal` family, or a
    :class:`~pyro_dwp.guides.ReverseModelGuide` over one: its codes are not needed).

    Each member draws the Bayesian weights from ``q(w)`` once, through the guide; with
    ``evaluation="lrt"`` the member runs under
    :class:`~pyro_dwp.infer.local_reparam.LocalReparameterizationMessenger`, so every
    pre-activation of a Bayesian layer is drawn from its Gaussian given the input, independently
    per activation and image (the drawn weights themselves are not used); with ``"weights"`` the
    member is the plain network with the drawn weights. Members are drawn one after the other,
    each over ``x`` in chunks of ``chunk`` rows.

    Raises:
        ValueError: If ``evaluation`` is not one of :data:`EVALUATIONS`.
    """
    if evaluation not in EVALUATIONS:
        raise ValueError(f"unknown evaluation {evaluation!r}; choose one of {list(EVALUATIONS)}")
    weight_guide = guide.base if isinstance(guide, ReverseModelGuide) else guide

    @torch.no_grad()
    def sample_logits(x: Tensor, num_samples: int) -> Tensor:
        fixed = {n: pyro.param(n) for n in model.deterministic}
        members = []
        for _ in range(num_samples):
            with poutine.block(), _local_reparam(evaluation == "lrt"):
                drawn = weight_guide(x[:1], None)
                weights = {n: v for n, v in drawn.items() if n in model.priors}
                params = {**fixed, **weights}
                members.append(
                    torch.cat([functional_call(model.net, params, (c,)) for c in x.split(chunk)])
                )
        return torch.stack(members)

    return Classifier(posterior_mean_network(model, weight_guide), sample_logits)


def _local_reparam(active: bool) -> LocalReparameterizationMessenger | contextlib.nullcontext:
    return LocalReparameterizationMessenger() if active else contextlib.nullcontext()


def baseline_classifier(net: nn.Module) -> Classifier:
    """A point-estimate network; its ensemble is Monte Carlo dropout, or the network itself."""
    has_dropout = any(isinstance(m, nn.Dropout) for m in net.modules())

    @torch.no_grad()
    def sample_logits(x: Tensor, num_samples: int) -> Tensor:
        if not has_dropout:
            return network_logits(net.eval(), x).unsqueeze(0)
        net.train()
        try:
            return torch.stack([network_logits(net, x) for _ in range(num_samples)])
        finally:
            net.eval()

    return Classifier(net.eval(), sample_logits)


@torch.no_grad()
def evaluate(
    clf: Classifier, x: Tensor, y: Tensor, num_samples: int, x_ood: Tensor | None = None
) -> tuple[dict[str, float], Tensor]:
    """Test metrics of a classifier, the same for every method.

    Args:
        clf: The classifier.
        x: Test images ``(N, 784)``.
        y: Test labels ``(N,)``.
        num_samples: Networks S in the ensemble.
        x_ood: Out-of-distribution images ``(N_ood, 784)``; if given, ``ood_auroc`` is added.

    Returns:
        The metrics (``test_error_mean``, ``test_nll_mean``, ``test_error_ensemble``,
        ``test_nll_ensemble``, ``ece`` and maybe ``ood_auroc``; errors are fractions, NLLs mean
        nats per example) and the ensemble's probabilities ``(N, 10)``.
    """
    mean_logp = network_logits(clf.mean_net, x).log_softmax(-1)
    log_probs = ensemble_log_probs(clf, x, num_samples)
    probs = log_probs.exp()
    labels = y[:, None]
    metrics = {
        "test_error_mean": error_rate(mean_logp, y),
        "test_nll_mean": float(-mean_logp.gather(1, labels).mean()),
        "test_error_ensemble": error_rate(log_probs, y),
        "test_nll_ensemble": float(-log_probs.gather(1, labels).mean()),
        "ece": expected_calibration_error(probs.cpu(), y.cpu(), ECE_BINS),
    }
    if x_ood is not None:
        ood_probs = ensemble_log_probs(clf, x_ood, num_samples).exp()
        metrics["ood_auroc"] = auroc(predictive_entropy(probs), predictive_entropy(ood_probs))
    return metrics, probs


@torch.no_grad()
def network_logits(net: nn.Module, x: Tensor) -> Tensor:
    """``net`` over ``x`` in chunks of rows: ``(N, 784) -> (N, 10)``."""
    return torch.cat([net(c) for c in torch.split(x, _EVAL_CHUNK)])


def ensemble_log_probs(clf: Classifier, x: Tensor, num_samples: int) -> Tensor:
    """The ensemble's predictive log-probabilities ``log mean_s softmax(logits_s)``, ``(N, ...)
    -> (N, classes)``, computed with log-sum-exp over the ``num_samples`` members."""
    log_p = clf.sample_logits(x, num_samples).log_softmax(-1)
    return torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])


def error_rate(scores: Tensor, y: Tensor) -> float:
    """Fraction of rows whose top score is not the label."""
    return float((scores.argmax(-1) != y).float().mean())


def not_learning_warnings(
    error: float, num_classes: int, steps: int, what: str, hint: str = ""
) -> list[str]:
    """A message, in a list, when a finished run's classifier is at chance level: its error
    rate ``error`` on held-out data within :data:`CHANCE_MARGIN` of chance's ``1 - 1 /
    num_classes`` or above, after at least :data:`MIN_STEPS_TO_LEARN` optimiser ``steps``;
    else ``[]``. Such a run stayed finite (no NaN check stopped it) but did not learn, as one
    whose rate is too large does. ``what`` names the run in the message, ``hint`` (if any)
    ends it."""
    chance = 1 - 1 / num_classes
    if error < chance - CHANCE_MARGIN or steps < MIN_STEPS_TO_LEARN:
        return []
    message = (
        f"{what} did not learn: its error rate ends at {error:.2%} after {steps:g} steps, "
        f"chance level for {num_classes} classes is {chance:.0%}"
    )
    return [f"{message}; {hint}" if hint else message]

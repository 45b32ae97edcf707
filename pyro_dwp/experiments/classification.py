"""Classifiers and their test metrics, the same for every method: the mean network, the
ensemble (``log mean_s softmax``), calibration and out-of-distribution detection."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pyro_dwp.bnn import BNN
from pyro_dwp.diagnostics import auroc, expected_calibration_error, predictive_entropy
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer.pruning import posterior_mean_network, sample_weights, sampled_outputs

__all__ = [
    "ECE_BINS",
    "Classifier",
    "baseline_classifier",
    "bbb_classifier",
    "error_rate",
    "evaluate",
    "network_logits",
]

ECE_BINS = 15
"""Bins of the expected calibration error and the reliability diagram."""
_EVAL_CHUNK = 1000
"""Rows per forward pass in evaluation."""


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
    log_probs = _ensemble_log_probs(clf, x, num_samples)
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
        ood_probs = _ensemble_log_probs(clf, x_ood, num_samples).exp()
        metrics["ood_auroc"] = auroc(predictive_entropy(probs), predictive_entropy(ood_probs))
    return metrics, probs


@torch.no_grad()
def network_logits(net: nn.Module, x: Tensor) -> Tensor:
    """``net`` over ``x`` in chunks of rows: ``(N, 784) -> (N, 10)``."""
    return torch.cat([net(c) for c in torch.split(x, _EVAL_CHUNK)])


def _ensemble_log_probs(clf: Classifier, x: Tensor, num_samples: int) -> Tensor:
    """``log mean_s softmax(logits_s)``, ``(N, 10)``, computed with log-sum-exp."""
    log_p = clf.sample_logits(x, num_samples).log_softmax(-1)
    return torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])


def error_rate(scores: Tensor, y: Tensor) -> float:
    """Fraction of rows whose top score is not the label."""
    return float((scores.argmax(-1) != y).float().mean())

"""``pyro-dwp mnist``: MNIST classification of Blundell et al. (2015), Table 1.

An MLP 784-H-H-10 with ReLUs, trained on the paper's 50,000 training images (pixels / 126) by
one of three methods with the same data, epochs, batch size, optimiser (``--optimizer``: Adam
by default, or SGD as in the paper) and learning rate:

- ``bbb``: Bayes by Backprop (BNN + Categorical likelihood + BBBNormal guide + ``fit``), with the
  scale-mixture or Gaussian prior on every weight and bias;
- ``sgd``: the same network trained as a point estimate with cross-entropy (the paper's "SGD"
  baseline; trained with ``--optimizer``, like the other methods);
- ``dropout``: the same, with dropout ``--dropout`` (default 0.5) after each hidden layer and,
  optionally, ``--input-dropout`` (0.2 in Srivastava et al. 2014; default 0, off) on the pixels.

Evaluation on the 10,000 test images, the same code for every method:

- ``test_error_mean``, ``test_nll_mean``: the posterior-mean network (BBB), the trained network
  (SGD), the weight-scaled network in eval mode (dropout);
- ``test_error_ensemble``, ``test_nll_ensemble``, ``ece`` (15 bins), ``ood_auroc``: the average of
  the softmax probabilities of ``--test-samples`` networks: weight samples from the guide (BBB),
  Monte Carlo dropout masks (dropout), the single network (SGD). ``ood_auroc`` separates MNIST
  test images (negatives) from notMNIST test letters (positives) by predictive entropy.

Writes to ``--out``: ``metrics.json``, ``learning_curves.json`` and ``.png`` (per epoch: train
loss, NLL, KL and validation error of the mean network), ``reliability.png``, ``model.pt`` (the
config and the fitted Pyro param store, or the baseline's ``state_dict``; reload a BBB run with
:func:`load_bbb_run`), ``config.json`` and the resumable ``checkpoint.pt``. With
``--keep-best`` also ``best.pt``: the parameters of the epoch with the lowest validation error
(the mean network's), evaluated on the test set as ``metrics.json``'s ``best_valid`` (``epoch``,
``valid_error`` and the metrics above): validation-based epoch selection beside the final
parameters, which the other metrics and ``model.pt`` keep.

Data-parallel BBB: ``--devices N --strategy ddp`` trains on N processes (GPUs with
``--device cuda``, else CPU processes) with :func:`pyro_dwp.infer.distributed.fit_distributed`
(needs ``pyro-dwp[distributed]``); ``--batch-size`` is per process, the checkpoint is
``checkpoint.ckpt`` and process 0 evaluates and writes the outputs. Several nodes: README,
"Multi-device and multi-node training".

Resume: explicit. ``--resume`` continues the run in ``--out`` from its ``checkpoint.pt`` (up to
``--epochs``, which may differ); other settings are refused. Without ``--resume`` the run starts
afresh and overwrites ``--out``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pyro_dwp.experiments.mnist import add_arguments, run

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment with the parsed options; return its result (printed as JSON)."""
    return run(args)

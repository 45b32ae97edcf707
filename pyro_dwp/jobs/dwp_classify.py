"""``pyro-dwp dwp-classify``: MNIST with few examples under the deep weight prior (Figure 2).

Variational inference over the kernels of the paper's ConvNet (Section 4.1 of Atanov et al.,
2019) with the deep weight prior (kernel VAEs of ``pyro-dwp dwp-prior``), a standard-normal and
a log-uniform prior, for every number of training examples ``N`` and data seed: guide
``(mu, log sigma^2)``, local reparameterisation of the data term, Adam with the learning rate
decayed linearly to 0 over the epochs, minibatches of ``min(256, N)``. The loss of a step is the
summed cross-entropy times ``N / B`` plus the full KL term (the paper's weighting: ``fit``'s
uniform scheme gives every step KL weight ``M * (1 / M) = 1``, so each step is an unbiased
estimate of the full negative ELBO). Images are pixels / 255, as the source nets of
``dwp-source`` see notMNIST (``--pixel-scale``). The guide means start from the network's
initialisation or from samples of the deep weight prior (``--guide-init``). The test accuracy
and NLL (on ``--n-test`` MNIST test images) are those of an ensemble of ``--test-samples``
members (default 10; predictive probabilities averaged); ``--evaluation`` picks the ensemble:
``lrt`` (default, the DWP authors'), the local-reparameterisation ensemble: each member keeps
the local reparameterisation at test time, fresh noise for every activation; ``weights``, the
weights ensemble: each member is one draw of the weights from q, shared by all test images.

Writes to ``--out``: ``dwp_classify.json`` (one record per (prior, N, seed) cell, appended
atomically), ``dwp_classify.md`` (mean +- std over seeds) and ``figure2.png`` (accuracy vs N,
the paper's values dashed). ``--gap-samples K`` adds the Appendix F estimate of the bound gap
``L - L_aux`` to the deep-weight-prior cells.

Resume: automatic. A rerun with the same settings in the same ``--out`` skips the finished
cells and resumes an unfinished one from its checkpoint in ``cells/``; other settings are
refused (use another ``--out``).
"""

from __future__ import annotations

import argparse
from typing import Any

from pyro_dwp.experiments.dwp_classify import add_arguments, run

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment with the parsed options; return its result (printed as JSON)."""
    return run(args)

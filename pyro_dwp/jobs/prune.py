"""``pyro-dwp prune``: prune a BBB ``mnist`` run by signal-to-noise, Blundell et al. (2015) 5.1.

Reloads ``--run DIR`` (written by ``pyro-dwp mnist --method bbb``), ranks every Bayesian weight
and bias by ``|mu| / sigma`` (all layers together, one global threshold), removes the lowest
fraction (mean and variance set to 0) and re-evaluates on the MNIST test set: test error and NLL
of the posterior-mean network and of the ``--test-samples`` ensemble.

Each pruned posterior-mean network is exported as a deterministic ``torch.nn.Module`` whose
linear layers store only their nonzero weights (:class:`~pyro_dwp.models.SparseLinear`:
row offsets int32, column indices int16, values float32; 6 bytes per kept weight against 4 per
weight dense), saved with ``torch.save(module)`` as ``pruned_<percent>.pt`` (load it with
``torch.load(path, weights_only=False)``); its size on disk is reported next to that of the dense
posterior-mean network saved the same way (``dense.pt``).

Writes to ``--out`` (default ``RUN/prune``): ``pruning.md`` and ``pruning.json`` (one row per
fraction, 0% included), ``snr.png`` (density and CDF of log10 signal-to-noise, as in the paper's
Fig. 4) and the exported networks.

Resume: none (nothing is trained); a rerun evaluates again and overwrites ``--out``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pyro_dwp.experiments.prune import add_arguments, run

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment with the parsed options; return its result (printed as JSON)."""
    return run(args)

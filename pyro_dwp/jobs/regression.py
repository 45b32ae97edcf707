"""``pyro-dwp regression``: the curve-regression experiment of Blundell et al. (2015), Fig. 5.

Trains a small Bayes-by-Backprop MLP (1-50-50-1, ReLU) on the curve over ``x in [0, 0.5]``
(1,000 points) and shows the predictive band widening away from the data. Writes
``regression.png``, ``posterior.nc`` (ArviZ ``InferenceData``) and ``metrics.json`` to ``--out``.

The band: ``--predictive-samples`` draws of the posterior predictive (weights from the guide,
then the Gaussian noise) at 561 evenly spaced ``x`` in ``[-0.2, 1.2]``; its 95% band is their
2.5% and 97.5% quantiles per point. ``metrics.json`` holds ``coverage_in`` / ``coverage_out``,
the fraction of the grid points inside ``[0, 0.5]`` / outside it (``[-0.2, 0)`` and
``(0.5, 1.2]``) where the noise-free curve lies in the band; ``band_width_in`` /
``band_width_out``, its mean width on ``[0, 0.5]`` / on ``[0.9, 1.2]``, and ``band_ratio``, out
over in; ``test_rmse``, the predictive median against the noise-free curve on ``[0, 0.5]``.

Default: a Gaussian prior ``N(0, 1)`` on every weight and bias (the paper's Gaussian grid point
``-log sigma = 0``), posterior sigma starting at 0.01, full-batch Adam at 0.01 for 3,000 epochs,
likelihood noise fixed at 0.063, 200 predictive samples: about 2-3 minutes on 2 CPU cores.
Why the noise: the data are ``y = f(x + e)``, ``e ~ N(0, 0.02^2)``, so their noise in ``y`` is
about ``|f'(x)| 0.02``, of root mean square 0.063 over ``[0, 0.5]``
(:func:`pyro_dwp.data.noise_in_y`); the former 0.02 weighted the likelihood about 10x too much,
an overconfident posterior whose band missed the curve away from the data (seeds 0-2:
coverage_out 0.41 / 0.29 / 0.55). Why the step: with the honest likelihood, Adam at 0.02 for
1,500 epochs can stop in a flat, underfitting optimum (seed 2: a much worse ELBO, test RMSE
0.17); half the step for twice as long fits every seed. Seeds 0-2
(``benchmarks/bbb_regression.py``, ``benchmarks/results/regression.md``): coverage_out 0.49 /
0.63 / 0.58 (mean 0.57), coverage_in 1.0, band ratio 3.9 / 6.1 / 6.2, test RMSE 0.037 / 0.015 /
0.026. The band widens on both sides but still misses parts of the curve far from the data
(seed 0: its dip at x = 0.75-0.9, where the extrapolated median, a straight line, runs above it,
and its fall left of x = -0.1).
Under the scale-mixture prior (``--prior scale-mixture``, ``pi = 0.5``, ``-log sigma1 = 0``,
``-log sigma2 = 6``) the weights that the data leave free fall into the narrow component, and
less uncertainty is left away from the data (``benchmarks/results/regression_explored.md``).

Resume: explicit. ``--resume`` continues the run in ``--out`` from its ``checkpoint.pt`` (up to
``--epochs``, which may differ); other settings are refused. Without ``--resume`` the run starts
afresh; a finished run there with other settings is refused either way.
"""

from __future__ import annotations

import argparse
from typing import Any

from pyro_dwp.experiments.regression import add_arguments, run

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment with the parsed options; return its result (printed as JSON)."""
    return run(args)

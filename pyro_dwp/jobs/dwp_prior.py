"""``pyro-dwp dwp-prior``: the kernel VAEs of the deep weight prior (Atanov et al., 2019).

Reads the kernel sets ``KERNELS/kernels_<layer>.pt`` written by ``pyro-dwp dwp-source`` and
fits one :class:`~pyro_dwp.models.KernelVAE` per layer with the paper's Appendix D architecture
for its kernel size (7x7: z_dim 2, hidden 32; 5x5: z_dim 4, hidden 64), with
:func:`~pyro_dwp.infer.fit_kernel_vae`: plain PyTorch, Adam on the summed negative ELBO with the
learning rate decayed linearly to 0 (the VAE is an ordinary amortised model with a closed-form
Gaussian KL, fitted once before the Bayesian network that uses it as a prior).

The length is a budget of optimisation steps (``--steps``, default 40,000; ``--epochs``
instead gives passes over the kernels): the paper's 300 epochs are only ~4,000 steps on the
~1,800 7x7 kernels of the published set, and a VAE fitted that long underfits them (held-out
reconstruction error 0.70 of the kernels' std against 0.41 for the published VAE). A long fit
overfits a small set instead, so ``--valid-fraction`` of the training kernels is held out and
the VAE of the epoch with the best validation ELBO is kept; the test split is only reported.
``--augment`` trains on kernels under random symmetries of the square (flips, transposes).

Writes to ``--out``, per layer:

- ``vae_<layer>.pt`` (:func:`~pyro_dwp.models.save_kernel_vae`; read it with
  :func:`~pyro_dwp.models.load_kernel_vae`): the VAE and its metadata ``layer``,
  ``provenance`` (the kernel set's, plus ``kernels_file``), ``history``
  (``train_elbo`` / ``valid_elbo`` per epoch, ``best_epoch``), ``training`` (the options) and
  the held-out figures of :func:`evaluate_kernel_vae`;
- ``samples_<layer>.png``: held-out source kernels, their reconstructions and samples of the
  prior, on one diverging colour scale centred at 0 (the paper's Figure 1);
- ``latent_<layer>.png`` (``z_dim`` 2 only): the encoder means of the held-out kernels
  (paper Fig. 5);

and ``prior_report.json``: per layer (``"layers"``) the held-out ELBO and IWAE bound
(``--iwae-samples``, K=100) per kernel, the kernel fit (``recon_over_std``,
``decoder_scale_over_std``, ``sample_std_over_std``) and smoothness; and the two figures the
issue tracker follows at the top level, ``"recon_over_std": {layer: r}`` and ``"smoothness":
{layer: {"source": s, "prior_samples": p}}``.

On one H100 (``--device cuda``) the default budget takes a minute or two per layer.

Resume: none. A rerun fits the VAEs again and overwrites the files in ``--out``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pyro_dwp.experiments.dwp_prior import add_arguments, run

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment with the parsed options; return its result (printed as JSON)."""
    return run(args)

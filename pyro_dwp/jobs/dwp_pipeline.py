"""``pyro-dwp dwp``: the whole deep weight prior pipeline (Atanov et al., 2019), end to end.

Runs the stages in this process, each into its own folder of ``--out``. By default (the
``quick`` preset) the deep weight prior is the one shipped with the package
(:func:`pyro_dwp.pretrained.pretrained`, ``"notmnist"``: kernel VAEs that this pipeline learned on a
GPU from source nets of the DWP authors' recipe) and only stage 3 runs; ``--train-prior`` (and
the ``paper`` preset) runs all three:

1. ``dwp-source`` -> ``OUT/source``: source ConvNets on notMNIST and their kernel sets;
2. ``dwp-prior`` -> ``OUT/prior``: one kernel VAE per layer (the prior), with plots of prior
   samples beside real kernels (``samples_conv1.png``, ``samples_conv2.png``) and of the
   ``conv1`` latent space (``latent_conv1.png``);
3. ``dwp-classify`` -> ``OUT/classify``: a Bayesian ConvNet on N MNIST examples under the deep
   weight prior, a standard normal and a log-uniform prior. It is two runs of the job, as in
   ``benchmarks/dwp_mnist.py``: ``OUT/classify/baselines`` (normal and log-uniform, guide means
   from the network's initialisation) and ``OUT/classify/dwp`` (guide means from samples of the
   deep weight prior, ``--dwp-init``). Their cells are merged into ``OUT/classify/dwp_classify.md``
   (test accuracy and NLL per prior and N, mean +- std over seeds; also printed) and
   ``OUT/classify/figure2.png`` (accuracy vs N beside the paper's Figure 2).

``OUT/dwp.json`` records the shipped prior used (``"prior"``; ``null``: trained), each finished
stage (its options and seconds), the settings, the results and the paths of all outputs. A
rerun with the same settings skips the stages recorded there; an interrupted stage resumes
(``dwp-source`` loads the nets it trained, ``dwp-classify`` skips finished cells and resumes
the unfinished one from its checkpoint; ``dwp-prior`` starts again). Other source or prior
settings, or another prior, in the same ``--out`` are refused.

Presets (the options below override single values):

- ``quick`` (default; 3.5-4 minutes on 2 CPU cores): the shipped prior; the target ConvNet
  of 32 / 16 channels (the paper's conv1, a conv2 of 16 filters: the paper's 32 / 128 take 3 s
  per deep-weight-prior step on 2 CPU cores), N = 100, data seed 0, 500 epochs, tested on 2,000
  MNIST images. The widths and epochs were chosen among 13 CPU-sized variants on six data
  seeds (``benchmarks/results/dwp_quick_preset.md``): the deep weight prior's lead follows the
  number of conv1 filters. With ``--train-prior``: 4 source nets of the target's widths, 8
  epochs on 5,000 notMNIST images, at most 1,000 kernels per layer, kernel VAEs 100 epochs.
  Short training of a small net: the numbers show the pipeline at work, not the paper's
  accuracies (``benchmarks/results/dwp_mnist.md`` has the grid on GPUs).
- ``paper``: every stage's own defaults (the DWP authors' source recipe, 10 nets of 256 / 512
  channels; VAEs 40,000 steps; N in 50 ... 1000, seeds 0 1 2, 1,000 epochs per cell), for a GPU
  (``--device cuda``); it always trains its own prior.
"""

from __future__ import annotations

import argparse
from typing import Any

from pyro_dwp.experiments.dwp_pipeline import add_arguments, run

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment with the parsed options; return its result (printed as JSON)."""
    return run(args)

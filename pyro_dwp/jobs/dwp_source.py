"""``pyro-dwp dwp-source``: the source kernels of the deep weight prior (Atanov et al., 2019).

Trains ``--num-nets`` ConvNets of the paper's layout (:class:`~pyro_dwp.models.DWPConvNet`) on
notMNIST, net ``i`` seeded with ``--seed + i``, evaluates each on the notMNIST test split, and
writes every ``(out, in)`` slice of the kept nets' ``conv1`` (7x7) and ``conv2`` (5x5) weights
as one kernel. The defaults are the DWP authors' public recipe (``train-net.py --data not-mnist
--bs 256 --hid_dim 256 512 --l2 0.001 --model fconv``): 10 nets of 256 / 512 channels,
Xavier-normal initialisation, 100 epochs of Adam at 1e-3 decayed linearly to 0, batch 256, loss =
mean cross-entropy + ``--l2`` (1e-3) x the sum of the squared conv weights (``--l2-params
conv``: neither the biases nor the classifier are decayed), pixels / 255 (the same scaling as
``dwp-classify``'s MNIST), the whole notMNIST training set. A net whose test accuracy is at chance
(``<= 0.15``) is excluded with a warning.

Options beyond the recipe: ``--augment`` trains on randomly rotated, zoomed and shifted images
(:func:`~pyro_dwp.data.random_affine`). ``--kernel-gauge he`` multiplies each layer's kept
kernels by one factor (``gauge_factor`` in the report) so that their RMS is the He scale
``sqrt(2 / fan-in)`` of that layer in the target network (``--target-channels``, default the
paper's 32 / 128: 0.202 for conv1, 0.05 for conv2). A LeakyReLU net computes the same function
when a layer's weights are multiplied by ``c > 0`` and the next layer's divided by it, so the
scale of trained kernels is set by the training (weight decay and length trade it against the
unpenalised classifier), not by what they compute; the prior learned from them inherits it, and
a prior far smaller than the target layer's working scale starves the target network.

Norm filter: the L2 penalty drives the kernels that a net does not use to zero; the public
kernel sets keep only the upper tail of the norms (hard floors at 0.392 for 7x7 and 0.131 for
5x5: about 86% of the 7x7 and 8% of the 5x5 kernels). Per layer, either the ``--keep-fraction``
largest-norm kernels are kept (default 0.85 for ``conv1``, 0.08 for ``conv2``) or those of norm
``>= --min-norm``; the report says "kept n of m" and the floor. If more than ``--max-kernels``
remain, a seeded random subset of that size is kept. The rest is split per layer into train /
test (``--test-fraction``, seeded). A floor that keeps no kernel is an error.

On one GPU the recipe takes about a minute per net. ``--train-only`` trains (or loads) the nets
and stops before the kernel sets, so that one process per GPU can train disjoint nets (``--seed
S --num-nets 1``) before one run writes the kernel sets from all of them. A quick CPU run::

    pyro-dwp dwp-source --out runs/dwp_source --num-nets 2 --channels 16 32 --epochs 2 \\
        --n-train-subset 5000

Writes to ``--out``:

- ``kernels_conv1.pt``, ``kernels_conv2.pt``: ``{"train": (n, k, k), "test": (m, k, k),
  "layer", "kernel_size", "provenance": {...}}`` (float32, CPU; see :func:`main`);
- ``source_report.json``: per-net accuracies, per-layer "kept n of m", the floor, the kernels'
  std and smoothness, warnings;
- ``source_nets/net_seed<S>.pt``: each net's checkpoint (:class:`pyro_dwp.infer.Checkpoint`,
  written after every epoch: a rerun loads a finished net and trains an interrupted one on from
  its last epoch).

Resume: automatic. A rerun with the same settings in the same ``--out`` loads the nets trained
there instead of training them again, and trains the missing ones; a net trained with other
settings is refused (use another ``--out``).
"""

from __future__ import annotations

import argparse
from typing import Any

from pyro_dwp.experiments.dwp_source import add_arguments, run

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment with the parsed options; return its result (printed as JSON)."""
    return run(args)

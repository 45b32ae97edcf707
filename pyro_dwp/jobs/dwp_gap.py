r"""``pyro-dwp dwp-gap``: the gap between the ELBO and its auxiliary bound (Appendix F).

Trains the deep-weight-prior ConvNet of ``pyro-dwp dwp-classify`` on ``N`` MNIST examples twice
with the same seed, once with a trainable reverse model :math:`r(z \mid w; \psi)` (the paper)
and once with the reverse model frozen at the kernel VAEs' encoders (the authors' public code),
then estimates, per layer and in total, the gap :math:`\mathcal{L} - \mathcal{L}^{aux} \ge 0`
with :func:`~pyro_dwp.infer.dwp_gap.dwp_bound_gap`: for each kernel ``w ~ q(w)``, the IWAE
estimate of :math:`\log p(w)` with ``K`` codes ``z ~ r(z | w)`` (``--gap-samples``; the paper
uses 10,000), the auxiliary bound's prior term and their difference. The same is done before
training (row ``init``), where both options coincide. Every estimate starts from the same RNG
seed, so the rows share their random numbers.

Writes to ``--out``: ``dwp_gap.json`` (configuration and, for the rows ``init``, ``trainable``
and ``frozen``, the estimates of every layer and their total and ``reverse_shift``, the largest
change of a reverse-model parameter from the VAE encoder's, 0 unless trained; atomically
rewritten after each row) and ``dwp_gap.md`` (the gaps in nats per layer, in total and per
kernel).

Resume: automatic. A rerun with the same settings in the same ``--out`` skips the finished rows
and resumes an interrupted training from its checkpoint in ``cells/``; other settings are
refused (use another ``--out``).
"""

from __future__ import annotations

import argparse
from typing import Any

from pyro_dwp.experiments.dwp_gap import add_arguments, run

__all__ = ["add_arguments", "main"]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment with the parsed options; return its result (printed as JSON)."""
    return run(args)

"""Two-process DDP runs (CPU, gloo) whose records ``tests/test_distributed.py`` checks.

``python tests/ddp_worker.py OUT``: Lightning starts the second process by rerunning this
command; every phase trains a tiny ``BNN`` on both processes, and process 0 writes to ``OUT``:

- ``grad.pt``: per step, the parameters and RNG state before it, the global batch (both
  processes' batches) and the gradient DDP hands the optimiser (a Gaussian likelihood with a
  learned noise scale, ``Trace_ELBO``, Blundell KL weights, 2 steps);
- ``grad_compiled.pt``: the same on the compiled engine (3 steps: the first through Pyro's
  ELBO, then the compiled loss), with each step's engine;
- ``kl.pt``: the same for a model without likelihood (the loss is the KL term alone) under
  ``TraceMeanField_ELBO`` (closed-form KL), 3 steps;
- ``resume.pt``: the param store after 2 uninterrupted epochs and after 1 epoch plus a resume
  from the checkpoint, with both histories; ``model.pt``: the first run saved by
  ``pyro_dwp.save``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import Tensor

import pyro_dwp
from pyro_dwp import BNN, Gaussian
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer.distributed import SVIModule, fit_distributed
from pyro_dwp.models import mlp

DEVICES = 2
BATCH = 4  # per process; the global batch is 8


def data(n: int) -> tuple[Tensor, Tensor]:
    """``x (n, 3)``, ``y (n, 1)``: a noisy linear function, seeded."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    return x, x.sum(-1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)


def build(n: int, likelihood: bool = True) -> tuple[BNN, BBBNormal]:
    """A 3-4-1 MLP with N(0, 1) weights, a learned noise scale if ``likelihood``, and its guide."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = BNN(mlp(3, [4], 1), dist.Normal(0.0, 1.0), Gaussian(n) if likelihood else None)
    return model, BBBNormal(model, init_scale=0.1)


class Recorder(pl.Callback):
    """Records each step's parameters, RNG state, global batch and synchronised gradient."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: SVIModule, batch: list[Tensor], batch_idx: int
    ) -> None:
        x, y = (pl_module.all_gather(t).flatten(0, 1) for t in batch)  # (R * B, ...)
        before = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
        rng = pyro.util.get_rng_state()
        self.steps.append({"x": x, "y": y, "params": before, "rng": rng, "batch_idx": batch_idx})

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: SVIModule, optimizer: torch.optim.Optimizer
    ) -> None:
        store = pyro.get_param_store()
        self.steps[-1]["grads"] = {k: v.grad.clone() for k, v in store.named_parameters()}
        self.steps[-1]["engine"] = pl_module.running_engine


def record_steps(path: Path, n: int, likelihood: bool, elbo: type, engine: str = "pyro") -> None:
    x, y = data(n)
    model, guide = build(n, likelihood)
    recorder = Recorder()
    history = fit_distributed(
        model,
        guide,
        x,
        y,
        epochs=1,
        batch_size=BATCH,
        lr=1e-2,
        elbo=elbo,
        kl_scheme="blundell",
        devices=DEVICES,
        strategy="ddp",
        progress=False,
        callbacks=[recorder],
        engine=engine,
    )
    if pl.utilities.rank_zero_only.rank == 0:
        torch.save({"steps": recorder.steps, "history": history, "n": n}, path)


def train(out: Path, n: int, epochs: int, checkpoint: Path, resume: bool) -> list[dict]:
    x, y = data(n)
    model, guide = build(n)
    history = fit_distributed(
        model,
        guide,
        x,
        y,
        epochs=epochs,
        batch_size=BATCH,
        lr=1e-2,
        devices=DEVICES,
        strategy="ddp",
        checkpoint=checkpoint,
        resume=resume,
        progress=False,
    )
    if pl.utilities.rank_zero_only.rank == 0 and not resume and epochs == 2:
        pyro_dwp.save(out / "model.pt", model, guide)
    return history


def store_values() -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    record_steps(out / "grad.pt", 16, likelihood=True, elbo=Trace_ELBO)
    record_steps(out / "grad_compiled.pt", 24, likelihood=True, elbo=Trace_ELBO, engine="compiled")
    record_steps(out / "kl.pt", 24, likelihood=False, elbo=TraceMeanField_ELBO)
    n = 20  # not a multiple of the global batch: the last step is a partial one
    whole = train(out, n, 2, out / "a.ckpt", resume=False)
    whole_params = store_values()
    train(out, n, 1, out / "b.ckpt", resume=False)
    resumed = train(out, n, 2, out / "b.ckpt", resume=True)
    if pl.utilities.rank_zero_only.rank == 0:
        torch.save(
            {
                "whole": (whole, whole_params),
                "resumed": (resumed, store_values()),
            },
            out / "resume.pt",
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Data-parallel SVI on PyTorch Lightning: one model and guide trained on many devices (DDP).

Needs the optional extra ``pip install pyro-dwp[distributed]`` (Lightning); import this module by
path, ``from pyro_dwp.infer.distributed import fit_distributed``.

Pyro's ``examples/svi_lightning.py`` is the pattern: the ELBO is computed inside a
``LightningModule`` and one batch goes through the loss before the optimiser is built, so that
lazily created guide parameters exist when DDP and the optimiser collect them. The difference:
the library keeps its parameters in Pyro's global param store (``pyro_dwp.save``, ``predict`` and
``fit`` read them there), so instead of ``module_local_params=True`` every param-store value is
registered as a parameter of the :class:`SVIModule` (the same tensor objects: an update by the
optimiser is an update of the store).

Minibatch weighting across ``R`` ranks (processes: devices x nodes), each with a local batch of
``B`` examples, the global batch ``R * B``:

- the data plate's size is the full dataset ``N`` (the likelihood's ``dataset_size``), so each
  rank's data term is scaled by ``N / B``; DDP averages the ranks' gradients, which gives
  ``N / (R * B)`` times the gradient of the global batch's log-likelihood: the single-process
  estimator on the union of the ranks' batches;
- every rank's batch ``i`` is a slice of global batch ``i`` (a ``DistributedSampler``), so the
  KL weight ``M * pi_i`` (:func:`~pyro_dwp.infer.kl_weights`, ``M = ceil(N / (R * B))`` batches
  per epoch) follows the global batch index; the averaged KL gradient is counted once per global
  step, not once per rank;
- every rank starts from the same seed and so draws the same weight samples: a DDP step is the
  single-process step on the global batch (a contiguous block of the epoch's permutation), equal
  up to floating-point rounding (the order of the sums).

The sampler pads an epoch to a multiple of ``R`` by repeating up to ``R - 1`` examples (as
``DistributedSampler`` does); with ``N`` divisible by ``R`` nothing is repeated.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pyro
import pyro.poutine as poutine
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .checkpoint import get_rng_state, set_rng_state
from .compiled import CompiledSVI, compile_or_warn
from .fingerprint import describe, differences
from .fit import (
    _ENGINES,
    CheckpointError,
    Engine,
    _check_fit_args,
    _DataTermMessenger,
    _ImproperPriorCheck,
    _warn_about_guide_init,
    run_settings,
)
from .kl import KLScaleMessenger, KLScheme, kl_weights

__all__ = [
    "ACCELERATORS",
    "STRATEGIES",
    "SVIModule",
    "check_distributed_args",
    "fit_distributed",
    "load_distributed_checkpoint",
]

STRATEGIES = ("auto", "ddp")
"""``strategy`` choices: ``"auto"`` (one process on one device, DDP on more) or ``"ddp"``."""

ACCELERATORS = ("cpu", "cuda")
"""``accelerator`` choices, named as the library's ``device`` option (``cuda`` is Lightning's
``gpu``); DDP communicates through gloo on CPUs and NCCL on GPUs."""

_CHECKPOINT_KEY = "pyro_dwp"
"""Key of this module's own state (RNG, history, run settings) in a Lightning checkpoint."""


class SVIModule(pl.LightningModule):
    """A :class:`~pyro_dwp.bnn.BNN` (or any model) and its guide as a ``LightningModule``.

    Build it, call :meth:`prepare` once (one batch through the loss: the guide's parameters
    are created), then hand it to a ``Trainer``; :func:`fit_distributed` does all three.

    Args:
        model: ``model(x_batch, y_batch)`` whose likelihood's plate has size ``N = len(x)``.
        guide: Its guide, e.g. :class:`~pyro_dwp.guides.BBBNormal`.
        x: Training inputs ``(N, *in_shape)``, on the CPU (batches move to the device).
        y: Training targets ``(N, ...)``.
        batch_size: Examples per rank and step ``B``; the global batch is ``R * B``.
        lr: Adam learning rate.
        elbo: ``Trace_ELBO`` or ``TraceMeanField_ELBO`` (as in :func:`~pyro_dwp.infer.fit`).
        num_particles: Monte Carlo weight samples per step.
        vectorize_particles: Draw the particles in one vectorised pass.
        kl_scheme: ``"uniform"`` or ``"blundell"`` KL weights, by global batch index.
        seed: Seed of the shuffling (a ``DistributedSampler``'s, per epoch).
        callback: Called on every rank with each epoch's record (see :func:`fit_distributed`).
        engine: How :meth:`loss` is computed, as :func:`~pyro_dwp.infer.fit`'s ``engine``:
            ``"pyro"`` (Pyro's ELBO), or ``"compiled"`` / ``"auto"`` (the first step through
            Pyro's ELBO, then :meth:`~pyro_dwp.infer.compiled.CompiledSVI.loss`, the same loss
            as plain PyTorch, where it covers the model; else a warning and Pyro's ELBO).
            Lightning's optimiser steps either; checkpoints of either resume on the other.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        lr: float = 1e-3,
        elbo: type[ELBO] = Trace_ELBO,
        num_particles: int = 1,
        vectorize_particles: bool = False,
        kl_scheme: KLScheme = "uniform",
        seed: int = 0,
        callback: Callable[[dict[str, float]], None] | None = None,
        engine: Engine = "pyro",
    ) -> None:
        super().__init__()
        if engine not in _ENGINES:
            raise ValueError(f"engine must be one of {_ENGINES}, got {engine!r}")
        self.engine = engine
        self._compiled: CompiledSVI | None = None
        self._compile_tried = engine == "pyro"
        self.model = model
        self.guide = guide
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.callback = callback
        self.kl_scheme: KLScheme = kl_scheme
        self.elbo = elbo(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=1 if vectorize_particles else float("inf"),
        )
        self.options = {
            "batch_size": batch_size,
            "kl_scheme": kl_scheme,
            "seed": seed,
            "num_particles": num_particles,
            "vectorize_particles": vectorize_particles,
            "elbo": elbo,
            "lr": lr,
        }
        self.kl_scale = KLScaleMessenger()
        self.data_term = _DataTermMessenger()
        self.checks = [] if issubclass(elbo, TraceMeanField_ELBO) else [_ImproperPriorCheck(elbo)]
        self.extra_params = nn.ParameterDict()
        self.history: list[dict[str, float]] = []
        self._scales: list[float] = []
        self._sums: Tensor | None = None  # (3,): loss, nll and steps of the current epoch
        self._epoch_start = 0.0
        self._fingerprint: dict[str, Any] | None = None

    def prepare(self) -> None:
        """Run one batch through model and guide (no gradient) so that every parameter exists,
        then register the param store's values that no submodule holds (a learned
        ``noise_scale``...) in :attr:`extra_params`, and tell DDP to ignore module parameters
        that SVI does not train (a ``BNN``'s sampled weights, used only as initial values)."""
        device = next(self.parameters(), self.x).device  # where the model was put, if anywhere
        x, y = self.x[: self.batch_size].to(device), self.y[: self.batch_size].to(device)
        with torch.no_grad(), poutine.block():
            traced = poutine.trace(self.guide).get_trace(x, y)
            poutine.replay(self.model, trace=traced)(x, y)
        store = pyro.get_param_store()
        owned = {id(p) for p in self.parameters()}
        for name, value in list(store.named_parameters()):
            if id(value) in owned:
                continue
            param = value if isinstance(value, nn.Parameter) else nn.Parameter(value.detach())
            # Pyro's own PyroModule puts the Parameter into the store the same way.
            store._params[name] = param
            self.extra_params[name.replace(".", "__")] = param
        trained = {id(v) for _, v in store.named_parameters()}
        ignore = [n for n, p in self.named_parameters() if id(p) not in trained]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ignore)

    def trained_parameters(self) -> list[Tensor]:
        """The unconstrained values of Pyro's param store, what SVI optimises."""
        return [v for _, v in pyro.get_param_store().named_parameters()]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trained_parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        """This rank's slice of each global batch: ``(B, *in_shape), (B, ...)``."""
        sampler = DistributedSampler(
            TensorDataset(self.x, self.y),
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=True,
            seed=self.seed,
        )
        return DataLoader(sampler.dataset, batch_size=self.batch_size, sampler=sampler)

    def on_train_epoch_start(self) -> None:
        num_batches = self.trainer.num_training_batches
        self._scales = (kl_weights(num_batches, self.kl_scheme) * num_batches).tolist()
        self._sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self._epoch_start = time.perf_counter()

    @property
    def running_engine(self) -> str:
        """The engine of the latest step: ``"compiled"`` once the compiled loss runs."""
        return "pyro" if self._compiled is None else "compiled"

    def loss(self, x: Tensor, y: Tensor, kl_scale: float) -> tuple[Tensor, Tensor]:
        """The differentiable -ELBO of one batch, the KL term multiplied by ``kl_scale``, and
        its data term ``(N / B) log p(y | x, w)`` (detached).

        Args:
            x: Inputs ``(B, *in_shape)``.
            y: Targets ``(B, ...)``.
            kl_scale: ``M * pi_i`` of the global batch index ``i``.

        Returns:
            Two scalar tensors.
        """
        if self._compiled is not None:
            return self._compiled.loss(x, y, kl_scale)
        self.kl_scale.scale = kl_scale
        self.data_term.reset()
        loss = self.elbo.differentiable_loss(
            self.data_term(self.kl_scale(self.model)), self.kl_scale(self.guide), x, y
        )
        return loss, torch.as_tensor(self.data_term.mean(), device=loss.device)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        kl_scale = self._scales[batch_idx]
        if not self.checks and not self._compile_tried:  # after the checked first step
            self._compile_tried = True
            self._compiled = compile_or_warn(
                self.engine, self.model, self.guide, x, y, optim=None, elbo=type(self.elbo),
                num_particles=self.elbo.num_particles,
                vectorize_particles=self.elbo.vectorize_particles, kl_scale=kl_scale,
            )  # fmt: skip
        with ExitStack() as stack:
            for check in self.checks:  # the first step of this process only
                stack.enter_context(check)
            loss, data = self.loss(x, y, kl_scale)
        self.checks = []
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {float(loss)} at epoch {self.current_epoch + 1}, step {batch_idx + 1} "
                f"of {self.trainer.num_training_batches} (rank {self.global_rank})"
            )
        nll = -data.to(torch.float64)
        self._sums += torch.stack([loss.detach().double(), nll, torch.ones_like(nll)])
        return loss

    def on_train_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._sums, reduce_op="mean")
        loss, nll = (sums[:2] / sums[2]).tolist()
        record = {"epoch": self.current_epoch + 1, "loss": loss, "nll": nll, "kl": loss - nll}
        record["seconds"] = time.perf_counter() - self._epoch_start
        self.history.append(record)
        if self.callback is not None:
            self.callback(record)

    def fingerprint(self) -> dict[str, Any]:
        """:func:`~pyro_dwp.infer.fit.run_settings` of this run, with its number of ranks."""
        if self._fingerprint is None:
            options = {**self.options, "ranks": self.trainer.world_size}
            self._fingerprint = run_settings(self.model, self.guide, self.x, self.y, **options)
        return self._fingerprint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        device = self.device
        checkpoint[_CHECKPOINT_KEY] = {
            **get_rng_state(device),
            "history": list(self.history),
            "fingerprint": describe(self.fingerprint()),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(_CHECKPOINT_KEY)
        if state is None:
            raise CheckpointError("not a checkpoint of pyro_dwp's SVIModule")
        changed = differences(state["fingerprint"], describe(self.fingerprint()))
        if changed:
            raise CheckpointError(
                "the checkpoint was written with other settings ("
                + "; ".join(changed)
                + "): rerun with its settings, or start over with another checkpoint path"
            )
        set_rng_state(state, self.device)
        self.history = list(state["history"])


def check_distributed_args(devices: int, num_nodes: int, strategy: str, accelerator: str) -> None:
    """Refuse bad distributed settings before any work, with one line each.

    Raises:
        ValueError: ``devices`` or ``num_nodes`` not a positive integer, an unknown
            ``strategy`` or ``accelerator``, ``cuda`` without a CUDA device or with fewer
            devices than asked for.
    """
    for label, v in (("devices", devices), ("num_nodes", num_nodes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{label} must be a positive integer, got {v!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if accelerator not in ACCELERATORS:
        raise ValueError(
            f"unknown accelerator {accelerator!r}; choose one of {', '.join(ACCELERATORS)}"
        )
    if accelerator == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise ValueError("accelerator cuda was asked for, but torch sees no CUDA device")
        if devices > available:
            raise ValueError(f"{devices} CUDA devices were asked for, but torch sees {available}")


def fit_distributed(
    model: Callable,
    guide: Callable,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    elbo: type[ELBO] = Trace_ELBO,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    kl_scheme: KLScheme = "uniform",
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[dict[str, float]], None] | None = None,
    callbacks: list[pl.Callback] | tuple[pl.Callback, ...] = (),
    engine: Engine = "pyro",
) -> list[dict[str, float]]:
    """Fit ``guide`` to ``model(x, y)`` with SVI, data-parallel over ``devices * num_nodes``
    processes (Lightning's DDP), with the minibatch weighting of :func:`~pyro_dwp.infer.fit`.

    Launch: run the script once per node; Lightning starts the ``devices`` processes of a node
    itself (it reruns the script's command line), or takes them from ``torchrun`` or SLURM
    (README, "Multi-device and multi-node training"). Every process must build the same model
    and guide; each seeds Pyro with ``seed``, so all draw the same weight samples.

    Args:
        model: ``model(x_batch, y_batch)``, its likelihood's plate of size ``N = len(x)``.
        guide: Its guide; parameters are created on a first batch, before the optimiser.
        x: Inputs ``(N, *in_shape)``.
        y: Targets ``(N, ...)``.
        epochs: Total number of epochs (a resumed run continues up to it).
        batch_size: Examples per process and step ``B``; the global batch is
            ``devices * num_nodes * B`` and an epoch has ``ceil(N / (devices * num_nodes * B))``
            steps.
        lr: Adam learning rate.
        elbo: ``Trace_ELBO`` or ``TraceMeanField_ELBO``.
        num_particles: Monte Carlo weight samples per step.
        vectorize_particles: Draw the particles in one vectorised pass.
        kl_scheme: ``"uniform"`` or ``"blundell"`` KL weights by global batch index.
        devices: Processes per node: GPUs with ``accelerator="cuda"``, CPU processes otherwise.
        num_nodes: Machines.
        strategy: ``"auto"`` (one process when ``devices * num_nodes == 1``, else DDP) or
            ``"ddp"``.
        accelerator: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL).
        checkpoint: A Lightning checkpoint file (``.ckpt``) written every ``checkpoint_every``
            epochs: model, guide and every learned value, the optimiser, the RNG, the history.
        checkpoint_every: Epochs between checkpoints.
        resume: Continue from ``checkpoint`` if it exists and was written with the same
            settings (those of ``fit``, and the number of processes); otherwise
            :class:`~pyro_dwp.infer.CheckpointError`.
        seed: Seed of Pyro's RNGs (the weight samples) and of the shuffling.
        progress: Show Lightning's progress bar.
        callback: Called on every process with each epoch's record.
        callbacks: More Lightning callbacks.
        engine: ``"pyro"``, ``"compiled"`` or ``"auto"``: how each process computes its loss
            (:class:`SVIModule`); not a run setting (a checkpoint resumes on either).

    Returns:
        One record per epoch (the same on every process): ``epoch``, ``loss`` (-ELBO), ``nll``
        (data term), ``kl`` (``loss - nll``), averaged over the epoch's global steps, and
        ``seconds``. The trained values are in Pyro's param store, on every process, on the
        device of ``x`` (Lightning's teardown would leave them on the CPU).

    Raises:
        ValueError: on bad arguments (see :func:`check_distributed_args`), before any work.
        CheckpointError: on resume, if the checkpoint belongs to another run.
    """
    check_distributed_args(devices, num_nodes, strategy, accelerator)
    if checkpoint is not None and Path(checkpoint).suffix != ".ckpt":
        raise ValueError(f"checkpoint must be a Lightning .ckpt file, got {str(checkpoint)!r}")
    _check_fit_args(x, y, epochs, batch_size, num_particles, checkpoint_every, resume, checkpoint)
    _warn_about_guide_init(model, guide)
    pyro.set_rng_seed(seed)
    module = SVIModule(
        model,
        guide,
        x.cpu(),
        y.cpu(),
        batch_size=batch_size,
        lr=lr,
        elbo=elbo,
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        kl_scheme=kl_scheme,
        seed=seed,
        callback=callback,
        engine=engine,
    )
    module.prepare()
    extra: list[pl.Callback] = list(callbacks)
    if checkpoint is not None:
        path = Path(checkpoint)
        extra.append(
            ModelCheckpoint(
                dirpath=path.parent,
                filename=path.stem,
                every_n_epochs=checkpoint_every,
                save_top_k=1,
                enable_version_counter=False,
                save_on_train_epoch_end=True,
            )
        )
    ranks = devices * num_nodes
    trainer = pl.Trainer(
        accelerator="gpu" if accelerator == "cuda" else "cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy=DDPStrategy() if strategy == "ddp" or ranks > 1 else "auto",
        max_epochs=epochs,
        use_distributed_sampler=False,
        logger=False,
        callbacks=extra,
        enable_checkpointing=checkpoint is not None,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    resumed = resume and checkpoint is not None and Path(checkpoint).exists()
    with warnings.catch_warnings():
        # The checkpoint is one named file; other files beside it (a job's outputs) are fine.
        warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
        trainer.fit(module, ckpt_path=checkpoint if resumed else None, weights_only=False)
    module.to(x.device)  # Lightning's teardown leaves the module on the CPU
    return module.history


def load_distributed_checkpoint(
    path: str | os.PathLike, model: Callable, guide: Callable, x: Tensor, y: Tensor
) -> None:
    """Put the learned values of a :func:`fit_distributed` checkpoint into Pyro's param store,
    in one process on the CPU, for :func:`~pyro_dwp.infer.predict` or
    :func:`~pyro_dwp.diagnostics.to_inference_data` (only load files you trust: pickle).

    Args:
        path: The checkpoint (``.ckpt``).
        model: The model, built as for the training run.
        guide: Its guide, built as for the training run and not yet run.
        x: Example inputs ``(>= 1, *in_shape)`` to set the guide up.
        y: Their targets ``(>= 1, ...)``.

    Raises:
        CheckpointError: If the file is not a checkpoint of :func:`fit_distributed`.
        RuntimeError: If its parameters do not match the model and guide (their names, shapes).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or _CHECKPOINT_KEY not in state:
        raise CheckpointError(f"{path} is not a checkpoint of pyro_dwp's fit_distributed")
    module = SVIModule(model, guide, x[:1].cpu(), y[:1].cpu(), batch_size=1)
    module.prepare()
    module.load_state_dict(state["state_dict"])

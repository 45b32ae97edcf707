"""Training with SVI: minibatches, KL weighting, checkpoints that resume exactly."""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any, Literal

import pyro
import pyro.optim
import torch
from pyro.infer import ELBO, SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from torch import Tensor
from tqdm.auto import tqdm

from pyro_dwp.bnn import BNN
from pyro_dwp.distributions import DeepWeightPrior, LogUniform, MarkovChainPrior
from pyro_dwp.io import progress_bar, save_checkpoint

from .checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    non_finite_paths,
    set_param_store_state,
)
from .compiled import CompiledSVI, compile_or_warn
from .fingerprint import describe, tensor_digest
from .graphs import GraphedSVI, graphable_reason
from .interrupt import DeferredSignals, TrainingInterrupted
from .kl import KLScaleMessenger, KLScheme, kl_weights
from .optim import JointAdam

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "Engine",
    "SVITrainer",
    "TrainingInterrupted",
    "fit",
    "load_checkpoint",
    "run_settings",
    "save_checkpoint",
]


Engine = Literal["pyro", "compiled", "auto"]
"""How :func:`fit` runs a step: Pyro's ``SVI``, or the compiled step of
:mod:`pyro_dwp.infer.compiled` (``"compiled"`` warns where it falls back to Pyro's ``SVI``,
``"auto"`` too)."""
_ENGINES = ("pyro", "compiled", "auto")


class _DataTermMessenger(Messenger):
    """Record the scaled log-likelihood of observed sites (no gradient), averaged over calls.

    Under ``Trace_ELBO(vectorize_particles=True)`` the particles form a plate named
    ``num_particles_vectorized``; the record is divided by its size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.total: Tensor | float = 0.0
        self.calls = 0

    def __enter__(self):
        self.calls += 1
        return super().__enter__()

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["is_observed"]:
            particles = math.prod(
                f.size for f in msg["cond_indep_stack"] if f.name == "num_particles_vectorized"
            )
            with torch.no_grad():
                log_p = msg["fn"].log_prob(msg["value"]).sum() * msg["scale"]
            self.total = self.total + log_p / particles

    def mean(self) -> Tensor | float:
        return self.total / max(1, self.calls)


class _ImproperPriorCheck(Messenger):
    """Refuse a latent site with the improper ``LogUniform`` prior: under a Monte Carlo ELBO its
    term is ``-log|w|`` up to an infinite constant, and the loss means nothing. Refuse a
    ``DeepWeightPrior`` or ``MarkovChainPrior`` site that no reparameterisation rewrote: its
    ``log_prob`` is only an importance-sampled estimate, not the auxiliary bound."""

    def __init__(self, elbo: type[ELBO]) -> None:
        super().__init__()
        self.elbo = elbo

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if not msg["is_observed"] and isinstance(fn, LogUniform):
            raise ValueError(
                f"site {msg['name']!r} has the improper prior LogUniform: under "
                f"{self.elbo.__name__} (a Monte Carlo ELBO) the loss is meaningless; pass "
                "elbo=TraceMeanField_ELBO, which uses its registered KL (Molchanov et al., 2017)"
            )
        if not msg["is_observed"] and isinstance(fn, DeepWeightPrior):
            raise ValueError(
                f"site {msg['name']!r} has a DeepWeightPrior that is not reparameterised: build "
                "the model with BNN(..., reparam=DeepWeightPriorStrategy()) "
                "(pyro_dwp.infer.reparam) to train on the auxiliary bound"
            )
        if not msg["is_observed"] and isinstance(fn, MarkovChainPrior):
            raise ValueError(
                f"site {msg['name']!r} has a MarkovChainPrior that is not reparameterised: build "
                "the model with BNN(..., reparam=MarkovChainStrategy()) "
                "(pyro_dwp.infer.markov_chain_reparam) to train on the auxiliary bound"
            )


def _warn_about_guide_init(model: Callable, guide: Callable) -> None:
    """Warn if an AutoGuide on a :class:`BNN` starts its weight means at 0 (Pyro's default)."""
    init = getattr(guide, "init_loc_fn", None)
    if isinstance(init, functools.partial):
        init = init.func
    if isinstance(model, BNN) and init is init_to_feasible:
        warnings.warn(
            f"{type(guide).__name__} starts every weight mean at 0 (Pyro's default "
            "init_loc_fn=init_to_feasible), not at the network's initialisation, and such a "
            "network may not train: pass init_loc_fn=init_to_module (from pyro_dwp.guides)",
            UserWarning,
            stacklevel=3,
        )


def fit(
    model: Callable,
    guide: Callable,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    optim: pyro.optim.PyroOptim | None = None,
    elbo: type[ELBO] = Trace_ELBO,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    kl_scheme: KLScheme = "uniform",
    kl_weight: float = 1.0,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[dict[str, float]], None] | None = None,
    handlers: Sequence[AbstractContextManager] = (),
    engine: Engine = "pyro",
    cuda_graphs: bool = True,
    torch_compile: bool = False,
) -> list[dict[str, float]]:
    """Fit ``guide`` to the posterior of ``model(x, y)`` with SVI and ``Trace_ELBO``.

    Each epoch shuffles the data (a seeded generator) into ``M = ceil(N / batch_size)``
    minibatches. The data term is scaled by ``N / B`` by the model's subsampled plate; the KL
    term (every latent site, in model and guide) by ``kl_weight * M * pi_i`` from
    :func:`kl_weights`, through :class:`~pyro_dwp.infer.KLScaleMessenger`, an effect handler.

    Args:
        model: ``model(x_batch, y_batch)``, e.g. a :class:`~pyro_dwp.bnn.BNN`.
        guide: Its guide, e.g. :class:`~pyro_dwp.guides.BBBNormal`; a Pyro ``AutoNormal`` on a
            ``BNN`` needs ``init_loc_fn=init_to_module`` (warned about otherwise: its means would
            start at 0).
        x: Inputs ``(N, *in_shape)``.
        y: Targets ``(N, ...)``.
        epochs: Total number of epochs (a resumed run continues up to it).
        batch_size: Minibatch size B.
        lr: Adam learning rate (ignored if ``optim`` is given).
        optim: A Pyro optimiser; default :class:`~pyro_dwp.infer.JointAdam` (Adam, one fused
            update of all parameters per step).
        elbo: The ELBO class: ``Trace_ELBO`` (Monte Carlo, any proper prior) or, for priors whose
            KL against the guide is registered, ``TraceMeanField_ELBO``; the improper
            ``LogUniform`` needs the latter (refused otherwise, before the first update).
        num_particles: Monte Carlo samples of the weights per step.
        vectorize_particles: Draw the particles in one vectorised pass.
        kl_scheme: ``"uniform"`` or ``"blundell"`` minibatch KL weights.
        kl_weight: A constant factor of the KL term on every step (positive, finite): 1 (the
            default) optimises the ELBO; another value the tempered objective
            ``nll + kl_weight * KL``, whose optimum over all ``q`` is proportional to
            ``p(w) p(D | w)^(1 / kl_weight)`` (a cold posterior for ``kl_weight < 1``).
        device: ``"cpu"`` or ``"cuda"``; model, guide and data are moved there.
        checkpoint: File to write (atomically) every ``checkpoint_every`` epochs and at the end.
            With one, SIGINT (Ctrl-C) or SIGTERM stops training at the end of the epoch under
            way, writes the checkpoint there and raises :class:`TrainingInterrupted` (a second
            signal acts at once: :mod:`pyro_dwp.infer.interrupt`).
        checkpoint_every: Epochs between checkpoints.
        resume: Continue from ``checkpoint`` if it exists, and if it was written with the same
            settings: everything :func:`run_settings` records (model, prior, guide, parameter
            names and shapes, optimiser, ELBO, handlers, data, batch size, seed...).
        seed: Seed of Pyro's RNGs and of the shuffling.
        progress: Show a tqdm bar (one line a minute when stderr is not a terminal).
        callback: Called with each epoch's record.
        handlers: Context managers entered, in order, around each SVI step (guide and model
            together), e.g. ``[LocalReparameterizationMessenger()]``
            (:class:`~pyro_dwp.infer.local_reparam.LocalReparameterizationMessenger`).
        engine: ``"pyro"``: every step through Pyro's ``SVI``. ``"compiled"`` or ``"auto"``:
            the first step through Pyro's ``SVI`` (it sets the guide up and runs Pyro's checks),
            then the compiled step of :func:`~pyro_dwp.infer.compiled.compile_svi`, the same
            loss, noise and optimiser as plain PyTorch, where it covers the model (a ``BNN``
            with Normal, scale-mixture or deep weight priors, the package's Gaussian guides,
            ``Trace_ELBO`` / ``TraceMeanField_ELBO``, looped or vectorised particles, the local
            reparameterisation: see there); elsewhere a warning names the reason and Pyro's
            ``SVI`` trains. Checkpoints of either engine resume on the other.
        cuda_graphs: On a CUDA device, with the compiled engine and a fused
            :class:`~pyro_dwp.infer.JointOptimizer` (the default :class:`~pyro_dwp.infer.JointAdam`
            or :class:`~pyro_dwp.infer.JointSGD`), replay the compiled step from CUDA
            graphs (:class:`~pyro_dwp.infer.graphs.GraphedSVI`: the same step, one launch;
            the loss is then checked for NaN once per epoch, still naming the step).
        torch_compile: With the compiled engine, run its step's passes through
            ``torch.compile`` (:meth:`~pyro_dwp.infer.compiled.CompiledSVI.use_torch_compile`:
            the same draws and loss; on a CPU its elementwise work fused, about 30% off a BBB
            step of the 784-1200-1200-10 MLP; the first step compiles, 20-30 s, and is checked
            against the eager pass: a ``UserWarning`` and eager passes if it differs).

    Returns:
        One record per epoch: ``epoch``, ``loss`` (-ELBO), ``nll`` (data term), ``kl``
        (KL term, ``loss = nll + kl``), ``seconds``; averaged over the epoch's steps. With a
        ``kl_weight`` other than 1, ``kl`` is ``kl_weight`` times the KL term and ``loss`` the
        tempered objective.

    Raises:
        CheckpointError: on resume, if the checkpoint is unreadable or was written with other
            settings (the message names each differing setting, old -> new).
        ValueError: before training, on bad arguments or a NaN / infinite value in ``x`` or
            ``y`` (naming the first example that has one).
        FloatingPointError: on a NaN or infinite loss, naming the step; the last checkpoint on
            disk is the last good state and is left untouched.
        TrainingInterrupted: on SIGINT or SIGTERM with a ``checkpoint``, after the epoch under
            way, its checkpoint written (resume goes on from it as if never stopped).
    """
    _check_fit_args(x, y, epochs, batch_size, num_particles, checkpoint_every, resume, checkpoint)
    trainer = SVITrainer(
        model, guide, x, y, batch_size=batch_size, lr=lr, optim=optim, elbo=elbo,
        num_particles=num_particles, vectorize_particles=vectorize_particles,
        kl_scheme=kl_scheme, kl_weight=kl_weight, device=device, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, seed=seed, progress=progress, callback=callback,
        handlers=handlers, engine=engine, cuda_graphs=cuda_graphs, torch_compile=torch_compile,
    )  # fmt: skip
    if resume:
        trainer.resume()
    return trainer.train(epochs)


class SVITrainer:
    """Minibatch SVI that keeps its optimiser, state and history between calls.

    :meth:`train` continues the run up to a total number of epochs, so a caller that trains in
    stages (a bandit, a time budget) keeps Adam's moments, the shuffling generator and the RNG
    stream across calls; :func:`fit` is the one-call front door with the same arguments (see
    there for their meaning). Each epoch shuffles the data into ``ceil(N / batch_size)``
    minibatches; the checkpoint (:class:`~pyro_dwp.infer.checkpoint.Checkpoint`) is written
    every ``checkpoint_every`` epochs and at the end of each :meth:`train` call.
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
        optim: pyro.optim.PyroOptim | None = None,
        elbo: type[ELBO] = Trace_ELBO,
        num_particles: int = 1,
        vectorize_particles: bool = False,
        kl_scheme: KLScheme = "uniform",
        kl_weight: float = 1.0,
        device: str | torch.device = "cpu",
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        seed: int = 0,
        progress: bool = True,
        callback: Callable[[dict[str, float]], None] | None = None,
        handlers: Sequence[AbstractContextManager] = (),
        engine: Engine = "pyro",
        cuda_graphs: bool = True,
        torch_compile: bool = False,
    ) -> None:
        _check_fit_args(x, y, 1, batch_size, num_particles, checkpoint_every, False, checkpoint)
        if engine not in _ENGINES:
            raise ValueError(f"engine must be one of {_ENGINES}, got {engine!r}")
        _warn_about_guide_init(model, guide)
        self.model, self.guide = model, guide
        self.device = device = torch.device(device)
        if isinstance(model, torch.nn.Module):
            model.to(device)
        if isinstance(guide, torch.nn.Module):
            guide.to(device)
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.callback, self.handlers = callback, list(handlers)
        self.checkpoint_every = checkpoint_every
        self.num_batches = math.ceil(self.x.shape[0] / batch_size)
        number = isinstance(kl_weight, (int, float)) and not isinstance(kl_weight, bool)
        if not (number and math.isfinite(kl_weight) and kl_weight > 0):
            raise ValueError(f"kl_weight must be a positive finite number, got {kl_weight!r}")
        scales = kl_weights(self.num_batches, kl_scheme) * (self.num_batches * kl_weight)
        self._scales = scales.tolist()
        self.optim = optim if optim is not None else JointAdam(lr)
        self._kl_scale, self._data_term = KLScaleMessenger(), _DataTermMessenger()
        loss = elbo(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=1 if vectorize_particles else float("inf"),
        )
        self.svi = SVI(
            self._data_term(self._kl_scale(model)), self._kl_scale(guide), self.optim, loss
        )
        self._checks = [] if issubclass(elbo, TraceMeanField_ELBO) else [_ImproperPriorCheck(elbo)]
        self.engine = engine
        self._elbo, self._num_particles = elbo, num_particles
        self._vectorize_particles = vectorize_particles
        self._compiled: CompiledSVI | None = None
        self._compile_tried = engine == "pyro"
        self._cuda_graphs, self._torch_compile = cuda_graphs, torch_compile
        self._graphed: GraphedSVI | None = None
        self.shuffle = torch.Generator().manual_seed(seed)
        self._validate = is_validation_enabled()
        self.checkpoint = (
            None
            if checkpoint is None
            else Checkpoint(checkpoint, device=device, generators={"shuffle": self.shuffle})
        )
        self._options = {
            "batch_size": batch_size,
            "kl_scheme": kl_scheme,
            # only where it is not 1, so that checkpoints written before the option still resume
            **({} if kl_weight == 1 else {"kl_weight": kl_weight}),
            "seed": seed,
            "num_particles": num_particles,
            "vectorize_particles": vectorize_particles,
            "elbo": elbo,
            "optim": self.optim,
            "handlers": self.handlers,
        }
        self._fingerprint: dict[str, Any] | None = None  # known once model and guide are set up
        self.epoch = 0
        """Epochs trained so far."""
        self.history: list[dict[str, float]] = []
        """One record per epoch (see :func:`fit`)."""
        self._started = False  # seeded (or resumed) and the first step checked
        self._announce_resume = False  # say so at the next train()
        self._last_saved: int | None = None

    @property
    def running_engine(self) -> Literal["pyro", "compiled"]:
        """The engine of the latest step: ``"compiled"`` once the compiled step runs."""
        return "pyro" if self._compiled is None else "compiled"

    @property
    def cuda_graphs(self) -> int:
        """Number of CUDA graphs the compiled step replays (0: none; see ``cuda_graphs``)."""
        return 0 if self._graphed is None or self._graphed.failed else self._graphed.captured

    def resume(self) -> bool:
        """Continue from the checkpoint if it exists (before the first :meth:`train`).

        Returns:
            Whether a checkpoint was read.

        Raises:
            CheckpointError: if it is unreadable or was written with other settings.
        """
        if self._started:
            raise RuntimeError("resume() must come before the first train()")
        if self.checkpoint is None:
            raise ValueError("resume needs a checkpoint path")
        self._last_saved = self.epoch
        if not self.checkpoint.exists():
            return False
        x1, y1 = self.x[:1], self.y[:1]
        pyro.clear_param_store()
        with torch.no_grad(), pyro.poutine.block():
            traced = pyro.poutine.trace(self.guide).get_trace(x1, y1)
            pyro.poutine.replay(self.model, trace=traced)(x1, y1)
        self._fingerprint = run_settings(self.model, self.guide, self.x, self.y, **self._options)
        state = self.checkpoint.load(self._fingerprint)
        pyro.clear_param_store()
        set_param_store_state(state["params"], self.device)
        with torch.no_grad(), pyro.poutine.block():
            self.guide(x1, y1)  # set the guide up (its parameters come from the param store)
        self.optim.set_state(state["optim"])
        self.checkpoint.restore_rng(state)
        self.history, self.epoch = state["history"], state["epoch"]
        self._last_saved = self.epoch
        self._started = self._announce_resume = True
        return True

    def train(self, epochs: int) -> list[dict[str, float]]:
        """Train up to ``epochs`` epochs in all (none if already there, with a warning if the
        run is past them: its history, all of it, is not the ``epochs`` asked for); the history
        so far.

        Raises:
            FloatingPointError: on a NaN or infinite loss, naming the step; the last checkpoint
                on disk is the last good state and is left untouched.
            TrainingInterrupted: on SIGINT or SIGTERM with a checkpoint, after the epoch under
                way, the checkpoint written there.
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        first_check = not self._started
        if not self._started:
            pyro.set_rng_seed(self.seed)
            self._started = True
        start = self.epoch
        if start > epochs:
            warnings.warn(
                f"the run already has {start} epochs, more than the {epochs} asked for: nothing "
                f"is trained, and the history holds all {start}",
                stacklevel=2,
            )
        if self._announce_resume and self.progress:
            message = f"resumed at epoch {start} of {epochs} from {self.checkpoint.path}"
            tqdm.write(message, file=sys.stderr)
        self._announce_resume = False
        bar = progress_bar(
            range(start, epochs),
            desc="epochs",
            disable=not self.progress,
            initial=start,
            total=epochs,
        )
        # with a checkpoint, SIGINT / SIGTERM stop at the epoch's end, the checkpoint written
        with DeferredSignals() if self.checkpoint is not None else nullcontext() as stop:
            for epoch in bar:
                record = self._epoch(epoch, check=first_check and epoch == start)
                bar.set_postfix(  # shown at the bar's next refresh (see progress_bar)
                    loss=f"{record['loss']:.4g}",
                    nll=f"{record['nll']:.4g}",
                    kl=f"{record['kl']:.4g}",
                    refresh=False,
                )
                if self.callback is not None:
                    self.callback(record)
                stopped = stop is not None and stop.received is not None
                if self.checkpoint is not None and (
                    stopped or (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == epochs
                ):
                    self._save()
                if stopped:
                    bar.close()
                    raise TrainingInterrupted(
                        stop.received, self.epoch, epochs, self.checkpoint.path
                    )
        if self.checkpoint is None:
            self._check_params_finite()
        return self.history

    def _epoch(self, epoch: int, check: bool) -> dict[str, float]:
        """One pass over the shuffled data; ``check``: validate the first step (Pyro's checks
        and the refusal of improper priors under a Monte Carlo ELBO)."""
        t0 = time.perf_counter()
        losses: list[Tensor | float] = []
        nll_sum = torch.zeros((), device=self.device)
        order = torch.randperm(self.x.shape[0], generator=self.shuffle).to(self.device)
        for i in range(self.num_batches):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            self._kl_scale.scale = self._scales[i]
            self._data_term.reset()
            first = check and i == 0
            if not first and not self._compile_tried:
                self._compile(self.x[idx], self.y[idx], self._scales[i])
            step_loss: Tensor | float
            if self._graphed is not None:  # checked below, once per epoch
                step_loss, data = self._graphed.step(self.x[idx], self.y[idx], self._scales[i])
            elif self._compiled is not None:
                step_loss, data = self._compiled.step(self.x[idx], self.y[idx], self._scales[i])
            else:
                with ExitStack() as stack:
                    for handler in [*self.handlers, *(self._checks if first else [])]:
                        stack.enter_context(handler)
                    # Validate the model on the first step only: Pyro's checks synchronise the
                    # GPU several times per step and add passes over every weight.
                    with pyro.validation_enabled(self._validate and first):
                        step_loss = self.svi.step(self.x[idx], self.y[idx])
                data = self._data_term.mean()
            if not isinstance(step_loss, Tensor):
                self._check_finite(step_loss, epoch, i)
            losses.append(step_loss)
            nll_sum -= data
        if self._graphed is not None:  # one host synchronisation per epoch
            values = torch.stack([torch.as_tensor(v, device=self.device) for v in losses]).tolist()
            for i, value in enumerate(values):
                self._check_finite(value, epoch, i)
        else:
            values = losses
        record = {
            "epoch": epoch + 1,
            "loss": sum(values) / self.num_batches,
            "nll": float(nll_sum) / self.num_batches,
        }
        record.update(kl=record["loss"] - record["nll"], seconds=time.perf_counter() - t0)
        self.history.append(record)
        self.epoch = epoch + 1
        return record

    def _check_finite(self, loss: float, epoch: int, step: int) -> None:
        """Raise ``FloatingPointError`` naming the epoch and step (0-based) of a NaN or infinite
        ``loss``, and the last good checkpoint, which is kept."""
        if math.isfinite(loss):
            return
        raise FloatingPointError(
            f"loss is {loss} at epoch {epoch + 1}, step {step + 1} of {self.num_batches}; "
            f"{self._kept()}"
        )

    def _check_params_finite(self) -> None:
        """Raise ``FloatingPointError`` naming the parameters that an update left NaN or
        infinite (a finite loss, then a step too large), before they reach a checkpoint or the
        caller; the last good checkpoint is kept."""
        bad = non_finite_paths(dict(pyro.get_param_store().items()))
        if bad:
            raise FloatingPointError(
                f"parameter(s) {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                f"({len(bad)} of {len(pyro.get_param_store())}) are NaN or infinite after epoch "
                f"{self.epoch}, though every loss was finite: an update overflowed (a learning "
                f"rate too large?); {self._kept()}"
            )

    def _kept(self) -> str:
        """Which checkpoint a failure leaves in place, for messages."""
        if self._last_saved is not None and self.checkpoint is not None:
            path, epoch = self.checkpoint.path, self._last_saved
            return f"the last good checkpoint, {path} (epoch {epoch}), is kept"
        return "no checkpoint was written"

    def _compile(self, x: Tensor, y: Tensor, kl_scale: float) -> None:
        """Compile the step on the batch ``(x, y)`` (guide set up), or warn why not."""
        self._compile_tried = True
        self._compiled = compile_or_warn(
            self.engine, self.model, self.guide, x, y, optim=self.optim, elbo=self._elbo,
            num_particles=self._num_particles,
            vectorize_particles=self._vectorize_particles, handlers=self.handlers,
            kl_scale=kl_scale, torch_compile=self._torch_compile, stacklevel=4,
        )  # fmt: skip
        if (
            self._compiled is not None
            and self._cuda_graphs
            and graphable_reason(self._compiled) is None
        ):
            self._graphed = GraphedSVI(self._compiled)

    def _save(self) -> None:
        self._check_params_finite()
        if self._fingerprint is None:
            self._fingerprint = run_settings(
                self.model, self.guide, self.x, self.y, **self._options
            )
        self.checkpoint.save(
            self.epoch,
            self._fingerprint,
            self.history,
            params=pyro.get_param_store().get_state(),
            optim=self.optim.get_state(),
        )
        self._last_saved = self.epoch


def run_settings(
    model: Callable, guide: Callable, x: Tensor, y: Tensor, **options: Any
) -> dict[str, Any]:
    """What a checkpoint of :func:`fit` must agree on to be resumed, as :func:`describe` summaries.

    ``model``, ``guide`` (their types, structure and hyperparameters; priors with their values,
    a prior owning a network with a digest of its weights), ``params`` (the name and shape of
    every parameter in Pyro's param store: call it once model and guide are set up), ``data``
    (a digest of ``x`` ``(N, ...)`` and ``y`` ``(N, ...)``) and ``options`` (batch size, seed,
    optimiser and its arguments, ELBO, handlers...).
    """
    return {
        "n": x.shape[0],
        **{k: describe(v) for k, v in options.items()},
        "data": tensor_digest(x, y),
        "model": describe(model),
        "guide": describe(guide),
        "params": {k: list(v.shape) for k, v in pyro.get_param_store().items()},
    }


def _check_fit_args(
    x: Tensor,
    y: Tensor,
    epochs: int,
    batch_size: int,
    num_particles: int,
    checkpoint_every: int,
    resume: bool,
    checkpoint: str | os.PathLike | None,
) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("no training data: x is empty")
    for label, t in (("x", x), ("y", y)):
        if t.is_floating_point():
            bad = ~torch.isfinite(t.reshape(len(t), -1)).all(dim=1)
            if bad.any():
                rows = bad.nonzero()[:, 0]
                count = int((~torch.isfinite(t)).sum())
                raise ValueError(
                    f"{label} has {count} NaN or infinite value(s), in {len(rows)} example(s), "
                    f"the first at example {int(rows[0])}: drop or repair them before fit"
                )
    for label, v in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("num_particles", num_particles),
        ("checkpoint_every", checkpoint_every),
    ):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{label} must be a positive integer, got {v!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")

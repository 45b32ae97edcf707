"""Training with SVI: minibatches, KL weighting, checkpoints that resume exactly."""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

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
from pyro_dwp.distributions import DeepWeightPrior, LogUniform
from pyro_dwp.io import progress_bar, read_torch_file, save_checkpoint

from .fingerprint import describe, differences, tensor_digest
from .kl import KLScaleMessenger, KLScheme, kl_weights
from .optim import JointAdam

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "fit",
    "load_checkpoint",
    "run_settings",
    "save_checkpoint",
]

CHECKPOINT_VERSION = 2
"""Format version of the training checkpoints that :func:`load_checkpoint` accepts."""


# What every training checkpoint holds (fit's and the mnist job's deterministic ones).
_CHECKPOINT_KEYS = frozenset({"version", "epoch", "fingerprint", "optim", "rng", "history"})


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


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
    ``DeepWeightPrior`` site that no reparameterisation rewrote: its ``log_prob`` is only an
    importance-sampled estimate, not the auxiliary bound."""

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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU (only load files you
    trust).

    Raises:
        FileNotFoundError: if there is no file.
        CheckpointError: if the file is truncated, corrupt or not a pyro_dwp checkpoint.
    """
    remedy = "run without resume to write a new one"
    try:
        state = read_torch_file(Path(path), what="checkpoint", remedy=remedy, weights_only=False)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= state.keys():
        raise CheckpointError(f"{path} is not a pyro_dwp training checkpoint; {remedy}")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is a checkpoint of format {state['version']}, written by another version of "
            f"pyro_dwp (this one reads format {CHECKPOINT_VERSION}); {remedy}"
        )
    return state


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
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[dict[str, float]], None] | None = None,
    handlers: Sequence[AbstractContextManager] = (),
) -> list[dict[str, float]]:
    """Fit ``guide`` to the posterior of ``model(x, y)`` with SVI and ``Trace_ELBO``.

    Each epoch shuffles the data (a seeded generator) into ``M = ceil(N / batch_size)``
    minibatches. The data term is scaled by ``N / B`` by the model's subsampled plate; the KL
    term (every latent site, in model and guide) by ``M * pi_i`` from :func:`kl_weights`, through
    :class:`~pyro_dwp.infer.KLScaleMessenger`, an effect handler.

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
        device: ``"cpu"`` or ``"cuda"``; model, guide and data are moved there.
        checkpoint: File to write (atomically) every ``checkpoint_every`` epochs and at the end.
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

    Returns:
        One record per epoch: ``epoch``, ``loss`` (-ELBO), ``nll`` (data term), ``kl``
        (KL term, ``loss = nll + kl``), ``seconds``; averaged over the epoch's steps.

    Raises:
        CheckpointError: on resume, if the checkpoint is unreadable or was written with other
            settings (the message names each differing setting, old -> new).
        ValueError: before training, on bad arguments or a NaN / infinite value in ``x`` or
            ``y`` (naming the first example that has one).
        FloatingPointError: on a NaN or infinite loss, naming the step; the last checkpoint on
            disk is the last good state and is left untouched.
    """
    _check_fit_args(x, y, epochs, batch_size, num_particles, checkpoint_every, resume, checkpoint)
    _warn_about_guide_init(model, guide)
    device = torch.device(device)
    if isinstance(model, torch.nn.Module):
        model.to(device)
    if isinstance(guide, torch.nn.Module):
        guide.to(device)
    x, y = x.to(device), y.to(device)
    n = x.shape[0]
    num_batches = math.ceil(n / batch_size)
    scales = (kl_weights(num_batches, kl_scheme) * num_batches).tolist()
    optim = optim if optim is not None else JointAdam(lr)
    kl_scale, data_term = KLScaleMessenger(), _DataTermMessenger()
    loss = elbo(
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        max_plate_nesting=1 if vectorize_particles else float("inf"),
    )
    svi = SVI(data_term(kl_scale(model)), kl_scale(guide), optim, loss)
    checks = [] if issubclass(elbo, TraceMeanField_ELBO) else [_ImproperPriorCheck(elbo)]
    shuffle = torch.Generator().manual_seed(seed)
    validate = is_validation_enabled()
    history: list[dict[str, float]] = []
    start = 0
    options = {
        "batch_size": batch_size,
        "kl_scheme": kl_scheme,
        "seed": seed,
        "num_particles": num_particles,
        "vectorize_particles": vectorize_particles,
        "elbo": elbo,
        "optim": optim,
        "handlers": list(handlers),
    }
    fingerprint: dict[str, Any] | None = None  # known once model and guide are set up
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        pyro.clear_param_store()
        with torch.no_grad(), pyro.poutine.block():
            traced = pyro.poutine.trace(guide).get_trace(x[:1], y[:1])
            pyro.poutine.replay(model, trace=traced)(x[:1], y[:1])
        fingerprint = run_settings(model, guide, x, y, **options)
        changed = differences(state["fingerprint"], fingerprint)
        if changed:
            raise CheckpointError(
                f"checkpoint {checkpoint} was written with other settings ("
                + "; ".join(changed)
                + "): rerun with its settings, or start over with another checkpoint path"
            )
        pyro.clear_param_store()
        params = {k: v.to(device) for k, v in state["params"]["params"].items()}
        pyro.get_param_store().set_state({**state["params"], "params": params})
        with torch.no_grad(), pyro.poutine.block():
            guide(x[:1], y[:1])  # set the guide up (its parameters come from the param store)
        optim.set_state(state["optim"])
        pyro.util.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        shuffle.set_state(state["shuffle_rng"])
        history, start = state["history"], state["epoch"]
        if progress:
            tqdm.write(f"resumed at epoch {start} of {epochs} from {checkpoint}", file=sys.stderr)
    else:
        pyro.set_rng_seed(seed)

    bar = progress_bar(
        range(start, epochs), desc="epochs", disable=not progress, initial=start, total=epochs
    )
    last_saved = start if resume else None
    for epoch in bar:
        t0 = time.perf_counter()
        loss_sum, nll_sum = 0.0, torch.zeros((), device=device)
        order = torch.randperm(n, generator=shuffle).to(device)
        for i in range(num_batches):
            idx = order[i * batch_size : (i + 1) * batch_size]
            kl_scale.scale = scales[i]
            data_term.reset()
            with ExitStack() as stack:
                for handler in [*handlers, *(checks if epoch == start and i == 0 else [])]:
                    stack.enter_context(handler)
                # Validate the model on the first step only: Pyro's checks synchronise the GPU
                # several times per step and add passes over every weight.
                with pyro.validation_enabled(validate and epoch == start and i == 0):
                    step_loss = svi.step(x[idx], y[idx])
            if not math.isfinite(step_loss):
                kept = (
                    f"the last good checkpoint, {checkpoint} (epoch {last_saved}), is kept"
                    if last_saved is not None
                    else "no checkpoint was written"
                )
                raise FloatingPointError(
                    f"loss is {step_loss} at epoch {epoch + 1}, "
                    f"step {i + 1} of {num_batches}; {kept}"
                )
            loss_sum += step_loss
            nll_sum -= data_term.mean()
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / num_batches,
            "nll": float(nll_sum) / num_batches,
        }
        record.update(kl=record["loss"] - record["nll"], seconds=time.perf_counter() - t0)
        history.append(record)
        bar.set_postfix(  # shown at the bar's next refresh (see progress_bar)
            loss=f"{record['loss']:.4g}",
            nll=f"{record['nll']:.4g}",
            kl=f"{record['kl']:.4g}",
            refresh=False,
        )
        if callback is not None:
            callback(record)
        if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            if fingerprint is None:
                fingerprint = run_settings(model, guide, x, y, **options)
            save_checkpoint(
                checkpoint,
                {
                    "version": CHECKPOINT_VERSION,
                    "epoch": epoch + 1,
                    "fingerprint": fingerprint,
                    "params": pyro.get_param_store().get_state(),
                    "optim": optim.get_state(),
                    "rng": pyro.util.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "shuffle_rng": shuffle.get_state(),
                    "history": history,
                },
            )
            last_saved = epoch + 1
    return history


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

"""MNIST classification of Blundell et al. (2015), Table 1: data, networks, training, outputs
(the test metrics are :mod:`pyro_dwp.experiments.classification`'s).

The experiment of ``pyro-dwp mnist``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.mnist`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, get_args

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_dwp.bnn import BNN

try:  # the optional extra pyro-dwp[distributed] (lightning)
    from pyro_dwp.infer import distributed
except ImportError as _error:
    distributed = None
    _NO_DISTRIBUTED = str(_error)
from pyro_dwp.data import load_mnist, load_notmnist
from pyro_dwp.diagnostics import plot_reliability_diagram
from pyro_dwp.experiments.classification import (
    ECE_BINS,
    baseline_classifier,
    bbb_classifier,
    error_rate,
    evaluate,
    network_logits,
    not_learning_warnings,
)
from pyro_dwp.experiments.prior_recipes import (
    PRIOR_RECIPES,
    RENAMED_PRIORS,
    PriorSettings,
    prior_names,
)
from pyro_dwp.experiments.regression import sigma_from_neg_log
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer import (
    Checkpoint,
    JointAdam,
    JointOptimizer,
    JointSGD,
    LocalReparameterizationMessenger,
    fit,
    linear_decay,
    load_checkpoint,
    name_rate_factor,
    set_param_store_state,
)
from pyro_dwp.infer.fit import Engine
from pyro_dwp.infer.pruning import posterior_mean_network
from pyro_dwp.infer.steps import GradientSteps, OptimizerName
from pyro_dwp.io import (
    add_device_argument,
    add_out_argument,
    add_resume_argument,
    announce_fresh_start,
    check_device,
    parse_seed,
    prepare_out,
    progress_bar,
    read_torch_file,
    save_checkpoint,
)
from pyro_dwp.likelihoods import Categorical
from pyro_dwp.models import mlp

__all__ = [
    "MnistData",
    "add_arguments",
    "baseline_net",
    "build_bbb",
    "load_bbb_run",
    "load_data",
    "run",
    "training_warnings",
    "upgrade_config",
]

METHODS = ("bbb", "sgd", "dropout")
BEST = "best.pt"
"""``--keep-best``'s file in ``--out``: the lowest-validation-error epoch's parameters."""
LR_SCHEDULES = ("constant", "linear")
"""``--lr-schedule``: the rate over the epochs, constant or decayed linearly to 0."""
IN_FEATURES = 28 * 28
NUM_CLASSES = 10
# Config keys that define a training run: a resumed run must agree on all of them.
_RUN_KEYS = (
    "method",
    "hidden",
    "prior",
    "pi",
    "neg_log_sigma1",
    "neg_log_sigma2",
    "neg_log_sigma",
    "kl_scheme",
    "batch_size",
    "lr",
    "lr_schedule",
    "optimizer",
    "momentum",
    "scale_lr_factor",
    "particles",
    "local_reparam",
    "init_scale",
    "dropout",
    "input_dropout",
    "n_train",
    "seed",
    "keep_best",
)
# Config keys added after runs were recorded, with the value those runs had.
_ADDED_KEYS = {
    "keep_best": False,
    "lr_schedule": "constant",
    "optimizer": "adam",
    "momentum": 0.0,
    "scale_lr_factor": 1.0,
    "local_reparam": False,
}
# Config keys renamed with their options (old -> new), read from the config of an older run.
_RENAMED_KEYS = {"samples": "particles", "eval_samples": "test_samples", "n_eval": "n_test"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out_argument(p, "explicit")
    p.add_argument("--method", choices=METHODS, default="bbb")
    p.add_argument("--hidden", type=int, default=1200, help="units per hidden layer (400/800/1200)")
    p.add_argument(
        "--prior",
        choices=prior_names("bbb"),
        default="scale-mixture",
        help="normal: N(0, sigma^2) (--neg-log-sigma); scale-mixture: pi N(0, sigma1^2) + "
        "(1 - pi) N(0, sigma2^2); the priors of pyro_dwp.experiments.prior_recipes.PRIOR_RECIPES",
    )
    p.add_argument("--pi", type=float, default=0.5, help="scale-mixture weight pi")
    p.add_argument("--neg-log-sigma1", type=float, default=0.0, help="scale mixture: -log sigma1")
    p.add_argument("--neg-log-sigma2", type=float, default=6.0, help="scale mixture: -log sigma2")
    p.add_argument("--neg-log-sigma", type=float, default=0.0, help="normal prior: -log sigma")
    p.add_argument(
        "--kl-scheme",
        choices=["uniform", "blundell"],
        default="blundell",
        help="BBB: the KL weight of an epoch's i-th of M minibatches, 2^-i / (1 - 2^-M) (the "
        "paper's Sec. 3.4; the default since 2026-12-02, 0.2-0.4 points lower test error than "
        "uniform under Adam at equal epochs, benchmarks/results/bbb_mnist_kl_scheme.md) or "
        "1 / M (uniform, the earlier default)",
    )
    p.add_argument("--epochs", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="learning rate (all methods); with --optimizer sgd, the rate on the mean loss per "
        "training example (-ELBO / N for BBB, a minibatch's mean cross-entropy for the "
        "baselines): Blundell et al.'s SGD rates, on the sum over a minibatch of B, are lr / B",
    )
    p.add_argument(
        "--optimizer",
        choices=get_args(OptimizerName),
        default="adam",
        help="all methods' optimiser: Adam, or SGD (the paper's, with --momentum)",
    )
    p.add_argument(
        "--momentum", type=float, default=0.0, help="SGD's momentum in [0, 1) (default 0)"
    )
    p.add_argument(
        "--scale-lr-factor",
        type=float,
        default=1.0,
        help="BBB: the posterior scales' parameters train at --lr times this (SGD's steps on "
        "them are lr / N times a gradient of order 1, too small to move them: "
        "benchmarks/results/bbb_mnist_sgd.md)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default="constant",
        help="the rate over the --epochs (all methods): constant, or decayed linearly to 0 "
        "(the last epoch at lr / epochs; not with --devices > 1). With BBB, Adam and the "
        "blundell KL weights over 600 epochs, linear gave 1.35%% (4 seeds) against 1.51-1.63%% "
        "constant: benchmarks/results/bbb_mnist_linear_blundell.md",
    )
    p.add_argument(
        "--particles", type=int, default=1, help="BBB: weight samples (particles) per step"
    )
    p.add_argument(
        "--local-reparam",
        action="store_true",
        help="BBB: train with the local reparameterisation (LocalReparameterizationMessenger: "
        "each layer's pre-activations drawn from their Gaussian given the input, fresh noise "
        "per example; the same ELBO, a lower-variance gradient of its data term); the test-time "
        "ensemble still draws whole networks",
    )
    p.add_argument(
        "--init-scale",
        type=float,
        default=1e-3,
        help="BBB: initial posterior sigma; must be small (1e-3 .. softplus(-5) = 6.7e-3)",
    )
    p.add_argument("--dropout", type=float, default=0.5, help="dropout: hidden-layer rate")
    p.add_argument("--input-dropout", type=float, default=0.0, help="dropout: input rate")
    p.add_argument(
        "--test-samples", type=int, default=10, help="test-time ensemble size (networks)"
    )
    p.add_argument("--n-train", type=int, default=None, help="training subset (default: 50k)")
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="test subset size; also subsets the validation set and the notMNIST test letters "
        "(default: all)",
    )
    p.add_argument(
        "--keep-best",
        action="store_true",
        help="also keep the parameters of the epoch whose mean network has the lowest validation "
        "error (the first such epoch) in best.pt, and evaluate them on the test set: "
        "metrics.json's best_valid (epoch, valid_error and the test metrics); the final "
        "parameters stay the run's (model.pt and the other metrics); not with --devices > 1",
    )
    p.add_argument(
        "--max-train-minutes",
        type=float,
        default=None,
        help="stop training before an epoch that would overrun this; epochs done are recorded",
    )
    add_device_argument(p)
    p.add_argument("--devices", type=int, default=1, help="BBB: processes (GPUs), data-parallel")
    p.add_argument("--num-nodes", type=int, default=1, help="BBB: machines, each with --devices")
    p.add_argument("--strategy", choices=["auto", "ddp"], default="auto", help="BBB: 'ddp' for DDP")
    p.add_argument(
        "--engine",
        choices=get_args(Engine),
        default="pyro",
        help="BBB: Pyro's SVI step, or the compiled one where it applies (on each DDP process too)",
    )
    p.add_argument(
        "--torch-compile",
        action="store_true",
        help="BBB, --engine compiled: its step's passes through torch.compile (the same draws "
        "and loss; on a CPU about 30%% off a 2 x 1200 step; the first step compiles, 20-30 s)",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="holds mnist/ and notmnist/")
    add_resume_argument(p)
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        help="BBB: epochs between checkpoints (and at the end; a 2 x 1200 net's is 57 MB)",
    )
    p.add_argument("--seed", type=parse_seed, default=0)
    p.add_argument("--no-progress", action="store_true")


@dataclass
class MnistData:
    """The splits used by the job; images ``(N, 784)`` float32, labels ``(N,)`` int64."""

    x_train: Tensor
    y_train: Tensor
    x_valid: Tensor
    y_valid: Tensor
    x_test: Tensor
    y_test: Tensor
    x_ood: Tensor
    """notMNIST test letters ``(N_ood, 784)``, the out-of-distribution positives."""

    def to(self, device: torch.device | str) -> MnistData:
        return MnistData(**{k: v.to(device) for k, v in vars(self).items()})


def load_data(
    data_dir: Path | None,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> MnistData:
    """MNIST train/valid/test (pixels / 126) and the notMNIST test letters.

    Args:
        data_dir: Folder holding ``mnist/`` and ``notmnist/``, or ``None`` for ``PYRO_DWP_DATA``.
        n_train: Class-balanced training subset size (when divisible by 10), or all 50,000.
        n_test: Subset size of the test, validation and notMNIST sets, or all.
        seed: Seed of the subsets.
    """
    x_train, y_train = load_mnist("train", data_dir, n=n_train, seed=seed)
    x_valid, y_valid = load_mnist("valid", data_dir, n=n_test, seed=seed)
    x_test, y_test = load_mnist("test", data_dir, n=n_test, seed=seed)
    x_ood, _ = load_notmnist("test", data_dir)
    if n_test is not None and n_test < len(x_ood):
        x_ood, _ = load_notmnist("test", data_dir, n=n_test, seed=seed)
    return MnistData(x_train, y_train, x_valid, y_valid, x_test, y_test, x_ood)


def build_bbb(config: dict[str, Any]) -> tuple[BNN, BBBNormal]:
    """The BBB model and (not yet run) guide of a run's ``config``; seeds torch first."""
    torch.manual_seed(config["seed"])
    # The normal prior's scale has an option of its own, --neg-log-sigma.
    key = "neg_log_sigma" if config["prior"] == "normal" else "neg_log_sigma1"
    prior = PRIOR_RECIPES[config["prior"]].build(
        PriorSettings(
            sigma1=sigma_from_neg_log(config[key], "--" + key.replace("_", "-")),
            sigma2=sigma_from_neg_log(config["neg_log_sigma2"], "--neg-log-sigma2"),
            pi=config["pi"],
        )
    )
    net = mlp(IN_FEATURES, [config["hidden"]] * 2, NUM_CLASSES)
    model = BNN(net, prior, Categorical(config["train_size"]))
    return model, BBBNormal(model, init_scale=config["init_scale"])


def baseline_net(config: dict[str, Any]) -> nn.Sequential:
    """The SGD or dropout network of a run's ``config``; seeds torch first."""
    torch.manual_seed(config["seed"])
    hidden = [config["hidden"]] * 2
    if config["method"] == "sgd":
        return mlp(IN_FEATURES, hidden, NUM_CLASSES)
    net = mlp(IN_FEATURES, hidden, NUM_CLASSES, dropout=config["dropout"])
    if config["input_dropout"] > 0:
        return nn.Sequential(nn.Dropout(config["input_dropout"]), *net)
    return net


def load_bbb_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[dict, BNN, BBBNormal]:
    """Reload a BBB run of this job from ``run_dir/model.pt``.

    The Pyro param store is cleared and filled with the run's fitted parameters.

    Returns:
        The run's config (the keys of renamed options under their new names), the model and
        the fitted guide, on ``device``.

    Raises:
        FileNotFoundError: If there is no ``model.pt``.
        ValueError: If ``model.pt`` is unreadable or another job's, or the run is not a BBB run.
    """
    path = Path(run_dir) / "model.pt"
    remedy = f"train one with `pyro-dwp mnist --method bbb --out {run_dir}`"
    state = read_torch_file(path, what="mnist run file", remedy=remedy, weights_only=False)
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{path} is not the model.pt of a `pyro-dwp mnist` run: {remedy}")
    config = upgrade_config(state["config"])
    if config["method"] != "bbb":
        raise ValueError(f"{run_dir} is a {config['method']!r} run; only BBB runs can be pruned")
    pyro.clear_param_store()
    model, guide = build_bbb(config)
    model.to(device)
    with torch.no_grad(), poutine.block():  # set the guide up, then load the run's values
        guide(
            torch.zeros(1, IN_FEATURES, device=device),
            torch.zeros(1, dtype=torch.long, device=device),
        )
    set_param_store_state(state["params"], device)
    return config, model, guide


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate and write the outputs; return the metrics."""
    t0 = time.perf_counter()
    _check_args(args)
    out: Path = prepare_out(args.out, "mnist")
    device = torch.device(args.device)
    data = load_data(args.data_dir, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    config = _config(args, train_size=len(data.x_train))
    _check_resume(out, config, args.resume)
    resumed = announce_fresh_start(args.resume, out / "checkpoint.pt", out / "checkpoint.ckpt")
    if resumed and args.keep_best and not (out / BEST).exists():
        raise ValueError(
            f"--keep-best: {out / BEST} is missing, so the best epoch before the checkpoint is "
            "unknown: put it back, or rerun without --resume, which starts the run afresh"
        )
    if not resumed:  # a resumed run's config.json is replaced with its outputs, at the end
        _write_config(out, config)
    data = data.to(device)
    max_seconds = None if args.max_train_minutes is None else 60 * args.max_train_minutes
    if not args.resume:
        (out / BEST).unlink(missing_ok=True)  # an earlier run's
    pyro.clear_param_store()
    if args.method == "bbb":
        model, guide = build_bbb(config)
        history = _train_bbb(model, guide, data, args, max_seconds)
        if _global_rank() != 0:
            return {}  # process 0 evaluates and writes the outputs
        clf = bbb_classifier(model, guide)
        saved = {"config": config, "params": pyro.get_param_store().get_state()}
    else:
        net = baseline_net(config).to(device)
        history = _train_baseline(net, data, args, max_seconds)
        clf = baseline_classifier(net)
        saved = {"config": config, "state_dict": net.state_dict()}
    torch.save(saved, out / "model.pt")
    _write_config(out, config)
    metrics, probs = evaluate(clf, data.x_test, data.y_test, args.test_samples, data.x_ood)
    if args.keep_best:  # after the final parameters' evaluation: this replaces them
        best = _read_best(out / BEST)
        if args.method == "bbb":
            set_param_store_state(best["params"], device)
            clf = bbb_classifier(model, guide)
        else:
            net.load_state_dict(best["state_dict"])
        best_metrics, _ = evaluate(clf, data.x_test, data.y_test, args.test_samples, data.x_ood)
        metrics["best_valid"] = {
            "epoch": best["epoch"], "valid_error": best["valid_error"], **best_metrics
        }  # fmt: skip
    (out / "learning_curves.json").write_text(json.dumps(history, indent=2) + "\n")
    label = f"bbb, {args.prior} prior" if args.method == "bbb" else args.method
    _plot_learning_curves(out / "learning_curves.png", history, args.method, label)
    ax = plot_reliability_diagram(probs.cpu(), data.y_test.cpu(), ECE_BINS)
    ax.set_title(f"{label}, H={args.hidden}: {ax.get_title()}")
    ax.figure.savefig(out / "reliability.png", dpi=120)
    result = {
        "method": args.method,
        "hidden": args.hidden,
        **metrics,
        "epochs": history[-1]["epoch"] if history else 0,
        "train_seconds": sum(h["seconds"] for h in history),
        "seconds": time.perf_counter() - t0,
        "warnings": training_warnings(
            history, args.lr, steps_per_epoch=math.ceil(len(data.x_train) / args.batch_size)
        ),
        "config": config,
    }
    for message in result["warnings"]:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def training_warnings(
    history: list[dict[str, float]], lr: float, steps_per_epoch: int
) -> list[str]:
    """What a finished run's learning curve says went wrong, as messages (empty when nothing
    did): the mean network's final validation error at chance level
    (:func:`~pyro_dwp.experiments.classification.not_learning_warnings`)."""
    if not history or "valid_error" not in history[-1]:
        return []
    steps = history[-1]["epoch"] * steps_per_epoch
    error = history[-1]["valid_error"]
    what, hint = "the mean network (validation set)", f"is --lr {lr:g} too large?"
    return not_learning_warnings(error, NUM_CLASSES, steps, what, hint)


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded config with the keys of renamed options under their new names
    (``samples`` -> ``particles``, ``eval_samples`` -> ``test_samples``, ``n_eval`` ->
    ``n_test``) and renamed priors under theirs (``gaussian`` -> ``normal``), so that runs
    written before the renames can still be resumed and pruned."""
    config = {_RENAMED_KEYS.get(k, k): v for k, v in config.items()}
    if "prior" in config:
        config["prior"] = RENAMED_PRIORS.get(config["prior"], config["prior"])
    return config


def _check_args(args: argparse.Namespace) -> None:
    positive = ("hidden", "epochs", "batch_size", "particles", "test_samples", "checkpoint_every")
    for key in positive:
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    for key in ("n_train", "n_test"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not 0 < args.pi < 1:
        raise ValueError(f"--pi must be in (0, 1), got {args.pi}")
    for key in ("neg_log_sigma1", "neg_log_sigma2", "neg_log_sigma"):  # before any file
        sigma_from_neg_log(getattr(args, key), f"--{key.replace('_', '-')}")
    if not 0 < args.lr < math.inf or not 0 < args.init_scale < math.inf:
        raise ValueError(
            f"--lr and --init-scale must be finite and > 0, got {args.lr}, {args.init_scale}"
        )
    if args.optimizer == "adam" and args.momentum != 0:
        raise ValueError(f"--momentum is SGD's (--optimizer sgd); got {args.momentum} with Adam")
    if not 0 <= args.momentum < 1:
        raise ValueError(f"--momentum must be in [0, 1), got {args.momentum}")
    if not args.scale_lr_factor > 0:
        raise ValueError(f"--scale-lr-factor must be > 0, got {args.scale_lr_factor}")
    _refuse_other_methods_options(args)
    if args.scale_lr_factor != 1 and args.method != "bbb":
        raise ValueError("--scale-lr-factor is BBB's (the posterior scales' rate)")
    if args.torch_compile and args.engine != "compiled":
        raise ValueError(f"--torch-compile needs --engine compiled, got --engine {args.engine}")
    if args.local_reparam and args.method != "bbb":
        raise ValueError("--local-reparam is BBB's (it samples Gaussian weights' pre-activations)")
    for key in ("dropout", "input_dropout"):
        if not 0 <= getattr(args, key) < 1:
            raise ValueError(
                f"--{key.replace('_', '-')} must be in [0, 1), got {getattr(args, key)}"
            )
    if args.max_train_minutes is not None and not args.max_train_minutes > 0:
        raise ValueError(f"--max-train-minutes must be > 0, got {args.max_train_minutes}")
    check_device(args.device)
    if _distributed(args):
        if args.keep_best:
            raise ValueError("--keep-best is not available with data-parallel training")
        if args.method != "bbb" or args.max_train_minutes is not None:
            raise ValueError("data-parallel training needs --method bbb and no time limit")
        if args.lr_schedule != "constant" or args.optimizer != "adam" or args.scale_lr_factor != 1:
            raise ValueError(
                "data-parallel training runs Adam at one constant rate: --lr-schedule, "
                "--optimizer, --scale-lr-factor"
            )
        if args.local_reparam or args.torch_compile:
            raise ValueError("data-parallel training takes no --local-reparam, --torch-compile")
        if distributed is None:
            raise ValueError(
                f"--devices and --strategy need pyro-dwp[distributed] ({_NO_DISTRIBUTED})"
            )
        distributed.check_distributed_args(args.devices, args.num_nodes, args.strategy, args.device)


_OPTION_OWNERS = {
    **dict.fromkeys(
        ("prior", "pi", "neg_log_sigma1", "neg_log_sigma2", "neg_log_sigma", "kl_scheme")
        + ("particles", "init_scale", "torch_compile"),
        "bbb",
    ),
    **dict.fromkeys(("dropout", "input_dropout"), "dropout"),
}
"""Options that only one ``--method`` reads: another method refuses them away from their
defaults, rather than train without them."""


def _refuse_other_methods_options(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the options of :data:`_OPTION_OWNERS` that ``args`` sets
    (away from the parser's defaults) for a ``--method`` that does not read them."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # the defaults, from the one place that states them
    stray = [
        f"--{key.replace('_', '-')} ({owner}'s)"
        for key, owner in _OPTION_OWNERS.items()
        if owner != args.method and getattr(args, key) != parser.get_default(key)
    ]
    if stray:
        raise ValueError(f"--method {args.method} does not take {', '.join(stray)}")


def _distributed(args: argparse.Namespace) -> bool:
    return args.devices != 1 or args.num_nodes != 1 or args.strategy == "ddp"


def _global_rank() -> int:
    """This process's rank in a data-parallel run (0 otherwise)."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _config(args: argparse.Namespace, train_size: int) -> dict[str, Any]:
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config.pop("run", None)  # the CLI's handler, not a setting
    config["train_size"] = train_size
    return config


def _check_resume(out: Path, config: dict[str, Any], resume: bool) -> None:
    """On resume, refuse a run directory trained with other settings (its ``config.json``)."""
    path = out / "config.json"
    if resume and path.is_file():
        old = {**_ADDED_KEYS, **upgrade_config(json.loads(path.read_text()))}
        # a decaying rate is a function of the epochs: a longer run is another run
        keys = _RUN_KEYS + (("epochs",) if config["lr_schedule"] != "constant" else ())
        changed = {k: (old.get(k), config[k]) for k in keys if old.get(k) != config[k]}
        if changed:
            raise ValueError(
                f"--resume: {out} holds a run with other settings (old, new): {changed}; "
                "use another --out or drop --resume"
            )


def _write_config(out: Path, config: dict[str, Any]) -> None:
    """Record the run's settings in ``out/config.json``."""
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _train_bbb(
    model: BNN,
    guide: BBBNormal,
    data: MnistData,
    args: argparse.Namespace,
    max_seconds: float | None,
) -> list[dict[str, float]]:
    ours, theirs = "checkpoint.pt", "checkpoint.ckpt"  # fit's, fit_distributed's
    if _distributed(args):
        ours, theirs = theirs, ours
    if args.resume and (args.out / theirs).exists() and not (args.out / ours).exists():
        raise ValueError(
            f"--resume: {args.out} holds {theirs}, a run trained with other --devices / "
            "--strategy options; resume it with its own"
        )

    # the schedule's step count is saved with the optimiser's state, so chunks resume on it
    optim: JointOptimizer
    rates = {"lr_lambda": _lr_lambda(args), "lr_factor": None}
    if args.scale_lr_factor != 1:
        rates["lr_factor"] = partial(
            name_rate_factor, contains=".scales.", factor=args.scale_lr_factor
        )
    if args.optimizer == "sgd":  # --lr is the rate on the loss per example: -ELBO / N
        optim = JointSGD(args.lr / len(data.x_train), momentum=args.momentum, **rates)
    else:
        optim = JointAdam(args.lr, **rates)

    keep = _BestKeeper(args.out / BEST) if args.keep_best else None

    def end_of_epoch(record: dict[str, float]) -> None:
        net = posterior_mean_network(model, guide)
        x_valid = data.x_valid.to(guide.loc(guide.site_names[0]).device)  # a DDP process's GPU
        record["valid_error"] = error_rate(
            network_logits(net, x_valid), data.y_valid.to(x_valid.device)
        )
        if keep is not None:
            keep(record, lambda: {"params": pyro.get_param_store().get_state()})
        record["lr"] = args.lr * (optim.current_lr / optim.pt_optim_args["lr"])  # this epoch's
        if optim.lr_lambda is not None:
            optim.step()

    def train(epochs: int, resume: bool) -> list[dict[str, float]]:
        return fit(
            model,
            guide,
            data.x_train,
            data.y_train,
            epochs=epochs,
            batch_size=args.batch_size,
            optim=optim,
            num_particles=args.particles,
            vectorize_particles=True,
            kl_scheme=args.kl_scheme,
            device=args.device,
            checkpoint=args.out / "checkpoint.pt",
            checkpoint_every=args.checkpoint_every,
            resume=resume,
            seed=args.seed,
            progress=not args.no_progress,
            callback=end_of_epoch,
            engine=args.engine,
            torch_compile=args.torch_compile,
            handlers=[LocalReparameterizationMessenger()] if args.local_reparam else (),
        )

    if _distributed(args):
        return distributed.fit_distributed(
            model,
            guide,
            data.x_train,
            data.y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            num_particles=args.particles,
            vectorize_particles=True,
            kl_scheme=args.kl_scheme,
            devices=args.devices,
            num_nodes=args.num_nodes,
            strategy=args.strategy,
            accelerator=args.device,
            checkpoint=args.out / "checkpoint.ckpt",
            resume=args.resume,
            seed=args.seed,
            progress=not args.no_progress,
            callback=end_of_epoch,
            engine=args.engine,
        )
    return _train_within(train, args.epochs, args.resume, max_seconds, args.out / "checkpoint.pt")


def _train_baseline(
    net: nn.Module, data: MnistData, args: argparse.Namespace, max_seconds: float | None
) -> list[dict[str, float]]:
    """Plain cross-entropy training, checkpointed every epoch in ``fit``'s format (the same
    :class:`~pyro_dwp.infer.checkpoint.Checkpoint`)."""
    x, y = data.x_train, data.y_train
    n = len(x)
    num_batches = math.ceil(n / args.batch_size)
    steps = GradientSteps(
        net.parameters(), args.lr, optimizer=args.optimizer, momentum=args.momentum
    )
    lr_lambda = _lr_lambda(args)
    schedule = torch.optim.lr_scheduler.LambdaLR(steps.optimizer, lr_lambda or (lambda e: 1.0))
    shuffle = torch.Generator().manual_seed(args.seed)
    keep = _BestKeeper(args.out / BEST) if args.keep_best else None
    checkpoint = Checkpoint(
        args.out / "checkpoint.pt", device=x.device, generators={"shuffle": shuffle}
    )
    fingerprint = {"n": n, "batch_size": args.batch_size, "seed": args.seed, "method": args.method}
    if lr_lambda is not None:
        fingerprint["lr_schedule"] = f"{args.lr_schedule} over {args.epochs} epochs"
    if args.optimizer != "adam":  # runs from before --optimizer ran Adam
        fingerprint["optimizer"] = f"{args.optimizer}, momentum {args.momentum}"

    def train(epochs: int, resume: bool) -> list[dict[str, float]]:
        history: list[dict[str, float]] = []
        start = 0
        if resume and checkpoint.exists():
            state = checkpoint.load(fingerprint)
            net.load_state_dict(state["state_dict"])
            steps.optimizer.load_state_dict(state["optim"])
            if "schedule" in state:  # checkpoints from before --lr-schedule ran at a constant rate
                schedule.load_state_dict(state["schedule"])
            checkpoint.restore_rng(state)
            history, start = state["history"], state["epoch"]
        else:
            pyro.set_rng_seed(args.seed)
        bar = progress_bar(
            range(start, epochs), desc="epochs", disable=args.no_progress, initial=start
        )
        for epoch in bar:
            t0 = time.perf_counter()
            net.train()
            loss_sum = torch.zeros((), device=x.device)
            order = torch.randperm(n, generator=shuffle).to(x.device)
            for i in range(num_batches):
                idx = order[i * args.batch_size : (i + 1) * args.batch_size]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                steps.step(loss)
                loss_sum += loss.detach()
            rate = schedule.get_last_lr()[0]  # this epoch's
            schedule.step()
            nll = float(loss_sum) / num_batches * n  # full-data NLL, on the scale of BBB's
            if not math.isfinite(nll):
                raise FloatingPointError(f"loss is {nll} at epoch {epoch + 1}")
            record = {"epoch": epoch + 1, "loss": nll, "nll": nll, "kl": 0.0, "lr": rate}
            record["seconds"] = time.perf_counter() - t0
            record["valid_error"] = error_rate(
                network_logits(net.eval(), data.x_valid), data.y_valid
            )
            if keep is not None:
                keep(record, lambda: {"state_dict": net.state_dict()})
            history.append(record)
            bar.set_postfix(
                nll=f"{nll:.4g}", valid_error=f"{record['valid_error']:.4f}", refresh=False
            )
            checkpoint.save(
                epoch + 1,
                fingerprint,
                history,
                state_dict=net.state_dict(),
                optim=steps.optimizer.state_dict(),
                schedule=schedule.state_dict(),
            )
        return history

    return _train_within(train, args.epochs, args.resume, max_seconds, checkpoint.path)


class _BestKeeper:
    """``--keep-best``: after each epoch, ``keeper(record, state)`` writes ``state()`` (the
    parameters) with the record's ``epoch`` and ``valid_error`` to ``path`` (atomically) when
    that error is below every earlier epoch's, the first of equal epochs kept.

    The lowest error so far is read back from ``path`` once, so a resumed run continues the
    interrupted one's comparison (an epoch replayed after the interruption reproduces its
    parameters and error exactly, and is not written again).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lowest = math.inf
        if path.exists():
            self.lowest = _read_best(path)["valid_error"]

    def __call__(self, record: dict[str, float], state: Callable[[], dict[str, Any]]) -> None:
        if record["valid_error"] < self.lowest:
            self.lowest = record["valid_error"]
            save_checkpoint(
                self.path, {"epoch": record["epoch"], "valid_error": self.lowest, **state()}
            )


def _read_best(path: Path) -> dict[str, Any]:
    """A ``--keep-best`` file on the CPU: ``epoch``, ``valid_error`` and the parameters.

    Raises:
        FileNotFoundError, ValueError: If it is missing or unreadable (naming the file).
    """
    remedy = "rerun without --resume, which starts the run afresh"
    return read_torch_file(path, what="--keep-best file", remedy=remedy, weights_only=False)


def _lr_lambda(args: argparse.Namespace) -> Callable[[int], float] | None:
    """The rate factor per finished epoch of ``--lr-schedule`` (``None``: constant)."""
    return partial(linear_decay, epochs=args.epochs) if args.lr_schedule == "linear" else None


def _train_within(
    train: Callable[[int, bool], list[dict[str, float]]],
    epochs: int,
    resume: bool,
    max_seconds: float | None,
    checkpoint: Path,
) -> list[dict[str, float]]:
    """Run ``train(epochs, resume)``, or as many epochs as fit in ``max_seconds``.

    With a time limit, training goes in chunks, each resuming the last: one epoch first, then
    as many epochs as the time left affords at the rate of the previous chunk (set-up and
    checkpointing included). The first epoch's rate is pessimistic (it pays the set-up, and on
    a GPU the compiled step's capture), so a later chunk corrects it rather than stopping
    early; training stops when no further epoch fits.
    """
    if max_seconds is None:
        return train(epochs, resume)
    done = load_checkpoint(checkpoint)["epoch"] if resume and checkpoint.exists() else 0
    if done >= epochs:
        return train(epochs, resume)
    t0 = time.perf_counter()
    history = train(done + 1, resume)
    done, chunk, chunk_seconds = done + 1, 1, time.perf_counter() - t0
    while done < epochs:
        left = max_seconds - (time.perf_counter() - t0)
        chunk = min(epochs - done, int(left // (chunk_seconds / chunk)))
        if chunk < 1:
            break
        t1 = time.perf_counter()
        history = train(done + chunk, True)
        done, chunk_seconds = done + chunk, time.perf_counter() - t1
    if done < epochs:
        print(
            f"--max-train-minutes: stopped after epoch {done} of {epochs} (the next would "
            "overrun); --resume continues the run",
            file=sys.stderr,
        )
    return history


def _plot_learning_curves(
    path: Path, history: list[dict[str, float]], method: str, label: str
) -> None:
    """Plot the training objective and the validation error by epoch; ``label`` titles the run
    (e.g. ``"bbb, normal prior"``)."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.5))
    ax_loss, ax_err = fig.subplots(1, 2)
    for key, label in (("loss", "loss (-ELBO)"), ("nll", "data term (NLL)"), ("kl", "KL term")):
        if method == "bbb" or key == "nll":
            ax_loss.plot(epochs, [h[key] for h in history], marker=".", label=label)
    ax_loss.set(xlabel="epoch", yscale="symlog", title=f"{label}: training objective")
    ax_loss.legend()
    ax_err.plot(epochs, [100 * h.get("valid_error", math.nan) for h in history], marker=".")
    ax_err.set(xlabel="epoch", ylabel="validation error (%)", title="mean network, validation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)

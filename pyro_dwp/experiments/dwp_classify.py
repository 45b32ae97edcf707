"""MNIST with few examples under the deep weight prior (Figure 2).

The experiment of ``pyro-dwp dwp-classify``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.dwp_classify`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import pyro
import torch
from torch import Tensor

from pyro_dwp.bnn import BNN
from pyro_dwp.data import DWP_PIXEL_SCALE, kernel_similarity, load_mnist
from pyro_dwp.data.images import Subset
from pyro_dwp.experiments.classification import (
    EVALUATIONS,
    ensemble_log_probs,
    guide_classifier,
    not_learning_warnings,
)
from pyro_dwp.experiments.dwp_bnn import LOG_UNIFORM_FAMILIES, DWPSetup, make_dwp_cnn_model
from pyro_dwp.experiments.dwp_source import INITS
from pyro_dwp.experiments.prior_recipes import PRIOR_RECIPES, prior_names
from pyro_dwp.guides import ReverseModelGuide
from pyro_dwp.infer.dwp_gap import dwp_bound_gap
from pyro_dwp.infer.fingerprint import differences, file_digest
from pyro_dwp.infer.fit import Engine, fit
from pyro_dwp.infer.local_reparam import LocalReparameterizationMessenger
from pyro_dwp.infer.optim import JointAdam, linear_decay
from pyro_dwp.io import (
    add_device_argument,
    add_out_argument,
    check_device,
    parse_seed,
    prepare_out,
    write_json,
)
from pyro_dwp.models.dwp_cnn import DWPConvNet
from pyro_dwp.models.kernel_vae import KernelVAE, load_kernel_vae
from pyro_dwp.pretrained import PRETRAINED, match_fan_in, pretrained_dir

__all__ = [
    "add_arguments",
    "add_prior_scale_argument",
    "add_training_arguments",
    "build_cell",
    "load_results",
    "load_net_vaes",
    "load_vaes",
    "run",
    "plot_figure2",
    "summarise",
    "summary_table",
    "train_cell",
]

RESULTS, TABLE, FIGURE = "dwp_classify.json", "dwp_classify.md", "figure2.png"
DEFAULT_LR = 1e-3
"""``--lr``'s default, the DWP authors' initial Adam rate (``train-bnn.py --lr``)."""
DEFAULT_KL_WEIGHT = 1.0
"""``--kl-weight``'s default: the KL term at full weight, the ELBO (the paper's loss)."""
# Settings that must match for a rerun to reuse finished cells.
_CONFIG_KEYS = (
    "evaluation",
    "pixel_scale",
    "epochs",
    "batch_size",
    "lr",
    "kl_weight",
    "channels",
    "guide_init",
    "net_init",
    "reverse",
    "init_log_variance",
    "log_uniform_guide",
    "test_samples",
    "n_test",
    "gap_samples",
    "vae_dir",
    "prior_scale",
    "dwp_layers",
    "split",
)
# Config keys renamed with their options (old -> new), read from the results of an older run.
_RENAMED_KEYS = {"init": "guide_init"}
# Config keys added later, with the value that a run written before them had.
_ADDED_KEYS = {
    "prior_scale": "as-trained",
    "net_init": "torch",
    "split": "balanced",
    "kl_weight": DEFAULT_KL_WEIGHT,
}
PRIOR_SCALES = ("fan-in", "as-trained")
"""``--prior-scale`` choices (see :func:`load_net_vaes`)."""
SPLITS: dict[str, tuple[Literal["train", "train+valid"], Subset]] = {
    "balanced": ("train", "balanced"),
    "paper": ("train+valid", "stratified"),
}
"""``--split`` choices: the :func:`~pyro_dwp.data.load_mnist` split and subset of the N
training examples (described in :data:`SPLIT_TEXT`)."""
SPLIT_TEXT = {
    "balanced": "N / 10 of each digit from the first 50,000 training images, our seeded draw",
    "paper": "the DWP authors' data splits: scikit-learn's stratified train_test_split of the "
    "60,000 training images, random_state = the seed (their --data_split_seed)",
}
"""What each ``--split`` trains on, for help texts and results headers."""
DWP_LAYERS = ("conv1", "conv2")
"""The Bayesian layers of the ConvNet, the choices of ``--dwp-layers``."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out_argument(p, "automatic")
    vaes = p.add_mutually_exclusive_group()
    vaes.add_argument("--vae-dir", type=Path, help="dwp-prior output: vae_conv1.pt, vae_conv2.pt")
    vaes.add_argument(
        "--pretrained",
        choices=PRETRAINED,
        help="a deep weight prior shipped with the package instead of --vae-dir",
    )
    add_prior_scale_argument(p)
    p.add_argument("--data-dir", type=Path, help="folder with mnist/ (else PYRO_DWP_DATA)")
    p.add_argument(
        "--priors",
        nargs="+",
        choices=prior_names("dwp"),
        default=list(prior_names("dwp", defaults_only=True)),
        help="priors of pyro_dwp.experiments.prior_recipes.PRIOR_RECIPES; deterministic-l2 is "
        "the paper's fourth row, a deterministic net (maximum a posteriori weights, guide "
        "PointMass) with the L2 penalty |w|^2 / 2 of the standard-normal prior, which the "
        "paper starts from samples of the deep weight prior (--guide-init dwp)",
    )
    p.add_argument("--n-train", type=int, nargs="+", default=[50, 100, 200, 500, 1000])
    p.add_argument("--seeds", type=parse_seed, nargs="+", default=[0, 1, 2], help="data seeds")
    add_training_arguments(p)
    p.add_argument("--reverse", choices=["trainable", "frozen"], default="trainable")
    p.add_argument(
        "--dwp-layers",
        nargs="+",
        choices=DWP_LAYERS,
        default=None,
        help="the prior 'dwp' on these layers only, the standard normal on the others "
        "(default: all layers)",
    )
    p.add_argument(
        "--log-uniform-guide",
        choices=list(LOG_UNIFORM_FAMILIES),
        default="truncated-alpha",
        help="log-uniform prior's guide: N(mu, alpha mu^2) with alpha <= 1 (the DWP authors' "
        "baseline) or (mu, log sigma^2) (sparse VD: collapses to chance on few examples)",
    )
    p.add_argument("--test-samples", type=int, default=10, help="test-time ensemble size")
    p.add_argument(
        "--evaluation",
        choices=list(EVALUATIONS),
        default="lrt",
        help="test-time ensemble: local reparameterisation (fresh noise per activation, the "
        "DWP authors') or one weight draw per member",
    )
    p.add_argument(
        "--n-test", type=int, default=None, help="test subset size (default: all 10,000)"
    )
    p.add_argument("--gap-samples", type=int, default=0, help="K of the gap estimate (0: off)")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a cell's network, guide and training, read by :func:`build_cell` and
    :func:`train_cell` (shared with ``pyro-dwp dwp-gap``)."""
    p.add_argument("--epochs", type=int, default=1000, help="the paper trains 10,000")
    p.add_argument(
        "--split",
        choices=list(SPLITS),
        default="balanced",
        help="the N training examples of a seed: "
        + "; ".join(f"{name}, {text}" for name, text in SPLIT_TEXT.items())
        + " (default: balanced)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="capped at N")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="initial Adam rate, decayed to 0")
    p.add_argument(
        "--kl-weight",
        type=float,
        default=DEFAULT_KL_WEIGHT,
        help="factor of the KL term on every step: 1 (default) is the ELBO, the paper's loss; "
        "another value trains the tempered objective (fit's kl_weight), for diagnostics",
    )
    p.add_argument("--channels", type=int, nargs=2, default=[32, 128], metavar=("C1", "C2"))
    p.add_argument(
        "--guide-init",
        choices=["module", "dwp"],
        default="module",
        help="guide means' initialisation: the network's own or samples of the deep weight prior",
    )
    p.add_argument(
        "--net-init",
        choices=list(INITS),
        default="torch",
        help="the ConvNet's weights before the guide reads them (the classifier's and, with "
        "--guide-init module, the guide means' starting values): PyTorch's default (Kaiming "
        "uniform) or Xavier normal (the DWP authors' source nets'); biases keep PyTorch's",
    )
    p.add_argument("--init-log-variance", type=float, default=-10.0)
    p.add_argument(
        "--pixel-scale",
        type=float,
        default=DWP_PIXEL_SCALE,
        help="images are divided by this (default 255, as dwp-source's notMNIST)",
    )
    p.add_argument(
        "--engine",
        choices=get_args(Engine),
        default="pyro",
        help="training step: Pyro's SVI, or the compiled one where it applies (fit's engine)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every missing (prior, N, seed) cell, then write the table and the figure."""
    _check_args(args)
    out: Path = prepare_out(args.out, "dwp-classify")
    config = {k: _jsonable(getattr(args, k)) for k in _CONFIG_KEYS}
    needs_vaes = _needs_vaes(args)
    if needs_vaes:  # replaced VAE files: other cells
        config["vae_checksums"] = {
            f.name: file_digest(f) for f in sorted(args.vae_dir.glob("vae_conv*.pt"))
        }
    results = load_results(out / RESULTS, config, {"config": config, "cells": []})
    done = {(c["prior"], c["n"], c["seed"]) for c in results["cells"]}
    vaes = None
    if needs_vaes:
        vaes = load_net_vaes(args)
        results["kernel_scale"] = {name: vae.kernel_scale for name, vae in vaes.items()}
    x_test, y_test = load_mnist(
        "test", args.data_dir, n=args.n_test, seed=0, flatten=False, pixel_scale=args.pixel_scale
    )
    # N outermost, priors innermost: an interrupted grid still compares the priors.
    for n in args.n_train:
        for seed in args.seeds:
            for prior in args.priors:
                if (prior, n, seed) in done:
                    continue
                cell = _run_cell(args, prior, n, seed, vaes, x_test, y_test)
                results["cells"].append(cell)
                write_json(out / RESULTS, results)
    summary = summarise(results["cells"])
    (out / TABLE).write_text(summary_table(summary, args.test_samples))
    plot_figure2(out / FIGURE, summary)
    return {
        "results": str(out / RESULTS),
        "table": str(out / TABLE),
        "figure": str(out / FIGURE),
        "accuracy": {f"{p} N={n}": s["accuracy"][0] for (p, n), s in sorted(summary.items())},
    }


def _check_args(args: argparse.Namespace) -> None:
    check_device(args.device)
    for label in ("epochs", "batch_size", "test_samples"):
        if getattr(args, label) < 1:
            raise ValueError(f"--{label.replace('_', '-')} must be >= 1")
    if min(args.n_train) < 1 or min(args.channels) < 1 or args.gap_samples < 0:
        raise ValueError("--n-train and --channels must be >= 1, --gap-samples >= 0")
    for flag in ("priors", "n_train", "seeds"):  # a cell run twice would fake a spread
        values = getattr(args, flag)
        if len(set(values)) != len(values):
            raise ValueError(f"--{flag.replace('_', '-')} names a value twice: {values}")
    if args.pretrained is not None:  # checksums verified here
        args.vae_dir = pretrained_dir(args.pretrained)
    if _needs_vaes(args) and args.vae_dir is None:
        raise ValueError(
            "the deep weight prior (and --guide-init dwp) needs --vae-dir from dwp-prior or "
            "--pretrained (a shipped prior)"
        )


def add_prior_scale_argument(p: argparse.ArgumentParser) -> None:
    """``--prior-scale`` (see :func:`load_net_vaes`)."""
    p.add_argument(
        "--prior-scale",
        choices=PRIOR_SCALES,
        default="fan-in",
        help="fan-in (default): a prior whose source kernels were rescaled to the He scale of "
        "a net of other widths (dwp-source --kernel-gauge he --target-channels; the shipped "
        "prior: 32 / 128) is rescaled to this net's layers (--channels); as-trained: used as "
        "it is",
    )


def load_net_vaes(args: argparse.Namespace) -> dict[str, KernelVAE]:
    """:func:`load_vaes` of ``args.vae_dir`` for the ConvNet of ``args.channels``: with
    ``args.prior_scale == "fan-in"`` rescaled to its layers' fan-ins (conv1: 1 input channel,
    conv2: ``channels[0]``)."""
    in_channels = dict(zip(DWP_LAYERS, [1, args.channels[0]], strict=True))
    fit_to = in_channels if args.prior_scale == "fan-in" else None
    return load_vaes(args.vae_dir, args.device, fit_to)


def _needs_vaes(args: argparse.Namespace) -> bool:
    """Whether a prior of ``--priors`` (the deep weight prior) or ``--guide-init dwp`` reads
    the kernel VAEs."""
    return args.guide_init == "dwp" or any(PRIOR_RECIPES[p].needs_vae for p in args.priors)


def _jsonable(v: Any) -> Any:
    return str(v) if isinstance(v, Path) else v


def load_vaes(
    vae_dir: Path, device: str, in_channels: Mapping[str, int] | None = None
) -> dict[str, KernelVAE]:
    """``{"conv1.weight": VAE, "conv2.weight": VAE}`` from ``vae_conv{1,2}.pt`` in ``vae_dir``.

    With ``in_channels`` (``{"conv1": 1, "conv2": C1}``, the input channels of the net's
    layers), a VAE whose source kernels were rescaled to the He scale of another net's layer is
    rescaled to this one's, fan-in ``in_channels * k * k``
    (:func:`~pyro_dwp.pretrained.match_fan_in`; ``kernel_scale`` says by how much).

    Raises:
        FileNotFoundError: If a file is missing (the message names it and how to make it).
    """
    vaes = {}
    for layer in DWP_LAYERS:
        vae, meta = load_kernel_vae(vae_dir / f"vae_{layer}.pt", map_location=device)
        if in_channels is not None:
            match_fan_in(vae, meta, in_channels[layer] * vae.kernel_size**2)
        vaes[f"{layer}.weight"] = vae
    return vaes


def load_results(path: Path, config: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """The results JSON at ``path`` if it exists, else ``fresh`` (its ``"config"``, ``config``).

    A file written before an option was renamed is read with the option's new key
    (``init`` -> ``guide_init``), one written before an option existed with the value it then
    had (``prior_scale``: ``as-trained``).

    Raises:
        ValueError: If the file was written with another ``"config"`` than ``config``.
    """
    if not path.exists():
        return fresh
    results = json.loads(path.read_text())
    if isinstance(results.get("config"), dict):
        old = {_RENAMED_KEYS.get(k, k): v for k, v in results["config"].items()}
        results["config"] = {**{k: v for k, v in _ADDED_KEYS.items() if k in config}, **old}
    if results.get("config") != config:
        changed = "; ".join(differences(results.get("config"), config))
        raise ValueError(
            f"{path} was written with other settings (old -> new: {changed}); use another --out"
        )
    return results


def build_cell(
    args: argparse.Namespace,
    prior: str | dict[str, str],
    n: int,
    seed: int,
    vaes: dict[str, KernelVAE] | None,
) -> tuple[DWPSetup, Tensor, Tensor]:
    """Seed, load the ``N`` training examples of ``seed`` and build the untrained cell.

    Reads ``args.data_dir``, ``split``, ``pixel_scale``, ``channels``, ``device``, ``reverse``,
    ``guide_init``, ``net_init``, ``init_log_variance`` and ``log_uniform_guide``. Clears the
    Pyro param store.

    Returns:
        ``(DWPSetup(model, guide, elbo), x, y)``, with ``x`` ``(N, 1, 28, 28)`` and ``y``
        ``(N,)`` on the CPU.
    """
    pyro.clear_param_store()
    torch.manual_seed(seed)
    split, subset = SPLITS[args.split]
    x, y = load_mnist(
        split,
        args.data_dir,
        n=n,
        seed=seed,
        subset=subset,
        flatten=False,
        pixel_scale=args.pixel_scale,
    )
    net = DWPConvNet(tuple(args.channels))
    INITS[args.net_init](net)  # drawn after the seed, before the guide copies the weights
    net = net.to(args.device)
    setup = make_dwp_cnn_model(
        net,
        prior,
        dataset_size=n,
        vaes=vaes,
        trainable_reverse=args.reverse == "trainable",
        init=args.guide_init,
        init_log_variance=args.init_log_variance,
        log_uniform_family=args.log_uniform_guide,
    )
    return setup, x, y


def train_cell(
    args: argparse.Namespace,
    setup: DWPSetup,
    x: Tensor,
    y: Tensor,
    seed: int,
    checkpoint: Path | None,
) -> list[dict[str, float]]:
    """Fit a cell of :func:`build_cell`: Adam, the rate decayed linearly to 0 over the epochs.

    Reads ``args.epochs``, ``lr``, ``kl_weight``, ``batch_size``, ``device``, ``engine`` and
    ``no_progress``. With a ``checkpoint`` the fit resumes from it if it exists.

    Returns:
        ``fit``'s history, one record per epoch.
    """
    epochs = args.epochs
    # Pyro's LambdaLR over Adam, in one fused optimiser (epochs in the fingerprint)
    optim = JointAdam(args.lr, lr_lambda=partial(linear_decay, epochs=epochs))
    return fit(
        setup.model,
        setup.guide,
        x,
        y,
        epochs=epochs,
        batch_size=min(args.batch_size, len(x)),
        optim=optim,
        elbo=setup.elbo,
        kl_scheme="uniform",
        kl_weight=args.kl_weight,
        device=args.device,
        checkpoint=checkpoint,
        checkpoint_every=max(1, epochs // 10),
        resume=checkpoint is not None,
        seed=seed,
        progress=not args.no_progress,
        callback=lambda record: optim.step(),  # the linear decay, once per epoch
        handlers=[LocalReparameterizationMessenger()],
        engine=args.engine,
    )


def _run_cell(
    args: argparse.Namespace,
    prior: str,
    n: int,
    seed: int,
    vaes: dict[str, KernelVAE] | None,
    x_test: Tensor,
    y_test: Tensor,
) -> dict[str, Any]:
    """Train one (prior, N, seed) cell and evaluate it on the test set."""
    t0 = time.perf_counter()
    layer_prior: str | dict[str, str] = prior
    if prior == "dwp" and args.dwp_layers is not None:
        layer_prior = {k: "dwp" if k in args.dwp_layers else "normal" for k in DWP_LAYERS}
    setup, x, y = build_cell(args, layer_prior, n, seed, vaes)
    model, guide = setup.model, setup.guide
    checkpoint = args.out / "cells" / f"{prior}_n{n}_seed{seed}.pt"
    history = train_cell(args, setup, x, y, seed, checkpoint)
    x_test, y_test = x_test.to(args.device), y_test.to(args.device)
    clf = guide_classifier(model, guide, args.evaluation)
    log_probs = ensemble_log_probs(clf, x_test, args.test_samples)
    accuracy = (log_probs.argmax(-1) == y_test).float().mean().item()
    nll = -log_probs.gather(1, y_test[:, None]).mean()
    cell = {
        "prior": prior,
        "n": n,
        "seed": seed,
        "accuracy": accuracy,
        "nll": nll.item(),
        "final_loss": history[-1]["loss"],
        "final_kl": history[-1]["kl"],
        "kernels": kernel_summary(model, guide),
        "seconds": time.perf_counter() - t0,
        "warnings": not_learning_warnings(
            1 - accuracy,
            log_probs.shape[-1],
            steps=args.epochs * math.ceil(n / min(args.batch_size, n)),
            what=f"the {prior} cell N={n} seed {seed} (test set)",
            hint="its accuracy is that of a failed run",
        ),
    }
    for message in cell["warnings"]:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    if prior == "dwp" and args.gap_samples:
        cell["gap"] = dwp_bound_gap(
            model, guide, x[:1].to(args.device), y[:1].to(args.device), num_samples=args.gap_samples
        )["total"]
    checkpoint.unlink(missing_ok=True)
    return cell


@torch.no_grad()
def kernel_summary(model: BNN, guide: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Per Bayesian weight site ``(out, in, k, k)`` of a trained cell: ``{"similarity": mean
    |cosine| of distinct kernel means (:func:`~pyro_dwp.data.kernel_similarity`; near 1: the
    filter bank collapsed onto one filter), "mean_norm": mean L2 norm of the kernel means,
    "mean_sigma": mean posterior standard deviation}``."""
    weight_guide = guide.base if isinstance(guide, ReverseModelGuide) else guide
    summary = {}
    for name in model.priors:
        loc, scale = weight_guide.loc(name), weight_guide.scale(name)
        kernels = loc.reshape(-1, *loc.shape[-2:]).float().cpu()
        summary[name] = {
            "similarity": kernel_similarity(kernels),
            "mean_norm": kernels.flatten(1).norm(dim=1).mean().item(),
            "mean_sigma": scale.mean().item(),
        }
    return summary


def summarise(cells: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, tuple]]:
    """``{(prior, N): {metric: (mean, std, seeds)}}`` over the seeds of each cell."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["prior"], c["n"]), []).append(c)
    summary = {}
    for key, group in groups.items():
        summary[key] = {}
        for metric in ("accuracy", "nll"):
            values = [c[metric] for c in group]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[key][metric] = (statistics.fmean(values), std, len(values))
    return summary


def summary_table(summary: dict[tuple[str, int], dict[str, tuple]], test_samples: int = 10) -> str:
    """Markdown tables of test accuracy and NLL (rows: priors, columns: N) of :func:`summarise`,
    of ``test_samples``-sample ensembles."""
    priors = _in_registry_order({p for p, _ in summary})
    sizes = sorted({n for _, n in summary})
    lines = []
    for metric, title in (("accuracy", "Test accuracy"), ("nll", "Test NLL")):
        lines += [
            f"## {title} ({test_samples}-sample ensemble; mean ± std over data seeds)",
            "",
            "| prior | " + " | ".join(f"N={n}" for n in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        for p in priors:
            row = []
            for n in sizes:
                if (p, n) in summary:
                    mean, std, k = summary[p, n][metric]
                    # one seed has no spread to show (not a spread of 0)
                    row.append(f"{mean:.3f} ± {std:.3f} ({k})" if k > 1 else f"{mean:.3f} (1 seed)")
                else:
                    row.append("")
            lines.append(f"| {PRIOR_RECIPES[p].label} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def _in_registry_order(names: set[str]) -> list[str]:
    """Prior names in the order of :data:`PRIOR_RECIPES` (the tables' and figures' order)."""
    return [p for p in PRIOR_RECIPES if p in names]


def plot_figure2(path: Path, summary: dict[tuple[str, int], dict[str, tuple]]) -> None:
    """Save accuracy vs N per prior (mean, a ± std band) beside the paper's Figure 2 as ``path``.

    Our points are set a little apart along N, one offset per prior, so that equal accuracies
    stay visible; with a single N the legend gives each prior's accuracy.
    """
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it is

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    priors = _in_registry_order({p for p, _ in summary})
    single_n = len({n for _, n in summary}) == 1
    for i, p in enumerate(priors):
        recipe = PRIOR_RECIPES[p]
        sizes = sorted(n for q, n in summary if q == p)
        mean = [summary[p, n]["accuracy"][0] for n in sizes]
        std = [summary[p, n]["accuracy"][1] for n in sizes]
        shift = 1.03 ** (i - (len(priors) - 1) / 2)  # apart along the log N axis
        xs = [n * shift for n in sizes]
        label = f"{recipe.label} (ours" + (f": {mean[0]:.3f})" if single_n else ")")
        ax.plot(xs, mean, "o-", color=recipe.colour, label=label)
        ax.fill_between(
            xs,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=recipe.colour,
            alpha=0.2,
        )
        if recipe.paper:
            paper = sorted(recipe.paper.items())
            label = f"{recipe.label} (paper)"
            ax.plot(*zip(*paper, strict=True), "--", color=recipe.colour, lw=1, label=label)
    ax.set(xscale="log", xlabel="training examples N", ylabel="test accuracy")
    ax.set_title("MNIST, Bayesian ConvNet: accuracy vs N (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

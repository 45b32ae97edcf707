"""The curve-regression experiment of Blundell et al. (2015), Fig. 5.

The experiment of ``pyro-dwp regression``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.regression`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, get_args

import pyro
import torch
from torch import Tensor

from pyro_dwp.bnn import BNN
from pyro_dwp.data import make_regression_data, noise_in_y, true_curve
from pyro_dwp.diagnostics import to_inference_data
from pyro_dwp.experiments.prior_recipes import (
    PRIOR_RECIPES,
    RENAMED_PRIORS,
    PriorSettings,
    prior_names,
)
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer import fit, predict
from pyro_dwp.infer.fit import Engine
from pyro_dwp.io import (
    add_device_argument,
    add_out_argument,
    add_resume_argument,
    announce_fresh_start,
    check_device,
    parse_seed,
    prepare_out,
)
from pyro_dwp.likelihoods import Gaussian
from pyro_dwp.models import mlp

__all__ = [
    "NOISE",
    "add_arguments",
    "band_coverage",
    "band_metrics",
    "build_model",
    "run",
    "sigma_from_neg_log",
]

NOISE = round(noise_in_y(), 3)
"""Default likelihood noise: the RMS noise in ``y`` of the training data (0.063), not the 0.02 of
the ``epsilon`` inside the curve."""
# Options that do not change the result (where it goes, how it is shown, where it runs).
_NOT_SETTINGS = ("out", "resume", "no_progress", "device", "engine", "run", "job")
# Settings renamed with their options (old -> new), read from the metrics of an older run.
_RENAMED_KEYS = {"samples": "predictive_samples"}
# Settings added after older runs were recorded, with the value those runs used.
_ADDED_KEYS = {"prior": "scale-mixture"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out_argument(p, "explicit")
    p.add_argument("--n-train", type=int, default=1000, help="training points in [0, 0.5]")
    p.add_argument("--hidden", type=int, nargs="+", default=[50, 50], help="hidden layer sizes")
    p.add_argument("--epochs", type=int, default=3000)
    p.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        help="minibatch size (default: the full training set, the steadiest)",
    )
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument(
        "--prior",
        choices=prior_names("bbb"),
        default="normal",
        help="normal: N(0, sigma1^2) (--pi and --neg-log-sigma2 unused); scale-mixture: "
        "pi N(0, sigma1^2) + (1 - pi) N(0, sigma2^2); the priors of "
        "pyro_dwp.experiments.prior_recipes.PRIOR_RECIPES",
    )
    p.add_argument("--pi", type=float, default=0.5, help="scale-mixture weight pi")
    p.add_argument("--neg-log-sigma1", type=float, default=0.0, help="-log sigma1")
    p.add_argument("--neg-log-sigma2", type=float, default=6.0, help="-log sigma2")
    p.add_argument("--init-scale", type=float, default=0.01, help="initial posterior sigma")
    p.add_argument(
        "--noise",
        type=float,
        default=NOISE,
        help=f"fixed likelihood noise std (default {NOISE}: the data's noise level in y, "
        "pyro_dwp.data.noise_in_y; their points are y = f(x + e), e ~ N(0, 0.02^2))",
    )
    p.add_argument(
        "--learn-noise",
        action="store_true",
        help="learn the noise std as a point estimate instead (starts at --noise)",
    )
    p.add_argument("--kl-scheme", choices=["uniform", "blundell"], default="uniform")
    p.add_argument(
        "--predictive-samples", type=int, default=200, help="posterior predictive samples"
    )
    p.add_argument("--seed", type=parse_seed, default=0)
    add_device_argument(p)
    p.add_argument(
        "--engine",
        choices=get_args(Engine),
        default="pyro",
        help="training step: Pyro's SVI, or the compiled one where it applies (fit's engine)",
    )
    add_resume_argument(p)
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment; return (and write) the metrics and the settings that made them."""
    t0 = time.perf_counter()
    check_device(args.device)
    if args.predictive_samples < 2:  # before training: the 95% band needs a spread
        raise ValueError(f"--predictive-samples must be at least 2, got {args.predictive_samples}")
    out: Path = prepare_out(args.out, "regression")
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
    _check_finished_run(out, settings, args.resume)
    announce_fresh_start(args.resume, out / "checkpoint.pt")
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    x, y = make_regression_data(args.n_train, seed=args.seed)
    model, guide = build_model(args)
    history = fit(
        model,
        guide,
        x,
        y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        kl_scheme=args.kl_scheme,
        device=args.device,
        checkpoint=out / "checkpoint.pt",
        checkpoint_every=max(1, args.epochs // 10),
        resume=args.resume,
        seed=args.seed,
        progress=not args.no_progress,
        engine=args.engine,
    )
    model.cpu()
    guide.cpu()
    grid = torch.linspace(-0.2, 1.2, 561)[:, None]
    ys = predict(model, guide, grid, num_samples=args.predictive_samples, parallel=True)["obs"][
        ..., 0
    ]
    q = torch.quantile(ys, torch.tensor([0.025, 0.25, 0.5, 0.75, 0.975]), dim=0)
    g = grid[:, 0]
    metrics = band_metrics(q, g)
    metrics.update(
        final_loss=history[-1]["loss"],
        final_nll=history[-1]["nll"],
        final_kl=history[-1]["kl"],
        epochs=history[-1]["epoch"],
    )
    metrics["band_ratio"] = metrics["band_width_out"] / metrics["band_width_in"]
    idata = to_inference_data(
        model, guide, x, y, num_samples=args.predictive_samples, output_name="mean"
    )
    idata.to_netcdf(str(out / "posterior.nc"))
    _plot(out / "regression.png", x, y, g, q, args.prior)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["settings"] = settings
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def build_model(args: argparse.Namespace) -> tuple[BNN, BBBNormal]:
    """The BBB network of the settings ``args`` (``1 -> hidden -> 1``, the prior ``--prior``
    from the registry, a Gaussian likelihood over ``--n-train`` points) and its guide, with
    weights drawn from torch's current RNG state."""
    prior = PRIOR_RECIPES[args.prior].build(
        PriorSettings(
            sigma1=sigma_from_neg_log(args.neg_log_sigma1, "--neg-log-sigma1"),
            sigma2=sigma_from_neg_log(args.neg_log_sigma2, "--neg-log-sigma2"),
            pi=args.pi,
        )
    )
    model = BNN(
        mlp(1, args.hidden, 1),
        prior,
        Gaussian(args.n_train, None if args.learn_noise else args.noise, init_scale=args.noise),
    )
    return model, BBBNormal(model, init_scale=args.init_scale)


def band_metrics(q: Tensor, g: Tensor) -> dict[str, float]:
    """The predictive band against the noise-free curve.

    Args:
        q: Predictive quantiles 2.5%, 25%, 50%, 75%, 97.5% at the grid, ``(5, G)``.
        g: The grid ``(G,)``, covering the data's [0, 0.5] and beyond.

    Returns:
        ``test_rmse`` (the median on [0, 0.5]), ``coverage_in`` / ``coverage_out`` (of the 95%
        band inside / outside [0, 0.5]), ``band_width_in`` / ``band_width_out`` (its mean width
        on [0, 0.5] / on [0.9, 1.2]).
    """
    truth = true_curve(g)
    inside, far = (g >= 0) & (g <= 0.5), (g >= 0.9) & (g <= 1.2)
    width = q[4] - q[0]
    return {
        "test_rmse": float(((q[2] - truth)[inside] ** 2).mean().sqrt()),
        "coverage_in": band_coverage(q[0], q[4], truth, inside),
        "coverage_out": band_coverage(q[0], q[4], truth, ~inside),
        "band_width_in": float(width[inside].mean()),
        "band_width_out": float(width[far].mean()),
    }


def band_coverage(lower: Tensor, upper: Tensor, target: Tensor, mask: Tensor) -> float:
    """The fraction of the grid points selected by ``mask`` where ``lower <= target <= upper``.

    Args:
        lower: Lower edge of the band on the grid, ``(G,)``.
        upper: Upper edge of the band on the grid, ``(G,)``.
        target: The values to cover (here the noise-free curve), ``(G,)``.
        mask: Boolean ``(G,)``, the grid points to count; at least one must be selected.

    Raises:
        ValueError: If ``mask`` selects no point.
    """
    n = int(mask.sum())
    if n == 0:
        raise ValueError("band_coverage: the mask selects no grid point")
    covered = (lower <= target) & (target <= upper)
    return float(covered[mask].sum()) / n


def sigma_from_neg_log(value: float, flag: str) -> float:
    """``sigma = exp(-value)``, checked to be a positive, finite float.

    Raises:
        ValueError: Naming ``flag``, if ``value`` is not finite or ``exp(-value)`` overflows
            or underflows to 0.
    """
    if not math.isfinite(value):
        raise ValueError(f"{flag} must be a finite number, got {value}")
    try:
        sigma = math.exp(-value)
    except OverflowError:
        raise ValueError(
            f"{flag} {value}: sigma = exp({-value}) overflows; pass a value above -700"
        ) from None
    if sigma == 0.0:
        raise ValueError(f"{flag} {value}: sigma = exp({-value}) is 0; pass a value below 700")
    return sigma


def _check_finished_run(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """Refuse to overwrite a finished run in ``out`` (its ``metrics.json``) made with other
    settings; with ``--resume`` it may go on for other ``--epochs``.

    Raises:
        ValueError: Naming each differing option, old -> new.
    """
    path = out / "metrics.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text()).get("settings", {})
    old = _ADDED_KEYS | {_RENAMED_KEYS.get(k, k): v for k, v in old.items()}
    old["prior"] = RENAMED_PRIORS.get(old["prior"], old["prior"])
    changed = [
        f"--{k.replace('_', '-')}: {old.get(k, '(not recorded)')} -> {v}"
        for k, v in settings.items()
        if old.get(k) != v and not (resume and k == "epochs")
    ]
    if changed:
        raise ValueError(
            f"{out} holds a finished run with other settings ({'; '.join(changed)}): "
            "use another --out, or delete its metrics.json to overwrite it"
        )


def _plot(path: Path, x: Tensor, y: Tensor, g: Tensor, q: Tensor, prior: str) -> None:
    """Draw the data ``x, y`` ``(N, 1)``, the band quantiles ``q`` ``(5, G)`` (2.5, 25, 50, 75,
    97.5%) on the grid ``g`` ``(G,)`` and the noise-free curve into ``path``."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it is

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.fill_between(g, q[0], q[4], color="tab:blue", alpha=0.2, label="95% predictive")
    ax.fill_between(g, q[1], q[3], color="tab:blue", alpha=0.4, label="50% predictive")
    ax.plot(g, q[2], color="tab:blue", label="predictive median")
    ax.plot(g, true_curve(g), "k--", lw=1, label="noise-free curve")
    ax.scatter(x[:, 0], y[:, 0], s=6, color="tab:red", label="training data", zorder=3)
    ax.set(
        xlabel="x",
        ylabel="y",
        xlim=(-0.2, 1.2),
        ylim=(-1.0, 2.0),
        title=f"Bayes by Backprop, {prior} prior",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

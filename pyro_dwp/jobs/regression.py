"""``pyro-dwp regression``: the curve-regression experiment of Blundell et al. (2015), Fig. 5.

Trains a small Bayes-by-Backprop MLP with the scale-mixture prior on the curve over
``x in [0, 0.5]`` and shows the predictive band widening away from the data. Writes
``regression.png``, ``posterior.nc`` (ArviZ ``InferenceData``) and ``metrics.json`` to ``--out``.

Resume: explicit. ``--resume`` continues the run in ``--out`` from its ``checkpoint.pt`` (up to
``--epochs``, which may differ); other settings are refused. Without ``--resume`` the run starts
afresh; a finished run there with other settings is refused either way.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_dwp.bnn import BNN
from pyro_dwp.data import make_regression_data, true_curve
from pyro_dwp.diagnostics import to_inference_data
from pyro_dwp.distributions import ScaleMixtureNormal
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer import fit, predict
from pyro_dwp.io import add_device_argument, check_device, prepare_out
from pyro_dwp.likelihoods import Gaussian
from pyro_dwp.models import mlp

__all__ = ["add_arguments", "main", "sigma_from_neg_log"]

# Options that do not change the result (where it goes, how it is shown, where it runs).
_NOT_SETTINGS = ("out", "resume", "no_progress", "device", "run", "job")
# Settings renamed with their options (old -> new), read from the metrics of an older run.
_RENAMED_KEYS = {"samples": "predictive_samples"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory (resume: explicit, with --resume; see --resume)",
    )
    p.add_argument("--n-train", type=int, default=1000, help="training points in [0, 0.5]")
    p.add_argument("--hidden", type=int, nargs="+", default=[50, 50], help="hidden layer sizes")
    p.add_argument("--epochs", type=int, default=1500)
    p.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        help="minibatch size (default: the full training set, the steadiest)",
    )
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--pi", type=float, default=0.5, help="scale-mixture weight pi")
    p.add_argument("--neg-log-sigma1", type=float, default=0.0, help="-log sigma1")
    p.add_argument("--neg-log-sigma2", type=float, default=6.0, help="-log sigma2")
    p.add_argument("--init-scale", type=float, default=0.01, help="initial posterior sigma")
    p.add_argument(
        "--noise",
        type=float,
        default=0.02,
        help="fixed likelihood noise std (default 0.02, the data's noise level)",
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
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint.pt (settings must match; --epochs "
        "may differ); without it the run starts afresh",
    )
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the experiment; return (and write) the metrics and the settings that made them."""
    t0 = time.perf_counter()
    check_device(args.device)
    out: Path = prepare_out(args.out)
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS}
    _check_finished_run(out, settings, args.resume)
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    x, y = make_regression_data(args.n_train, seed=args.seed)
    prior = ScaleMixtureNormal(
        args.pi,
        sigma_from_neg_log(args.neg_log_sigma1, "--neg-log-sigma1"),
        sigma_from_neg_log(args.neg_log_sigma2, "--neg-log-sigma2"),
    )
    model = BNN(
        mlp(1, args.hidden, 1),
        prior,
        Gaussian(args.n_train, None if args.learn_noise else args.noise, init_scale=args.noise),
    )
    guide = BBBNormal(model, init_scale=args.init_scale)
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
    )
    model.cpu()
    guide.cpu()
    grid = torch.linspace(-0.2, 1.2, 561)[:, None]
    ys = predict(model, guide, grid, num_samples=args.predictive_samples, parallel=True)["obs"][
        ..., 0
    ]
    q = torch.quantile(ys, torch.tensor([0.025, 0.25, 0.5, 0.75, 0.975]), dim=0)
    g = grid[:, 0]
    inside, outside = (g >= 0) & (g <= 0.5), (g >= 0.9) & (g <= 1.2)
    width = q[4] - q[0]
    metrics = {
        "test_rmse": float(((q[2] - true_curve(g))[inside] ** 2).mean().sqrt()),
        "band_width_in": float(width[inside].mean()),
        "band_width_out": float(width[outside].mean()),
        "final_loss": history[-1]["loss"],
        "final_nll": history[-1]["nll"],
        "final_kl": history[-1]["kl"],
        "epochs": history[-1]["epoch"],
    }
    metrics["band_ratio"] = metrics["band_width_out"] / metrics["band_width_in"]
    idata = to_inference_data(
        model, guide, x, y, num_samples=args.predictive_samples, output_name="mean"
    )
    idata.to_netcdf(str(out / "posterior.nc"))
    _plot(out / "regression.png", x, y, g, q)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["settings"] = settings
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def sigma_from_neg_log(value: float, flag: str) -> float:
    """``sigma = exp(-value)``, checked to be a positive, finite float.

    Raises:
        ValueError: Naming ``flag``, if ``exp(-value)`` overflows or underflows to 0.
    """
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
    old = {_RENAMED_KEYS.get(k, k): v for k, v in old.items()}
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


def _plot(path: Path, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, q: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
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
        title="Bayes by Backprop, scale-mixture prior",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""The kernel VAEs of the deep weight prior (Atanov et al., 2019).

The experiment of ``pyro-dwp dwp-prior``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.dwp_prior`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, get_args

import torch
from torch import Tensor

from pyro_dwp.data import kernel_smoothness, select_kernels, split_kernels
from pyro_dwp.infer.code_prior import fit_code_prior
from pyro_dwp.infer.kernel_vae import fit_kernel_vae
from pyro_dwp.io import add_device_argument, check_device, parse_seed, read_torch_file
from pyro_dwp.models.kernel_vae import (
    DecoderMean,
    DecoderScale,
    KernelVAE,
    load_kernel_vae,
    save_kernel_vae,
)

__all__ = ["add_arguments", "evaluate_kernel_vae", "load_kernel_set", "run"]

_EVAL_BATCH = 128  # kernels per evaluation batch
_ELBO_SAMPLES = 10  # reconstruction samples per kernel in the held-out ELBO
_PLOT_KERNELS = 64  # kernels per panel of the sample plots (an 8 x 8 grid)
_SMOOTHNESS_SAMPLES = 10_000  # prior samples in the smoothness statistic
_FROM_VAES_OPTIONS = ("min_norm", "valid_fraction", "code_prior_components", "from_vaes", "seed")
"""The options of a ``--from-vaes`` run (the kernels' split, the code prior); the others (steps,
decoder, learning rate...) are the trained VAE's own, in each layer's ``training`` entry."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", type=Path, required=True, help="output folder of dwp-source")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory (resume: none, a rerun fits again and overwrites it)",
    )
    p.add_argument("--layers", nargs="+", default=["conv1", "conv2"], help="kernel sets to fit")
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--steps", type=int, default=40_000, help="optimisation steps per layer (whole epochs)"
    )
    length.add_argument("--epochs", type=int, default=None, help="passes instead of --steps")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="training kernels held out to keep the VAE of the best validation ELBO (0: none, "
        "the last epoch's VAE is kept)",
    )
    p.add_argument("--augment", action="store_true", help="train under random flips and transposes")
    p.add_argument(
        "--min-norm",
        type=float,
        nargs="+",
        default=None,
        metavar="M",
        help="drop the kernels (train and test) of L2 norm below M before fitting: one value for "
        "every layer or one per --layers entry (default: keep the source's set)",
    )
    p.add_argument(
        "--z-dim",
        type=int,
        default=None,
        help="latent dimension of every layer's VAE (default: the paper's, 2 for 7x7, 4 for 5x5)",
    )
    p.add_argument(
        "--decoder-scale",
        choices=list(get_args(DecoderScale)),
        default="per-code",
        help="the decoder's scale: per-code (a function of z, the paper's) or shared (one learned "
        "scale per kernel pixel; under the prior's pull the kernels then keep their diversity, "
        "see the ablation's section 10) (default: per-code)",
    )
    p.add_argument(
        "--decoder-mean",
        choices=list(get_args(DecoderMean)),
        default="direct",
        help="the decoder's mean: direct (a 1x1 head, the paper's) or polar (a direction times a "
        "learned norm of at least the smallest training kernel's: no mode at the zero kernel) "
        "(default: direct)",
    )
    p.add_argument(
        "--code-prior-components",
        type=int,
        nargs="+",
        default=None,
        metavar="C",
        help="after training, replace the code prior N(0, I) by a mixture of C diagonal Gaussians "
        "fitted by EM to codes of the training kernels (the prior's mass then lies where the "
        "source kernels' codes lie; see the ablation's section 13): one value for every layer or "
        "one per --layers entry (default: N(0, I))",
    )
    p.add_argument(
        "--from-vaes",
        type=Path,
        default=None,
        metavar="DIR",
        help="do not train: take each layer's VAE from DIR/vae_<layer>.pt (e.g. a shipped prior's "
        "folder) and only fit --code-prior-components and evaluate; give the options that made "
        "it (--min-norm, --valid-fraction, --seed), so that the kernels split the same way",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate")
    p.add_argument("--iwae-samples", type=int, default=100, help="K of the held-out IWAE bound")
    p.add_argument("--seed", type=parse_seed, default=0)
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fit, save, evaluate and plot one kernel VAE per layer; return (and write) the report."""
    t0 = time.perf_counter()
    floors, components = _check_args(args)
    # Read every kernel set first, so that a missing one fails before any training.
    sets = {
        layer: load_kernel_set(args.kernels / f"kernels_{layer}.pt", layer) for layer in args.layers
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    training = {
        "min_norm": floors,
        "steps": args.steps if args.epochs is None else None,
        "epochs": args.epochs,
        "valid_fraction": args.valid_fraction,
        "augment": args.augment,
        "decoder_scale": args.decoder_scale,
        "decoder_mean": args.decoder_mean,
        "code_prior_components": components,
        "from_vaes": None if args.from_vaes is None else str(args.from_vaes),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
    }
    layers = {
        layer: _fit_layer(args, layer, kernel_set, training) for layer, kernel_set in sets.items()
    }
    if args.from_vaes is not None:  # no training ran: keep the options that applied
        training = {k: training[k] for k in _FROM_VAES_OPTIONS}
    report = {
        "layers": layers,
        "recon_over_std": {layer: e["recon_over_std"] for layer, e in layers.items()},
        "smoothness": {layer: e["smoothness"] for layer, e in layers.items()},
        "training": training,
        "seconds": time.perf_counter() - t0,
    }
    (out / "prior_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _check_args(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, int] | None]:
    """Check the options; return the ``--min-norm`` floor and the ``--code-prior-components``
    (``None``: no code prior) of each layer of ``--layers``."""
    check_device(args.device)
    if args.iwae_samples < 1:
        raise ValueError(f"--iwae-samples must be >= 1, got {args.iwae_samples}")
    if args.z_dim is not None and args.z_dim < 1:
        raise ValueError(f"--z-dim must be >= 1, got {args.z_dim}")
    if not 0 <= args.valid_fraction < 1:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {args.valid_fraction}")
    if (args.steps if args.epochs is None else args.epochs) < 1:
        raise ValueError("--steps and --epochs must be >= 1")
    if args.from_vaes is not None and args.code_prior_components is None:
        raise ValueError("--from-vaes only fits a code prior: give --code-prior-components too")
    floors = _per_layer(args.layers, args.min_norm or [0.0], "--min-norm", 0)
    if args.code_prior_components is None:
        return floors, None
    components = _per_layer(args.layers, args.code_prior_components, "--code-prior-components", 1)
    return floors, components


def _per_layer(layers: list[str], values: list, option: str, least: float) -> dict[str, Any]:
    """``{layer: value}`` from one value for every layer or one per layer.

    Raises:
        ValueError: If the count is neither, or a value is below ``least``.
    """
    if len(values) not in (1, len(layers)) or min(values) < least:
        raise ValueError(
            f"{option} takes one value >= {least} or one per layer of --layers {layers}, got "
            f"{values}"
        )
    return dict(zip(layers, values * len(layers) if len(values) == 1 else values, strict=True))


def _fit_layer(
    args: argparse.Namespace,
    layer: str,
    kernel_set: tuple[Tensor, Tensor, int, dict[str, Any]],
    training: dict[str, Any],
) -> dict[str, Any]:
    """Fit, save, evaluate and plot the kernel VAE of ``layer`` on its kernel set (train ``(n, k,
    k)``, test ``(m, k, k)``, ``k``, provenance, as :func:`load_kernel_set` reads it); return
    its entry of the report."""
    kernels, test, kernel_size, provenance = kernel_set
    floor = training["min_norm"][layer]
    if floor:
        kernels, test, provenance = _apply_floor(layer, kernels, test, floor, provenance)
    train, valid = (
        split_kernels(kernels, args.valid_fraction, args.seed)
        if args.valid_fraction
        else (kernels, None)
    )
    if valid is not None and len(valid) == 0:  # too few kernels to hold any out
        train, valid = kernels, None
    torch.manual_seed(args.seed)  # the evaluation's draws too: one command, one report
    if args.from_vaes is None:
        vae = KernelVAE.for_kernel_size(
            kernel_size, args.z_dim, args.decoder_scale, args.decoder_mean
        ).to(args.device)
        history = fit_kernel_vae(
            vae,
            train,
            valid,
            epochs=args.epochs,
            steps=args.steps if args.epochs is None else None,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            augment=args.augment,
            progress=not args.no_progress,
        )
    else:  # the file records how the VAE was trained, and that its code prior is new
        vae, meta = _load_trained(args.from_vaes / f"vae_{layer}.pt", kernel_size)
        history = meta["history"]
        keep = ("code_prior_components", "from_vaes")
        training = {**meta.get("training", {}), **{k: training[k] for k in keep}}
    vae.cpu().eval()
    code_prior = None
    if training["code_prior_components"] is not None:
        components = training["code_prior_components"][layer]
        mixture, log_likelihood = fit_code_prior(vae.encoder, train, components, seed=args.seed)
        vae.set_code_prior(mixture)
        code_prior = {"components": components, "codes_mean_log_likelihood": log_likelihood}
    bounds = evaluate_kernel_vae(vae, test, iwae_samples=args.iwae_samples)
    files = {"vae_file": f"vae_{layer}.pt", "samples_plot": f"samples_{layer}.png"}
    save_kernel_vae(
        args.out / files["vae_file"],
        vae,
        layer=layer,
        provenance={**provenance, "kernels_file": str(args.kernels / f"kernels_{layer}.pt")},
        history=history,
        training=training,
        **bounds,
    )
    _plot_samples(args.out / files["samples_plot"], vae, test, layer)
    files["latent_plot"] = None
    if vae.z_dim == 2:
        files["latent_plot"] = f"latent_{layer}.png"
        _plot_latent(args.out / files["latent_plot"], vae, test, layer)
    return {
        "kernel_size": kernel_size,
        "z_dim": vae.z_dim,
        "hidden": vae.hidden,
        "decoder_scale": vae.decoder_scale,
        "decoder_mean": vae.decoder_mean,
        "code_prior": code_prior,
        "n_train": len(train),
        "n_valid": 0 if valid is None else len(valid),
        "n_test": len(test),
        "epochs": history["epochs"],
        "steps": history["steps"],
        "best_epoch": history["best_epoch"],
        "final_train_elbo": history["train_elbo"][-1],
        **bounds,
        "iwae_samples": args.iwae_samples,
        "training": training,
        **files,
    }


def _load_trained(path: Path, kernel_size: int) -> tuple[KernelVAE, dict[str, Any]]:
    """The VAE of ``--from-vaes`` and its file's metadata (with its training ``history``).

    Raises:
        ValueError: If its kernel size is not the kernel set's, the file has no history, or the
            VAE was rescaled (it no longer models the kernel set it was trained on).
    """
    vae, meta = load_kernel_vae(path)
    if vae.kernel_scale != 1.0:
        raise ValueError(
            f"--from-vaes: {path} is a VAE rescaled by {vae.kernel_scale:g} (KernelVAE.rescale_): "
            "it no longer models the kernels it was trained on; use the file dwp-prior wrote"
        )
    if vae.kernel_size != kernel_size:
        raise ValueError(
            f"--from-vaes: {path} is a VAE of {vae.kernel_size}x{vae.kernel_size} kernels, the "
            f"kernel set's are {kernel_size}x{kernel_size}"
        )
    if not isinstance(meta.get("history"), dict):
        raise ValueError(f"--from-vaes: {path} has no training history (not from dwp-prior)")
    return vae, meta


def load_kernel_set(
    path: Path, layer: str | None = None
) -> tuple[Tensor, Tensor, int, dict[str, Any]]:
    """Read ``kernels_<layer>.pt`` of ``pyro-dwp dwp-source``.

    Args:
        path: The file.
        layer: The layer whose kernels the caller expects (e.g. ``"conv1"``), checked against
            the one the file records; ``None``: not checked.

    Returns:
        Train kernels ``(n, k, k)``, test kernels ``(m, k, k)``, ``k`` and the provenance dict.

    Raises:
        FileNotFoundError: If there is no file (the message names the command that makes it).
        ValueError: If the file is unreadable, not a kernel set of consistent shapes, or
            another layer's.
    """
    state = read_torch_file(
        path,
        what="kernel dataset",
        remedy=f"make it with `pyro-dwp dwp-source --out {path.parent}`",
    )
    if not isinstance(state, dict) or not {"train", "test", "kernel_size"} <= set(state):
        raise ValueError(f"{path} is not a kernel dataset written by pyro-dwp dwp-source")
    if layer is not None and state.get("layer", layer) != layer:
        raise ValueError(
            f"kernel dataset {path} holds the kernels of {state['layer']}, not of {layer}: "
            "a renamed or copied file?"
        )
    k = state["kernel_size"]
    for split in ("train", "test"):
        kernels = state[split]
        if not isinstance(kernels, Tensor) or kernels.dim() != 3 or kernels.shape[1:] != (k, k):
            shape = tuple(kernels.shape) if isinstance(kernels, Tensor) else type(kernels)
            raise ValueError(
                f"kernel dataset {path}: {split!r} must be {k}x{k} kernels (N, {k}, {k}), "
                f"got {shape}"
            )
    if len(state["train"]) == 0 or len(state["test"]) == 0:
        raise ValueError(f"kernel dataset {path} has an empty train or test split")
    return state["train"].float(), state["test"].float(), k, state.get("provenance", {})


def _apply_floor(
    layer: str, train: Tensor, test: Tensor, floor: float, provenance: dict[str, Any]
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Drop the kernels of L2 norm below ``floor`` from both splits; the provenance records it.

    Raises:
        ValueError: If a split is left empty.
    """
    try:
        kept = [w[select_kernels(w, min_norm=floor)[0]] for w in (train, test)]
    except ValueError as e:
        raise ValueError(f"--min-norm {floor} leaves no {layer} kernel in a split: {e}") from e
    floor_record = {
        "min_norm": floor,
        "kept_of_total": f"kept {len(kept[0]) + len(kept[1])} of {len(train) + len(test)}",
    }
    return kept[0], kept[1], {**provenance, "prior_floor": floor_record}


@torch.no_grad()
def evaluate_kernel_vae(vae: KernelVAE, kernels: Tensor, *, iwae_samples: int) -> dict[str, Any]:
    """How well a kernel VAE fits held-out kernels ``(N, k, k)``.

    Returns:
        ``test_elbo``, ``test_iwae``: mean bounds on ``log p(w)`` per kernel, in nats (the ELBO's
        reconstruction term averaged over 10 samples of ``z``; the IWAE bound with
        ``K = iwae_samples``); ``recon_over_std``: the RMS error of the reconstructions (the
        decoder mean at the encoder mean) over the kernels' std; ``decoder_scale_over_std``: the
        RMS decoder scale there over the kernels' std; ``sample_std_over_std``: the std of
        prior samples ``w ~ p(w | z) p(z)`` over the kernels'; ``smoothness``:
        :func:`~pyro_dwp.data.kernel_smoothness` of the kernels (``"source"``), of prior
        samples (``"prior_samples"``) and of the decoder means of prior codes
        (``"prior_means"``); ``zero_kernel_gap``: the IWAE bound of the all-zero kernel minus
        ``test_iwae``, in nats. A positive gap means the prior rates a dead kernel more probable
        than a typical source kernel even when the source set has no small kernels: with a
        decoder mean near zero and decoder noise as large as the kernels, the gap is about
        d / 2 for d pixels (how far a Gaussian's typical sample lies below its mode). Under
        the prior's pull, with few labels, a network's kernels then shrink towards zero
        (``benchmarks/results/dwp_mnist_ablation.md``, section 11). Prior samples are drawn
        with a fixed seed.

    Raises:
        ValueError: If the kernels are not ``(N, k, k)`` with ``k`` the VAE's kernel size.
    """
    k = vae.kernel_size
    if kernels.dim() != 3 or kernels.shape[1:] != (k, k):
        raise ValueError(
            f"a KernelVAE for {k}x{k} kernels cannot evaluate kernels of shape "
            f"{tuple(kernels.shape)}: expected (N, {k}, {k})"
        )
    device = next(vae.parameters()).device
    kernels = kernels.to(device)
    elbo = iwae = squared_error = squared_scale = 0.0
    for w in kernels.split(_EVAL_BATCH):
        elbo += vae.elbo(w, num_samples=_ELBO_SAMPLES).sum().item()
        iwae += vae.iwae_bound(w, iwae_samples, chunk_size=50).sum().item()
        loc, scale = vae.decoder(vae.encoder(w)[0])
        squared_error += (w - loc).square().sum().item()
        squared_scale += scale.square().sum().item()
    zero = torch.zeros(1, k, k, device=device)
    zero_iwae = vae.iwae_bound(zero, iwae_samples, chunk_size=50).item()
    std = kernels.std().item()
    z = vae.sample_codes(_SMOOTHNESS_SAMPLES, torch.Generator().manual_seed(0))
    prior = vae.decode(z)
    samples = prior.sample()
    return {
        "test_elbo": elbo / len(kernels),
        "test_iwae": iwae / len(kernels),
        "recon_over_std": (squared_error / kernels.numel()) ** 0.5 / std,
        "decoder_scale_over_std": (squared_scale / kernels.numel()) ** 0.5 / std,
        "sample_std_over_std": samples.std().item() / std,
        "zero_kernel_gap": zero_iwae - iwae / len(kernels),
        "smoothness": {
            "source": kernel_smoothness(kernels),
            "prior_samples": kernel_smoothness(samples),
            "prior_means": kernel_smoothness(prior.mean),
        },
    }


def _grid(kernels: Tensor, columns: int) -> Tensor:
    """Tile kernels ``(N, k, k)`` into one image with NaN gaps of one pixel."""
    n, k = len(kernels), kernels.shape[-1]
    rows = -(-n // columns)
    image = torch.full((rows * (k + 1) - 1, columns * (k + 1) - 1), float("nan"))
    for i, w in enumerate(kernels):
        r, c = divmod(i, columns)
        image[r * (k + 1) : r * (k + 1) + k, c * (k + 1) : c * (k + 1) + k] = w
    return image


@torch.no_grad()
def _plot_samples(path: Path, vae: KernelVAE, real: Tensor, layer: str) -> None:
    """Held-out kernels, their reconstructions and samples ``w ~ p(w | z) p(z)`` of the VAE,
    one diverging colour scale centred at 0."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it is

    n = min(_PLOT_KERNELS, len(real))
    real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:n]]
    reconstructions = vae.decoder(vae.encoder(real)[0])[0]
    fake = vae.decode(vae.sample_codes(n, torch.Generator().manual_seed(0))).sample()
    vmax = real.abs().quantile(0.99).item() or 1.0
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (
        (real, "source kernels (held out)"),
        (reconstructions, "their reconstructions (decoder mean)"),
        (fake, "prior samples"),
    )
    for ax, (kernels, title) in zip(axes, panels, strict=True):
        im = ax.imshow(_grid(kernels, 8).numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(title)
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
    fig.suptitle(f"{layer}: {vae.kernel_size}x{vae.kernel_size} kernels, z_dim {vae.z_dim}")
    fig.savefig(path, dpi=120)


@torch.no_grad()
def _plot_latent(path: Path, vae: KernelVAE, kernels: Tensor, layer: str) -> None:
    """Encoder means of kernels ``(N, k, k)`` in the 2-D latent space, coloured by L2 norm."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it is

    loc = vae.encode(kernels).mean.numpy()
    norms = kernels.flatten(1).norm(dim=1).numpy()
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    points = ax.scatter(loc[:, 0], loc[:, 1], c=norms, s=6, cmap="viridis")
    fig.colorbar(points, ax=ax, label="kernel L2 norm")
    ax.set(xlabel="$z_1$", ylabel="$z_2$", title=f"{layer}: latent means of held-out kernels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)

"""``pyro-dwp dwp-prior``: the kernel VAEs of the deep weight prior (Atanov et al., 2019).

Reads the kernel sets ``KERNELS/kernels_<layer>.pt`` written by ``pyro-dwp dwp-source`` and
fits one :class:`~pyro_dwp.models.KernelVAE` per layer with the paper's Appendix D architecture
for its kernel size (7x7: z_dim 2, hidden 32; 5x5: z_dim 4, hidden 64), with
:func:`~pyro_dwp.models.fit_kernel_vae`: plain PyTorch, Adam on the summed negative ELBO with the
learning rate decayed linearly to 0 (the VAE is an ordinary amortised model with a closed-form
Gaussian KL, fitted once before the Bayesian network that uses it as a prior).

Writes to ``--out``, per layer:

- ``vae_<layer>.pt`` (:func:`~pyro_dwp.models.save_kernel_vae`; read it with
  :func:`~pyro_dwp.models.load_kernel_vae`): the VAE and its metadata ``layer``,
  ``provenance`` (the kernel set's, plus ``kernels_file``), ``history``
  (``train_elbo`` / ``valid_elbo`` per epoch), ``training`` (epochs, batch size, lr, seed) and
  ``test_elbo`` / ``test_iwae`` (nats per kernel);
- ``samples_<layer>.png``: held-out source kernels beside samples of the prior (paper Fig. 1);
- ``latent_<layer>.png`` (``z_dim`` 2 only): the encoder means of the held-out kernels
  (paper Fig. 5);

and ``prior_report.json`` with the held-out ELBO and IWAE bound (``--iwae-samples``, K=100)
per kernel of each layer.

With the defaults (300 epochs) and dwp-source's default kernel sets (about 600 7x7 and 16,000
5x5 training kernels) this takes about 4 minutes on one H100 (``--device cuda``), mostly for
``conv2``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyro_dwp.io import read_torch_file
from pyro_dwp.models.kernel_vae import KernelVAE, fit_kernel_vae, save_kernel_vae

__all__ = ["add_arguments", "evaluate_kernel_vae", "load_kernel_set", "main"]

_EVAL_BATCH = 128  # kernels per evaluation batch
_ELBO_SAMPLES = 10  # reconstruction samples per kernel in the held-out ELBO
_PLOT_KERNELS = 64  # kernels per panel of the sample plots (an 8 x 8 grid)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", type=Path, required=True, help="output folder of dwp-source")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--layers", nargs="+", default=["conv1", "conv2"], help="kernel sets to fit")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument(
        "--z-dim",
        type=int,
        default=None,
        help="latent dimension of every layer's VAE (default: the paper's, 2 for 7x7, 4 for 5x5)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate")
    p.add_argument("--iwae-samples", type=int, default=100, help="K of the held-out IWAE bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fit, save, evaluate and plot one kernel VAE per layer; return (and write) the report."""
    t0 = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given, but CUDA is not available")
    if args.iwae_samples < 1:
        raise ValueError(f"--iwae-samples must be >= 1, got {args.iwae_samples}")
    if args.z_dim is not None and args.z_dim < 1:
        raise ValueError(f"--z-dim must be >= 1, got {args.z_dim}")
    # Read every kernel set first, so that a missing one fails before any training.
    sets = {layer: load_kernel_set(args.kernels / f"kernels_{layer}.pt") for layer in args.layers}
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    layers = {}
    for layer, (train, test, kernel_size, provenance) in sets.items():
        torch.manual_seed(args.seed)
        vae = KernelVAE.for_kernel_size(kernel_size, args.z_dim).to(args.device)
        history = fit_kernel_vae(
            vae,
            train,
            test,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            progress=not args.no_progress,
        )
        vae.cpu().eval()
        bounds = evaluate_kernel_vae(vae, test, iwae_samples=args.iwae_samples)
        files = {"vae_file": f"vae_{layer}.pt", "samples_plot": f"samples_{layer}.png"}
        save_kernel_vae(
            out / files["vae_file"],
            vae,
            layer=layer,
            provenance={**provenance, "kernels_file": str(args.kernels / f"kernels_{layer}.pt")},
            history=history,
            training={
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "seed": args.seed,
            },
            **bounds,
        )
        _plot_samples(out / files["samples_plot"], vae, test, layer)
        files["latent_plot"] = None
        if vae.z_dim == 2:
            files["latent_plot"] = f"latent_{layer}.png"
            _plot_latent(out / files["latent_plot"], vae, test, layer)
        layers[layer] = {
            "kernel_size": kernel_size,
            "z_dim": vae.z_dim,
            "hidden": vae.hidden,
            "n_train": len(train),
            "n_test": len(test),
            "final_train_elbo": history["train_elbo"][-1],
            **bounds,
            "iwae_samples": args.iwae_samples,
            **files,
        }
    report = {"layers": layers, "seconds": time.perf_counter() - t0}
    (out / "prior_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def load_kernel_set(path: Path) -> tuple[Tensor, Tensor, int, dict[str, Any]]:
    """Read ``kernels_<layer>.pt`` of ``pyro-dwp dwp-source``.

    Returns:
        Train kernels ``(n, k, k)``, test kernels ``(m, k, k)``, ``k`` and the provenance dict.

    Raises:
        FileNotFoundError: If there is no file (the message names the command that makes it).
        ValueError: If the file is unreadable or not a kernel set of consistent shapes.
    """
    state = read_torch_file(
        path,
        what="kernel dataset",
        remedy=f"make it with `pyro-dwp dwp-source --out {path.parent}`",
    )
    if not isinstance(state, dict) or not {"train", "test", "kernel_size"} <= set(state):
        raise ValueError(f"{path} is not a kernel dataset written by pyro-dwp dwp-source")
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


@torch.no_grad()
def evaluate_kernel_vae(vae: KernelVAE, kernels: Tensor, *, iwae_samples: int) -> dict[str, float]:
    """Mean held-out bounds on ``log p(w)`` per kernel, in nats, of kernels ``(N, k, k)``.

    Returns:
        ``{"test_elbo": ..., "test_iwae": ...}``: the ELBO (reconstruction term averaged over
        10 samples of ``z``) and the IWAE bound with ``K = iwae_samples``.

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
    elbo = iwae = 0.0
    for w in kernels.to(device).split(_EVAL_BATCH):
        elbo += vae.elbo(w, num_samples=_ELBO_SAMPLES).sum().item()
        iwae += vae.iwae_bound(w, iwae_samples, chunk_size=50).sum().item()
    return {"test_elbo": elbo / len(kernels), "test_iwae": iwae / len(kernels)}


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
    """Held-out kernels beside samples ``w ~ p(w | z) p(z)`` of the VAE, one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(_PLOT_KERNELS, len(real))
    real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:n]]
    z = torch.randn(n, vae.z_dim, generator=torch.Generator().manual_seed(0))
    fake = vae.decode(z).sample()
    vmax = real.abs().quantile(0.99).item() or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), layout="constrained")
    for ax, kernels, title in (
        (axes[0], real, "source kernels (held out)"),
        (axes[1], fake, "prior samples"),
    ):
        im = ax.imshow(_grid(kernels, 8).numpy(), cmap="gray", vmin=-vmax, vmax=vmax)
        ax.set_title(title)
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
    fig.suptitle(f"{layer}: {vae.kernel_size}x{vae.kernel_size} kernels, z_dim {vae.z_dim}")
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def _plot_latent(path: Path, vae: KernelVAE, kernels: Tensor, layer: str) -> None:
    """Encoder means of kernels ``(N, k, k)`` in the 2-D latent space, coloured by L2 norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loc = vae.encode(kernels).mean.numpy()
    norms = kernels.flatten(1).norm(dim=1).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points = ax.scatter(loc[:, 0], loc[:, 1], c=norms, s=6, cmap="viridis")
    fig.colorbar(points, ax=ax, label="kernel L2 norm")
    ax.set(xlabel="$z_1$", ylabel="$z_2$", title=f"{layer}: latent means of held-out kernels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

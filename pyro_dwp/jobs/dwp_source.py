"""``pyro-dwp dwp-source``: the source kernels of the deep weight prior (Atanov et al., 2019).

Trains ``--num-nets`` ConvNets of the paper's layout (:class:`~pyro_dwp.models.DWPConvNet`) on
notMNIST (train split, pixels / 126) with Adam, batch 256 and L2 weight decay 1e-3 (Adam's
coupled ``weight_decay``: ``weight_decay * w`` is added to every parameter's gradient), net ``i``
seeded with ``--seed + i``, and evaluates each on the notMNIST test split. A net whose test
accuracy is at chance (``<= 0.15``) is excluded with a warning. Every ``(out, in)`` slice of the
kept nets' ``conv1`` (7x7) and ``conv2`` (5x5) weights is one kernel.

Norm filter: weight decay drives the kernels that a net does not use towards zero; they would
form a spike at 0 that the VAE wastes capacity on. Per layer, the kernels whose L2 norm is below
``--min-norm-ratio`` (r) times the ``--norm-reference-quantile`` (q) of that layer's kernel norms
(pooled over the kept nets) are dropped: the q-quantile measures the norm of the layer's active
kernels, and a kernel r times smaller than that is taken as unused (``--min-norm-ratio 0`` keeps
all; q = 0.5 makes the threshold relative to the median). Unlike dropping a fixed share, it drops
nothing from a layer with no small kernels. With r = 0.2, q = 0.95 and 4 nets of 256 / 512
channels, one run kept 758 of 1,024 ``conv1`` and 114,110 of 524,288 ``conv2`` kernels (test
accuracies 0.870-0.878). If more than ``--max-kernels`` remain, a seeded random subset of that
size is kept (``conv2`` of wide nets yields hundreds of thousands of kernels, more than the VAE
needs). The rest is split per layer into train / test (``--test-fraction``, seeded).

Defaults: 16 nets of 32 / 128 channels, the widths of the target CNN, 20 epochs. The widths matter:
a trained kernel keeps roughly the scale of its initialisation, ``1 / sqrt(fan_in)``, so kernels
of 256-channel source nets have a ``conv2`` std of ~0.012, three times smaller than a 32-channel
target's (~0.036, the std of the public kernel set), and a prior fitted to them pulls the target's
kernels towards a scale its classifier cannot use (measured: DWP at chance on MNIST with N <= 200).
A quick CPU preset::

    pyro-dwp dwp-source --out runs/dwp_source --num-nets 2 --channels 16 32 --epochs 2 \\
        --n-train-subset 5000

Writes to ``--out``:

- ``kernels_conv1.pt``, ``kernels_conv2.pt``: ``{"train": (n, k, k), "test": (m, k, k),
  "layer", "kernel_size", "provenance": {...}}`` (float32, CPU; see :func:`main`);
- ``source_report.json``: per-net accuracies, per-layer "kept n of m", warnings;
- ``source_nets/net_seed<S>.pt``: each trained net; a re-run with the same settings loads it
  instead of training again (resume).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_dwp.data import load_notmnist
from pyro_dwp.infer.fit import save_checkpoint
from pyro_dwp.io import read_torch_file
from pyro_dwp.models.dwp_cnn import DWPConvNet, conv_layers

__all__ = ["CHANCE_ACCURACY", "INITS", "add_arguments", "main", "select_kernels", "split_kernels"]

CHANCE_ACCURACY = 0.15
"""A source net with test accuracy at or below this (10 classes) is excluded."""

_NET_FORMAT = "pyro_dwp.dwp_source_net"


def _xavier_normal_init(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(module.weight)


INITS: dict[str, Callable[[nn.Module], None]] = {
    "torch": lambda net: None,
    "xavier": _xavier_normal_init,
}
"""``--init`` choices: functions that re-initialise a freshly built net's weights in place."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--num-nets", type=int, default=16, help="number K of source networks")
    p.add_argument(
        "--channels",
        type=int,
        nargs=2,
        default=[32, 128],
        metavar=("C1", "C2"),
        help="source widths; keep the target CNN's: a kernel's scale follows its layer's fan-in",
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument(
        "--init",
        choices=list(INITS),
        default="torch",
        help="weights' initialisation: PyTorch's default (Kaiming uniform) or Xavier normal "
        "(the DWP authors' code); biases keep PyTorch's",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-3, help="L2 weight decay")
    p.add_argument("--seed", type=int, default=0, help="net i is seeded with SEED + i")
    p.add_argument(
        "--n-train-subset",
        type=int,
        default=None,
        help="train on a seeded class-balanced subset of this many notMNIST images",
    )
    p.add_argument(
        "--min-norm-ratio",
        type=float,
        default=0.2,
        help="drop kernels whose L2 norm is below this times the reference quantile of the layer",
    )
    p.add_argument(
        "--norm-reference-quantile",
        type=float,
        default=0.95,
        help="quantile of the layer's kernel norms that --min-norm-ratio is relative to",
    )
    p.add_argument("--max-kernels", type=int, default=20_000, help="per layer, after the filter")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out kernels per layer")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with notmnist/")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or load) the source nets, write the kernel sets; return (and write) the report.

    The ``provenance`` dict of ``kernels_<layer>.pt`` holds: ``source_data``, ``n_train``,
    ``seeds`` (of the kept nets), ``excluded_seeds``, ``test_accuracy`` (``{seed: accuracy}`` of
    all nets), ``channels``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``rule`` (in
    words), ``min_norm_ratio``, ``norm_reference_quantile``, ``norm_threshold``, ``kept``,
    ``total``, ``kept_of_total`` (``"kept n of m"``), ``max_kernels``, ``subsampled`` (kernels
    after the cap), ``test_fraction`` and ``split_seed``.
    """
    t0 = time.perf_counter()
    _check_args(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    x, y = load_notmnist(
        "train", args.data_dir, n=args.n_train_subset, seed=args.seed, flatten=False
    )
    x_test, y_test = load_notmnist("test", args.data_dir, flatten=False)
    settings = {
        "channels": list(args.channels),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "init": args.init,
        "n_train": len(x),
        "n_train_subset": args.n_train_subset,
    }
    nets, records, messages = [], [], []
    for i in range(args.num_nets):
        seed = args.seed + i
        path = out / "source_nets" / f"net_seed{seed}.pt"
        net, record = _trained_net(path, x, y, x_test, y_test, seed, settings, args, device)
        records.append(record)
        if record["test_accuracy"] <= CHANCE_ACCURACY:
            message = (
                f"source net seed {seed} is at chance accuracy ({record['test_accuracy']:.3f} <= "
                f"{CHANCE_ACCURACY}) on the notMNIST test set; its kernels are excluded"
            )
            warnings.warn(message, stacklevel=2)
            messages.append(message)
        else:
            nets.append((seed, net))
    if not nets:
        raise ValueError(
            f"all {args.num_nets} source nets are at chance accuracy (<= {CHANCE_ACCURACY}); "
            "train longer or with another --lr"
        )
    provenance = {
        "source_data": "notMNIST_small train split, pixels / 126",
        "n_train": len(x),
        "seeds": [seed for seed, _ in nets],
        "excluded_seeds": [r["seed"] for r in records if r["test_accuracy"] <= CHANCE_ACCURACY],
        "test_accuracy": {r["seed"]: r["test_accuracy"] for r in records},
        **{
            k: settings[k]
            for k in ("channels", "epochs", "batch_size", "lr", "weight_decay", "init")
        },
        "rule": (
            "drop kernels with L2 norm < min_norm_ratio * (norm_reference_quantile)-quantile "
            "of the layer's kernel L2 norms"
        ),
        "min_norm_ratio": args.min_norm_ratio,
        "norm_reference_quantile": args.norm_reference_quantile,
        "max_kernels": args.max_kernels,
        "test_fraction": args.test_fraction,
        "split_seed": args.seed,
    }
    layers = {}
    for layer, k in conv_layers(nets[0][1]).items():
        weights = [net.get_submodule(layer).weight.detach().cpu() for _, net in nets]
        layers[layer] = _write_kernel_set(out, layer, k, weights, provenance, args)
    report = {
        "nets": records,
        "layers": layers,
        "warnings": messages,
        "seconds": time.perf_counter() - t0,
    }
    (out / "source_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def select_kernels(
    kernels: Tensor, min_norm_ratio: float, reference_quantile: float = 0.95
) -> tuple[Tensor, float]:
    """The norm filter: which kernels ``(N, k, k)`` to keep, ``-> ((N,) bool mask, threshold)``.

    A kernel is kept iff its L2 (Frobenius) norm is ``>= min_norm_ratio * Q``, where ``Q`` is
    the ``reference_quantile`` of the ``N`` norms (``torch.quantile``, linear interpolation);
    the threshold is returned with the mask. ``min_norm_ratio = 0`` keeps every kernel.
    """
    if min_norm_ratio < 0 or not 0 <= reference_quantile <= 1:
        raise ValueError(
            f"min_norm_ratio must be >= 0 and reference_quantile in [0, 1], got "
            f"{min_norm_ratio}, {reference_quantile}"
        )
    norms = kernels.flatten(1).norm(dim=1)
    threshold = min_norm_ratio * torch.quantile(norms, reference_quantile).item()
    return norms >= threshold, threshold


def split_kernels(kernels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of kernels ``(N, k, k)`` into train ``(N - m, k, k)`` and test
    ``(m, k, k)``, ``m = round(test_fraction * N)``."""
    perm = torch.randperm(len(kernels), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(kernels))
    return kernels[perm[n_test:]].clone(), kernels[perm[:n_test]].clone()


def _check_args(args: argparse.Namespace) -> None:
    positive = {
        "--num-nets": args.num_nets,
        "--epochs": args.epochs,
        "--batch-size": args.batch_size,
        "--max-kernels": args.max_kernels,
        "--channels": min(args.channels),
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if args.min_norm_ratio < 0 or not 0 <= args.norm_reference_quantile <= 1:
        raise ValueError(
            f"--min-norm-ratio must be >= 0 and --norm-reference-quantile in [0, 1], got "
            f"{args.min_norm_ratio}, {args.norm_reference_quantile}"
        )
    if args.lr < 0 or args.weight_decay < 0:
        raise ValueError(
            f"--lr and --weight-decay must be >= 0, got {args.lr}, {args.weight_decay}"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given, but CUDA is not available")


def _trained_net(
    path: Path,
    x: Tensor,
    y: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    seed: int,
    settings: dict[str, Any],
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[DWPConvNet, dict[str, Any]]:
    """Load the net of ``seed`` from ``path`` if it was trained with ``settings``, else train,
    evaluate and save it; return it (on the CPU) and its report record."""
    if path.is_file():
        state = _load_net_checkpoint(path)
        if state["settings"] != settings or state["seed"] != seed:
            raise ValueError(
                f"source net checkpoint {path} was trained with other settings "
                f"({state['settings']}, seed {state['seed']}) than this run ({settings}, seed "
                f"{seed}): delete {path.parent} or choose another --out"
            )
        net = DWPConvNet(tuple(args.channels))
        net.load_state_dict(state["state_dict"])
        return net, {**state["record"], "resumed": True}
    torch.manual_seed(seed)
    net = DWPConvNet(tuple(args.channels))
    INITS[args.init](net)
    net.to(device)
    losses = _train(net, x, y, seed, args, device)
    accuracy = _accuracy(net, x_test, y_test, args.batch_size, device)
    net.cpu()
    record = {
        "seed": seed,
        "test_accuracy": accuracy,
        "train_loss": losses,
        "checkpoint": str(path.relative_to(args.out)),
    }
    save_checkpoint(
        path,
        {
            "format": _NET_FORMAT,
            "seed": seed,
            "settings": settings,
            "state_dict": net.state_dict(),
            "record": record,
        },
    )
    return net, {**record, "resumed": False}


def _load_net_checkpoint(path: Path) -> dict[str, Any]:
    state = read_torch_file(
        path, what="source net checkpoint", remedy="delete it to train that net again"
    )
    if not isinstance(state, dict) or state.get("format") != _NET_FORMAT:
        raise ValueError(f"{path} is not a source net checkpoint of pyro-dwp dwp-source")
    return state


def _train(
    net: DWPConvNet,
    x: Tensor,
    y: Tensor,
    seed: int,
    args: argparse.Namespace,
    device: torch.device,
) -> list[float]:
    """Adam with L2 weight decay on the mean cross-entropy; the mean loss of each epoch."""
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    bar = tqdm(range(args.epochs), desc=f"source net seed {seed}", disable=args.no_progress)
    for _ in bar:
        total = 0.0
        for idx in torch.randperm(len(x), generator=generator).split(args.batch_size):
            idx = idx.to(device)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"source net seed {seed}: training loss is {losses[-1]}")
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


@torch.no_grad()
def _accuracy(
    net: DWPConvNet, x: Tensor, y: Tensor, batch_size: int, device: torch.device
) -> float:
    """Fraction of images ``(N, 1, 28, 28)`` whose arg-max logit is the label ``(N,)``."""
    net.eval()
    correct = sum(
        (net(xb.to(device)).argmax(1).cpu() == yb).sum().item()
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)
    )
    net.train()
    return correct / len(x)


def _write_kernel_set(
    out: Path,
    layer: str,
    kernel_size: int,
    weights: list[Tensor],
    provenance: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Filter, cap and split one layer's kernels; write ``kernels_<layer>.pt``; its summary."""
    kernels = torch.cat([w.reshape(-1, kernel_size, kernel_size) for w in weights])
    keep, threshold = select_kernels(kernels, args.min_norm_ratio, args.norm_reference_quantile)
    kept = kernels[keep]
    if len(kept) > args.max_kernels:
        generator = torch.Generator().manual_seed(args.seed)
        kept = kept[torch.randperm(len(kept), generator=generator)[: args.max_kernels]]
    train, test = split_kernels(kept, args.test_fraction, args.seed)
    summary = {
        "kernel_size": kernel_size,
        "kept": int(keep.sum()),
        "total": len(kernels),
        "kept_of_total": f"kept {int(keep.sum())} of {len(kernels)}",
        "norm_threshold": threshold,
        "subsampled": len(kept),
        "n_train": len(train),
        "n_test": len(test),
        "std": kept.std().item() if len(kept) > 1 else float("nan"),
        "file": f"kernels_{layer}.pt",
    }
    layer_provenance = {
        **provenance,
        **{k: summary[k] for k in ("kept", "total", "kept_of_total", "subsampled")},
        "norm_threshold": threshold,
    }
    save_checkpoint(
        out / summary["file"],
        {
            "train": train,
            "test": test,
            "layer": layer,
            "kernel_size": kernel_size,
            "provenance": layer_provenance,
        },
    )
    return summary

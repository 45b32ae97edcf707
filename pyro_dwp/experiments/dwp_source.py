"""The source kernels of the deep weight prior (Atanov et al., 2019).

The experiment of ``pyro-dwp dwp-source``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.dwp_source`).
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

from pyro_dwp.data import (
    DWP_PIXEL_SCALE,
    kernel_stats,
    load_notmnist,
    random_affine,
    select_kernels,
    split_kernels,
)
from pyro_dwp.infer.checkpoint import Checkpoint
from pyro_dwp.infer.steps import GradientSteps
from pyro_dwp.io import add_device_argument, check_device, parse_seed, progress_bar, save_checkpoint
from pyro_dwp.models.dwp_cnn import DWPConvNet, conv_layers

__all__ = [
    "CHANCE_ACCURACY",
    "INITS",
    "KERNEL_GAUGES",
    "L2_PARAMS",
    "add_arguments",
    "he_scale",
    "l2_penalty",
    "run",
]

CHANCE_ACCURACY = 0.15
"""A source net with test accuracy at or below this (10 classes) is excluded."""


def _xavier_normal_init(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(module.weight)


INITS: dict[str, Callable[[nn.Module], None]] = {
    "torch": lambda net: None,
    "xavier": _xavier_normal_init,
}
"""``--net-init`` choices: functions that re-initialise a freshly built net's weights in place."""


KERNEL_GAUGES = ("none", "he")
"""``--kernel-gauge`` choices: the kernels as trained, or each layer's set rescaled to the He
scale of the target network's layer (:func:`he_scale`)."""

L2_PARAMS = ("conv", "all")
"""``--l2-params`` choices: the conv weights only (the DWP authors') or every parameter."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory (resume: automatic, a rerun with the same settings loads the "
        "nets trained there and trains an interrupted one on from its last epoch; other settings "
        "are refused)",
    )
    p.add_argument("--num-nets", type=int, default=10, help="number K of source networks")
    p.add_argument(
        "--channels",
        type=int,
        nargs=2,
        default=[256, 512],
        metavar=("C1", "C2"),
        help="source widths (default: the DWP authors' 256 / 512)",
    )
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument(
        "--lr-schedule",
        choices=["linear", "constant"],
        default="linear",
        help="Adam's rate decayed linearly to 0 over the epochs, or constant (default: linear)",
    )
    p.add_argument(
        "--net-init",
        choices=list(INITS),
        default="xavier",
        help="weights' initialisation: Xavier normal (the DWP authors', default) or PyTorch's "
        "default (Kaiming uniform); biases keep PyTorch's",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's initial learning rate")
    p.add_argument(
        "--l2",
        type=float,
        default=1e-3,
        help="L2 coefficient: the loss is the mean cross-entropy + L2 x sum of squared weights",
    )
    p.add_argument(
        "--l2-params",
        choices=L2_PARAMS,
        default="conv",
        help="which weights --l2 penalises: the conv weights only (default) or all parameters",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="train on randomly rotated (10 degrees), zoomed (10%%) and shifted (2 px) images",
    )
    p.add_argument(
        "--kernel-gauge",
        choices=KERNEL_GAUGES,
        default="none",
        help="rescale each layer's kept kernels by one factor so that their RMS is the He "
        "scale sqrt(2 / fan-in) of that layer in the target net (he), or keep the trained "
        "scale (none, default)",
    )
    p.add_argument(
        "--target-channels",
        type=int,
        nargs=2,
        default=[32, 128],
        metavar=("C1", "C2"),
        help="channels of the target net whose fan-ins --kernel-gauge he uses (default: the "
        "paper's 32 / 128)",
    )
    p.add_argument(
        "--pixel-scale",
        type=float,
        default=DWP_PIXEL_SCALE,
        help="images are divided by this (default 255, as dwp-classify's MNIST)",
    )
    p.add_argument("--seed", type=parse_seed, default=0, help="net i is seeded with SEED + i")
    p.add_argument(
        "--n-train-subset",
        type=int,
        default=None,
        help="train on a seeded class-balanced subset of this many notMNIST images",
    )
    floor = p.add_mutually_exclusive_group()
    floor.add_argument(
        "--keep-fraction",
        type=float,
        nargs=2,
        default=None,
        metavar=("F1", "F2"),
        help="per layer (conv1, conv2), keep this fraction of the kernels, those of largest L2 "
        "norm (default 0.85 0.08, like the published kernel sets)",
    )
    floor.add_argument(
        "--min-norm",
        type=float,
        nargs=2,
        default=None,
        metavar=("M1", "M2"),
        help="per layer (conv1, conv2), keep the kernels of L2 norm >= this floor instead",
    )
    p.add_argument("--max-kernels", type=int, default=20_000, help="per layer, after the filter")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out kernels per layer")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="on CUDA, run the nets' forward passes in bfloat16 autocast (weights stay float32)",
    )
    p.add_argument(
        "--train-only",
        action="store_true",
        help="train (or load) the nets, write no kernel sets (one process per GPU)",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="folder with notmnist/")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true")


_DEFAULT_KEEP_FRACTION = (0.85, 0.08)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or load) the source nets, write the kernel sets; return (and write) the report.

    The ``provenance`` dict of ``kernels_<layer>.pt`` holds: ``source_data``, ``n_train``,
    ``seeds`` (of the kept nets), ``excluded_seeds``, ``test_accuracy`` (``{seed: accuracy}`` of
    all nets), the training settings (``channels``, ``epochs``, ``lr_schedule``, ``batch_size``,
    ``lr``, ``l2``, ``l2_params``, ``net_init``, ``pixel_scale``), ``rule`` (in words),
    ``keep_fraction`` or ``min_norm`` (this layer's), ``norm_threshold`` (the smallest kept
    norm or the floor), ``kept``, ``total``, ``kept_of_total`` (``"kept n of m"``),
    ``max_kernels``, ``subsampled`` (kernels after the cap), ``test_fraction`` and ``split_seed``.
    With ``--train-only`` no kernel set is written and the report has no ``"layers"``.
    """
    t0 = time.perf_counter()
    _check_args(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: pick the fastest
    x, y = load_notmnist(
        "train",
        args.data_dir,
        n=args.n_train_subset,
        seed=args.seed,
        flatten=False,
        pixel_scale=args.pixel_scale,
    )
    x_test, y_test = load_notmnist(
        "test", args.data_dir, flatten=False, pixel_scale=args.pixel_scale
    )
    settings = {k: getattr(args, k) for k in _SETTINGS}
    settings.update(channels=list(args.channels), n_train=len(x))
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
    report: dict[str, Any] = {"nets": records, "warnings": messages}
    if not args.train_only:
        if not nets:
            raise ValueError(
                f"all {args.num_nets} source nets are at chance accuracy (<= {CHANCE_ACCURACY}); "
                "train longer or with another --lr"
            )
        provenance = {
            "source_data": f"notMNIST_small train split, pixels / {args.pixel_scale:g}",
            "seeds": [seed for seed, _ in nets],
            "excluded_seeds": [r["seed"] for r in records if r["test_accuracy"] <= CHANCE_ACCURACY],
            "test_accuracy": {r["seed"]: r["test_accuracy"] for r in records},
            **settings,
            "kernel_gauge": args.kernel_gauge,
            "target_channels": list(args.target_channels),
            "max_kernels": args.max_kernels,
            "test_fraction": args.test_fraction,
            "split_seed": args.seed,
        }
        report["layers"] = {
            layer: _write_kernel_set(
                out,
                layer,
                k,
                [net.get_submodule(layer).weight.detach().cpu() for _, net in nets],
                provenance,
                _floor(args, i),
                [1, *args.target_channels][i],
                args,
            )
            for i, (layer, k) in enumerate(conv_layers(nets[0][1]).items())
        }
    report["seconds"] = time.perf_counter() - t0
    (out / "source_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# Options that change a trained net (with ``channels`` and ``n_train``): a net trained with
# others is not reused.
_SETTINGS = (
    "augment",
    "bf16",
    "epochs",
    "lr_schedule",
    "batch_size",
    "lr",
    "l2",
    "l2_params",
    "net_init",
    "pixel_scale",
    "n_train_subset",
)


def _floor(args: argparse.Namespace, layer_index: int) -> dict[str, float]:
    """The norm filter of the ``layer_index``-th conv layer: ``{"keep_fraction": f}`` or
    ``{"min_norm": m}``."""
    if args.min_norm is not None:
        return {"min_norm": args.min_norm[layer_index]}
    fractions = args.keep_fraction or _DEFAULT_KEEP_FRACTION
    return {"keep_fraction": fractions[layer_index]}


def _check_args(args: argparse.Namespace) -> None:
    positive = {
        "--num-nets": args.num_nets,
        "--epochs": args.epochs,
        "--batch-size": args.batch_size,
        "--max-kernels": args.max_kernels,
        "--channels": min(args.channels),
        "--target-channels": min(args.target_channels),
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if args.keep_fraction is not None and not all(0 < f <= 1 for f in args.keep_fraction):
        raise ValueError(f"--keep-fraction must be in (0, 1], got {args.keep_fraction}")
    if args.min_norm is not None and min(args.min_norm) < 0:
        raise ValueError(f"--min-norm must be >= 0, got {args.min_norm}")
    if args.lr < 0 or args.l2 < 0 or not args.pixel_scale > 0:
        raise ValueError(
            f"--lr and --l2 must be >= 0 and --pixel-scale > 0, got {args.lr}, {args.l2}, "
            f"{args.pixel_scale}"
        )
    check_device(args.device)
    if args.bf16 and args.device != "cuda":
        raise ValueError("--bf16 needs --device cuda")


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
    """The net of ``seed``, trained with ``settings`` and evaluated; return it (on the CPU) and
    its report record.

    ``path`` is the net's :class:`~pyro_dwp.infer.Checkpoint`, written after every epoch and
    with the test accuracy at the end: a finished net is loaded from it, an interrupted one
    trained on from its last epoch (as if uninterrupted: weights, Adam and its schedule, the
    shuffling and augmentation generators are restored).

    Raises:
        CheckpointError: If ``path`` is unreadable, of an older format or was written with other
            settings (naming each, old -> new).
    """
    torch.manual_seed(seed)
    net = DWPConvNet(tuple(args.channels))
    INITS[args.net_init](net)
    net.to(device)
    trainer = _NetTrainer(net, len(x), seed, args, device, path, {**settings, "seed": seed})
    resumed = trainer.resume()
    if trainer.test_accuracy is None:
        trainer.train(x, y)
        trainer.evaluate(x_test, y_test)
    net.cpu()
    record = {
        "seed": seed,
        "test_accuracy": trainer.test_accuracy,
        "train_loss": [h["loss"] for h in trainer.history],
        "checkpoint": str(path.relative_to(args.out)),
    }
    return net, {**record, "resumed": resumed}


class _NetTrainer:
    """The training of one source net: Adam on the mean cross-entropy + ``args.l2`` x
    :func:`l2_penalty`, the rate decayed linearly to 0 over all steps (``--lr-schedule
    linear``) or constant, the images shuffled (and augmented, ``--augment``) by generators
    seeded with ``seed`` (and ``seed + 1``), checkpointed after every epoch.

    Args:
        net: The initialised net, on ``device``.
        n: Number of training images.
        seed: The net's seed.
        args: The job's options.
        device: Where the net trains.
        path: The checkpoint file.
        fingerprint: The settings the checkpoint must have been written with.
    """

    def __init__(
        self,
        net: DWPConvNet,
        n: int,
        seed: int,
        args: argparse.Namespace,
        device: torch.device,
        path: Path,
        fingerprint: dict[str, Any],
    ) -> None:
        self.net, self.seed, self.args, self.device = net, seed, args, device
        total_steps = args.epochs * math.ceil(n / args.batch_size)
        decay = total_steps if args.lr_schedule == "linear" else None
        self.steps = GradientSteps(net.parameters(), args.lr, decay_steps=decay)
        self.shuffle = torch.Generator().manual_seed(seed)
        self.augment = torch.Generator().manual_seed(seed + 1)
        self.checkpoint = Checkpoint(
            path,
            device=device,
            generators={"shuffle": self.shuffle, "augment": self.augment},
            remedy="delete it to train that net again, or choose another --out",
        )
        self.fingerprint = fingerprint
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.test_accuracy: float | None = None

    def resume(self) -> bool:
        """Continue from the checkpoint if there is one; return whether there was."""
        if not self.checkpoint.exists():
            return False
        state = self.checkpoint.load(self.fingerprint)
        self.net.load_state_dict(state["state_dict"])
        self.steps.optimizer.load_state_dict(state["optim"])
        if self.steps.schedule is not None:
            self.steps.schedule.load_state_dict(state["schedule"])
        self.checkpoint.restore_rng(state)
        self.epoch, self.history = state["epoch"], state["history"]
        self.test_accuracy = state["test_accuracy"]
        return True

    def train(self, x: Tensor, y: Tensor) -> None:
        """Train on images ``x`` ``(N, 1, 28, 28)`` and labels ``y`` ``(N,)`` up to
        ``--epochs``, from the current epoch.

        Raises:
            FloatingPointError: On a NaN or infinite epoch loss.
        """
        args, device = self.args, self.device
        x, y = x.to(device), y.to(device)
        decayed = _l2_tensors(self.net, args.l2_params)  # looked up once, not every step
        bar = progress_bar(
            range(self.epoch, args.epochs),
            desc=f"source net seed {self.seed}",
            disable=args.no_progress,
            initial=self.epoch,
            total=args.epochs,
        )
        for epoch in bar:
            total = torch.zeros((), device=device)
            for idx in torch.randperm(len(x), generator=self.shuffle).split(args.batch_size):
                idx = idx.to(device)
                with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
                    images = random_affine(x[idx], self.augment) if args.augment else x[idx]
                    logits = self.net(images)
                loss = F.cross_entropy(logits.float(), y[idx])
                if args.l2:
                    loss = loss + args.l2 * sum(t.square().sum() for t in decayed)
                self.steps.step(loss)
                total += loss.detach() * len(idx)
            loss = total.item() / len(x)
            if not math.isfinite(loss):
                raise FloatingPointError(f"source net seed {self.seed}: training loss is {loss}")
            self.history.append({"epoch": epoch + 1, "loss": loss})
            self.epoch = epoch + 1
            bar.set_postfix(loss=f"{loss:.4f}")
            self._save()

    def evaluate(self, x_test: Tensor, y_test: Tensor) -> None:
        """Set and checkpoint the test accuracy (:func:`_accuracy`)."""
        self.test_accuracy = _accuracy(self.net, x_test, y_test, self.args.batch_size, self.device)
        self._save()

    def _save(self) -> None:
        schedule = self.steps.schedule
        self.checkpoint.save(
            self.epoch,
            self.fingerprint,
            self.history,
            state_dict=self.net.state_dict(),
            optim=self.steps.optimizer.state_dict(),
            schedule=None if schedule is None else schedule.state_dict(),
            test_accuracy=self.test_accuracy,
        )


def l2_penalty(net: nn.Module, params: str) -> Tensor:
    """Sum of the squared weights of ``net``'s convolutions (``params="conv"``, the DWP
    authors' ``--l2`` term; biases and the classifier are not included) or of all its
    parameters (``"all"``); a scalar."""
    return sum(t.square().sum() for t in _l2_tensors(net, params))


def he_scale(kernel_size: int, in_channels: int) -> float:
    """The He-initialisation standard deviation ``sqrt(2 / fan_in)`` of a convolution with
    ``in_channels`` inputs and ``kernel_size`` x ``kernel_size`` kernels (fan-in ``in_channels *
    kernel_size**2``): the weight scale at which a ReLU-family layer keeps the variance of its
    input."""
    return math.sqrt(2.0 / (in_channels * kernel_size**2))


def _l2_tensors(net: nn.Module, params: str) -> list[Tensor]:
    if params not in L2_PARAMS:
        raise ValueError(f"params must be one of {L2_PARAMS}, got {params!r}")
    if params == "all":
        return list(net.parameters())
    return [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]


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
    floor: dict[str, float],
    target_in_channels: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Filter (``floor``: :func:`select_kernels`'s rule), cap, gauge (``--kernel-gauge``, with
    the target layer's ``target_in_channels``) and split one layer's kernels; write
    ``kernels_<layer>.pt``; return its summary (with :func:`kernel_stats` of all kernels as
    trained and of the kept ones as written, and the ``gauge_factor``)."""
    kernels = torch.cat([w.reshape(-1, kernel_size, kernel_size) for w in weights])
    try:
        keep, threshold = select_kernels(kernels, **floor)
    except ValueError as e:
        raise ValueError(f"{layer}: {e}") from e
    kept = kernels[keep]
    if len(kept) > args.max_kernels:
        generator = torch.Generator().manual_seed(args.seed)
        kept = kept[torch.randperm(len(kept), generator=generator)[: args.max_kernels]]
    gauge_factor = 1.0
    if args.kernel_gauge == "he":
        rms = kept.square().mean().sqrt().item()
        if not rms > 0:
            raise ValueError(
                f"{layer}: the kept kernels are all zero, --kernel-gauge he cannot rescale them "
                "(the nets' kernels died: train with a smaller --l2 or keep fewer kernels)"
            )
        gauge_factor = he_scale(kernel_size, target_in_channels) / rms
        kept = kept * gauge_factor
    train, test = split_kernels(kept, args.test_fraction, args.seed)
    summary = {
        "kernel_size": kernel_size,
        **floor,
        "kept": int(keep.sum()),
        "total": len(kernels),
        "kept_of_total": f"kept {int(keep.sum())} of {len(kernels)}",
        "norm_threshold": threshold,
        "gauge_factor": gauge_factor,
        "subsampled": len(kept),
        "n_train": len(train),
        "n_test": len(test),
        "all_kernels": kernel_stats(kernels),
        "kept_kernels": kernel_stats(kept),
        "file": f"kernels_{layer}.pt",
    }
    rule = (
        f"keep the {floor['keep_fraction']:g} fraction of largest L2 norm"
        if "keep_fraction" in floor
        else f"keep L2 norm >= {floor['min_norm']:g}"
    )
    layer_provenance = {
        **provenance,
        "rule": rule,
        **{
            k: summary[k]
            for k in (*floor, "kept", "total", "kept_of_total", "subsampled", "gauge_factor")
        },
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

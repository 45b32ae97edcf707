"""Random feature extraction, Figure 3 of *The Deep Weight Prior* (Atanov et al., 2019).

The MNIST ConvNet (:class:`~pyro_dwp.models.DWPConvNet`) with widths ``k x (32, 128)`` gets its
conv kernels from an initialiser of :mod:`pyro_dwp.init`; the convolutions are then frozen (conv
biases zero) and only the linear classifier is trained, with Adam on minibatches of the frozen
features. Initialisers: ``dwp`` (samples of the shipped prior ``pretrained("notmnist")``),
``xavier`` (Xavier-normal) and, with ``--source-kernels DIR`` (a ``pyro-dwp dwp-source`` output),
``filters`` (random kernels of that run's train split). The features are standardised with the
training set's mean and std before the classifier (so that the kernels' overall scale does not
decide how far a short Adam run gets); the standardisation is folded into the classifier
afterwards, and the test accuracy is that of the whole network, ``net(x)``.

The defaults are a CPU-sized version, not the paper's protocol (full MNIST, 10 runs per point):
a class-balanced training subset, a few epochs, a few seeds; all recorded in the outputs.
Writes ``benchmarks/results/dwp_random_features.{md,json,png}``,
``{"table": {init: {k: {"mean": m, "std": s}}}}``::

    python benchmarks/dwp_random_features.py --source-kernels runs/dwp_source_small --threads 1

with ``runs/dwp_source_small`` from ``pyro-dwp dwp-source --out runs/dwp_source_small --num-nets 1
--channels 32 128 --epochs 10 --n-train-subset 10000`` (one small source net, ~7 min on 2 CPU
cores; notMNIST test accuracy 0.82), not the paper's 10 fully trained source nets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from collections.abc import Callable, Mapping
from fractions import Fraction
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from pyro_dwp.data import DWP_PIXEL_SCALE, load_mnist
from pyro_dwp.experiments.dwp_prior import load_kernel_set
from pyro_dwp.init import init_from_kernels, init_from_prior, xavier
from pyro_dwp.models.dwp_cnn import DWPConvNet
from pyro_dwp.pretrained import pretrained

__all__ = ["PAPER", "initialise", "main", "source_kernels", "train_classifier"]

RESULTS = Path(__file__).parent / "results"
LAYERS = ("conv1", "conv2")
WIDTHS = ("1/16", "1/8", "1/4", "1/2", "1")
# Figure 3, read off the plot (../shared/PAPERS.md): full MNIST, 10 runs per point.
PAPER = {
    "dwp": dict(zip(WIDTHS, (0.956, 0.970, 0.976, 0.980, 0.983), strict=True)),
    "xavier": dict(zip(WIDTHS, (0.930, 0.956, 0.972, 0.979, 0.983), strict=True)),
    "filters": dict(zip(WIDTHS, (0.963, 0.972, 0.979, 0.984, 0.987), strict=True)),
}


def source_kernels(directory: Path) -> dict[str, Tensor]:
    """The train kernels ``{"conv1": (n, 7, 7), "conv2": (m, 5, 5)}`` of a dwp-source run."""
    return {layer: load_kernel_set(directory / f"kernels_{layer}.pt", layer)[0] for layer in LAYERS}


def initialise(
    init: str,
    make_net: Callable[[], nn.Module],
    seed: int,
    priors: Mapping[str, Distribution],
    kernels: Mapping[str, Tensor] | None,
) -> nn.Module:
    """``make_net()`` built at ``seed``, its ``conv1`` / ``conv2`` kernels from ``init``, their
    biases zero.

    ``init`` is ``"dwp"`` (samples of ``priors``), ``"filters"`` (random kernels of
    ``kernels``) or ``"xavier"``. The other parameters keep torch's default initialisation, the
    same for every ``init`` at a given ``seed``.
    """
    torch.manual_seed(seed)
    net = make_net()
    if init == "dwp":
        init_from_prior(net, priors, seed=seed)
    elif init == "filters":
        if kernels is None:
            raise ValueError("init 'filters' needs source kernels (--source-kernels DIR)")
        init_from_kernels(net, kernels, seed=seed)
    elif init == "xavier":
        xavier(net, LAYERS, seed=seed)
    else:
        raise ValueError(f"unknown init {init!r}; use 'dwp', 'filters' or 'xavier'")
    with torch.no_grad():
        for layer in LAYERS:
            net.get_submodule(layer).bias.zero_()
    return net


def _features(net: DWPConvNet, x: Tensor, batch: int = 1000) -> Tensor:
    """The classifier's inputs ``(N, 9 * c2)`` for images ``(N, 1, 28, 28)``."""
    fc, net.fc = net.fc, nn.Identity()
    try:
        with torch.no_grad():
            return torch.cat([net(x[i : i + batch]) for i in range(0, len(x), batch)])
    finally:
        net.fc = fc


def train_classifier(
    net: DWPConvNet, x: Tensor, y: Tensor, *, epochs: int, batch_size: int, lr: float, seed: int
) -> DWPConvNet:
    """Train only ``net.fc`` on the frozen conv features of ``x`` ``(N, 1, 28, 28)``, ``y (N,)``.

    The conv layers get ``requires_grad=False`` and are never updated. Adam runs on the
    standardised features; the standardisation is then folded into ``net.fc``, so ``net(x)``
    gives the trained classifier's logits.
    """
    for layer in LAYERS:
        net.get_submodule(layer).requires_grad_(False)
    feats = _features(net, x)
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-8)
    z = (feats - mean) / std
    opt = torch.optim.Adam(net.fc.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(z), generator=gen).split(batch_size):
            loss = F.cross_entropy(net.fc(z[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():  # fc(z) = W (f - mean) / std + b = (W / std) f + (b - W (mean / std))
        net.fc.bias.sub_(net.fc.weight @ (mean / std))
        net.fc.weight.div_(std)
    return net


def accuracy(net: nn.Module, x: Tensor, y: Tensor, batch: int = 1000) -> float:
    """Test accuracy of ``net`` on images ``x`` ``(N, 1, 28, 28)``, labels ``y`` ``(N,)``."""
    with torch.no_grad():
        pred = torch.cat([net(x[i : i + batch]).argmax(-1) for i in range(0, len(x), batch)])
    return (pred == y).float().mean().item()


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    start = time.time()
    x_tr, y_tr = load_mnist(
        "train", args.data_dir, n=args.n_train, flatten=False, pixel_scale=DWP_PIXEL_SCALE
    )
    x_te, y_te = load_mnist(
        "test", args.data_dir, n=args.n_test, flatten=False, pixel_scale=DWP_PIXEL_SCALE
    )
    priors = pretrained("notmnist")
    kernels = source_kernels(Path(args.source_kernels)) if args.source_kernels else None
    inits = ["dwp", "xavier"] + (["filters"] if kernels is not None else [])
    runs: dict[str, dict[str, list[float]]] = {init: {} for init in inits}
    for init in inits:
        for k in args.widths:
            channels = tuple(max(1, round(Fraction(k) * c)) for c in (32, 128))
            for seed in args.seeds:
                net = initialise(init, partial(DWPConvNet, channels), seed, priors, kernels)
                train_classifier(
                    net, x_tr, y_tr, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=seed,
                )  # fmt: skip
                runs[init].setdefault(k, []).append(accuracy(net, x_te, y_te))
            print(init, k, channels, [f"{a:.4f}" for a in runs[init][k]], flush=True)
    table = {
        init: {
            k: {"mean": statistics.mean(a), "std": statistics.stdev(a) if len(a) > 1 else 0.0}
            for k, a in per_k.items()
        }
        for init, per_k in runs.items()
    }
    full = not args.n_train and len(args.seeds) >= 10
    result = {
        "what": "Random feature extraction (DWP paper, Figure 3), "
        + (
            "the paper's protocol as far as it is known (full MNIST training set, 10 runs per "
            "point; its classifier training is not described)"
            if full
            else "CPU-sized version: NOT the paper's protocol (full MNIST training set, 10 runs "
            "per point)"
        ),
        "table": table,
        "runs": runs,
        "paper": {init: PAPER[init] for init in inits},
        "settings": {
            "n_train": args.n_train or 50_000,
            "train_subset": "class-balanced subset of the first 50,000 MNIST training images"
            if args.n_train
            else "the first 50,000 MNIST training images",
            "widths": {k: [max(1, round(Fraction(k) * c)) for c in (32, 128)] for k in args.widths},
            "epochs": args.epochs,
            "optimiser": f"Adam lr {args.lr} on the classifier only, standardised features",
            "conv_biases": "zero, frozen",
            **shared_settings(args, bool(kernels)),
        },
    }
    return write_results(result, args.results_dir, "dwp_random_features", start, _markdown, _plot)


def add_shared_arguments(p: argparse.ArgumentParser) -> None:
    """The options both CPU-sized DWP benchmarks share (this one and ``dwp_convergence.py``)."""
    p.add_argument("--data-dir", default=None)
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--source-kernels", default=None, help="a pyro-dwp dwp-source --out folder")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)


def shared_settings(args: argparse.Namespace, filters: bool) -> dict:
    """The settings both CPU-sized DWP benchmarks (this one and ``dwp_convergence.py``) record."""
    return {
        "n_test": args.n_test or 10_000,
        "seeds": args.seeds,
        "batch_size": args.batch_size,
        "pixel_scale": DWP_PIXEL_SCALE,
        "dwp": "pretrained('notmnist') samples (decoder draws, sample_mean=False)",
        "filters": f"train kernels of {args.source_kernels}" if filters else "omitted",
        "threads": args.threads,
    }


def write_results(
    result: dict,
    results_dir: str | Path,
    name: str,
    start: float,
    markdown: Callable[[dict], str],
    plot: Callable[[dict, Path], None],
) -> dict:
    """Stamp ``result`` with the date and the seconds since ``start``, then write
    ``NAME.json``, ``NAME.md`` (``markdown(result)``) and ``NAME.png`` (``plot``) into
    ``results_dir``; return ``result``."""
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result["seconds"] = round(time.time() - start, 1)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    plot(result, out / f"{name}.png")
    return result


def _markdown(result: dict) -> str:
    s = result["settings"]
    widths = list(next(iter(result["table"].values())))
    lines = [
        "# Random feature extraction (DWP Figure 3)",
        "",
        f"{result['what']}. Test accuracy, mean +- std over seeds {s['seeds']}; the paper's "
        "value (fig, full protocol) in brackets.",
        "",
        f"Settings: {s['n_train']} training images ({s['train_subset']}), {s['n_test']} test "
        f"images, {s['epochs']} epochs of batch {s['batch_size']}, {s['optimiser']}; conv "
        f"biases {s['conv_biases']}; DWP: {s['dwp']}; filters: {s['filters']}. "
        f"{result['seconds']} s on {s['threads']} CPU threads, {result['date']}.",
        "",
        "| init | "
        + " | ".join(f"k = {k} ({'/'.join(map(str, s['widths'][k]))})" for k in widths)
        + " |",
        "|---" * (len(widths) + 1) + "|",
    ]
    for init, per_k in result["table"].items():
        cells = [
            f"{v['mean']:.4f} +- {v['std']:.4f} ({result['paper'][init][k]:.3f})"
            for k, v in per_k.items()
        ]
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (init, per_k) in enumerate(result["table"].items()):
        ks = list(per_k)
        xs = range(len(ks))
        ax.errorbar(
            xs, [per_k[k]["mean"] for k in ks], [per_k[k]["std"] for k in ks],
            marker="o", capsize=3, color=f"C{i}", label=f"{init} (ours)",
        )  # fmt: skip
        ax.plot(xs, [result["paper"][init][k] for k in ks], "--", color=f"C{i}", alpha=0.6,
                label=f"{init} (paper, full protocol)")  # fmt: skip
    ax.set_xticks(range(len(ks)), ks)
    ax.set_xlabel("width factor k (channels k x (32, 128))")
    ax.set_ylabel("MNIST test accuracy")
    ax.set_title("Random features: frozen convs, trained classifier", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_shared_arguments(p)
    p.add_argument("--n-train", type=int, default=10_000, help="0: all 50,000")
    p.add_argument("--n-test", type=int, default=0, help="0: all 10,000")
    p.add_argument("--widths", nargs="+", default=list(WIDTHS), choices=WIDTHS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    args.n_train, args.n_test = args.n_train or None, args.n_test or None
    return args


if __name__ == "__main__":
    main(parse_args())

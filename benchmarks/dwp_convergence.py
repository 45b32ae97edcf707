"""Convergence from each initialisation, Figure 4 (left) of *The Deep Weight Prior*.

The MNIST ConvNet (:class:`~pyro_dwp.models.DWPConvNet`, channels 32 / 128) starts from the conv
kernels of ``dwp`` (samples of the shipped prior), ``xavier`` or, with ``--source-kernels DIR``,
``filters`` (random kernels of a ``pyro-dwp dwp-source`` run), conv biases zero and the classifier
at torch's default (the same for every init at a seed), exactly as in
``dwp_random_features.py``; then all its parameters train with Adam on minibatches of MNIST and
the test accuracy is recorded along the way.

A CPU-sized version, not the paper's protocol: 3 seeds, batch 64, a test subset, 500 steps
(settings in the outputs). The convolutional VAE of the paper's Figure 4 (right) is not run. Writes
``benchmarks/results/dwp_convergence.{md,json,png}`` with the accuracy at 50, 100 and 500 steps
(mean over seeds)::

    python benchmarks/dwp_convergence.py --source-kernels runs/dwp_source_small --threads 1

with ``runs/dwp_source_small`` from ``pyro-dwp dwp-source --out runs/dwp_source_small --num-nets 1
--channels 32 128 --epochs 10 --n-train-subset 10000`` (one small source net, ~7 min on 2 CPU
cores; notMNIST test accuracy 0.82), not the paper's 10 fully trained source nets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from dwp_random_features import (
    accuracy,
    add_shared_arguments,
    initialise,
    shared_settings,
    source_kernels,
    write_results,
)

from pyro_dwp.data import DWP_PIXEL_SCALE, load_mnist
from pyro_dwp.pretrained import pretrained

__all__ = ["main", "train_curve"]

REPORTED = (50, 100, 500)


def train_curve(
    net: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    steps: int,
    eval_at: list[int],
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[int, float]:
    """Train every parameter of ``net`` with Adam; ``{step: test accuracy}`` at ``eval_at``.

    ``data`` is ``(x_train (N, 1, 28, 28), y_train (N,), x_test, y_test)``; step 0 is the
    initialisation.
    """
    x_tr, y_tr, x_te, y_te = data
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    curve = {0: accuracy(net, x_te, y_te)} if 0 in eval_at else {}
    for step in range(1, steps + 1):
        idx = torch.randint(len(x_tr), (batch_size,), generator=gen)
        loss = F.cross_entropy(net(x_tr[idx]), y_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in eval_at:
            curve[step] = accuracy(net, x_te, y_te)
    return curve


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
    eval_at = sorted({0, *REPORTED, *args.eval_at} & set(range(args.steps + 1)))
    curves: dict[str, list[dict[int, float]]] = {}
    for init in inits:
        for seed in args.seeds:
            net = initialise(init, (32, 128), seed, priors, kernels)
            curve = train_curve(
                net, (x_tr, y_tr, x_te, y_te), steps=args.steps, eval_at=eval_at,
                batch_size=args.batch_size, lr=args.lr, seed=seed,
            )  # fmt: skip
            curves.setdefault(init, []).append(curve)
            print(init, seed, {s: round(a, 4) for s, a in curve.items()}, flush=True)
    mean = {
        init: {s: statistics.mean(c[s] for c in cs) for s in eval_at} for init, cs in curves.items()
    }
    std = {
        init: {s: statistics.pstdev(c[s] for c in cs) for s in eval_at}
        for init, cs in curves.items()
    }
    result = {
        "what": "Convergence of the MNIST ConvNet from each initialisation (DWP paper, Figure 4 "
        "left), CPU-sized version: NOT the paper's protocol; the conv VAE panel is not run",
        "table": {init: {s: mean[init][s] for s in REPORTED if s in mean[init]} for init in mean},
        "curves": {"mean": mean, "std": std, "runs": curves},
        "paper": "~0.97-0.98 test accuracy within ~100 steps with DWP or filter initialisation, "
        "~0.96 with Xavier (fig)",
        "settings": {
            "channels": [32, 128],
            "train": f"{args.n_train or 50_000} of the first 50,000 MNIST training images "
            "(all, or a class-balanced subset), minibatches drawn with replacement",
            "steps": args.steps,
            "eval_at": eval_at,
            "optimiser": f"Adam lr {args.lr}, all parameters",
            "conv_biases": "zero at the start",
            **shared_settings(args, bool(kernels)),
        },
    }
    return write_results(result, args.results_dir, "dwp_convergence", start, _markdown, _plot)


def _markdown(result: dict) -> str:
    s = result["settings"]
    steps = [st for st in REPORTED if st <= s["steps"]]
    std = result["curves"]["std"]
    lines = [
        "# Convergence from each initialisation (DWP Figure 4, left), CPU-sized",
        "",
        f"{result['what']}. MNIST test accuracy after a number of Adam steps, mean +- std over "
        f"seeds {s['seeds']}. Paper: {result['paper']}.",
        "",
        f"Settings: DWPConvNet {s['channels'][0]}/{s['channels'][1]}, {s['train']}, batch "
        f"{s['batch_size']}, {s['optimiser']}, conv biases {s['conv_biases']}, accuracy on "
        f"{s['n_test']} test images; DWP: {s['dwp']}; filters: {s['filters']}. "
        f"{result['seconds']} s on {s['threads']} CPU threads, {result['date']}.",
        "",
        "| init | " + " | ".join(f"{st} steps" for st in steps) + " |",
        "|---" * (len(steps) + 1) + "|",
    ]
    for init, row in result["table"].items():
        cells = [f"{row[st]:.4f} +- {std[init][st]:.4f}" for st in steps]
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (init, m) in enumerate(result["curves"]["mean"].items()):
        sd = result["curves"]["std"][init]
        steps = sorted(m, key=int)  # int keys, or str keys when read back from the JSON
        ax.errorbar([int(s) for s in steps], [m[s] for s in steps], [sd[s] for s in steps],
                    marker="o", capsize=3, color=f"C{i}", label=init)  # fmt: skip
    ax.axhspan(0.97, 0.98, color="grey", alpha=0.2, label="paper, DWP / filters at ~100 steps")
    ax.axhline(0.96, color="grey", ls="--", lw=1, label="paper, Xavier at ~100 steps")
    ax.set_ylim(0.7, 1.0)
    ax.set_xlabel("Adam steps")
    ax.set_ylabel("MNIST test accuracy")
    ax.set_title("Training from each initialisation (mean +- std over seeds)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_shared_arguments(p)
    p.add_argument("--n-train", type=int, default=0, help="0: all 50,000")
    p.add_argument("--n-test", type=int, default=2_000, help="0: all 10,000")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--eval-at", type=int, nargs="+", default=[25, 200])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    args.n_train, args.n_test = args.n_train or None, args.n_test or None
    return args


if __name__ == "__main__":
    main(parse_args())

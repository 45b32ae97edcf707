"""Markov-chain implicit priors (Appendix A of *The Deep Weight Prior*) against the deep weight
prior, which is the chain with ``T = 0`` transitions.

On the same kernel sets (``conv1`` 7x7, ``conv2`` 5x5) one
:class:`~pyro_dwp.models.MarkovChainVAE` per layer and per ``T`` in ``--steps`` (default 0 and
2) is fitted with the same seed and the same number of optimisation steps
(:func:`~pyro_dwp.infer.fit_markov_chain_vae`), so ``T = 0`` is the deep weight prior through
the same code. Each prior then trains the Bayesian ConvNet of Figure 2 on ``N`` MNIST examples
(:class:`~pyro_dwp.infer.markov_chain_reparam.MarkovChainStrategy`, the
:class:`~pyro_dwp.guides.ReverseChainGuide` over the paper's ``LogVarianceNormal``, the
auxiliary bound under ``Trace_ELBO``, the cell training of ``pyro-dwp dwp-classify``). Reported
per ``(T, N, seed)``: test accuracy and NLL of the ensemble (local reparameterisation), the final
loss, and the gap :math:`\\mathcal{L} - \\mathcal{L}^{aux}` of
:func:`~pyro_dwp.infer.markov_chain_gap.markov_chain_bound_gap` (IWAE, ``--gap-samples`` chains
per kernel); per ``(T, layer)``: the VAE's held-out ELBO and IWAE ``log p(w)`` per kernel.

Kernels: samples of the shipped prior (``pretrained("notmnist")``, ``--kernels shipped``, the
default; decoder means, ``--num-kernels`` per layer, a fifth held out) or a ``pyro-dwp
dwp-source`` output (``--kernels DIR`` with ``kernels_conv1.pt``, ``kernels_conv2.pt``: the
kernels of the real comparison).

``--preset tiny`` (default: N = 50 and 100, one seed, channels 8 / 16, 100 epochs, 100 VAE
steps on 256 kernels per layer, 500 test images, K = 100) takes about 13 minutes on 2 busy CPU
cores and only shows the pipeline at work, not the paper's regime; ``--preset gpu`` is the
comparison the issue asks for (N = 50 and 100, 3 seeds, channels 32 / 128, 1,000 epochs, 20,000
VAE steps on 20,000 kernels per layer, K = 1,000), for ``--device cuda``::

    python benchmarks/dwp_markov_chain.py --data-dir ../shared/data              # tiny, CPU
    python benchmarks/dwp_markov_chain.py --preset gpu --device cuda --data-dir ../shared/data \\
        --out benchmarks/results

Writes ``OUT/dwp_markov_chain.{json,md}`` (default ``OUT`` = ``runs/dwp_markov_chain``).
Runs that split ``--steps`` and ``--seeds`` between processes (side by side on one GPU) are
joined into one result with ``--merge``::

    python benchmarks/dwp_markov_chain.py --merge runs/mc_t0_s0/dwp_markov_chain.json ... \
        --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO
from torch import Tensor

from pyro_dwp import BNN, Categorical
from pyro_dwp.data import DWP_PIXEL_SCALE, load_mnist
from pyro_dwp.data.kernels import split_kernels
from pyro_dwp.distributions import DeepWeightPrior, MarkovChainPrior
from pyro_dwp.experiments.classification import ensemble_log_probs, guide_classifier
from pyro_dwp.experiments.dwp_bnn import DWPSetup
from pyro_dwp.experiments.dwp_classify import add_training_arguments, train_cell
from pyro_dwp.experiments.dwp_prior import load_kernel_set
from pyro_dwp.guides import LogVarianceNormal, ReverseChainGuide, init_to_module
from pyro_dwp.guides.initialization import init_to_prior_sample
from pyro_dwp.infer import fit_markov_chain_vae
from pyro_dwp.infer.markov_chain_gap import markov_chain_bound_gap
from pyro_dwp.infer.markov_chain_reparam import MarkovChainStrategy
from pyro_dwp.io import write_json
from pyro_dwp.models import DWPConvNet, KernelVAE, MarkovChainVAE
from pyro_dwp.pretrained import pretrained

__all__ = [
    "PRESETS",
    "fit_chain_vaes",
    "load_kernels",
    "main",
    "merge",
    "parse_args",
    "run_cell",
]

LAYERS = {"conv1": 7, "conv2": 5}
# Chains (kernels x samples) of the held-out IWAE evaluated at once: the 4,000 held-out 5x5
# kernels of a source run with 1,024 chains each took 17 GiB per decoder activation (out of
# memory with six runs side by side on one GPU); 2^18 chains take about 3 GiB.
_IWAE_CHAINS = 2**18
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "n_train": [50, 100],
        "seeds": [0],
        "epochs": 100,
        "channels": [8, 16],
        "num_kernels": 256,
        "vae_steps": 100,
        "n_test": 500,
        "test_samples": 5,
        "gap_samples": 100,
    },
    "gpu": {
        "n_train": [50, 100],
        "seeds": [0, 1, 2],
        "epochs": 1000,
        "channels": [32, 128],
        "num_kernels": 20_000,
        "vae_steps": 20_000,
        "n_test": None,
        "test_samples": 10,
        "gap_samples": 1000,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 2], help="chain lengths T")
    p.add_argument("--kernels", default="shipped", help="'shipped' or a dwp-source folder")
    p.add_argument("--num-kernels", type=int, help="kernels per layer drawn from the shipped prior")
    p.add_argument("--vae-steps", type=int, help="optimisation steps of each chain VAE")
    p.add_argument("--transition-hidden", type=int, default=32)
    p.add_argument("--n-train", type=int, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--n-test", type=int)
    p.add_argument("--test-samples", type=int)
    p.add_argument("--gap-samples", type=int)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/dwp_markov_chain"))
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="join these dwp_markov_chain.json of runs that split --steps / --seeds into OUT "
        "(nothing is trained)",
    )
    add_training_arguments(p)
    p.set_defaults(epochs=None, channels=None, batch_size=256, pixel_scale=DWP_PIXEL_SCALE)
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if any(t < 0 for t in args.steps):
        p.error(f"chain lengths must be >= 0, got {args.steps}")
    args.no_progress = True
    return args


def load_kernels(args: argparse.Namespace) -> dict[str, tuple[Tensor, Tensor]]:
    """``{layer: (train (n, k, k), test (m, k, k))}`` from the shipped prior or a dwp-source run."""
    if args.kernels != "shipped":
        folder = Path(args.kernels)
        sets = {layer: load_kernel_set(folder / f"kernels_{layer}.pt", layer) for layer in LAYERS}
        return {layer: (train, test) for layer, (train, test, _, _) in sets.items()}
    priors = pretrained("notmnist")
    kernels = {}
    for i, layer in enumerate(LAYERS):
        pyro.set_rng_seed(i)
        prior = priors[layer]
        mean = DeepWeightPrior(prior.decoder, code_prior=prior.code_prior, sample_mean=True)
        kernels[layer] = split_kernels(mean.sample((args.num_kernels,)), 0.2, seed=i)
    return kernels


def fit_chain_vaes(
    args: argparse.Namespace, kernels: dict[str, tuple[Tensor, Tensor]]
) -> tuple[dict[int, dict[str, MarkovChainVAE]], list[dict[str, Any]]]:
    """One VAE per ``T`` and layer, the same seed and steps; their held-out fit."""
    vaes: dict[int, dict[str, MarkovChainVAE]] = {}
    rows = []
    for steps in args.steps:
        for layer, (train, test) in kernels.items():
            shape = KernelVAE.for_kernel_size(LAYERS[layer])
            vae = MarkovChainVAE(
                shape.kernel_size,
                shape.z_dim,
                shape.hidden,
                steps,
                transition_hidden=args.transition_hidden,
            ).to(args.device)
            t0 = time.perf_counter()
            fit_markov_chain_vae(
                vae, train, test, steps=args.vae_steps, seed=0, progress=False, select=True
            )
            vae.eval().requires_grad_(False)
            test = test.to(args.device)
            pyro.set_rng_seed(0)
            rows.append(
                {
                    "T": steps,
                    "layer": layer,
                    "test_elbo": vae.elbo(test, 10).mean().item(),
                    "test_iwae": vae.iwae_bound(
                        test, args.gap_samples, chunk_size=max(1, _IWAE_CHAINS // len(test))
                    )
                    .mean()
                    .item(),
                    "seconds": time.perf_counter() - t0,
                }
            )
            vaes.setdefault(steps, {})[f"{layer}.weight"] = vae
    return vaes, rows


def run_cell(
    args: argparse.Namespace,
    vaes: dict[str, MarkovChainVAE],
    n: int,
    seed: int,
    test: tuple[Tensor, Tensor],
) -> dict[str, Any]:
    """Train the ConvNet with the Markov-chain priors ``vaes`` on ``n`` examples; evaluate."""
    t0 = time.perf_counter()
    pyro.clear_param_store()
    torch.manual_seed(seed)
    x, y = load_mnist(
        "train", args.data_dir, n=n, seed=seed, flatten=False, pixel_scale=args.pixel_scale
    )
    net = DWPConvNet(tuple(args.channels)).to(args.device)
    priors = {name: MarkovChainPrior.from_vae(vae) for name, vae in vaes.items()}
    model = BNN(net, priors, Categorical(n), reparam=MarkovChainStrategy())
    if args.guide_init == "dwp":
        means = {
            name: MarkovChainPrior.from_vae(vae, with_encoder=False, sample_mean=True)
            for name, vae in vaes.items()
        }
        init_loc_fn = partial(init_to_prior_sample, priors=means)
    else:
        init_loc_fn = init_to_module
    builder = partial(
        LogVarianceNormal, init_loc_fn=init_loc_fn, init_log_variance=args.init_log_variance
    )
    guide = ReverseChainGuide(model, builder, vaes)
    history = train_cell(args, DWPSetup(model, guide, Trace_ELBO), x, y, seed, None)
    x_test, y_test = (t.to(args.device) for t in test)
    log_probs = ensemble_log_probs(
        guide_classifier(model, guide.base, "lrt"), x_test, args.test_samples
    )
    nll = -log_probs.gather(1, y_test[:, None]).mean()
    x1, y1 = x[:1].to(args.device), y[:1].to(args.device)
    gap = markov_chain_bound_gap(model, guide, x1, y1, num_samples=args.gap_samples)["total"]
    return {
        "n": n,
        "seed": seed,
        "accuracy": (log_probs.argmax(-1) == y_test).float().mean().item(),
        "nll": nll.item(),
        "final_loss": history[-1]["loss"],
        "gap": gap["gap"],
        "gap_frozen": gap["gap_frozen"],
        "seconds": time.perf_counter() - t0,
    }


def _table(vae_rows: list[dict[str, Any]], cells: list[dict[str, Any]]) -> str:
    lines = [
        "| T | layer | held-out ELBO / kernel | held-out IWAE log p(w) / kernel |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['T']} | {r['layer']} | {r['test_elbo']:.3f} | {r['test_iwae']:.3f} |"
        for r in vae_rows
    ]
    lines += [
        "",
        "| T | N | accuracy | NLL | final loss | gap L - L_aux (nats) | gap, frozen reverse |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["T"], c["n"]), []).append(c)
    for (steps, n), group in sorted(groups.items()):
        mean = {k: statistics.fmean(c[k] for c in group) for k in group[0] if k not in ("T", "n")}
        lines.append(
            f"| {steps} | {n} | {mean['accuracy']:.3f} | {mean['nll']:.3f} | "
            f"{mean['final_loss']:.1f} | {mean['gap']:.1f} | {mean['gap_frozen']:.1f} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    start = time.time()
    kernels = load_kernels(args)
    vaes, vae_rows = fit_chain_vaes(args, kernels)
    test = load_mnist(
        "test", args.data_dir, n=args.n_test, seed=0, flatten=False, pixel_scale=args.pixel_scale
    )
    cells = [
        {"T": steps, **run_cell(args, vaes[steps], n, seed, test)}
        for steps in args.steps
        for n in args.n_train
        for seed in args.seeds
    ]
    table = _table(vae_rows, cells)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": f"{platform.processor() or platform.machine()}, {args.device}",
        "seconds": time.time() - start,
        "settings": settings,
        "vaes": vae_rows,
        "cells": cells,
    }
    _write(args.out, result, table)
    return result


# Settings in which runs joined by ``merge`` may differ.
_SPLIT_SETTINGS = ("steps", "seeds", "out", "threads", "merge")


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """Join the ``dwp_markov_chain.json`` of runs that split ``--steps`` and ``--seeds`` between
    processes: their cells (sorted by ``T``, ``N``, seed) and, per ``(T, layer)``, the VAE row of
    the first run that fitted it (runs with the same ``T`` fit the same VAE: same seed, kernels
    and steps). Writes ``out/dwp_markov_chain.{json,md}`` like :func:`main`.

    Raises:
        ValueError: If a run differs from the first in any other setting (named), or two runs
            hold the same ``(T, N, seed)`` cell.
    """
    runs = [json.loads(Path(p).read_text()) for p in paths]

    def fixed(run: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in run["settings"].items() if k not in _SPLIT_SETTINGS}

    for path, run in zip(paths[1:], runs[1:], strict=True):
        a, b = fixed(runs[0]), fixed(run)
        if a != b:
            names = ", ".join(sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)))
            raise ValueError(f"{path} was run with other settings than {paths[0]}: {names}")
    vaes: dict[tuple[int, str], dict[str, Any]] = {}
    for run in runs:
        for row in run["vaes"]:
            vaes.setdefault((row["T"], row["layer"]), row)
    cells = sorted(
        (c for run in runs for c in run["cells"]), key=lambda c: (c["T"], c["n"], c["seed"])
    )
    keys = [(c["T"], c["n"], c["seed"]) for c in cells]
    if len(set(keys)) < len(keys):
        raise ValueError(f"runs {[str(p) for p in paths]} repeat a (T, N, seed) cell")
    settings = {
        **fixed(runs[0]),
        "steps": sorted({t for t, _, _ in keys}),
        "seeds": sorted({s for _, _, s in keys}),
    }
    result = {
        "command": " ".join(["python", *sys.argv]),
        "merged": [run["command"] for run in runs],
        "date": runs[0]["date"],
        "hardware": runs[0]["hardware"],
        "seconds": max(run["seconds"] for run in runs),
        "settings": settings,
        "vaes": [vaes[k] for k in sorted(vaes)],
        "cells": cells,
    }
    _write(out, result, _table(result["vaes"], cells))
    return result


def _write(out: Path, result: dict[str, Any], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dwp_markov_chain.json", result)
    runs = "".join(f"\n- `{c}`" for c in result.get("merged", []))
    st = result["settings"]
    header = (
        f"# Markov-chain priors vs the deep weight prior (T = 0)\n\n`{result['command']}`, "
        f"{result['date']}, {result['hardware']}, {result['seconds']:.0f} s; preset "
        f"{st['preset']} with its settings as run: N {st['n_train']}, seeds {st['seeds']}, "
        f"channels {st['channels']}, {st['epochs']} epochs, VAE steps {st['vae_steps']}, test "
        f"images {st['n_test'] or 'all'}, K = {st['gap_samples']} chains per kernel."
        + (f" Runs side by side, joined:{runs}" if runs else "")
        + "\n\n"
    )
    (out / "dwp_markov_chain.md").write_text(header + table + "\n")
    print(table)


if __name__ == "__main__":
    _args = parse_args()
    if _args.merge:
        merge(_args.merge, _args.out)
    else:
        main(_args)

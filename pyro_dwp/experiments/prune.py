"""Prune a BBB ``mnist`` run by signal-to-noise, Blundell et al. (2015) 5.1.

The experiment of ``pyro-dwp prune``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.prune`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyro_dwp.data import load_mnist
from pyro_dwp.experiments.classification import bbb_classifier, evaluate
from pyro_dwp.experiments.mnist import load_bbb_run
from pyro_dwp.infer.pruning import posterior_mean_network, pruned_network, snr_masks
from pyro_dwp.io import add_device_argument, check_device, parse_seed, prepare_out

__all__ = ["add_arguments", "run", "markdown_table"]

DEFAULT_FRACTIONS = (0.5, 0.75, 0.95, 0.98)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run",
        dest="run_dir",
        type=Path,
        required=True,
        help="output directory of a BBB mnist run",
    )
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=list(DEFAULT_FRACTIONS),
        help="fractions of the weights to remove, each in [0, 1) (0 is always added)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default RUN/prune; resume: none, a rerun overwrites it)",
    )
    p.add_argument(
        "--test-samples",
        type=int,
        default=None,
        help="test-time ensemble size (default: the run's)",
    )
    p.add_argument("--n-test", type=int, default=None, help="test subset size (default: the run's)")
    p.add_argument("--data-dir", type=Path, default=None, help="default: the run's")
    add_device_argument(p)
    p.add_argument(
        "--seed", type=parse_seed, default=0, help="seed of the ensemble's weight samples"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Prune, evaluate, export; write the table and the plot; return the table."""
    t0 = time.perf_counter()
    bad = [f for f in args.fractions if not 0.0 <= f < 1.0]
    if bad:
        raise ValueError(f"--fractions must lie in [0, 1), got {bad}")
    check_device(args.device)
    config, model, guide = load_bbb_run(args.run_dir, args.device)
    out = prepare_out(args.out if args.out is not None else args.run_dir / "prune", "prune")
    data_dir = args.data_dir if args.data_dir is not None else _path_or_none(config["data_dir"])
    n_test = args.n_test if args.n_test is not None else config["n_test"]
    num_samples = args.test_samples if args.test_samples is not None else config["test_samples"]
    x, y = load_mnist("test", data_dir, n=n_test, seed=config["seed"])
    x, y = x.to(args.device), y.to(args.device)

    dense_bytes = _saved_size(posterior_mean_network(model, guide), out / "dense.pt")
    rows = []
    for fraction in sorted({0.0, *args.fractions}):
        torch.manual_seed(args.seed)
        masks = snr_masks(guide, fraction)
        metrics, _ = evaluate(bbb_classifier(model, guide, masks), x, y, num_samples)
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        path = out / f"pruned_{_percent(fraction)}.pt"
        rows.append(
            {
                "fraction": fraction,
                "kept_weights": kept,
                "total_weights": total,
                **metrics,
                "sparse_bytes": _saved_size(pruned_network(model, guide, masks), path),
                "dense_bytes": dense_bytes,
                "file": path.name,
            }
        )
    snr = torch.cat([v.flatten() for v in guide.signal_to_noise().values()]).cpu()
    _plot_snr(out / "snr.png", snr, sorted(args.fractions))
    result = {
        "run": str(args.run_dir),
        "hidden": config["hidden"],
        "epochs_of_run": json.loads((args.run_dir / "metrics.json").read_text())["epochs"]
        if (args.run_dir / "metrics.json").is_file()
        else None,
        "test_samples": num_samples,
        "test_examples": len(y),
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
    (out / "pruning.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "pruning.md").write_text(markdown_table(rows) + "\n")
    return result


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The pruning table as markdown: one row per pruned fraction."""
    lines = [
        "| removed | kept weights | test error (mean net) | test NLL (mean net) "
        "| test error (ensemble) | test NLL (ensemble) | sparse file (bytes) | dense (bytes) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fraction']:.0%} | {r['kept_weights']:,} / {r['total_weights']:,} "
            f"| {r['test_error_mean']:.2%} | {r['test_nll_mean']:.4f} "
            f"| {r['test_error_ensemble']:.2%} | {r['test_nll_ensemble']:.4f} "
            f"| {r['sparse_bytes']:,} | {r['dense_bytes']:,} |"
        )
    return "\n".join(lines)


def _saved_size(net: torch.nn.Module, path: Path) -> int:
    """Save the whole module (on the CPU) with ``torch.save``; return the file's size in bytes."""
    torch.save(net.cpu(), path)
    return path.stat().st_size


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}".replace(".", "_")


def _path_or_none(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _plot_snr(path: Path, snr: Tensor, fractions: list[float]) -> None:
    """Density and CDF of log10 SNR, with the threshold of each pruned fraction."""
    from matplotlib.figure import Figure

    log_snr = torch.log10(snr.double().clamp_min(1e-30))
    ordered = log_snr.sort().values
    fig = Figure(figsize=(10, 3.5))
    ax_pdf, ax_cdf = fig.subplots(1, 2)
    ax_pdf.hist(log_snr.numpy(), bins=100, density=True, color="tab:blue", alpha=0.8)
    ax_pdf.set(xlabel="log10 signal-to-noise |mu| / sigma", ylabel="density")
    ax_cdf.plot(ordered.numpy(), torch.linspace(0, 1, len(ordered)).numpy(), color="tab:blue")
    ax_cdf.set(xlabel="log10 signal-to-noise |mu| / sigma", ylabel="CDF")
    for fraction in fractions:
        k = min(len(ordered) - 1, round(fraction * len(ordered)))
        for ax in (ax_pdf, ax_cdf):
            ax.axvline(float(ordered[k]), color="tab:red", lw=0.8, ls="--")
        ax_cdf.annotate(f"{fraction:.0%}", (float(ordered[k]), fraction), fontsize=8)
    fig.suptitle("Signal-to-noise of the BBB weights (dashed: pruning thresholds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)

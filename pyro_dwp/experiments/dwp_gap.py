r"""The gap between the ELBO and its auxiliary bound (Appendix F).

The experiment of ``pyro-dwp dwp-gap``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.dwp_gap`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from pyro_dwp.experiments.dwp_bnn import LOG_UNIFORM_FAMILIES
from pyro_dwp.experiments.dwp_classify import (
    add_prior_scale_argument,
    add_training_arguments,
    build_cell,
    load_net_vaes,
    load_results,
    train_cell,
)
from pyro_dwp.guides import ReverseModelGuide
from pyro_dwp.infer.dwp_gap import dwp_bound_gap
from pyro_dwp.io import (
    add_device_argument,
    add_out_argument,
    check_device,
    parse_seed,
    prepare_out,
    write_json,
)
from pyro_dwp.models.kernel_vae import KernelVAE

__all__ = ["add_arguments", "run"]

RESULTS, TABLE = "dwp_gap.json", "dwp_gap.md"
REVERSE = ("trainable", "frozen")
"""The reverse-model options that are trained, each a row of the results."""
ROWS = (*REVERSE, "init")
"""The rows of the table: the two trained options, then the untrained start they share."""
_CONFIG_KEYS = (
    "vae_dir",
    "prior_scale",
    "n_train",
    "seed",
    "epochs",
    "batch_size",
    "lr",
    "channels",
    "guide_init",
    "net_init",
    "init_log_variance",
    "gap_samples",
    "weight_samples",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out_argument(p, "automatic")
    p.add_argument(
        "--vae-dir", type=Path, required=True, help="dwp-prior output: vae_conv1.pt, vae_conv2.pt"
    )
    p.add_argument("--data-dir", type=Path, help="folder with mnist/ (else PYRO_DWP_DATA)")
    p.add_argument("--n-train", type=int, default=100, help="training examples N")
    p.add_argument(
        "--seed", type=parse_seed, default=0, help="data, initialisation and estimate seed"
    )
    add_training_arguments(p)
    add_prior_scale_argument(p)
    p.add_argument(
        "--gap-samples", type=int, default=1000, help="K codes per kernel (the paper: 10,000)"
    )
    p.add_argument("--weight-samples", type=int, default=1, help="draws of the weights from q(w)")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Estimate the gap at initialisation, then train and estimate it for each reverse model."""
    _check_args(args)
    vaes = load_net_vaes(args)
    out: Path = prepare_out(args.out, "dwp-gap")
    config = {k: _jsonable(getattr(args, k)) for k in _CONFIG_KEYS}
    results = load_results(out / RESULTS, config, {"config": config, "rows": {}})
    for row in ("init", *REVERSE):
        if row in results["rows"]:  # finished in an earlier run with the same settings
            continue
        results["rows"][row] = _run_row(args, row, vaes, out / "cells" / f"{row}.pt")
        write_json(out / RESULTS, results)
    (out / TABLE).write_text(_table(results))
    rows = results["rows"]
    return {
        "results": str(out / RESULTS),
        "table": str(out / TABLE),
        "gap": {row: rows[row]["estimates"]["total"]["gap"] for row in ROWS},
        "gap_per_kernel": {row: _per_kernel(rows[row]["estimates"]["total"]) for row in ROWS},
    }


def _jsonable(v: Any) -> Any:
    return str(v) if isinstance(v, Path) else v


def _per_kernel(total: dict[str, float]) -> float:
    return total["gap"] / total["kernels"]


def _check_args(args: argparse.Namespace) -> None:
    check_device(args.device)
    for label in ("epochs", "batch_size", "n_train", "gap_samples", "weight_samples"):
        if getattr(args, label) < 1:
            raise ValueError(f"--{label.replace('_', '-')} must be >= 1")
    if min(args.channels) < 1:
        raise ValueError("--channels must be >= 1")


def _run_row(
    args: argparse.Namespace, row: str, vaes: dict[str, KernelVAE], checkpoint: Path
) -> dict[str, Any]:
    """Build (and, unless ``row == "init"``, train) the cell, then estimate its gap.

    Training checkpoints to ``checkpoint`` and resumes from it; the file is removed once the
    row is done.

    Returns:
        ``"estimates"``: :func:`~pyro_dwp.infer.dwp_gap.dwp_bound_gap`'s ``{site or "total":
        {"log_p_w", "aux", "gap", "kernels", ...}}`` in nats (its ``"..._frozen"`` entries use
        the VAE encoder as reverse model on the same ``q(w)``), ``"reverse_shift"``
        (:func:`_reverse_shift`) and ``"seconds"``; a trained row also has the last epoch's
        ``"final_loss"`` and ``"final_kl"``.
    """
    t0 = time.perf_counter()
    # At initialisation both options coincide: build the trainable one. The log-uniform guide
    # family is not used by the deep weight prior, but build_cell reads it.
    reverse = "trainable" if row == "init" else row
    cell_args = argparse.Namespace(
        **{**vars(args), "reverse": reverse, "log_uniform_guide": LOG_UNIFORM_FAMILIES[0]}
    )
    setup, x, y = build_cell(cell_args, "dwp", args.n_train, args.seed, vaes)
    record: dict[str, Any] = {}
    if row != "init":
        history = train_cell(cell_args, setup, x, y, args.seed, checkpoint=checkpoint)
        record.update(final_loss=history[-1]["loss"], final_kl=history[-1]["kl"])
    x1, y1 = x[:1].to(args.device), y[:1].to(args.device)  # only run the guide
    with torch.no_grad(), poutine.block():
        setup.guide(x1, y1)  # sets the untrained guide up (its prototype trace draws numbers)
    pyro.set_rng_seed(args.seed)  # then every row's estimate draws the same random numbers
    record["estimates"] = dwp_bound_gap(
        setup.model,
        setup.guide,
        x1,
        y1,
        num_samples=args.gap_samples,
        num_weight_samples=args.weight_samples,
    )
    record["reverse_shift"] = _reverse_shift(setup.guide, vaes)
    record["seconds"] = time.perf_counter() - t0
    checkpoint.unlink(missing_ok=True)
    return record


@torch.no_grad()
def _reverse_shift(guide: ReverseModelGuide, vaes: dict[str, KernelVAE]) -> float:
    r"""Largest :math:`|\psi - \psi_{VAE}|` over the reverse models' parameters (0 if frozen)."""
    shift = 0.0
    for site, encoder in zip(guide.site_names, guide.encoders.values(), strict=True):
        params = zip(encoder.parameters(), vaes[site].encoder.parameters(), strict=True)
        for psi, psi_vae in params:
            shift = max(shift, (psi - psi_vae).abs().max().item())
    return shift


def _table(results: dict[str, Any]) -> str:
    """Markdown: one row per reverse-model option, the gaps per layer, in total, per kernel."""
    c, rows = results["config"], results["rows"]
    sites = [s for s in rows["init"]["estimates"] if s != "total"]
    header = [
        "reverse model",
        *(f"gap {s}" for s in sites),
        "gap total",
        "gap per kernel",
        "log p(w) (IWAE)",
        "aux prior term",
        "gap total, r = VAE encoder",
    ]
    lines = [
        f"## Bound gap L - L_aux (Appendix F), nats: N={c['n_train']}, seed {c['seed']}, "
        f"{c['epochs']} epochs, channels {c['channels'][0]}-{c['channels'][1]}",
        "",
        f"IWAE with K={c['gap_samples']} codes per kernel, {c['weight_samples']} draw(s) of the "
        "weights from q(w), summed over each layer's kernels. `init`: before training, where "
        "both options coincide. The last column estimates the gap of the same q(w) with the "
        "VAE encoder as reverse model.",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for row in ROWS:
        estimates = rows[row]["estimates"]
        total = estimates["total"]
        values = [
            *(estimates[s]["gap"] for s in sites),
            total["gap"],
            _per_kernel(total),
            total["log_p_w"],
            total["aux"],
            total["gap_frozen"],
        ]
        lines.append(f"| {row} | " + " | ".join(f"{v:.4g}" for v in values) + " |")
    return "\n".join(lines) + "\n"

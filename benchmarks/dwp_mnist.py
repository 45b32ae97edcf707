"""The Deep Weight Prior's Figure 2 on MNIST: source nets -> kernel VAEs -> the prior grid.

Runs the ``--stages`` ``pyro-dwp dwp-source``, ``dwp-prior`` and ``dwp-classify`` (each
resumable) and writes ``benchmarks/results/dwp_mnist.{md,json}`` and ``dwp_mnist_figure2.png``:
our test accuracy (mean and std over data seeds; the test-time ensemble of ``--evaluation``)
beside the paper's, with the command, date, device, epochs and evaluation. The defaults are the
paper's protocol (10,000 one-step epochs at N <= 256, the authors' 10-member ensemble with the
local reparameterisation at test time). On several GPUs the source nets (one process each),
the two kernel VAEs and the classifier cells (one process per (N, seed) and run) are spread
over the devices, ``--workers`` processes at a time::

    python benchmarks/dwp_mnist.py --device cuda --work-dir runs/dwp_mnist --workers 40

The shipped prior's recipe (``pyro_dwp/pretrained/notmnist/metadata.json``) with the grid of
``results/dwp_mnist.md``::

    python benchmarks/dwp_mnist.py --device cuda --workers 16 --source-nets 6 \
        --source-epochs 50 --source-bf16 --source-gauge he --source-keep-fraction 0.5 0.08 \
        --prior-steps 10000 --prior-z-dim 8 16 --prior-decoder-scale shared \
        --prior-decoder-mean direct polar --prior-augment conv2 \
        --prior-code-prior-components 16 64 --epochs 4000

``--split paper`` trains every cell on the DWP authors' own training subsets (scikit-learn's
stratified split of the 60,000 training images, ``random_state`` = the seed) instead of our
class-balanced draws from the first 50,000 (``results/dwp_mnist_paper_splits.md``)::

    python benchmarks/dwp_mnist.py --device cuda --stages classify --split paper \
        --prior-dir pyro_dwp/pretrained/notmnist --epochs 4000 --evaluation lrt \
        --n-train 50 100 200 500 --seeds 0 1 2 3 4 5 6 7 8 9 --workers 30 --engine compiled

``--deterministic`` adds the paper's fourth contender, a deterministic net with the L2 penalty
started from samples of the prior (``dwp-classify --priors deterministic-l2 --guide-init dwp``).

A grid too long for one run goes in parts (other N or seeds, each with its own
``--results-dir``); ``--merge PART/dwp_mnist.json ...`` then adds their cells to
``--results-dir``'s grid and rewrites its tables and figure (as N = 500 / 1,000 were added)::

    python benchmarks/dwp_mnist.py --merge runs/n500_1000/dwp_mnist.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path
from typing import get_args

import torch
from devices import run_processes, visible_gpus

from pyro_dwp.experiments.classification import EVALUATIONS
from pyro_dwp.experiments.dwp_classify import (
    DEFAULT_KL_WEIGHT,
    DEFAULT_LR,
    RESULTS,
    SPLIT_TEXT,
    SPLITS,
    plot_figure2,
    summarise,
    summary_table,
)
from pyro_dwp.experiments.dwp_pipeline import classify_runs, run_stage
from pyro_dwp.experiments.dwp_source import INITS
from pyro_dwp.experiments.prior_recipes import PRIOR_RECIPES
from pyro_dwp.infer.fit import Engine
from pyro_dwp.models.kernel_vae import DecoderMean, DecoderScale
from pyro_dwp.pretrained import LAYERS, sha256

__all__ = ["PROTOCOL_KEYS", "check_protocol", "main", "merge"]


def _stage(argv: list[object]) -> float:
    return run_stage(argv)[1]


def main(args: argparse.Namespace) -> dict:
    work = Path(args.work_dir)
    common = ["--device", args.device, "--no-progress"]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    gpus = visible_gpus(args.device)
    seconds = {}
    source = work / "source"
    prior = work / args.prior_dir
    if "source" in args.stages:
        base = ["dwp-source", "--out", source, "--epochs", args.source_epochs, *data, *common]
        base += ["--bf16"] if args.source_bf16 else []
        base += ["--kernel-gauge", args.source_gauge]
        base += ["--keep-fraction", *args.source_keep_fraction] if args.source_keep_fraction else []
        if gpus > 1:  # one process per net, spread over the GPUs; then one run writes the sets
            nets = [
                [*base, "--seed", seed, "--num-nets", 1, "--train-only"]
                for seed in range(args.source_nets)
            ]
            seconds["source_nets"] = run_processes(nets, args.workers, gpus)
        seconds["source"] = _stage([*base, "--num-nets", args.source_nets])
    if "prior" in args.stages:
        base = ["dwp-prior", "--kernels", source, "--steps", args.prior_steps, *common]
        base += ["--decoder-scale", args.prior_decoder_scale]
        layers = ("conv1", "conv2")
        z_dims = _per_layer(args.prior_z_dim, "--prior-z-dim")
        means = _per_layer(args.prior_decoder_mean, "--prior-decoder-mean")
        components = _per_layer(args.prior_code_prior_components, "--prior-code-prior-components")
        # one process per layer, each into its own folder; the VAE files are then gathered
        jobs = [
            [*base, "--out", prior / layer, "--layers", layer, "--decoder-mean", means[i]]
            + (["--z-dim", z_dims[i]] if z_dims[i] else [])
            + (["--augment"] if layer in args.prior_augment else [])
            + (["--code-prior-components", components[i]] if components[i] else [])
            for i, layer in enumerate(layers)
        ]
        seconds["prior"] = run_processes(jobs, len(jobs), gpus)
        report = {"layers": {}, "recon_over_std": {}, "smoothness": {}}
        for layer in layers:
            part = json.loads((prior / layer / "prior_report.json").read_text())
            for key in report:
                report[key].update(part[key])
            report["training"] = part["training"]
            for name in (f"vae_{layer}.pt", f"samples_{layer}.png", f"latent_{layer}.png"):
                if (prior / layer / name).exists():
                    shutil.copyfile(prior / layer / name, prior / name)
        (prior / "prior_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if "classify" not in args.stages:
        return {"seconds": seconds}

    # The baselines start from the network's own initialisation, the deep weight prior from
    # its own samples (``--dwp-init``): two runs of dwp-classify, cells merged (three with
    # ``--deterministic``, Figure 2's fourth row: a deterministic net started from DWP samples).
    def classify(extra: list[object]) -> list[object]:
        return [
            "dwp-classify", "--vae-dir", prior, "--epochs", args.epochs,
            "--evaluation", args.evaluation, *_classify_options(args), *extra, *data, *common,
        ]  # fmt: skip

    runs = {
        work / f"classify_{run}": classify(extra)
        for run, extra in classify_runs(args.dwp_init, args.reverse).items()
    }
    if args.deterministic:
        deterministic = ["--priors", "deterministic-l2", "--guide-init", "dwp"]
        runs[work / "classify_deterministic"] = classify(deterministic)
    if args.workers == 1:
        grid = ["--n-train", *args.n_train, "--seeds", *args.seeds]
        for out_dir, base in runs.items():
            seconds[out_dir.name] = _stage([*base, "--out", out_dir, *grid])
        out_dirs = list(runs)
    else:
        # one process per (run, N, seed), the slow DWP cells first
        cells = {
            out / f"n{n}_s{seed}": [*base, "--n-train", n, "--seeds", seed, "--out"]
            for out, base in sorted(runs.items(), key=lambda r: "dwp" not in r[0].name)
            for n in args.n_train
            for seed in args.seeds
        }
        jobs = [[*argv, out] for out, argv in cells.items()]
        seconds["classify"] = run_processes(jobs, args.workers, gpus)
        out_dirs = list(cells)
    cells = [c for d in out_dirs for c in json.loads((d / RESULTS).read_text())["cells"]]
    summary = summarise(cells)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "gpus": gpus,
        "epochs": args.epochs,
        "evaluation": EVALUATIONS[args.evaluation],
        "dwp_init": args.dwp_init,
        "net_init": args.net_init or "torch",
        "lr": args.lr or DEFAULT_LR,
        "kl_weight": args.kl_weight or DEFAULT_KL_WEIGHT,
        "split": args.split or "balanced",
        "reverse": args.reverse,
        "prior": str(prior),
        "prior_sha256": _prior_sha256(prior),
        "seconds": seconds,
        "paper": {p: dict(r.paper) for p, r in PRIOR_RECIPES.items() if r.paper},
        "ours": {f"{p} N={n}": s for (p, n), s in sorted(summary.items())},
        "cells": cells,
    }
    _write(Path(args.results_dir), result, summary)
    return result


def _write(out: Path, result: dict, summary: dict) -> None:
    """``dwp_mnist.{json,md}`` and ``dwp_mnist_figure2.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "dwp_mnist.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "dwp_mnist.md").write_text(_markdown(result, summary))
    plot_figure2(out / "dwp_mnist_figure2.png", summary)


def _prior_sha256(prior: Path) -> dict[str, str]:
    """SHA-256 of the prior folder's kernel VAE files, by file name (those that exist)."""
    files = (prior / f"vae_{layer}.pt" for layer in LAYERS)
    return {f.name: sha256(f) for f in files if f.exists()}


# The keys of a results file that every part of a merged grid must share, with the value that a
# file written before the key existed had (None: the key was always written).
PROTOCOL_KEYS = (
    ("epochs", None),
    ("evaluation", None),
    ("split", "balanced"),
    ("net_init", "torch"),
    ("lr", DEFAULT_LR),
    ("kl_weight", DEFAULT_KL_WEIGHT),
    ("dwp_init", None),
    ("reverse", None),
)


def check_protocol(grid: dict, part: dict, path: object, varied: str | None = None) -> None:
    """Refuse ``part`` (the results file at ``path``) unless it was trained under ``grid``'s
    protocol (every key of :data:`PROTOCOL_KEYS` but ``varied``) with the same prior (its VAE
    files' SHA-256, where both files record them).

    Raises:
        SystemExit: naming the first key that differs, or the prior.
    """
    for key, default in PROTOCOL_KEYS:
        mine, theirs = grid.get(key, default), part.get(key, default)
        if key != varied and theirs != mine:
            raise SystemExit(f"{path}: {key} {theirs!r}, but the grid's is {mine!r}")
    # the prior's files (recorded since 2026-12-04; a file written before is not compared)
    mine, theirs = grid.get("prior_sha256"), part.get("prior_sha256")
    if mine is not None and theirs is not None and mine != theirs:
        raise SystemExit(f"{path}: trained with another prior (the VAE files' SHA-256 differ)")


def merge(results_dir: Path, sources: list[Path]) -> dict:
    """Add the cells of other runs' ``dwp_mnist.json`` (``sources``: other N or seeds, the
    same protocol: :func:`check_protocol`) to ``results_dir``'s and rewrite its json, md and
    figure.

    A grid too long for one device call runs in parts; the merged file keeps every part's
    command under ``commands`` and its seconds under ``seconds``.

    Raises:
        SystemExit: if a source was trained under another protocol (epochs, evaluation, split,
            learning rate, KL weight, the network's or the DWP means' initialisation, the
            reverse model) or with another prior (its VAE files' SHA-256, where both files
            record them), or repeats a (prior, N, seed) cell.
    """
    result = json.loads((results_dir / "dwp_mnist.json").read_text())
    result.setdefault("commands", [result["command"]])
    seen = {(c["prior"], c["n"], c["seed"]) for c in result["cells"]}
    for path in sources:
        part = json.loads(Path(path).read_text())
        check_protocol(result, part, path)
        for c in part["cells"]:
            cell = (c["prior"], c["n"], c["seed"])
            if cell in seen:
                raise SystemExit(f"{path}: cell (prior, N, seed) {cell} is already in the grid")
            seen.add(cell)
            result["cells"].append(c)
        result["commands"].append(f"{part['command']} ({part['date']}, {part['device']})")
        result["seconds"].update({f"{part['date']}: {k}": v for k, v in part["seconds"].items()})
    summary = summarise(result["cells"])
    result["ours"] = {f"{p} N={n}": s for (p, n), s in sorted(summary.items())}
    # the paper's rows of every registered contender (a part may add one, e.g. its fourth)
    result["paper"] = {p: dict(r.paper) for p, r in PRIOR_RECIPES.items() if r.paper}
    _write(results_dir, result, summary)
    return result


def _per_layer(values: list | None, option: str) -> list:
    """One value of ``option`` per layer (conv1, conv2): ``[v, v]`` from ``[v]``, or as given."""
    if not values:
        return [None, None]
    if len(values) > 2:
        raise SystemExit(f"{option} takes one value (both layers) or two (conv1 conv2)")
    return values * 2 if len(values) == 1 else values


def _classify_options(args: argparse.Namespace) -> list[object]:
    """The ``dwp-classify`` options given on this command line (``--n-test``, ``--test-samples``,
    ``--channels``, ``--lr``, ``--kl-weight``, ``--engine``, ``--net-init``, ``--split``); those
    left out keep the job's defaults."""
    argv: list[object] = []
    keys = ("n_test", "test_samples", "channels", "lr", "kl_weight", "engine", "net_init", "split")
    for key in keys:
        value = getattr(args, key)
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", *(value if isinstance(value, list) else [value])]
    return argv


def _markdown(result: dict, summary: dict) -> str:
    sizes = sorted({n for _, n in summary})
    split = result.get("split", "balanced")  # a grid written before --split: balanced
    gpus, device = result["gpus"], result["device"]
    lines = [
        "# Deep Weight Prior, MNIST with N training examples (Atanov et al. 2019, Figure 2)",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; device: {f'{gpus} x {device}' if gpus else device}; epochs per "
        f"cell: {result['epochs']} (the paper: 10,000 on the small sets); test-time evaluation: "
        f"{result['evaluation']}; DWP means initialised from "
        f"`{result['dwp_init']}`, the baselines' from the network's initialisation "
        f"(`{result.get('net_init', 'torch')}`); initial learning rate "
        f"{result.get('lr', DEFAULT_LR):g}; KL weight "
        f"{result.get('kl_weight', DEFAULT_KL_WEIGHT):g}; reverse "
        f"model {result['reverse']}; training examples: `--split {split}` ({SPLIT_TEXT[split]})",
        *(f"  - `{c}`" for c in result.get("commands", [])),
        f"- stage seconds: {json.dumps({k: round(v) for k, v in result['seconds'].items()})}",
        "",
        "## Paper (Figure 2, mean test accuracy)",
        "",
        "| prior | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for p, row in result["paper"].items():
        label = PRIOR_RECIPES[p].label
        by_n = {int(n): v for n, v in row.items()}  # JSON keys are strings
        lines.append(
            f"| {label} | " + " | ".join(f"{by_n.get(n, float('nan')):.3f}" for n in sizes) + " |"
        )
    lines += ["", "## Ours", "", summary_table(summary)]
    lines += ["", result["note"]] if result.get("note") else []
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--work-dir", default="runs/dwp_mnist")
    p.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--stages",
        nargs="+",
        choices=["source", "prior", "classify"],
        default=["source", "prior", "classify"],
        help="stages to run; the others' outputs must exist in --work-dir",
    )
    p.add_argument("--source-nets", type=int, default=10)
    p.add_argument("--source-epochs", type=int, default=100)
    p.add_argument("--source-bf16", action="store_true", help="dwp-source --bf16")
    p.add_argument(
        "--source-gauge", choices=["none", "he"], default="none", help="dwp-source --kernel-gauge"
    )
    p.add_argument(
        "--source-keep-fraction",
        type=float,
        nargs=2,
        default=None,
        metavar=("F1", "F2"),
        help="dwp-source --keep-fraction (default: dwp-source's)",
    )
    p.add_argument("--prior-dir", default="prior", help="the VAEs' folder in --work-dir")
    p.add_argument("--prior-steps", type=int, default=40_000)
    p.add_argument(
        "--prior-z-dim",
        type=int,
        nargs="+",
        default=None,
        help="dwp-prior --z-dim, one value or one per layer (conv1 conv2; default: dwp-prior's)",
    )
    p.add_argument(
        "--prior-decoder-scale",
        choices=list(get_args(DecoderScale)),
        default="per-code",
        help="dwp-prior --decoder-scale",
    )
    p.add_argument(
        "--prior-decoder-mean",
        choices=list(get_args(DecoderMean)),
        nargs="+",
        default=["direct"],
        help="dwp-prior --decoder-mean, one value or one per layer (conv1 conv2; polar: a norm "
        "of at least the smallest source kernel's)",
    )
    p.add_argument(
        "--prior-code-prior-components",
        type=int,
        nargs="+",
        default=None,
        help="dwp-prior --code-prior-components, one value or one per layer (conv1 conv2; "
        "default: the code prior N(0, I))",
    )
    p.add_argument(
        "--prior-augment",
        nargs="+",
        choices=["conv1", "conv2"],
        default=[],
        help="layers whose VAE trains with dwp-prior --augment",
    )
    p.add_argument("--epochs", type=int, default=10_000, help="per (prior, N, seed) cell")
    p.add_argument("--evaluation", choices=list(EVALUATIONS), default="lrt")
    p.add_argument("--n-train", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-test", type=int, default=None, help="dwp-classify --n-test (all)")
    p.add_argument("--test-samples", type=int, default=None, help="dwp-classify --test-samples")
    p.add_argument("--channels", type=int, nargs=2, default=None, help="dwp-classify --channels")
    p.add_argument("--lr", type=float, default=None, help="dwp-classify --lr (default: its 1e-3)")
    p.add_argument(
        "--kl-weight", type=float, default=None, help="dwp-classify --kl-weight (default: its 1)"
    )
    p.add_argument(
        "--engine", choices=list(get_args(Engine)), default=None, help="dwp-classify --engine"
    )
    p.add_argument(
        "--net-init",
        choices=list(INITS),
        default=None,
        help="dwp-classify --net-init: every cell's starting weights (default: the job's, torch)",
    )
    p.add_argument(
        "--split",
        choices=list(SPLITS),
        default=None,
        help="dwp-classify --split: the N training examples of a seed (default: the job's, "
        "balanced; paper: the DWP authors' data splits)",
    )
    p.add_argument(
        "--dwp-init", choices=["module", "dwp"], default="dwp", help="the DWP prior's q means"
    )
    p.add_argument("--reverse", choices=["trainable", "frozen"], default="trainable")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="also the paper's fourth row: a deterministic net with the L2 penalty started from "
        "samples of the prior (dwp-classify --priors deterministic-l2 --guide-init dwp)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pyro-dwp processes side by side (source nets, classify cells), spread over the "
        "visible GPUs (a GPU: 8-16 each)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="no training: add these runs' dwp_mnist.json cells (other N or seeds, the same "
        "epochs and evaluation) to --results-dir's and rewrite its json, md and figure",
    )
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.merge:
        merge(Path(arguments.results_dir), arguments.merge)
    else:
        main(arguments)

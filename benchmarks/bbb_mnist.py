"""MNIST benchmark of Blundell et al. (2015), Table 1, and the pruning table of Section 5.1.

Trains the 2 x H (default 1200) scale-mixture BBB network, then the SGD and dropout baselines for
the same number of epochs, through ``pyro-dwp mnist`` (:mod:`pyro_dwp.experiments.mnist`), and
prunes the BBB run with ``pyro-dwp prune`` (:mod:`pyro_dwp.experiments.prune`). Writes
``bbb_mnist.md`` and ``bbb_mnist.json`` to ``--results-dir``: the paper's numbers beside ours, the
command line, the date, the device, the epochs done by each method and the pruning table.

With ``--time-budget-minutes T`` the whole benchmark fits in about T minutes: 15% is kept for data
loading, evaluation and pruning; BBB (the slowest) trains in half of the rest; the baselines then
train at most as many epochs as BBB did, sharing what is left. Each method records the epochs it
actually did.

With ``--parallel`` every method trains at once, each in its own process (one GPU holds them
all: the compiled BBB step is replayed from CUDA graphs, so each process leaves the GPU mostly
idle), each with the whole training budget; ``--gaussian`` adds the Gaussian-prior BBB row
(``N(0, 1)``, ``-log sigma = 0``, the best of the paper's grid) and ``--extra-hidden 400 800``
every method at the paper's other widths (rows ``METHOD_h400``...): the whole of Table 1.

The BBB rows weight the KL term per minibatch as the paper's Section 3.4 does (``--kl-scheme
blundell``: the i-th of an epoch's M minibatches carries 2^-i / (1 - 2^-M) of it; the weights
still sum to one per epoch); ``--kl-scheme uniform`` (1 / M each) is what reports written before
the option ran.

Example (one GPU, about 8 minutes)::

    python benchmarks/bbb_mnist.py --device cuda --epochs 600 --time-budget-minutes 8
    python benchmarks/bbb_mnist.py --device cuda --epochs 600 --parallel --gaussian
    python benchmarks/bbb_mnist.py --device cuda --parallel --gaussian --extra-hidden 400 800

With ``--resume`` an invocation continues every row from its checkpoint in ``--runs-dir``
(the same options otherwise): rows side by side under a time budget reach the 600 epochs over
several invocations, and the table then reports every row's total epochs.

A table too long for one device call can also run in parts, with the same options: the BBB
rows (``--bbb-only``, with the pruning) in one, the SGD and dropout rows
(``--baselines-only``) in another, each with its own ``--results-dir``; ``--merge A.json
B.json`` then writes the whole table to ``--results-dir``::

    python benchmarks/bbb_mnist.py --merge part_bbb/bbb_mnist.json part_base/bbb_mnist.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import time
from pathlib import Path
from typing import Any, get_args

import torch
from devices import run_processes, visible_gpus

from pyro_dwp.experiments import mnist, prune
from pyro_dwp.infer.fit import Engine

RESULTS_DIR = Path(__file__).resolve().parent / "results"
EVAL_RESERVE = 0.15
MNIST_TEST_IMAGES = 10_000
BBB_SHARE = 0.5
# Table 1 of Blundell et al. (2015): test error (%) by hidden units, and the pruning table (H=1200).
PAPER_TABLE1 = {
    "sgd": {400: 1.83, 800: 1.84, 1200: 1.88},
    "dropout": {400: 1.51, 800: 1.33, 1200: 1.36},
    "bbb_gaussian": {400: 1.82, 800: 1.99, 1200: 2.04},
    "bbb": {400: 1.36, 800: 1.34, 1200: 1.32},
}
PAPER_PRUNING = {0.0: 1.24, 0.5: 1.24, 0.75: 1.24, 0.95: 1.29, 0.98: 1.39}
_LABELS = {
    "sgd": "SGD (no dropout)",
    "dropout": "SGD + dropout",
    "bbb_gaussian": "BBB, Gaussian prior",
    "bbb": "BBB, scale-mixture prior",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--epochs", type=int, default=600, help="epochs per method (upper bound)")
    p.add_argument("--time-budget-minutes", type=float, default=None, help="whole benchmark")
    p.add_argument("--hidden", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--lr-schedule",
        choices=mnist.LR_SCHEDULES,
        default="constant",
        help="pyro-dwp mnist --lr-schedule, every method's: constant, or decayed linearly to 0",
    )
    p.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default="adam",
        help="pyro-dwp mnist --optimizer, every method's (sgd: --lr on the loss per example)",
    )
    p.add_argument("--momentum", type=float, default=0.0, help="SGD's momentum")
    p.add_argument(
        "--scale-lr-factor", type=float, default=1.0, help="BBB: the posterior scales' rate factor"
    )
    p.add_argument(
        "--kl-scheme",
        choices=["uniform", "blundell"],
        default="blundell",
        help="BBB rows: the KL weight of an epoch's i-th minibatch (pyro-dwp mnist --kl-scheme): "
        "blundell, 2^-i / (1 - 2^-M) (the paper's Section 3.4; under Adam 0.2-0.4 points lower "
        "than uniform at equal epochs, bbb_mnist_kl_scheme.md), or uniform, 1 / M (reports "
        "before the option)",
    )
    p.add_argument("--particles", type=int, default=1, help="BBB weight samples per step")
    p.add_argument("--init-scale", type=float, default=1e-3, help="BBB initial posterior sigma")
    p.add_argument("--parallel", action="store_true", help="train the methods side by side")
    p.add_argument("--gaussian", action="store_true", help="add BBB with the N(0, 1) prior")
    p.add_argument(
        "--bbb-only",
        action="store_true",
        help="with --parallel: only the BBB rows (e.g. BBB under another schedule; the baselines "
        "of an earlier run)",
    )
    p.add_argument(
        "--baselines-only",
        action="store_true",
        help="with --parallel: only the SGD and dropout rows, no pruning (a part of a table run "
        "in two device calls: --merge joins it to a --bbb-only part)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="no training: one table from these parts' bbb_mnist.json (other rows, the same "
        "settings), written to --results-dir",
    )
    p.add_argument(
        "--extra-hidden",
        type=int,
        nargs="+",
        default=[],
        help="with --parallel: every method also at these widths (rows METHOD_hH, e.g. the "
        "paper's 400 and 800 units; pruning stays on --hidden)",
    )
    p.add_argument(
        "--engine",
        choices=get_args(Engine),
        default="compiled",
        help="BBB's training step (pyro-dwp mnist --engine): the compiled one, replayed from "
        "CUDA graphs on a GPU, or Pyro's SVI",
    )
    p.add_argument("--test-samples", type=int, default=10, help="test-time ensemble size")
    p.add_argument(
        "--keep-best",
        action="store_true",
        help="pyro-dwp mnist --keep-best for every method: each row also evaluates its epoch of "
        "lowest validation error (a second table); pruning stays on BBB's final parameters",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue every row from its checkpoint in --runs-dir (pyro-dwp mnist --resume): a "
        "time-budgeted run reaches --epochs over several invocations",
    )
    p.add_argument("--fractions", type=float, nargs="+", default=list(prune.DEFAULT_FRACTIONS))
    p.add_argument("--n-train", type=int, default=None, help="training subset (tiny runs only)")
    p.add_argument("--n-test", type=int, default=None, help="test subset (tiny runs only)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/bbb_mnist"), help="job outputs")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the three methods and the pruning; write and return the results."""
    t0 = time.perf_counter()
    if args.time_budget_minutes is not None and not args.time_budget_minutes > 0:
        raise ValueError(f"--time-budget-minutes must be > 0, got {args.time_budget_minutes}")
    if args.merge:
        return merge(args.results_dir, args.merge)
    if (args.extra_hidden or args.bbb_only or args.baselines_only) and not args.parallel:
        raise ValueError(
            "--extra-hidden, --bbb-only and --baselines-only need --parallel (rows side by side)"
        )
    if args.bbb_only and args.baselines_only:
        raise ValueError("--bbb-only and --baselines-only exclude each other")
    if any(h < 1 or h == args.hidden for h in args.extra_hidden):
        raise ValueError(
            f"--extra-hidden must be widths >= 1 other than --hidden, got {args.extra_hidden}"
        )
    deadline = None
    if args.time_budget_minutes is not None:
        deadline = t0 + 60 * args.time_budget_minutes * (1 - EVAL_RESERVE)
    results: dict[str, dict[str, Any]] = {}
    epochs = args.epochs
    if args.parallel:
        budget = None if deadline is None else (deadline - time.perf_counter()) / 60
        results = _run_side_by_side(args, budget)
    else:
        for method, share in (("bbb", BBB_SHARE), ("sgd", 0.5), ("dropout", 1.0)):
            budget = None if deadline is None else share * (deadline - time.perf_counter()) / 60
            results[method] = _run_experiment(mnist, _mnist_argv(args, method, epochs, budget))
            if method == "bbb":
                epochs = min(epochs, results["bbb"]["epochs"])  # the baselines: the same epochs
    pruning = None if args.baselines_only else _run_experiment(prune, _prune_argv(args))
    report = {
        "command": "python benchmarks/bbb_mnist.py " + shlex.join(_argv(args)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(args.device),
        "hidden": args.hidden,
        "hidden_of": {m: r["hidden"] for m, r in results.items()},
        "epochs": {m: r["epochs"] for m, r in results.items()},
        "seed": args.seed,
        "lr_schedule": args.lr_schedule,
        "kl_scheme": args.kl_scheme,
        "optimizer": {
            "name": args.optimizer,
            "lr": args.lr,
            "momentum": args.momentum,
            "scale_lr_factor": args.scale_lr_factor,
        },
        "train_seconds": {m: r["train_seconds"] for m, r in results.items()},
        "paper_table1": {k: v[args.hidden] for k, v in PAPER_TABLE1.items() if args.hidden in v},
        "paper_pruning": PAPER_PRUNING,
        "ours": {m: {k: v for k, v in r.items() if k != "config"} for m, r in results.items()},
        "train_examples": next(iter(results.values()))["config"]["train_size"],
        "test_examples": (
            pruning["test_examples"]
            if pruning is not None
            else next(iter(results.values()))["config"]["n_test"] or MNIST_TEST_IMAGES
        ),
        "pruning": None if pruning is None else pruning["rows"],
        "seconds": time.perf_counter() - t0,
    }
    _write(args.results_dir, report)
    return report


def _write(results_dir: Path, report: dict[str, Any]) -> None:
    """``bbb_mnist.{json,md}`` in ``results_dir``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "bbb_mnist.json").write_text(json.dumps(report, indent=2) + "\n")
    (results_dir / "bbb_mnist.md").write_text(_markdown(report))


_MERGED_SETTINGS = (
    "hidden", "seed", "lr_schedule", "kl_scheme", "optimizer", "train_examples", "test_examples",
)  # fmt: skip
"""Report keys that the parts of one table must share."""


def merge(results_dir: Path, sources: list[Path]) -> dict[str, Any]:
    """One table from reports of its parts (``bbb_mnist.json`` of runs of other rows, e.g.
    ``--bbb-only`` and ``--baselines-only``): their rows, epochs and seconds, the pruning of the
    part that has it, every part's command. Written to ``results_dir`` and returned.

    Raises:
        SystemExit: If the parts differ in a setting of :data:`_MERGED_SETTINGS`, repeat a row,
            or none has the pruning table.
    """
    parts = [json.loads(Path(p).read_text()) for p in sources]
    report = {**parts[0], "commands": [], "seconds": 0.0, "pruning": None}
    for key in ("hidden_of", "epochs", "train_seconds", "ours"):
        report[key] = {}
    for path, part in zip(sources, parts, strict=True):
        for key in _MERGED_SETTINGS:
            if part.get(key) != parts[0].get(key):
                raise SystemExit(
                    f"{path}: {key} {part.get(key)!r}, but {sources[0]}'s is {parts[0].get(key)!r}"
                )
        if twice := set(part["ours"]) & set(report["ours"]):
            raise SystemExit(f"{path}: rows {sorted(twice)} are already in an earlier part")
        for key in ("hidden_of", "epochs", "train_seconds", "ours"):
            report[key].update(part[key])
        report["pruning"] = report["pruning"] or part.get("pruning")
        report["commands"].append(f"{part['command']} ({part['date']}, {part['device']})")
        report["seconds"] += part["seconds"]
    if report["pruning"] is None:
        raise SystemExit("no part has the pruning table: merge a part with the BBB row")
    report["command"] = "python benchmarks/bbb_mnist.py --merge " + " ".join(map(str, sources))
    _write(results_dir, report)
    return report


def _run_experiment(experiment: Any, argv: list[str]) -> dict[str, Any]:
    """Parse ``argv`` with the experiment's own options and run it."""
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    return experiment.run(parser.parse_args(argv))


def _run_side_by_side(args: argparse.Namespace, minutes: float | None) -> dict[str, dict[str, Any]]:
    """Train every method (at every width) at once, one ``pyro-dwp mnist`` process each
    (spread over the visible GPUs); their metrics, by row name (``METHOD`` at ``--hidden``,
    ``METHOD_hH`` at an ``--extra-hidden`` width ``H``).

    Raises:
        RuntimeError: If a process fails (its command and the end of its stderr).
    """
    methods = [] if args.baselines_only else ["bbb", *(["bbb_gaussian"] if args.gaussian else [])]
    methods += [] if args.bbb_only else ["sgd", "dropout"]
    rows = {m: (m, args.hidden) for m in methods}
    rows.update({f"{m}_h{h}": (m, h) for h in args.extra_hidden for m in methods})
    jobs: list[list[object]] = [
        ["mnist", *_mnist_argv(args, m, args.epochs, minutes, hidden=h, row=row)]
        for row, (m, h) in rows.items()
    ]
    run_processes(jobs, workers=len(jobs), gpus=visible_gpus(args.device))
    return {row: json.loads((args.runs_dir / row / "metrics.json").read_text()) for row in rows}


def _mnist_argv(
    args: argparse.Namespace,
    method: str,
    epochs: int,
    minutes: float | None,
    hidden: int | None = None,
    row: str | None = None,
) -> list[str]:
    """``pyro-dwp mnist`` options of ``method`` (``bbb_gaussian``: BBB with ``N(0, 1)``) at
    ``hidden`` units (default ``--hidden``), written to ``runs_dir / row`` (default the
    method's name)."""
    job = "bbb" if method.startswith("bbb") else method
    out = args.runs_dir / (row or method)
    argv = ["--method", job, "--out", str(out), "--epochs", str(epochs)]
    argv += ["--hidden", str(hidden or args.hidden), "--batch-size", str(args.batch_size)]
    argv += ["--lr", str(args.lr), "--lr-schedule", args.lr_schedule]
    argv += ["--optimizer", args.optimizer, "--momentum", str(args.momentum)]
    argv += ["--test-samples", str(args.test_samples)]
    argv += ["--device", args.device, "--seed", str(args.seed)]
    argv += ["--keep-best"] if args.keep_best else []
    argv += ["--resume"] if args.resume else []
    if job == "bbb":
        prior = (
            ["normal", "--neg-log-sigma", "0"] if method == "bbb_gaussian" else ["scale-mixture"]
        )
        argv += ["--prior", *prior, "--particles", str(args.particles)]
        argv += ["--kl-scheme", args.kl_scheme]
        argv += ["--init-scale", str(args.init_scale), "--engine", args.engine]
        argv += ["--scale-lr-factor", str(args.scale_lr_factor)]
        argv += ["--checkpoint-every", "10"]  # a 57 MB file: every epoch costs ~10% on a GPU
    if minutes is not None:
        argv += ["--max-train-minutes", str(max(minutes, 1e-3))]
    return argv + _common(args)


def _prune_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--run", str(args.runs_dir / "bbb"), "--device", args.device]
    argv += ["--fractions", *map(str, args.fractions), "--test-samples", str(args.test_samples)]
    if args.n_test is not None:
        argv += ["--n-test", str(args.n_test)]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    return argv


def _common(args: argparse.Namespace) -> list[str]:
    argv = []
    for key in ("n_train", "n_test", "data_dir"):
        if getattr(args, key) is not None:
            argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return argv + (["--no-progress"] if args.no_progress else [])


def _argv(args: argparse.Namespace) -> list[str]:
    """The options of ``args`` as a command line (defaults included)."""
    argv = []
    for key, value in vars(args).items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, list):
            argv += [flag, *map(str, value)] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()} (torch {torch.__version__})"


def _schedule(r: dict[str, Any]) -> str:
    """The rate schedule of a report's rows (reports from before ``--lr-schedule``: constant)."""
    linear = r.get("lr_schedule", "constant") == "linear"
    return "decayed linearly to 0 over the --epochs" if linear else "constant"


def _kl_scheme(r: dict[str, Any]) -> str:
    """How a report's BBB rows weight the KL per minibatch (reports from before ``--kl-scheme``:
    uniform)."""
    if r.get("kl_scheme", "uniform") == "blundell":
        return "2^-i / (1 - 2^-M) for the i-th of an epoch's M minibatches (the paper's Sec. 3.4)"
    return "1 / M for each of an epoch's M minibatches"


def _optimizer(r: dict[str, Any]) -> str:
    """A report's optimiser (reports from before ``--optimizer``: Adam)."""
    o = r.get("optimizer", {"name": "adam"})
    factor = o.get("scale_lr_factor", 1.0)
    scales = "" if factor == 1 else f", BBB's posterior scales at {factor:g}x the rate"
    if o["name"] == "adam":
        return "Adam" + scales
    return f"SGD (momentum {o['momentum']}, rate on the mean loss per training example{scales})"


def _markdown(r: dict[str, Any]) -> str:
    ours, hidden = r["ours"], r["hidden"]
    lines = [
        f"# BBB on MNIST, 2 x {hidden} ReLU (Blundell et al. 2015, Table 1)",
        "",
        f"- command: `{r['command']}`",
        f"- date: {r['date']}",
        f"- device: {r['device']}",
        f"- training images: {r.get('train_examples', 50_000):,} (the paper's: 50,000)",
        "- epochs done: " + ", ".join(f"{m} {e}" for m, e in r["epochs"].items()),
        "- training seconds: " + ", ".join(f"{m} {s:.0f}" for m, s in r["train_seconds"].items()),
        *(f"  - part: `{c}`" for c in r.get("commands", [])),
        f"- all methods: {_optimizer(r)}, the same learning rate ({_schedule(r)}), batch size "
        "and epochs; the paper trained up to 600 epochs with SGD",
        f"- BBB's KL weight per minibatch: {_kl_scheme(r)}",
        "",
        "Test error (%). Ours: the mean network (posterior mean / trained / weight-scaled) and the "
        "ensemble (BBB weight samples, MC dropout, the single SGD network), "
        f"{r['test_examples']:,} test images.",
        "",
        "| method | units | paper | ours, mean net | ours, ensemble | test NLL (ensemble) | ECE "
        "| OOD AUROC (notMNIST) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    extra = sorted({h for h in r.get("hidden_of", {}).values() if h != hidden})
    for width in [hidden, *extra]:
        for key, label in _LABELS.items():
            row = key if width == hidden else f"{key}_h{width}"
            paper = PAPER_TABLE1[key].get(width)
            cells = f"| {label} | {width} | {'n/a' if paper is None else f'{paper:.2f}'} |"
            if row in ours:
                m = ours[row]
                lines.append(
                    f"{cells} {100 * m['test_error_mean']:.2f} "
                    f"| {100 * m['test_error_ensemble']:.2f} | {m['test_nll_ensemble']:.4f} "
                    f"| {m['ece']:.4f} | {m['ood_auroc']:.4f} |"
                )
            elif width == hidden:
                lines.append(f"{cells} not run | | | | |")
    lines += _best_valid_table(r)
    if r["pruning"] is not None:  # a --baselines-only part has no BBB run to prune
        lines += [
            "",
            "## Pruning the BBB network by signal-to-noise |mu| / sigma",
            "",
            "Paper (H = 1200, test error %, as recalled in PAPERS.md): "
            + ", ".join(f"{float(f):.0%} {e:.2f}" for f, e in r["paper_pruning"].items()),
            "",
            prune.markdown_table(r["pruning"]),
        ]
    return "\n".join([*lines, ""])


def _best_valid_table(r: dict[str, Any]) -> list[str]:
    """The rows evaluated at their epoch of lowest validation error (``--keep-best``), as
    markdown lines (none if no row was)."""
    rows = {m: o["best_valid"] for m, o in r["ours"].items() if "best_valid" in o}
    if not rows:
        return []
    lines = [
        "",
        "Selected by validation (`--keep-best`): each row's parameters at its epoch of lowest "
        "validation error (the mean network's), on the same test images; the table above is "
        "the final epoch's.",
        "",
        "| row | epoch | validation error (%) | test error, mean net (%) | ensemble (%) "
        "| test NLL (ensemble) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m} | {b['epoch']} | {100 * b['valid_error']:.2f} | {100 * b['test_error_mean']:.2f} "
        f"| {100 * b['test_error_ensemble']:.2f} | {b['test_nll_ensemble']:.4f} |"
        for m, b in rows.items()
    ]
    return lines


if __name__ == "__main__":
    main(build_parser().parse_args())

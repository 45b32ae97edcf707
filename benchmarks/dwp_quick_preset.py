"""The main job's quick preset on evidence: CPU-sized DWP ConvNets at N = 100, three priors.

``pyro-dwp dwp`` (README command 1) has to finish on 2 CPU cores in at most 5 minutes, so its
target net is smaller than the paper's 32 / 128 channels and trains fewer than the paper's
10,000 epochs. This benchmark trains each variant (channels, epochs, learning rate) as the main
job trains its cells, on several data seeds and the whole MNIST test set: the shipped deep
weight prior (guide means from its samples, trainable reverse model) and the normal and
log-uniform priors (guide means from the network's initialisation), the two ``dwp-classify``
runs of :func:`pyro_dwp.experiments.dwp_pipeline.classify_runs`, each a separate process
(``--workers`` at a time, spread over the visible GPUs). It writes
``results/dwp_quick_preset.{md,json}``: per variant, the mean and std of test accuracy of each
prior, DWP's margin over the better baseline (mean over seeds) and the number of seeds on
which DWP is first. ``--collect DIR`` rebuilds the tables from finished runs in ``DIR`` (any
``*/dwp_classify.json`` below it, grouped by their channels, epochs and rate) without training.

    python benchmarks/dwp_quick_preset.py --device cuda --work-dir /tmp/quick --workers 16
    python benchmarks/dwp_quick_preset.py --collect /tmp/quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Any, get_args

import torch
from devices import run_processes, visible_gpus

from pyro_dwp.experiments.dwp_classify import RESULTS, summarise
from pyro_dwp.experiments.dwp_pipeline import PRESETS, classify_runs
from pyro_dwp.infer.fit import Engine

RESULTS_DIR = Path(__file__).parent / "results"
N_TRAIN = 100  # the quick preset's N
SHARED_SETTINGS = ("n_test", "evaluation", "test_samples", "batch_size", "pixel_scale")
"""``dwp-classify`` settings that every run of a variant must share (the priors' own differ)."""

# (channels, epochs, lr) of each variant: the preset before (16 / 32, 1,000 epochs), longer and
# faster training of it, the paper's net, and other widths, most with c1 x c2 = 512 conv2
# kernels (the kernel VAE's work per step, most of a deep-weight-prior step on a CPU).
VARIANTS: list[tuple[tuple[int, int], int, float]] = [
    ((16, 32), 1000, 1e-3),
    ((16, 32), 3000, 1e-3),
    ((16, 32), 1000, 3e-3),
    ((32, 128), 1000, 1e-3),
    ((8, 32), 1000, 1e-3),
    ((8, 64), 1000, 1e-3),
    ((4, 128), 1000, 1e-3),
    ((32, 16), 1000, 1e-3),
    ((8, 128), 1000, 1e-3),
    ((32, 8), 1000, 1e-3),
    ((32, 16), 500, 1e-3),
    ((32, 8), 500, 1e-3),
    ((24, 16), 700, 1e-3),
]


def variant_name(channels: list[int] | tuple[int, int], epochs: int, lr: float) -> str:
    """``"32/16, 500 epochs"`` (and ``", lr 0.003"`` unless the rate is the default 1e-3)."""
    name = f"{channels[0]}/{channels[1]}, {epochs} epochs"
    return name if lr == 1e-3 else f"{name}, lr {lr:g}"


def _jobs(args: argparse.Namespace) -> list[list[object]]:
    """One ``dwp-classify`` argv per (variant, run of :func:`classify_runs`)."""
    jobs = []
    for (c1, c2), epochs, lr in args.variants:
        for run, options in classify_runs().items():
            out = args.work_dir / f"c{c1}x{c2}_e{epochs}_lr{lr:g}_{run}"
            jobs.append(
                ["dwp-classify", "--out", out, *options, "--pretrained", "notmnist"]
                + ["--channels", c1, c2, "--epochs", epochs, "--lr", lr]
                + ["--n-train", N_TRAIN, "--seeds", *args.seeds, "--engine", args.engine]
                + ["--device", args.device, "--no-progress"]
                + (["--data-dir", args.data_dir] if args.data_dir else [])
                + (["--n-test", args.n_test] if args.n_test else [])
            )
    return jobs


def collect(work_dir: Path) -> dict[str, dict[str, Any]]:
    """``{variant name: {"channels", "epochs", "lr", "accuracy": {prior: [mean, std, seeds]},
    "per_seed": {prior: [accuracy of seed 0, 1, ...]}, "seeds", "n_test",
    "dwp_minus_best_baseline", "dwp_first_on"}}`` from every ``dwp_classify.json`` below
    ``work_dir``.

    Raises:
        FileNotFoundError: If there is none.
        ValueError: If a cell is not at N = 100, a variant lacks the dwp run or a baseline's,
            or its runs differ in their seeds or in a setting of :data:`SHARED_SETTINGS`.
    """
    files = sorted(work_dir.glob(f"**/{RESULTS}"))
    if not files:
        raise FileNotFoundError(f"no {RESULTS} below {work_dir}: run the benchmark first")
    cells: dict[str, dict[str, dict[int, float]]] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    specs: dict[str, tuple[list[int], int, float]] = {}
    shared: dict[str, dict[str, Any]] = {}
    for f in files:
        run = json.loads(f.read_text())
        config = run["config"]
        name = variant_name(config["channels"], config["epochs"], config["lr"])
        specs[name] = (config["channels"], config["epochs"], config["lr"])
        settings = {k: config.get(k) for k in SHARED_SETTINGS}
        if shared.setdefault(name, settings) != settings:
            raise ValueError(
                f"the runs of {name!r} differ in their settings: {shared[name]} and {settings} "
                f"({f})"
            )
        for c in run["cells"]:
            if c["n"] != N_TRAIN:
                raise ValueError(f"{f} holds a cell at N = {c['n']}, not {N_TRAIN}")
            cells.setdefault(name, {}).setdefault(c["prior"], {})[c["seed"]] = c["accuracy"]
            raw.setdefault(name, []).append(c)
    variants = {}
    for name, by_prior in cells.items():
        if "dwp" not in by_prior or len(by_prior) < 2:
            raise ValueError(f"{name!r} needs the dwp run and a baseline's, got {sorted(by_prior)}")
        seeds = sorted(by_prior["dwp"])
        if any(sorted(s) != seeds for s in by_prior.values()):
            raise ValueError(f"the runs of {name!r} have different seeds: {work_dir}")
        per_seed = {p: [by_prior[p][s] for s in seeds] for p in sorted(by_prior)}
        baselines = [p for p in per_seed if p != "dwp"]
        best = [max(per_seed[p][i] for p in baselines) for i in range(len(seeds))]
        margins = [d - b for d, b in zip(per_seed["dwp"], best, strict=True)]
        channels, epochs, lr = specs[name]
        summary = summarise(raw[name])
        variants[name] = {
            "channels": channels,
            "epochs": epochs,
            "lr": lr,
            "seeds": seeds,
            "accuracy": {p: list(summary[p, N_TRAIN]["accuracy"]) for p in per_seed},
            "n_test": shared[name]["n_test"],
            "per_seed": per_seed,
            "dwp_minus_best_baseline": statistics.fmean(margins),
            "dwp_first_on": sum(m > 0 for m in margins),
        }
    return variants


def _in_variant_order(variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``variants`` in the order of :data:`VARIANTS` (others after them, by name)."""
    order = [variant_name(*v) for v in VARIANTS]
    rank = {name: (order.index(name) if name in order else len(order), name) for name in variants}
    return {name: variants[name] for name in sorted(variants, key=rank.__getitem__)}


def markdown(result: dict[str, Any]) -> str:
    """The tables of :func:`collect`'s variants, with the command, date and device."""
    quick = PRESETS["quick"]
    preset = variant_name(quick["channels"], quick["epochs"], 1e-3)
    sizes = {v["n_test"] for v in result["variants"].values()}
    tested = (
        "all 10,000 test images"
        if sizes == {None}
        else "test subsets of " + ", ".join(str(n or 10_000) for n in sorted(sizes, key=str))
    )
    lines = [
        "# The quick preset of `pyro-dwp dwp`: CPU-sized variants at N = 100",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; device: {result['device']}",
        f"- protocol: N = {N_TRAIN}, the shipped prior `notmnist`, the main job's two runs "
        "(dwp: guide means from prior samples, trainable reverse model; normal, log-uniform: "
        "from the network's initialisation), Adam decayed linearly to 0, the 10-member "
        f"ensemble with the local reparameterisation, {tested}",
        f"- the quick preset now: **{preset}**",
        "",
        "Test accuracy, mean ± std over data seeds; margin: DWP minus the better baseline of "
        "each seed, mean over seeds (points); first: seeds on which DWP is first.",
        "",
        "| variant | dwp | normal | log-uniform | margin | first |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        acc = v["accuracy"]
        cols = [f"{acc[p][0]:.3f} ± {acc[p][1]:.3f}" for p in ("dwp", "normal", "log-uniform")]
        margin = f"{100 * v['dwp_minus_best_baseline']:+.1f}"
        first = f"{v['dwp_first_on']} of {len(v['seeds'])}"
        lines.append(f"| {name} | {' | '.join(cols)} | {margin} | {first} |")
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], results_dir: Path) -> None:
    """``results_dir/dwp_quick_preset.{json,md}``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "dwp_quick_preset.json").write_text(json.dumps(result, indent=2) + "\n")
    (results_dir / "dwp_quick_preset.md").write_text(markdown(result))


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.collect is None:
        seconds = run_processes(_jobs(args), args.workers, visible_gpus(args.device))
        print(f"{len(args.variants)} variants in {seconds:.0f} s", file=sys.stderr)
    work_dir = args.collect or args.work_dir
    if args.device_label:
        device = args.device_label
    else:
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    result = {
        "command": "python benchmarks/dwp_quick_preset.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device,
        "n_train": N_TRAIN,
        "variants": _in_variant_order(collect(work_dir)),
    }
    write(result, args.results_dir)
    print(markdown(result))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--work-dir", type=Path, default=Path("runs/dwp_quick_preset"))
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument(
        "--variant",
        nargs=4,
        action="append",
        metavar=("C1", "C2", "EPOCHS", "LR"),
        help="train this variant (repeatable) instead of the list in VARIANTS",
    )
    p.add_argument("--n-test", type=int, help="test subset size (default: all 10,000)")
    p.add_argument("--engine", choices=get_args(Engine), default="compiled")
    p.add_argument("--workers", type=int, default=8, help="processes at a time")
    p.add_argument("--collect", type=Path, help="only tabulate the finished runs in this folder")
    p.add_argument("--device-label", help="the device the collected runs ran on")
    args = p.parse_args(argv)
    args.variants = VARIANTS
    if args.variant:
        args.variants = [((int(c1), int(c2)), int(e), float(lr)) for c1, c2, e, lr in args.variant]
    return args


if __name__ == "__main__":
    main(parse_args())

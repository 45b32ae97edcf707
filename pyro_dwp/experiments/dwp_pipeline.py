"""The whole deep weight prior pipeline (Atanov et al., 2019), end to end.

The experiment of ``pyro-dwp dwp``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.dwp_pipeline`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from pyro_dwp.data import DATA_ENV_VAR, find_data_dir
from pyro_dwp.experiments import dwp_classify, dwp_prior, dwp_source
from pyro_dwp.experiments.dwp_classify import RESULTS, plot_figure2, summarise, summary_table
from pyro_dwp.experiments.prior_recipes import PRIOR_RECIPES, prior_names
from pyro_dwp.io import add_out_argument, parse_seed, write_json
from pyro_dwp.models.kernel_vae import DecoderMean, DecoderScale
from pyro_dwp.pretrained import pretrained_dir

__all__ = ["PRESETS", "add_arguments", "classify_runs", "run", "run_stage"]

SUMMARY = "dwp.json"

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "source_nets": 4,
        "channels": [32, 16],
        "source_epochs": 8,
        "source_subset": 5000,
        "max_kernels": 1000,
        "prior_epochs": 100,
        "n_train": [100],
        "seeds": [0],
        "epochs": 500,
        "n_test": 2000,
    },
    "paper": {},  # every stage's defaults
}
"""Option values of each preset; an option missing from a preset takes its stage's default."""

SHIPPED_PRIOR: dict[str, str | None] = {"quick": "notmnist", "paper": None}
"""The shipped prior each preset uses unless ``--train-prior`` (``None``: always trained)."""

# option -> (stage, flag of the stage's job); ``channels`` goes to both ends of the pipeline.
_OPTIONS = {
    "source_nets": (("source", "--num-nets"),),
    "channels": (("source", "--channels"), ("classify", "--channels")),
    "source_epochs": (("source", "--epochs"),),
    "source_subset": (("source", "--n-train-subset"),),
    "max_kernels": (("source", "--max-kernels"),),
    "kernel_gauge": (("source", "--kernel-gauge"),),
    "prior_epochs": (("prior", "--epochs"),),
    "decoder_scale": (("prior", "--decoder-scale"),),
    "decoder_mean": (("prior", "--decoder-mean"),),
    "code_prior_components": (("prior", "--code-prior-components"),),
    "n_train": (("classify", "--n-train"),),
    "seeds": (("classify", "--seeds"),),
    "epochs": (("classify", "--epochs"),),
    "n_test": (("classify", "--n-test"),),
}
_STAGE_JOBS = {"dwp-source": dwp_source, "dwp-prior": dwp_prior, "dwp-classify": dwp_classify}
# Files a finished stage leaves, relative to its folder.
_STAGE_FILES = {
    "source": ("kernels_conv1.pt", "kernels_conv2.pt", "source_report.json"),
    "prior": ("vae_conv1.pt", "vae_conv2.pt", "prior_report.json"),
    "classify": (RESULTS,),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out_argument(p, "automatic")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument(
        "--train-prior",
        action="store_true",
        help="train the prior (dwp-source, dwp-prior with the preset's settings) instead of "
        "using the one shipped with the package (the paper preset always trains it)",
    )
    p.add_argument(
        "--data-dir", type=Path, help="folder with mnist/ and notmnist/ (else PYRO_DWP_DATA)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-progress", action="store_true")
    o = p.add_argument_group("overrides of the preset (default: the preset's value)")
    o.add_argument("--source-nets", type=int, help="number of source nets")
    o.add_argument(
        "--channels", type=int, nargs=2, metavar=("C1", "C2"), help="source and target widths"
    )
    o.add_argument("--source-epochs", type=int, help="epochs of each source net")
    o.add_argument("--source-subset", type=int, help="notMNIST images the source nets train on")
    o.add_argument("--max-kernels", type=int, help="source kernels per layer the VAEs fit")
    o.add_argument(
        "--kernel-gauge",
        choices=dwp_source.KERNEL_GAUGES,
        help="dwp-source --kernel-gauge: 'he' rescales each layer's kernels to the He scale of "
        "the target net's layer (--channels), as for the shipped prior (default: none)",
    )
    o.add_argument("--prior-epochs", type=int, help="epochs of each kernel VAE")
    o.add_argument(
        "--decoder-scale",
        choices=list(get_args(DecoderScale)),
        help="dwp-prior --decoder-scale: 'shared' gives the VAEs' decoders one scale for every "
        "code, as for the shipped prior (default: per-code, the paper's)",
    )
    o.add_argument(
        "--decoder-mean",
        choices=list(get_args(DecoderMean)),
        help="dwp-prior --decoder-mean: 'polar' keeps every decoded kernel at least as large as "
        "the smallest source kernel, so the prior has no mode at the zero kernel (default: "
        "direct, the paper's)",
    )
    o.add_argument(
        "--code-prior-components",
        type=int,
        nargs="+",
        metavar="C",
        help="dwp-prior --code-prior-components: replace each VAE's code prior N(0, I) by a "
        "mixture of C Gaussians fitted to the source kernels' codes, as for the shipped prior "
        "(16 64); one value or one per layer (default: N(0, I), the paper's)",
    )
    o.add_argument("--n-train", type=int, nargs="+", help="MNIST training set sizes N")
    o.add_argument("--seeds", type=parse_seed, nargs="+", help="data seeds of the classifier")
    o.add_argument("--epochs", type=int, help="classifier epochs per (prior, N, seed) cell")
    o.add_argument("--n-test", type=int, help="MNIST test images")
    o.add_argument(
        "--dwp-init",
        choices=["dwp", "module"],
        default="dwp",
        help="the DWP classifier's guide means: samples of the prior or the net's initialisation",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the missing stages, merge the classifier runs, print the table; return the summary."""
    t0 = time.perf_counter()
    settings = _settings(args)
    shipped = None if args.train_prior else SHIPPED_PRIOR[args.preset]
    # the overrides that only a trained prior reads: the shipped one refuses, not ignores, them
    prior_options = [
        f"--{key.replace('_', '-')}"
        for key, targets in _OPTIONS.items()
        if getattr(args, key) is not None and "classify" not in {stage for stage, _ in targets}
    ]
    if shipped is not None and prior_options:
        raise ValueError(
            f"{', '.join(prior_options)} shape(s) the trained prior, but this run uses the "
            f"shipped one ({shipped}): add --train-prior, or drop them"
        )
    out: Path = args.out
    summary_path = out / SUMMARY
    state = _load_state(summary_path)
    plan = _plan(out, settings, args.dwp_init, shipped)
    todo = [name for name, _ in plan if not _finished(out, state, name, _argv(plan, name))]
    if "source" in todo or "prior" in todo:
        _refuse_other_settings(out, state, plan)
    _check_data(args.data_dir, needs_notmnist="source" in todo)
    out.mkdir(parents=True, exist_ok=True)
    if state.get("prior", shipped) != shipped:
        raise ValueError(
            f"{out} holds a run with the prior {state['prior'] or 'trained by the pipeline'}, "
            f"this run uses {shipped or 'a trained one (--train-prior)'}: use another --out"
        )
    state.update(preset=args.preset, prior=shipped, settings=settings)
    runtime = ["--device", args.device, *(["--no-progress"] if args.no_progress else [])]
    data = ["--data-dir", args.data_dir] if args.data_dir is not None else []
    for i, (name, argv) in enumerate(plan, 1):
        step = f"pyro-dwp dwp: [{i}/{len(plan)}] {name}"
        if name not in todo:
            seconds = state["stages"][name]["seconds"]
            print(f"{step}: finished in an earlier run ({seconds:.0f} s), skipped", file=sys.stderr)
            continue
        print(f"{step}: pyro-dwp {' '.join(map(str, argv))}", file=sys.stderr, flush=True)
        _, seconds = run_stage([*argv, *runtime, *(data if argv[0] != "dwp-prior" else [])])
        state["stages"][name] = {"argv": [str(a) for a in argv], "seconds": seconds}
        write_json(summary_path, state)
    classify = out / "classify"
    cells = [c for run in classify_runs() for c in _cells(classify / run)]
    summary = summarise(cells)
    table = summary_table(summary)
    (classify / dwp_classify.TABLE).write_text(table)
    plot_figure2(classify / dwp_classify.FIGURE, summary)
    state["results"] = {
        f"{p} N={n}": {m: summary[p, n][m][0] for m in ("accuracy", "nll")}
        for p, n in sorted(summary)
    }
    state["outputs"] = _outputs(out, shipped)
    state["seconds"] = {
        "stages": {k: round(v["seconds"], 1) for k, v in state["stages"].items()},
        "this_run": round(time.perf_counter() - t0, 1),
    }
    write_json(summary_path, state)
    prior = f"the shipped prior {shipped!r}" if shipped else f"the prior in {out / 'prior'}"
    print(f"Deep weight prior ({prior}) vs normal vs log-uniform on MNIST ({args.preset} preset)\n")
    print(table)
    return {
        "summary": str(summary_path),
        "table": str(classify / dwp_classify.TABLE),
        "figure": str(classify / dwp_classify.FIGURE),
        "results": state["results"],
        "seconds": state["seconds"],
    }


def run_stage(argv: Sequence[object]) -> tuple[dict[str, Any], float]:
    """Run one stage, ``pyro-dwp JOB [options]`` with ``argv = [JOB, *options]``, in this process.

    ``JOB`` is ``dwp-source``, ``dwp-prior`` or ``dwp-classify``. The job's errors propagate.

    Returns:
        The job's result dict and the seconds it took.
    """
    job, *options = (str(a) for a in argv)
    if job not in _STAGE_JOBS:
        raise ValueError(f"a stage is one of {sorted(_STAGE_JOBS)}, got {job!r}")
    module = _STAGE_JOBS[job]
    parser = argparse.ArgumentParser(prog=f"pyro-dwp {job}", allow_abbrev=False)
    module.add_arguments(parser)
    args = parser.parse_args(options)
    t0 = time.perf_counter()
    result = module.run(args)
    return result, time.perf_counter() - t0


def classify_runs(dwp_init: str = "dwp", reverse: str = "trainable") -> dict[str, list[str]]:
    """The ``dwp-classify`` options of the two runs whose cells make up the comparison.

    ``"baselines"``: the registered priors of the DWP experiments that need no kernel VAE
    (the normal and log-uniform priors), guide means from the network's own initialisation;
    ``"dwp"``: those that do (the deep weight prior), guide means from ``dwp_init`` (``"dwp"``:
    samples of the prior) and its reverse model ``reverse`` (``"trainable"`` or ``"frozen"``).
    """
    names = prior_names("dwp", defaults_only=True)
    baselines = [p for p in names if not PRIOR_RECIPES[p].needs_vae]
    dwp = [p for p in names if PRIOR_RECIPES[p].needs_vae]
    return {
        "baselines": ["--priors", *baselines, "--guide-init", "module"],
        "dwp": ["--priors", *dwp, "--guide-init", dwp_init, "--reverse", reverse],
    }


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The preset's option values with the given overrides; checked."""
    preset = PRESETS[args.preset]
    settings = {}
    for key in _OPTIONS:
        value = getattr(args, key)
        settings[key] = preset.get(key) if value is None else value
    for key, value in settings.items():
        values = value if isinstance(value, list) else [value]
        numeric = not isinstance(value, str)
        if value is not None and numeric and key != "seeds" and min(values) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    return settings


def _plan(
    out: Path, settings: dict[str, Any], dwp_init: str, shipped: str | None
) -> list[tuple[str, list[object]]]:
    """``[(stage name, [job, *options])]`` without the runtime options (device, data, progress);
    with a ``shipped`` prior only the classifier runs."""
    options: dict[str, list[object]] = {"source": [], "prior": [], "classify": []}
    for key, targets in _OPTIONS.items():
        value = settings[key]
        if value is None:
            continue
        for stage, flag in targets:
            options[stage] += [flag, *(value if isinstance(value, list) else [value])]
    if settings["kernel_gauge"] == "he" and settings["channels"] is not None:
        # the gauge's target is the classifier's net (dwp-source's default: the paper's 32 / 128)
        options["source"] += ["--target-channels", *settings["channels"]]
    plan: list[tuple[str, list[object]]] = []
    if shipped is None:
        plan += [
            ("source", ["dwp-source", "--out", out / "source", *options["source"]]),
            (
                "prior",
                ["dwp-prior", "--kernels", out / "source", "--out", out / "prior"]
                + options["prior"],
            ),
        ]
    prior = ["--pretrained", shipped] if shipped else ["--vae-dir", out / "prior"]
    for run, extra in classify_runs(dwp_init).items():
        folder = out / "classify" / run
        argv = ["dwp-classify", "--out", folder, *prior, *options["classify"]]
        plan.append((f"classify/{run}", [*argv, *extra]))
    return plan


def _argv(plan: list[tuple[str, list[object]]], name: str) -> list[str]:
    return [str(a) for a in dict(plan)[name]]


def _finished(out: Path, state: dict[str, Any], name: str, argv: list[str]) -> bool:
    """Whether ``state`` records stage ``name`` as finished with ``argv`` and its files exist."""
    record = state["stages"].get(name)
    files = _STAGE_FILES[name.split("/")[0]]
    return (
        record is not None
        and record["argv"] == argv
        and all((out / name / f).is_file() for f in files)
    )


def _refuse_other_settings(
    out: Path, state: dict[str, Any], plan: list[tuple[str, list[object]]]
) -> None:
    """Stop before a source or prior stage reruns under results made with other settings."""
    for name in ("source", "prior"):
        record = state["stages"].get(name)
        if record is not None and name in dict(plan) and record["argv"] != _argv(plan, name):
            raise ValueError(
                f"{out / name} was made with other settings ({' '.join(record['argv'])}) than "
                f"this run ({' '.join(_argv(plan, name))}): use another --out, or delete {out}"
            )


def _check_data(data_dir: Path | None, *, needs_notmnist: bool) -> None:
    """Fail before any training if the data cannot be found (the messages say where to put it)."""
    if data_dir is not None and not data_dir.is_dir():
        raise FileNotFoundError(
            f"--data-dir {data_dir} is not a directory: give the folder that holds mnist/ and "
            f"notmnist/ (the bundled data: ../shared/data beside the repository)"
        )
    if needs_notmnist:
        find_data_dir("notmnist", data_dir)
    if data_dir is not None or os.environ.get(DATA_ENV_VAR):
        find_data_dir("mnist", data_dir)


def _load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"stages": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): delete it to run every stage") from e
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        raise ValueError(f"{path} is not a summary of pyro-dwp dwp: use another --out")
    return state


def _cells(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / RESULTS).read_text())["cells"]


def _outputs(out: Path, shipped: str | None) -> dict[str, Any]:
    """Paths of every output of the pipeline, by stage."""
    classify = out / "classify"
    runs = {
        run: [str(classify / run / f) for f in (RESULTS, dwp_classify.TABLE, dwp_classify.FIGURE)]
        for run in classify_runs()
    }
    outputs: dict[str, Any] = {
        "summary": str(out / SUMMARY),
        "classify": {
            "table": str(classify / dwp_classify.TABLE),
            "figure": str(classify / dwp_classify.FIGURE),
            **runs,
        },
    }
    if shipped:
        return {**outputs, "prior": str(pretrained_dir(shipped))}
    prior_report = json.loads((out / "prior" / "prior_report.json").read_text())
    prior_files = [
        out / "prior" / layer[key]
        for layer in prior_report["layers"].values()
        for key in ("vae_file", "samples_plot", "latent_plot")
        if layer.get(key)
    ]
    return {
        **outputs,
        "source": [
            str(out / "source" / f)
            for f in ("kernels_conv1.pt", "kernels_conv2.pt", "source_report.json", "source_nets")
        ],
        "prior": [str(p) for p in prior_files] + [str(out / "prior" / "prior_report.json")],
    }

"""How the test error of a trained BBB MNIST network depends on its test-time ensemble.

Table 1 (``benchmarks/bbb_mnist.py``) reports a BBB run's mean network and a 10-member ensemble
of weight samples. The ensemble is a Monte Carlo estimate of the posterior predictive, and with
a scale-mixture prior some posterior scales sit at the prior's wide component, so ten draws can
land far from the predictive they estimate. This script reloads runs of ``pyro-dwp mnist
--method bbb`` (``model.pt``, and ``best.pt`` of ``--keep-best`` where present) and evaluates, on
the run's test images, ensembles of each size in ``--sizes``, each drawn under ``--draw-seeds``
different seeds: the spread over seeds is the estimate's Monte Carlo error, the mean over seeds
at the largest size the predictive itself.

Writes ``bbb_ensemble_size.{json,md}`` to ``--results-dir`` with
``{"runs": {name: {"mean_net": {...}, "sizes": {S: {"error": [per seed], "nll": [...]}}}}}``
(errors as fractions)::

    python benchmarks/bbb_ensemble_size.py --run-dirs runs/bbb_mnist/bbb --device cuda
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_dwp.data import load_mnist
from pyro_dwp.experiments.classification import (
    bbb_classifier,
    ensemble_log_probs,
    error_rate,
    network_logits,
)
from pyro_dwp.experiments.mnist import load_bbb_run
from pyro_dwp.infer.checkpoint import set_param_store_state
from pyro_dwp.io import read_torch_file

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dirs", type=Path, nargs="+", required=True, help="BBB mnist runs")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="ensemble sizes")
    p.add_argument("--draw-seeds", type=int, default=5, help="seeds per ensemble size")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--n-test", type=int, default=None, help="test subset (default: the run's)")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="bbb_ensemble_size", help="stem of the result files")
    return p


def evaluate_run(run_dir: Path, params: str, args: argparse.Namespace) -> dict[str, Any]:
    """Metrics of one run's parameters (``"model.pt"`` or ``"best.pt"``) at every ensemble size."""
    config, model, guide = load_bbb_run(run_dir, args.device)
    if params != "model.pt":
        state = read_torch_file(
            run_dir / params,
            what="--keep-best file",
            remedy="rerun the job with --keep-best",
            weights_only=False,
        )
        set_param_store_state(state["params"], args.device)
    n_test = args.n_test if args.n_test is not None else config["n_test"]
    data_dir = args.data_dir
    if data_dir is None and config.get("data_dir"):
        data_dir = Path(config["data_dir"])
    x, y = load_mnist("test", data_dir, n=n_test, seed=config["seed"])
    x, y = x.to(args.device), y.to(args.device)
    clf = bbb_classifier(model, guide)
    mean_logp = network_logits(clf.mean_net, x).log_softmax(-1)
    out: dict[str, Any] = {
        "test_examples": len(y),
        "mean_net": {"error": error_rate(mean_logp, y), "nll": _nll(mean_logp, y)},
        "sizes": {},
    }
    for size in args.sizes:
        errors, nlls = [], []
        for seed in range(args.draw_seeds):
            torch.manual_seed(seed)
            log_probs = ensemble_log_probs(clf, x, size)
            errors.append(error_rate(log_probs, y))
            nlls.append(_nll(log_probs, y))
        out["sizes"][str(size)] = {"error": errors, "nll": nlls}
    pyro.clear_param_store()
    return out


def _nll(log_probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-probability of the labels ``y (N,)`` under ``log_probs (N, 10)``."""
    return float(-log_probs.gather(1, y[:, None]).mean())


def markdown(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    head = " | ".join(f"S = {s}: error % (min-max) / NLL" for s in sizes)
    lines = [
        "# BBB on MNIST: test error against the test-time ensemble's size",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; device: {result['device']}; "
        f"{result['draw_seeds']} draw seeds per size",
        "",
        f"| run | mean net: error % / NLL | {head} |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for name, run in result["runs"].items():
        cells = []
        for s in sizes:
            e, n = run["sizes"][str(s)]["error"], run["sizes"][str(s)]["nll"]
            cells.append(
                f"{100 * statistics.mean(e):.2f} ({100 * min(e):.2f}-{100 * max(e):.2f}) / "
                f"{statistics.mean(n):.4f}"
            )
        m = run["mean_net"]
        lines.append(f"| {name} | {100 * m['error']:.2f} / {m['nll']:.4f} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict[str, Any]:
    if any(s < 1 for s in args.sizes) or args.draw_seeds < 1:
        raise ValueError(
            f"--sizes and --draw-seeds must be >= 1, got {args.sizes}, {args.draw_seeds}"
        )
    t0 = time.perf_counter()
    runs: dict[str, Any] = {}
    for run_dir in args.run_dirs:
        for params in ("model.pt", "best.pt"):
            if (run_dir / params).is_file():
                runs[f"{run_dir.name}/{params}"] = evaluate_run(run_dir, params, args)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    result = {
        "command": shlex.join(["python", "benchmarks/bbb_ensemble_size.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device,
        "sizes": args.sizes,
        "draw_seeds": args.draw_seeds,
        "runs": runs,
        "seconds": time.perf_counter() - t0,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (args.results_dir / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main(build_parser().parse_args())

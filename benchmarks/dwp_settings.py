"""One protocol setting varied on the MNIST grid: every prior paired by seed with a reference.

Each ``--runs`` file is a ``dwp_mnist.json`` (``benchmarks/dwp_mnist.py``) trained under the
reference grid's protocol except the one key ``--key`` (``lr``, ``kl_weight``, ``epochs``,
``net_init``, ...: :data:`dwp_mnist.PROTOCOL_KEYS`), with the same prior; a run that differs in
another key, used another prior, holds the reference's own value or repeats a cell is refused by
name. Per value of the key, N and prior: the mean accuracy over the run's seeds, the reference's
on the same seeds, the paired difference in points with its standard error and the number of
seeds on which the setting is higher, beside the paper's Figure-2 point. Writes
``--results-dir/STEM.{json,md,png}`` (``--name STEM``; the figure: accuracy against the setting,
one panel per N, the paper's points dashed)::

    python benchmarks/dwp_settings.py --key lr --name dwp_paper_splits_lr \\
        --reference benchmarks/results/dwp_mnist_paper_splits.json \\
        --runs benchmarks/results/dwp_paper_splits_settings/lr*/dwp_mnist.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

from dwp_mnist import PROTOCOL_KEYS, check_protocol
from dwp_prior_screen import paired

from pyro_dwp.experiments.dwp_classify import summarise
from pyro_dwp.experiments.prior_recipes import PRIOR_RECIPES

__all__ = ["main", "parse_args", "sweep"]

RESULTS_DIR = Path(__file__).parent / "results"
Cells = dict[tuple[str, int, int], dict]
"""``(prior, N, seed) -> cell`` of a results file (a cell: ``accuracy``, ``nll``, ...)."""


def _value(result: dict, key: str) -> object:
    """``result``'s value of the protocol key ``key`` (the default of a file written before
    the key was recorded)."""
    default = dict(PROTOCOL_KEYS)[key]
    return result.get(key, default)


def _cells(result: dict, path: object) -> Cells:
    cells: Cells = {}
    for c in result["cells"]:
        cell = (c["prior"], c["n"], c["seed"])
        if cell in cells:
            raise SystemExit(f"{path}: cell (prior, N, seed) {cell} appears twice")
        cells[cell] = c
    return cells


def sweep(reference: dict, runs: list[tuple[object, dict]], key: str) -> list[dict]:
    """The rows of the comparison: one per (value of ``key``, N, prior) of ``runs`` (``(path,
    dwp_mnist.json content)`` pairs; several files may hold one value, other N or seeds) and
    one per (N, prior) of the reference on the (N, seed) cells that the runs have, in the order
    value, N, prior.

    A row: ``value``, ``n``, ``prior``, ``seeds`` (those also in the reference), ``accuracy``
    and ``nll`` (``[mean, std, seeds]``), ``reference_accuracy`` (the reference's mean on those
    seeds), ``minus_reference`` and ``se`` (paired difference in points and its standard error,
    ``None`` for one seed), ``higher`` (seeds on which the value's accuracy is higher).

    Raises:
        SystemExit: a run trained under another protocol than the reference's in a key other
            than ``key``, or with another prior; a run with the reference's own value of ``key``;
            a cell given twice for one value; a run with no cell that the reference also has.
    """
    if key not in dict(PROTOCOL_KEYS):
        raise SystemExit(f"--key {key!r} is not a protocol key: {sorted(dict(PROTOCOL_KEYS))}")
    base = _cells(reference, "the reference")
    by_value: dict[object, Cells] = {_value(reference, key): base}
    for path, run in runs:
        check_protocol(reference, run, path, varied=key)
        value = _value(run, key)
        if value == _value(reference, key):
            raise SystemExit(f"{path}: {key} {value!r} is the reference's own")
        cells = {k: c for k, c in _cells(run, path).items() if k in base}
        if not cells:
            raise SystemExit(f"{path}: no (prior, N, seed) cell that the reference also has")
        same = by_value.setdefault(value, {})
        if clash := sorted(cells.keys() & same.keys()):
            cell = clash[0]
            raise SystemExit(f"{path}: cell (prior, N, seed) {cell} is already given for {value!r}")
        same.update(cells)
    # the reference's own row: its cells at the (N, seed) that some run has, so that every
    # row of one N is a mean over the same seeds where the runs share them
    shared = {(n, s) for cells in by_value.values() if cells is not base for _, n, s in cells}
    by_value[_value(reference, key)] = {k: c for k, c in base.items() if k[1:] in shared}
    rows = []
    for value, cells in sorted(by_value.items(), key=lambda item: _order(item[0])):
        summary = summarise(list(cells.values()))
        for prior, n in sorted(summary, key=lambda k: (k[1], list(PRIOR_RECIPES).index(k[0]))):
            seeds = sorted(s for p, m, s in cells if (p, m) == (prior, n))
            accuracy = [cells[prior, n, s]["accuracy"] for s in seeds]
            ref = [base[prior, n, s]["accuracy"] for s in seeds]
            difference, se = paired(accuracy, ref)
            rows.append({
                "value": value, "n": n, "prior": prior, "seeds": seeds,
                "accuracy": list(summary[prior, n]["accuracy"]),
                "nll": list(summary[prior, n]["nll"]),
                "reference_accuracy": statistics.fmean(ref),
                "minus_reference": difference, "se": se,
                "higher": sum(a > b for a, b in zip(accuracy, ref, strict=True)),
            })  # fmt: skip
    return rows


def _order(value: object) -> tuple:
    """Numbers before text, each in its natural order."""
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def main(args: argparse.Namespace) -> dict:
    """Compare, write ``STEM.{json,md,png}`` in ``--results-dir``, print the table."""
    reference = json.loads(Path(args.reference).read_text())
    runs = [(path, json.loads(Path(path).read_text())) for path in args.runs]
    rows = sweep(reference, runs, args.key)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "key": args.key,
        "reference": {"path": str(args.reference), "value": _value(reference, args.key)},
        "runs": [{"path": str(p), "value": _value(r, args.key)} for p, r in runs],
        "epochs": {str(p): r["epochs"] for p, r in [(args.reference, reference), *runs]},
        "evaluation": reference["evaluation"],
        "paper": reference.get("paper", {}),
        "rows": rows,
    }
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = _markdown(result)
    (out / f"{args.name}.md").write_text(text)
    _plot(out / f"{args.name}.png", result)
    print(text)
    return result


def _paper(result: dict, prior: str, n: int) -> float | None:
    return result["paper"].get(prior, {}).get(str(n))


def _markdown(result: dict) -> str:
    key, ref = result["key"], result["reference"]
    lines = [
        f"# One setting varied on the MNIST grid: `{key}`, every prior paired by seed",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; reference: `{ref['path']}` ({key} = {ref['value']}); runs: "
        + ", ".join(f"`{r['path']}` ({key} = {r['value']})" for r in result["runs"]),
        f"- every run is the reference's protocol but `{key}` (checked, with the prior's files); "
        f"test-time evaluation: {result['evaluation']}",
        "- accuracy: mean ± std over the seeds that the reference also has; paired: the setting "
        "minus the reference on those seeds, in points (standard error; seeds higher)",
        "",
        f"| N | prior | {key} | seeds | accuracy | reference, same seeds | paired, points "
        "| paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(result["rows"], key=lambda r: (r["n"], _order(r["value"]))):
        mean, std, count = row["accuracy"]
        if row["value"] == ref["value"]:
            shift = "(reference)"
        else:
            se = "" if row["se"] is None else f"; SE {row['se']:.2f}"
            shift = f"{row['minus_reference']:+.2f} ({count} seeds{se}; {row['higher']} higher)"
        paper = _paper(result, row["prior"], row["n"])
        lines.append(
            f"| {row['n']} | {row['prior']} | {row['value']} | {count} | {mean:.4f} ± {std:.4f} | "
            f"{row['reference_accuracy']:.4f} | {shift} | "
            + ("" if paper is None else f"{paper:.3f}")
            + " |"
        )
    return "\n".join(lines) + "\n"


def _plot(path: Path, result: dict) -> None:
    """Accuracy (mean ± standard error over seeds) against the setting, one panel per N, each
    prior in its colour, the paper's point as a dashed line; log axis for positive numbers."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    sizes = sorted({r["n"] for r in result["rows"]})
    values = sorted({r["value"] for r in result["rows"]}, key=_order)
    numeric = all(isinstance(v, int | float) and v > 0 for v in values)
    fig = Figure(figsize=(4.5 * len(sizes), 3.6))
    axes = fig.subplots(1, len(sizes), squeeze=False)[0]
    for ax, n in zip(axes, sizes, strict=True):
        rows = [r for r in result["rows"] if r["n"] == n]
        for prior in [p for p in PRIOR_RECIPES if p in {r["prior"] for r in rows}]:
            colour = PRIOR_RECIPES[prior].colour
            mine = [r for r in rows if r["prior"] == prior]
            mine.sort(key=lambda r: _order(r["value"]))
            xs = [r["value"] if numeric else values.index(r["value"]) for r in mine]
            ys = [r["accuracy"][0] for r in mine]
            errors = [r["accuracy"][1] / r["accuracy"][2] ** 0.5 for r in mine]
            ax.errorbar(xs, ys, yerr=errors, fmt="o-", color=colour, capsize=3, label=prior)
            paper = _paper(result, prior, n)
            if paper is not None:
                ax.axhline(paper, ls="--", lw=1, color=colour)
        ax.axvline(
            result["reference"]["value"] if numeric else values.index(result["reference"]["value"]),
            ls=":",
            color="grey",
        )
        shown = sorted({r["value"] for r in rows}, key=_order)
        if numeric:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(shown, [f"{v:g}" for v in shown])
        else:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set(xlabel=f"{result['key']} (dotted: the reference)", ylabel="test accuracy")
        ax.set_title(f"N = {n}: mean ± SE over seeds (dashed: the paper)", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", type=Path, required=True, help="the grid's dwp_mnist.json")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="dwp_mnist.json files")
    parser.add_argument("--key", required=True, help="the protocol key the runs vary")
    parser.add_argument("--name", required=True, help="the outputs' file stem")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

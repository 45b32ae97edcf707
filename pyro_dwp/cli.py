"""The ``pyro-dwp`` command: ``pyro-dwp <job> [options]``; ``pyro-dwp <job> --help`` for each."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys

from pyro_dwp.infer.interrupt import TrainingInterrupted
from pyro_dwp.version import __version__

__all__ = ["main"]

# job name -> (module under pyro_dwp.jobs, one-line help)
JOBS = {
    "regression": ("regression", "BBB curve regression (Blundell et al. 2015, Fig. 5)"),
    "mnist": ("mnist", "BBB / SGD / dropout MLPs on MNIST (Blundell et al. 2015, Table 1)"),
    "prune": ("prune", "prune a BBB mnist run by signal-to-noise ratio (Blundell et al. 2015)"),
    "dwp": ("dwp_pipeline", "the whole DWP pipeline: source -> prior -> classify, one table"),
    "dwp-source": ("dwp_source", "DWP source nets on notMNIST and their kernel sets"),
    "dwp-prior": ("dwp_prior", "DWP kernel VAEs (the prior) fitted to the source kernels"),
    "dwp-classify": ("dwp_classify", "DWP vs normal vs log-uniform priors on small MNIST (Fig. 2)"),
    "dwp-gap": ("dwp_gap", "DWP bound gap L - L_aux, trainable vs frozen reverse model (App. F)"),
    "mushroom": ("mushroom", "Mushroom bandit: BBB Thompson sampling vs greedy (Sec. 5.3)"),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help`` (once: not where the help text already gives it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not _has_default(action):
            return text
        return f"{text} (default: %(default)s)".strip()


def _has_default(action: argparse.Action) -> bool:
    """Whether an option has a default worth showing (not None, a flag's False or SUPPRESS)."""
    return not (
        action.default is None or action.default is False or action.default == argparse.SUPPRESS
    )


def _plain(doc: str | None) -> str:
    """A module docstring without reST markup: ``x`` -> x, :class:`~a.B` -> B."""
    doc = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", doc or "")
    return doc.replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-dwp", description=__doc__, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"pyro-dwp {__version__}")
    sub = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, (module, help_) in JOBS.items():
        job = importlib.import_module(f"pyro_dwp.jobs.{module}")
        p = sub.add_parser(
            name,
            help=help_,
            description=_plain(job.__doc__),
            formatter_class=_HelpFormatter,
            allow_abbrev=False,  # a renamed option must not parse as a prefix of another
        )
        job.add_arguments(p)
        for action in p._actions:  # argparse prints no help line, so no default, without a text
            if action.help is None and _has_default(action):
                action.help = "(default: %(default)s)"
        p.set_defaults(run=job.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
        print(f"pyro-dwp {args.job}: error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        again = "the same command with --resume" if hasattr(args, "resume") else "the same command"
        print(f"pyro-dwp {args.job}: stopped: {e}; {again} goes on from it", file=sys.stderr)
        return e.exit_code
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Mushroom contextual bandit of Blundell et al. (2015), Section 5.3.

The experiment of ``pyro-dwp mushroom``, reusable from Python: :func:`add_arguments` declares
its settings, :func:`run` runs it from them and writes its outputs (described in the
command's help, :mod:`pyro_dwp.jobs.mushroom`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, get_args

import pyro
import torch
from tqdm.auto import tqdm

from pyro_dwp.data.mushroom import UCI_MUSHROOM_ROWS, find_mushroom_file, load_mushroom
from pyro_dwp.experiments.bandit_lockstep import LockstepBandit, agent_epsilon
from pyro_dwp.experiments.bandits import (
    GreedyAgent,
    KLSize,
    MushroomBandit,
    RegretLog,
    ThompsonBBBAgent,
    agent_seed,
)
from pyro_dwp.experiments.regression import sigma_from_neg_log
from pyro_dwp.infer import Checkpoint, CheckpointError, non_finite_paths
from pyro_dwp.infer.kl import KLScheme
from pyro_dwp.io import (
    add_device_argument,
    add_out_argument,
    add_resume_argument,
    announce_fresh_start,
    check_device,
    parse_seed,
    prepare_out,
    progress_bar,
    write_json,
)

__all__ = [
    "PAPER_REGRET",
    "PRESETS",
    "add_arguments",
    "apply_preset",
    "parse_agent",
    "preset_value",
    "run",
]

_PAPER = {"steps": 50_000, "num_batches": 64}
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"steps": 2000, "num_batches": 4},
    "paper": _PAPER,
    "tuned": {
        **_PAPER,
        "engine": "lockstep",
        "kl_size": "capacity",
        "lr_final_factor": 0.01,
        "lr_decay_steps": 3000,
        "scale_lr_factor": 0.1,
    },
}
"""Option values of each preset: ``quick`` for a CPU, ``paper`` the paper's protocol, ``tuned`` the
paper's protocol with the lowest BBB regret measured (``benchmarks/results/mushroom.md``: 4,851
at 50,000 steps, seeds 0-3): the KL weighted as for a full buffer from the first step, every
agent's rate decayed to 1e-5 over 3,000 steps, BBB's scales at a tenth of that rate."""
_OPTION_DEFAULTS: dict[str, Any] = {
    "engine": "compiled",
    "kl_size": "buffer",
    "lr_final_factor": 1.0,
    "lr_decay_steps": 10_000,
    "scale_lr_factor": 1.0,
}
"""The values of the options a preset may set, where the preset does not."""
PAPER_REGRET = {"bbb": 5_700, "greedy": 8_000, "eps0.01": 18_000, "eps0.05": 38_000}
"""Cumulative regret at 50,000 steps read off the paper's Figure 5 (approximate)."""
_RECORD_EVERY = 100
# Options that do not change the result (where it goes, how it is shown, how far it goes).
_NOT_SETTINGS = (
    "out",
    "resume",
    "no_progress",
    "device",
    "engine",
    "threads",
    "run",
    "job",
    "steps",
    "data_dir",
    "max_minutes",
)


def parse_agent(name: str) -> str:
    """Check an agent name: ``bbb``, ``greedy`` or ``eps<E>`` with ``0 < E <= 1``.

    Raises:
        argparse.ArgumentTypeError: For another name.
    """
    try:
        agent_epsilon(name)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown agent {name!r}: choose bbb, greedy or eps<E> with 0 < E <= 1 (e.g. eps0.05)"
        ) from None
    return name


_VARIANT_KEYS = (
    "lr", "lr-final-factor", "lr-decay-steps", "pi", "neg-log-sigma1", "neg-log-sigma2",
    "init-scale", "noise", "scale-lr-factor", "kl-size",
)  # fmt: skip


_LATER_OPTIONS: dict[str, Any] = {
    "kl_scheme": "uniform",
    "bbb_variant": None,
    **{k: v for k, v in _OPTION_DEFAULTS.items() if k != "engine"},
}
"""Options added after the job's first runs, with their defaults: a setting only when not at
the default, so that runs from before an option resume under it."""


def bbb_variants(specs: list[list[str]]) -> dict[str, dict[str, float | str]]:
    """``--bbb-variant`` specs (``[LABEL, KEY=VALUE, ...]`` each) as the lockstep engine's
    ``overrides``: ``{"bbb:LABEL": {setting: value}}`` (``neg-log-sigma<i>=v`` gives
    ``sigma<i> = exp(-v)``; ``kl-size`` takes ``buffer``, ``seen`` or ``capacity``, the others
    numbers).

    Raises:
        ValueError: For a label used twice or with ``=``, an unknown key, a key given twice or a
            bad value, naming the option.
    """
    out: dict[str, dict[str, float | str]] = {}
    for label, *pairs in specs:
        name = f"bbb:{label}"
        if "=" in label or name in out:
            raise ValueError(
                f"--bbb-variant: each needs a label of its own first (no '='), got {label!r}"
            )
        settings: dict[str, float | str] = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            if not sep or key not in _VARIANT_KEYS:
                raise ValueError(
                    f"--bbb-variant {label}: {pair!r} is not KEY=VALUE with KEY one of "
                    f"{', '.join(_VARIANT_KEYS)}"
                )
            setting = key.replace("neg-log-", "").replace("-", "_")
            if setting in settings:
                raise ValueError(f"--bbb-variant {label}: {key} is given twice")
            settings[setting] = _variant_value(label, key, text)
        out[name] = settings
    return out


def _variant_value(label: str, key: str, text: str) -> float | str:
    """The value of ``--bbb-variant LABEL KEY=TEXT`` as the engine takes it."""
    if key == "kl-size":
        if text not in get_args(KLSize):
            raise ValueError(
                f"--bbb-variant {label}: kl-size must be one of {', '.join(get_args(KLSize))}, "
                f"got {text!r}"
            )
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--bbb-variant {label}: {key} must be a number, got {text!r}") from None
    return sigma_from_neg_log(value, key) if "sigma" in key else value


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out_argument(p, "explicit")
    p.add_argument("--data-dir", type=Path, help="folder with mushroom/ (else PYRO_DWP_DATA)")
    p.add_argument(
        "--agents",
        nargs="+",
        type=parse_agent,
        default=["bbb", "greedy", "eps0.01", "eps0.05"],
        help="bbb (Thompson sampling), greedy, eps<E> (epsilon-greedy)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="; ".join(f"{name}: {_as_flags(values)}" for name, values in PRESETS.items())
        + " (quick for a CPU, paper the paper's protocol for a GPU, tuned the lowest BBB regret "
        "measured) (default: quick)",
    )
    o = p.add_argument_group("overrides of the preset (default: the preset's value)")
    o.add_argument("--steps", type=int, help="bandit steps (quick 2,000; paper 50,000)")
    o.add_argument("--num-batches", type=int, help="minibatches per step (quick 4; paper 64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--buffer-size", type=int, default=4096, help="interactions kept")
    p.add_argument("--hidden", type=int, nargs="+", default=[100, 100], help="hidden layer sizes")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (every agent)")
    p.add_argument(
        "--lr-final-factor",
        type=float,
        help="lockstep: every agent's rate decays geometrically to this factor of --lr over the "
        "first --lr-decay-steps steps, then stays (default: the preset's, else 1, a constant "
        "rate)",
    )
    p.add_argument(
        "--lr-decay-steps",
        type=int,
        help="steps of the --lr-final-factor decay (default: the preset's, else 10,000)",
    )
    p.add_argument(
        "--scale-lr-factor",
        type=float,
        help="BBB: the posterior scales (rho) learn at this factor times --lr, the means at --lr "
        "(Adam moves each parameter by about its rate per update, whatever its gradient: a "
        "factor below 1 slows the scales' drift towards the prior) (default: the preset's, "
        "else 1)",
    )
    p.add_argument("--particles", type=int, default=2, help="BBB weight samples per SVI step")
    p.add_argument("--pi", type=float, default=0.5, help="scale-mixture weight pi")
    p.add_argument("--neg-log-sigma1", type=float, default=0.0, help="-log sigma1")
    p.add_argument("--neg-log-sigma2", type=float, default=6.0, help="-log sigma2")
    p.add_argument("--init-scale", type=float, default=0.01, help="initial posterior sigma")
    p.add_argument("--noise", type=float, default=1.0, help="BBB likelihood noise std (fixed)")
    p.add_argument(
        "--kl-size",
        choices=get_args(KLSize),
        help="BBB: the dataset size N that weights the KL: the interactions in the buffer (at "
        "most --buffer-size), every interaction seen so far (the buffer standing for all of "
        "them), or --buffer-size from the first step on (a step's minibatches standing for a "
        "full buffer however few interactions it holds yet) (default: the preset's, else "
        "buffer)",
    )
    p.add_argument(
        "--kl-scheme",
        choices=get_args(KLScheme),
        default="uniform",
        help="BBB: how the KL term is spread over a step's --num-batches minibatches, which "
        "stand for one pass over the buffer: uniform (each weighted 1 / K) or blundell (the "
        "k-th by 2^-k / (1 - 2^-K), Blundell et al.'s Sec. 3.4; most of it on the first few) "
        "(default: uniform)",
    )
    p.add_argument(
        "--learn-noise",
        action="store_true",
        help="learn the BBB noise std as a point estimate instead (starts at --noise)",
    )
    p.add_argument(
        "--bbb-variant",
        nargs="+",
        action="append",
        metavar="LABEL [KEY=VALUE ...]",
        help="with --engine lockstep: one more BBB agent, bbb:LABEL, with settings of its own "
        f"(keys {', '.join(_VARIANT_KEYS)}; the others as the options say); repeat it to screen "
        "several side by side in one batched network, e.g. --bbb-variant narrow "
        "neg-log-sigma1=3 --bbb-variant slow lr=1e-4",
    )
    p.add_argument("--seed", type=parse_seed, default=0, help="seed of the stream and the agents")
    p.add_argument(
        "--seeds",
        type=parse_seed,
        nargs="+",
        help="several seeds in one run, each agent on each seed's stream (more than one needs "
        "--engine lockstep; replaces --seed); regret.json then holds the mean over the seeds "
        "and each seed's regrets",
    )
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    add_device_argument(p)
    p.add_argument(
        "--engine",
        choices=["pyro", "compiled", "lockstep"],
        help="pyro: one agent object each, the BBB agent's SVI steps by Pyro's SVI; compiled: "
        "the same steps compiled to plain PyTorch (pyro_dwp.infer.compiled; equal to float "
        "rounding, and a third faster on a CPU; a run resumes under either of the two); "
        "lockstep: every agent and seed as one batched network, a step captured as a CUDA graph "
        "on --device cuda (pyro_dwp.experiments.bandit_lockstep: the same losses and updates, "
        "its own random draws; its checkpoints resume under lockstep only) (default: the "
        "preset's, else compiled)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads during the run (the nets are small: one thread is the fastest, "
        "and several collapse on a loaded machine)",
    )
    add_resume_argument(p, "--steps")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop at the first checkpoint after this many minutes of this invocation; the "
        "outputs then show the steps done, marked PARTIAL, and --resume continues the run",
    )
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the agents side by side; write and return the regrets and the settings."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    # stop at the first checkpoint past this (--max-minutes)
    deadline = None if args.max_minutes is None else t0 + 60 * args.max_minutes
    check_device(args.device)
    apply_preset(args)
    _check_args(args)
    out: Path = prepare_out(args.out, "mushroom")
    # the seeds as settings: --seed alone as before (so older runs resume), else --seeds
    dropped = ("seeds",) if args.seeds is None else ("seed",)
    dropped += tuple(k for k, v in _LATER_OPTIONS.items() if getattr(args, k) == v)
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_SETTINGS + dropped}
    contexts, edible = load_mushroom(args.data_dir)
    if len(edible) != UCI_MUSHROOM_ROWS:  # a cut file parses: only its length tells
        print(
            f"note: {find_mushroom_file(args.data_dir)} holds {len(edible):,} rows, the UCI file "
            f"{UCI_MUSHROOM_ROWS:,}: a cut or another file, so the regret is not comparable "
            "with the paper's",
            file=sys.stderr,
        )
    device = torch.device(args.device)
    checkpoint = Checkpoint(
        out / "checkpoint.pt",
        device=device,
        remedy="run without --resume to start afresh, or use another --out",
    )
    announce_fresh_start(args.resume, checkpoint.path)
    # the settings as options, so that a refused checkpoint names them: "--lr: 0.001 -> 0.01"
    fingerprint = {f"--{k.replace('_', '-')}": v for k, v in settings.items()}
    if args.engine == "lockstep":
        result = _run_lockstep(args, contexts, edible, checkpoint, fingerprint, deadline)
    else:
        result = _run_agents(args, contexts, edible, checkpoint, fingerprint, deadline)
    partial = {"target_steps": args.steps, "partial": result["steps"] < args.steps}
    result = {**result, **partial, "data_rows": len(edible)}
    result |= {"seconds": time.perf_counter() - t0, "settings": settings}
    write_json(out / "regret.json", result)
    (out / "regret.md").write_text(_table(result, args.preset))
    _plot(out / "regret.png", result)
    return {k: v for k, v in result.items() if "curves" not in k}


def _run_agents(
    args: argparse.Namespace,
    contexts: torch.Tensor,
    edible: torch.Tensor,
    checkpoint: Checkpoint,
    fingerprint: dict[str, Any],
    deadline: float | None,
) -> dict[str, Any]:
    """The pyro and compiled engines: one agent object each, on one seed; the regrets after
    ``--steps``, or at the first checkpoint past ``deadline``."""
    seed = args.seed if args.seeds is None else args.seeds[0]  # one seed here (_check_args)
    device = torch.device(args.device)
    env = MushroomBandit(contexts.to(device), edible.to(device), seed=seed)
    pyro.set_rng_seed(seed)
    agents = {name: _make_agent(name, seed, args, env.context_dim, device) for name in args.agents}
    logs = {name: RegretLog(_RECORD_EVERY) for name in args.agents}
    start = done = 0
    if args.resume and checkpoint.exists():
        start = done = _restore(checkpoint, fingerprint, env, agents, logs)
    bar = _steps(args, start, checkpoint)
    for step in bar:
        context = env.observe()
        oracle = env.oracle_reward()
        for name, agent in agents.items():
            action = agent.act(context)
            received = env.reward(action)
            logs[name].add(oracle, received)
            agent.learn(context, action, received)
        done = step + 1
        if done % args.checkpoint_every == 0 or done == args.steps:
            bar.set_postfix({n: f"{log.total:.0f}" for n, log in logs.items()}, refresh=False)
            states = {n: a.state_dict() for n, a in agents.items()}
            _refuse_non_finite(states, done, checkpoint)
            checkpoint.save(
                done,
                fingerprint,
                env=env.state_dict(),
                agents=states,
                regret={n: log.state_dict() for n, log in logs.items()},
            )
            if _past(deadline):
                break
    return {
        "steps": done,
        "seed": seed,
        "regret": {n: log.total for n, log in logs.items()},
        "every": _RECORD_EVERY,
        "curves": {n: log.curve for n, log in logs.items()},
    }


def _run_lockstep(
    args: argparse.Namespace,
    contexts: torch.Tensor,
    edible: torch.Tensor,
    checkpoint: Checkpoint,
    fingerprint: dict[str, Any],
    deadline: float | None,
) -> dict[str, Any]:
    """The lockstep engine: every agent on every seed as one batched network; the regrets (the
    mean over the seeds, and each seed's) after ``--steps`` or at the first checkpoint past
    ``deadline``, and ``step_seconds``, the seconds spent stepping over every invocation of the
    run (a resumed run adds to its checkpoint's)."""
    seeds = args.seeds if args.seeds is not None else [args.seed]
    variants = bbb_variants(args.bbb_variant or [])
    runner = LockstepBandit(
        contexts,
        edible,
        agents=[*args.agents, *variants],
        overrides=variants,
        seeds=seeds,
        hidden=tuple(args.hidden),
        buffer_size=args.buffer_size,
        batch_size=args.batch_size,
        num_batches=args.num_batches,
        num_particles=args.particles,
        lr=args.lr,
        lr_final_factor=args.lr_final_factor,
        lr_decay_steps=args.lr_decay_steps,
        scale_lr_factor=args.scale_lr_factor,
        pi=args.pi,
        sigma1=sigma_from_neg_log(args.neg_log_sigma1, "--neg-log-sigma1"),
        sigma2=sigma_from_neg_log(args.neg_log_sigma2, "--neg-log-sigma2"),
        init_scale=args.init_scale,
        noise=args.noise,
        kl_size=args.kl_size,
        kl_scheme=args.kl_scheme,
        learn_noise=args.learn_noise,
        device=args.device,
        stream_chunk=_RECORD_EVERY,
        rng_seed=seeds[0],
    )
    # curves[seed][agent]: the cumulative regret every _RECORD_EVERY steps
    curves: dict[str, dict[str, list[float]]] = {
        str(s): {a: [] for a in runner.settings} for s in seeds
    }
    start = 0
    if args.resume and checkpoint.exists():
        state = checkpoint.load(fingerprint)
        if state.get("engine") != "lockstep":
            raise CheckpointError(
                f"checkpoint {checkpoint.path} was written by --engine pyro or compiled, whose "
                f"agents lockstep cannot take over: resume it under one of those, or "
                f"{checkpoint.remedy}"
            )
        runner.load_state_dict(state["runner"])
        curves, start = state["curves"], state["epoch"]
        before = state.get("step_seconds", 0.0)
    else:
        before = 0.0  # seconds spent stepping by earlier invocations of this run
    totals: dict[str, dict[str, float]] = _member_totals(runner)
    bar = _steps(args, start, checkpoint)
    t0 = time.perf_counter()
    for step in bar:
        runner.step()
        done = step + 1
        if done % _RECORD_EVERY == 0:
            totals = _member_totals(runner)  # the only host sync
            for seed, by_agent in totals.items():
                for agent, total in by_agent.items():
                    curves[seed][agent].append(total)
        if done % args.checkpoint_every == 0 or done == args.steps:
            totals = _member_totals(runner)
            mean = _mean_over_seeds(totals)
            bar.set_postfix({n: f"{r:.0f}" for n, r in mean.items()}, refresh=False)
            state = runner.state_dict()
            _refuse_non_finite(state, done, checkpoint)
            checkpoint.save(
                done,
                fingerprint,
                engine="lockstep",
                runner=state,
                curves=curves,
                step_seconds=before + time.perf_counter() - t0,
            )
            if _past(deadline):
                break
    mean_curves = {
        a: [sum(c[a][i] for c in curves.values()) / len(seeds) for i in range(len(c0))]
        for a, c0 in next(iter(curves.values())).items()
    }
    result: dict[str, Any] = {"steps": runner.steps}
    if args.seeds is None:
        result["seed"] = args.seed
    result |= {
        "seeds": seeds,
        "regret": _mean_over_seeds(totals),
        "per_seed": totals,
        "every": _RECORD_EVERY,
        "curves": mean_curves,
        "per_seed_curves": curves,
        "step_seconds": before + time.perf_counter() - t0,
    }
    return result


def _refuse_non_finite(state: Any, step: int, checkpoint: Checkpoint) -> None:
    """Raise ``FloatingPointError`` naming the first NaN or infinite tensor in the agents'
    ``state`` before it reaches the checkpoint, whose last good version is kept."""
    bad = non_finite_paths(state)
    if bad:
        kept = (
            f"the last good checkpoint, {checkpoint.path}, is kept"
            if checkpoint.path.exists()
            else "no checkpoint was written"
        )
        raise FloatingPointError(
            f"{bad[0]} is NaN or infinite at step {step} (an update overflowed: a learning "
            f"rate too large?); {kept}"
        )


def _past(deadline: float | None) -> bool:
    """Whether ``time.perf_counter()`` is past ``deadline`` (never for ``None``)."""
    return deadline is not None and time.perf_counter() > deadline


def _member_totals(runner: LockstepBandit) -> dict[str, dict[str, float]]:
    """``{seed: {agent: cumulative regret}}`` of a lockstep run (reads the device)."""
    regret = runner.regret().tolist()
    totals: dict[str, dict[str, float]] = {str(s): {} for s in runner.seeds}
    for (agent, seed), total in zip(runner.members, regret, strict=True):
        totals[str(seed)][agent] = total
    return totals


def _mean_over_seeds(totals: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{agent: mean over the seeds}`` of ``{seed: {agent: value}}``."""
    agents = next(iter(totals.values()))
    return {a: sum(t[a] for t in totals.values()) / len(totals) for a in agents}


def _steps(args: argparse.Namespace, start: int, checkpoint: Checkpoint) -> Any:
    """The steps ``start .. --steps - 1`` under a progress bar, saying where a resumed run
    resumed (``start > 0``), and that nothing runs if it is past ``--steps``."""
    if start > args.steps:
        print(
            f"--resume: the run already has {start} steps, more than --steps {args.steps}: "
            "nothing is run, and the results cover all of them",
            file=sys.stderr,
        )
    if start and not args.no_progress:
        tqdm.write(
            f"resumed at step {start} of {args.steps} from {checkpoint.path}", file=sys.stderr
        )
    return progress_bar(
        range(start, args.steps),
        desc="steps",
        disable=args.no_progress,
        initial=start,
        total=args.steps,
    )


def _as_flags(values: dict[str, Any]) -> str:
    """``{"num_batches": 64}`` as ``--num-batches 64``."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())


def preset_value(preset: str, flag: str) -> Any:
    """The value of option ``flag`` (``"engine"``, ``"steps"``, ...) under ``preset``: the
    preset's (:data:`PRESETS`), else the option's own default."""
    return PRESETS[preset].get(flag, _OPTION_DEFAULTS.get(flag))


def apply_preset(args: argparse.Namespace) -> None:
    """Fill the options left unset (``None``) with their values under ``args.preset``, in
    place."""
    for flag in ("steps", "num_batches", *_OPTION_DEFAULTS):
        if getattr(args, flag) is None:
            setattr(args, flag, preset_value(args.preset, flag))


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("steps", "num_batches", "batch_size", "buffer_size", "particles"):
        value = getattr(args, flag)
        if value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if len(set(args.agents)) != len(args.agents):
        raise ValueError(f"--agents names an agent twice: {args.agents}")
    variants = [a for a in args.agents if a.startswith("bbb:")]
    if (args.bbb_variant is not None or variants) and args.engine != "lockstep":
        flag = "--bbb-variant" if args.bbb_variant is not None else f"--agents {variants[0]}"
        raise ValueError(f"{flag} needs --engine lockstep, got --engine {args.engine}")
    if args.bbb_variant is not None:
        bbb_variants(args.bbb_variant)  # checks the specs
    if args.seeds is not None:
        if len(set(args.seeds)) != len(args.seeds):
            raise ValueError(f"--seeds names a seed twice: {args.seeds}")
        if len(args.seeds) > 1 and args.engine != "lockstep":
            raise ValueError(
                f"--seeds with several seeds needs --engine lockstep, got --engine {args.engine}: "
                "run one seed at a time (--seed) under it"
            )
    if args.lr_final_factor != 1 and args.engine != "lockstep":
        from_preset = PRESETS[args.preset].get("lr_final_factor") == args.lr_final_factor
        origin = f" (--preset {args.preset})" if from_preset else ""
        raise ValueError(
            f"--lr-final-factor {args.lr_final_factor}{origin} needs --engine lockstep, got "
            f"--engine {args.engine}"
        )
    if args.lr_decay_steps < 1:
        raise ValueError(f"--lr-decay-steps must be >= 1, got {args.lr_decay_steps}")
    for flag in ("lr", "init_scale", "noise", "scale_lr_factor", "lr_final_factor"):
        if not getattr(args, flag) > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if not 0 < args.pi < 1:
        raise ValueError(f"--pi must be in (0, 1), got {args.pi}")


def _make_agent(
    name: str, seed: int, args: argparse.Namespace, context_dim: int, device: torch.device
) -> GreedyAgent | ThompsonBBBAgent:
    """The agent ``name`` on the run of ``seed``, its own seed derived from both
    (:func:`~pyro_dwp.experiments.bandits.agent_seed`)."""
    common: dict[str, Any] = {
        "seed": agent_seed(name, seed),
        "hidden": tuple(args.hidden),
        "buffer_size": args.buffer_size,
        "batch_size": args.batch_size,
        "num_batches": args.num_batches,
        "lr": args.lr,
        "device": device,
    }
    if name == "bbb":
        return ThompsonBBBAgent(
            context_dim,
            num_particles=args.particles,
            pi=args.pi,
            sigma1=sigma_from_neg_log(args.neg_log_sigma1, "--neg-log-sigma1"),
            sigma2=sigma_from_neg_log(args.neg_log_sigma2, "--neg-log-sigma2"),
            init_scale=args.init_scale,
            scale_lr_factor=args.scale_lr_factor,
            noise=None if args.learn_noise else args.noise,
            init_noise=args.noise,
            kl_size=args.kl_size,
            kl_scheme=args.kl_scheme,
            engine=args.engine,
            **common,
        )
    epsilon = 0.0 if name == "greedy" else float(name[3:])
    return GreedyAgent(context_dim, epsilon=epsilon, **common)


def _restore(
    checkpoint: Checkpoint,
    fingerprint: dict[str, Any],
    env: MushroomBandit,
    agents: dict[str, GreedyAgent | ThompsonBBBAgent],
    logs: dict[str, RegretLog],
) -> int:
    """Load the checkpoint into the run (the RNGs last, after the agents' set-up draws); return
    its step.

    Raises:
        CheckpointError: If the checkpoint is unreadable, of an older format or was written with
            other settings (naming each, old -> new).
    """
    state = checkpoint.load(fingerprint)
    if state.get("engine") == "lockstep":
        raise CheckpointError(
            f"checkpoint {checkpoint.path} was written by --engine lockstep: resume it under "
            f"--engine lockstep, or {checkpoint.remedy}"
        )
    env.load_state_dict(state["env"])
    for name, agent in agents.items():
        agent.load_state_dict(state["agents"][name])
        logs[name].load_state_dict(state["regret"][name])
    checkpoint.restore_rng(state)
    return state["epoch"]


def _table(result: dict[str, Any], preset: str) -> str:
    """The markdown table of the cumulative regrets at the last step."""
    steps = result["steps"]
    seeds = result.get("seeds", [result.get("seed")])
    several = len(seeds) > 1
    which = f"mean over seeds {', '.join(map(str, seeds))}" if several else f"seed {seeds[0]}"
    lines = [
        f"# Mushroom bandit: cumulative regret at {steps:,} steps ({which}, "
        f"{preset} preset{'' if steps == 50_000 else ', not the paper protocol'})",
        "",
        "| agent | cumulative regret | regret per 1,000 steps | "
        + ("per seed | " if several else "")
        + "paper at 50,000 steps (approx.) |",
        "|---|---:|---:|" + ("---|" if several else "") + "---:|",
    ]
    for name, total in result["regret"].items():
        paper = PAPER_REGRET.get(name)
        paper_text = f"{paper:,}" if paper is not None else "-"
        per_seed = ""
        if several:
            per_seed = ", ".join(f"{r[name]:,.0f}" for r in result["per_seed"].values()) + " | "
        lines.append(
            f"| {name} | {total:,.0f} | {1000 * total / steps:,.0f} | {per_seed}{paper_text} |"
        )
    lines += ["", "A uniformly random agent loses about 4,900 per 1,000 steps."]
    rows = result.get("data_rows", UCI_MUSHROOM_ROWS)  # runs before the record: the UCI file
    if rows != UCI_MUSHROOM_ROWS:
        lines += [
            "",
            f"NOT the UCI data: the mushroom file held {rows:,} rows, the UCI file "
            f"{UCI_MUSHROOM_ROWS:,}.",
        ]
    if result.get("partial"):
        lines += [
            "",
            f"PARTIAL: stopped by --max-minutes after {steps:,} of {result['target_steps']:,} "
            "steps; --resume continues the run.",
        ]
    return "\n".join(lines) + "\n"


def _plot(path: Path, result: dict[str, Any]) -> None:
    """Cumulative regret against steps, log y (values <= 0 are not drawn)."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it is

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    every = result["every"]
    for name, curve in result["curves"].items():
        ax.plot([every * (i + 1) for i in range(len(curve))], curve, label=name)
    ax.set_yscale("log", nonpositive="mask")
    ax.set(xlabel="step", ylabel="cumulative regret", title="Mushroom bandit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)

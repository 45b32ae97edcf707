"""One training step of the DWP ConvNet: deep weight prior vs standard-normal prior.

The same :class:`~pyro_dwp.models.DWPConvNet` (channels 32 / 128, batch 256 of MNIST-shaped
inputs, ``dataset_size`` 1,000), built by :func:`~pyro_dwp.experiments.dwp_bnn.make_dwp_cnn_model`
once with ``prior="dwp"`` (paper-sized kernel VAEs, randomly initialised: the cost does not depend
on their training; trainable reverse model) and once with ``prior="normal"``; each step is one
``svi.step`` under :class:`~pyro_dwp.infer.local_reparam.LocalReparameterizationMessenger`, as
``pyro-dwp dwp-classify`` takes it. Both live in one process (each with its own parameter store,
swapped outside the timed region) and are timed in interleaved rounds; the median over rounds
of the mean step time is reported. ``dwp_compiled`` and ``normal_compiled`` are the same two
models through the compiled engine (:func:`pyro_dwp.infer.compiled.compile_svi`, the step that
``fit(..., engine="compiled")`` runs); on CUDA ``dwp_graphed`` and ``normal_graphed`` replay
that step from a CUDA graph, as ``fit`` runs it there. A breakdown times the prior's networks
alone (forward and backward of the decoder on all codes and of the reverse model on all kernels
of each layer), each beside the same network with its point layers computed as the
convolutions they are (the reference they replace). The arithmetic of one step of each prior
is counted by ``torch.utils.flop_counter`` (matrix products and convolutions, forward and
backward; the same operations on every device): the ratio of the counts is what the time ratio
would be if the prior's networks ran at the ConvNet's rate of arithmetic.

Writes (merging devices) ``benchmarks/results/dwp_step_time.{json,md}``; ``--profile`` prints
the top operators of ``torch.profiler`` for the DWP step.

    python benchmarks/dwp_step_time.py --device cpu --threads 2
    python benchmarks/dwp_step_time.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pyro_dwp.experiments.dwp_bnn import make_dwp_cnn_model
from pyro_dwp.infer import JointAdam
from pyro_dwp.infer.compiled import compile_svi
from pyro_dwp.infer.graphs import WARMUP_STEPS, GraphedSVI
from pyro_dwp.infer.local_reparam import LocalReparameterizationMessenger
from pyro_dwp.models.dwp_cnn import DWPConvNet
from pyro_dwp.models.kernel_vae import KernelVAE, _FromPointConvTranspose2d, _ToPointConv2d

RESULTS = Path(__file__).parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_step(
    prior: str,
    device: torch.device,
    x: torch.Tensor,
    y: torch.Tensor,
    channels: tuple[int, int],
    engine: str = "pyro",
) -> tuple[Callable[[], object], dict]:
    """A closure running one SVI step (``engine``: Pyro's, the compiled engine's, or that step
    replayed from a CUDA graph, ``"graphed"``), and the parameter-store state it owns."""
    pyro.clear_param_store()
    vaes = {
        "conv1.weight": KernelVAE.for_kernel_size(7).to(device),
        "conv2.weight": KernelVAE.for_kernel_size(5).to(device),
    }
    model, guide, elbo = make_dwp_cnn_model(
        DWPConvNet(channels).to(device), prior, dataset_size=1000, vaes=vaes
    )
    model.to(device)
    guide.to(device)
    svi = SVI(model, guide, JointAdam(1e-3), elbo())  # fit's default optimiser
    lrt = LocalReparameterizationMessenger()

    def step() -> object:
        with lrt:
            return svi.step(x, y)

    step()  # set up the guide and the optimiser
    if engine != "pyro":
        program = compile_svi(model, guide, x, y, optim=svi.optim, elbo=elbo, handlers=[lrt])
        step = partial(program.step, x, y)
    if engine == "graphed":
        graphed = GraphedSVI(program)
        for _ in range(WARMUP_STEPS + 1):  # the eager warm-up, then the capture
            graphed.step(x, y)
        step = partial(graphed.step, x, y)
    return step, pyro.get_param_store().get_state()


def _count_flops(step: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``step`` (matrix products and convolutions,
    forward and backward, as ``torch.utils.flop_counter`` counts them)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _as_convolutions(vae: KernelVAE) -> KernelVAE:
    """A copy of ``vae`` whose point layers (the linear maps from and to a single position,
    :class:`~pyro_dwp.models.kernel_vae.KernelVAE`'s encoder end and decoder start) are plain
    (transposed) convolutions again, with the same parameters: the reference they replace."""
    plain = copy.deepcopy(vae)
    for module in plain.modules():
        for name, child in module.named_children():
            if isinstance(child, _ToPointConv2d | _FromPointConvTranspose2d):
                base = nn.Conv2d if isinstance(child, nn.Conv2d) else nn.ConvTranspose2d
                conv = base(child.in_channels, child.out_channels, child.kernel_size)
                conv.load_state_dict(child.state_dict())
                setattr(module, name, conv.to(child.weight.device))
    return plain


def _time_networks(
    device: torch.device, channels: tuple[int, int], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Forward + backward of each prior network on all of a layer's codes / kernels (ms), as
    the package computes them and, interleaved with it, with the point layers as convolutions
    (:func:`_as_convolutions`)."""
    out: tuple[dict[str, float], dict[str, float]] = ({}, {})
    for layer, k, n in (("conv1", 7, channels[0]), ("conv2", 5, channels[0] * channels[1])):
        vae = KernelVAE.for_kernel_size(k).to(device)
        vaes = (vae, _as_convolutions(vae))
        z = torch.randn(n, vae.z_dim, device=device, requires_grad=True)
        w = torch.randn(n, k, k, device=device, requires_grad=True)
        for name, part, inp in (("decoder", "decoder", z), ("reverse model", "encoder", w)):
            nets = [getattr(v, part) for v in vaes]
            times: tuple[list[float], list[float]] = ([], [])
            for _ in range(repeats + 1):
                for net, record in zip(nets, times, strict=True):
                    _sync(device)
                    t0 = time.perf_counter()
                    loc, scale = net(inp)
                    (loc.sum() + scale.sum()).backward()
                    _sync(device)
                    record.append(time.perf_counter() - t0)
            for result, record in zip(out, times, strict=True):
                result[f"{layer} {name} ({n} kernels)"] = 1e3 * statistics.median(record[1:])
    return out


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    channels = tuple(args.channels)
    x = torch.randn(args.batch, 1, 28, 28, device=device).clamp_min(0)
    y = torch.randint(0, 10, (args.batch,), device=device)
    steps, states = {}, {}
    engines = ("pyro", "compiled", *(("graphed",) if device.type == "cuda" else ()))
    for prior in ("dwp", "normal"):
        for engine in engines:
            name = prior if engine == "pyro" else f"{prior}_{engine}"
            steps[name], states[name] = _make_step(prior, device, x, y, channels, engine)
    store = pyro.get_param_store()
    times: dict[str, list[float]] = {p: [] for p in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for prior in order:
            store.set_state(states[prior])
            steps[prior]()  # warm-up after the swap
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[prior]()
            _sync(device)
            times[prior].append((time.perf_counter() - t0) / args.steps)
    median = {p: 1e3 * statistics.median(t) for p, t in times.items()}
    flops = {}
    for prior in ("dwp", "normal"):
        store.set_state(states[prior])
        flops[prior] = _count_flops(steps[prior])
    if args.profile:
        store.set_state(states["dwp"])
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                steps["dwp"]()
            _sync(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=15))
    networks, networks_as_convolutions = _time_networks(device, channels, args.steps)
    label = f"{device.type}" + (f" ({args.threads} threads)" if device.type == "cpu" else "")
    result = {
        "device": label,
        "hardware": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "batch": args.batch,
        "channels": list(channels),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "step_ms": median,
        "ratio_dwp_to_normal": median["dwp"] / median["normal"],
        "ratio_dwp_to_normal_compiled": median["dwp_compiled"] / median["normal_compiled"],
        **(
            {"ratio_dwp_to_normal_graphed": median["dwp_graphed"] / median["normal_graphed"]}
            if "dwp_graphed" in median
            else {}
        ),
        "prior_networks_ms": networks,
        "prior_networks_as_convolutions_ms": networks_as_convolutions,
        "gflop_per_step": {p: f / 1e9 for p, f in flops.items()},
        "flop_ratio_dwp_to_normal": flops["dwp"] / flops["normal"],
    }
    _write(result, Path(args.results_dir))
    print(json.dumps(result, indent=2))
    return result


def _write(result: dict, results: Path) -> None:
    """Merge ``result`` (one device) into ``results/dwp_step_time.{json,md}``."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / "dwp_step_time.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[result["device"].split(" ")[0]] = result
    path.write_text(json.dumps(runs, indent=2) + "\n")
    lines = [
        "# DWP ConvNet: one training step, deep weight prior vs standard-normal prior",
        "",
        "`python benchmarks/dwp_step_time.py` (median over interleaved rounds; batch, channels "
        "and hardware per row). Target: DWP step <= 1.3x normal step.",
        "",
        "| device | date | hardware | batch | channels | DWP step (ms) | normal step (ms) | "
        "ratio | compiled: DWP (ms) | normal (ms) | ratio | CUDA graph: DWP (ms) | normal (ms) | "
        "ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs.values():
        ms = r["step_ms"]
        compiled = (
            f"{ms['dwp_compiled']:.1f} | {ms['normal_compiled']:.1f} | "
            f"{r['ratio_dwp_to_normal_compiled']:.2f}"
            if "dwp_compiled" in ms
            else "not measured | | "
        )
        graphed = (
            f"{ms['dwp_graphed']:.1f} | {ms['normal_graphed']:.1f} | "
            f"{r['ratio_dwp_to_normal_graphed']:.2f}"
            if "dwp_graphed" in ms
            else ("CUDA only" if r["device"].startswith("cpu") else "not measured") + " | | "
        )
        lines.append(
            f"| {r['device']} | {r['date']} | {r['hardware']} | {r['batch']} | {r['channels']} | "
            f"{ms['dwp']:.1f} | {ms['normal']:.1f} | {r['ratio_dwp_to_normal']:.2f} | {compiled} "
            f"| {graphed} |"
        )
    lines += ["", "Prior networks alone, forward + backward (ms):", ""]
    lines += ["| device | " + " | ".join(next(iter(runs.values()))["prior_networks_ms"]) + " |"]
    lines += ["|---|" + "---|" * len(next(iter(runs.values()))["prior_networks_ms"])]
    for r in runs.values():
        cells = " | ".join(f"{v:.1f}" for v in r["prior_networks_ms"].values())
        lines.append(f"| {r['device']} | {cells} |")
    compared = [r for r in runs.values() if "prior_networks_as_convolutions_ms" in r]
    if compared:
        lines += [
            "",
            "The same networks with their point layers as convolutions (the encoder's last layer "
            "and the decoder's first, linear maps from and to one position, which the package "
            "computes as matrix products), timed interleaved with the rows above (ms):",
            "",
            "| device | " + " | ".join(compared[0]["prior_networks_as_convolutions_ms"]) + " |",
            "|---|" + "---|" * len(compared[0]["prior_networks_as_convolutions_ms"]),
        ]
        for r in compared:
            cells = " | ".join(f"{v:.1f}" for v in r["prior_networks_as_convolutions_ms"].values())
            lines.append(f"| {r['device']} | {cells} |")
    counted = [r for r in runs.values() if "gflop_per_step" in r]
    if counted:
        lines += [
            "",
            "Arithmetic of one step (GFLOP, `torch.utils.flop_counter`: matrix products and "
            "convolutions, forward and backward; the same operations on every device):",
            "",
            "| batch | channels | DWP | normal | ratio |",
            "|---|---|---|---|---|",
        ]
        rows = {  # one row per setting: the count does not depend on the device
            (r["batch"], str(r["channels"])): r["gflop_per_step"] for r in counted
        }
        for (batch, channels), g in rows.items():
            lines.append(
                f"| {batch} | {channels} | {g['dwp']:.2f} | {g['normal']:.2f} | "
                f"{g['dwp'] / g['normal']:.2f} |"
            )
        g = counted[-1]["gflop_per_step"]
        lines += [
            "",
            f"At one rate of arithmetic a DWP step takes {g['dwp'] / g['normal']:.2f}x the normal "
            f"step. Within 1.3x, the prior's extra {g['dwp'] - g['normal']:.1f} GFLOP (the kernel "
            "VAE's networks) would have to run "
            f"{(g['dwp'] - g['normal']) / (0.3 * g['normal']):.1f}x faster per FLOP than the "
            "ConvNet's own.",
        ]
    (results / "dwp_step_time.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and contender")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--channels", type=int, nargs=2, default=[32, 128])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--results-dir", default=str(RESULTS))
    main(parser.parse_args())

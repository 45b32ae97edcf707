"""One training step of a 784-H-H-10 MLP (batch 128), ours beside a deterministic step and peers.

Contenders, built in one process and timed in interleaved rounds (median of rounds):

- ``deterministic``: plain PyTorch MLP, cross-entropy, Adam (the baseline of every ratio).
- ``deterministic_fused_adam``: the same with ``Adam(fused=True)``, which our step uses, to show
  how much of our ratio the optimiser alone explains.
- ``pyro_dwp_bbb``: ``BNN`` + ``ScaleMixtureNormal`` prior + ``BBBNormal`` guide, one SVI step of
  ``Trace_ELBO`` as :func:`pyro_dwp.infer.fit` takes it (KL weighting handler, ``JointAdam``,
  Pyro's validation off after the first step).
- ``pyro_dwp_bbb_compiled``: the same model, guide and optimiser through the compiled engine,
  the step that ``fit(..., engine="compiled")`` runs after its first
  (:func:`pyro_dwp.infer.compiled.compile_svi`: the same loss as plain PyTorch).
- ``pyro_dwp_bbb_graphed`` (CUDA): that compiled step replayed from a CUDA graph, as ``fit``
  runs it on a GPU (:class:`pyro_dwp.infer.graphs.GraphedSVI`: one launch, no host sync).
- ``pyro_dwp_bbb_inductor``: the compiled step with its passes through ``torch.compile``
  (``fit(..., torch_compile=True)``; compiled before the timing).
- ``bbb_floor``: not a BBB step but a lower bound of one that draws its noise as Pyro's does
  (one normal per weight from torch's generator, as the compiled step draws the same numbers):
  the draws, ``w = mu + s * eps``, the network's cross-entropy and its backward, and one fused
  Adam update of ``mu`` and ``s``; no prior or entropy terms, no softplus. Whatever a faster
  step leaves out, it still does this work.
- ``pyro_autonormal``: Pyro's own ``PyroSample`` MLP + ``AutoNormal`` (Gaussian prior).
- ``blitz`` / ``bayesian_torch``: the peer libraries, where installed
  (``pip install --no-deps blitz-bayesian-pytorch bayesian-torch``).

Writes ``benchmarks/results/step_time_<device>.{json,md}``. ``--profile`` prints the top items of
``torch.profiler`` for our step.

    python benchmarks/step_time.py --device cpu --threads 2
    python benchmarks/step_time.py --device cuda
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_dwp import BNN, Categorical
from pyro_dwp.distributions import ScaleMixtureNormal
from pyro_dwp.guides import BBBNormal
from pyro_dwp.infer import JointAdam, KLScaleMessenger
from pyro_dwp.infer.compiled import CompiledSVI, compile_svi
from pyro_dwp.infer.graphs import WARMUP_STEPS, GraphedSVI
from pyro_dwp.models import mlp

N = 60_000  # dataset size that scales the data term
Step = Callable[[], None]


def deterministic(h: int, x: torch.Tensor, y: torch.Tensor, fused: bool = False) -> Step:
    net = mlp(784, [h, h], 10).to(x.device)
    opt = torch.optim.Adam(net.parameters(), 1e-3, fused=fused)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def bbb_floor(h: int, x: torch.Tensor, y: torch.Tensor) -> Step:
    net = mlp(784, [h, h], 10).to(x.device)
    names = [n for n, _ in net.named_parameters()]
    mu = [p.detach().clone().requires_grad_() for p in net.parameters()]
    s = [torch.full_like(m, 1e-3).requires_grad_() for m in mu]
    opt = torch.optim.Adam(mu + s, 1e-3, fused=True)

    def step() -> None:
        opt.zero_grad()
        weights = {
            n: torch.addcmul(m, v, torch.randn_like(m))
            for n, m, v in zip(names, mu, s, strict=True)
        }
        F.cross_entropy(torch.func.functional_call(net, weights, (x,)), y).backward()
        opt.step()

    return step


def _bbb(h: int, device: torch.device) -> tuple[BNN, BBBNormal]:
    prior = ScaleMixtureNormal(0.5, 1.0, math.exp(-6))
    model = BNN(mlp(784, [h, h], 10), prior, Categorical(N)).to(device)
    return model, BBBNormal(model, init_scale=math.log1p(math.exp(-5)))


def pyro_dwp_bbb(h: int, x: torch.Tensor, y: torch.Tensor) -> Step:
    pyro.clear_param_store()
    model, guide = _bbb(h, x.device)
    kl = KLScaleMessenger(1.0)
    svi = SVI(kl(model), kl(guide), JointAdam(1e-3), Trace_ELBO())  # fit's default optimiser

    def step() -> None:
        with pyro.validation_enabled(False):  # as fit runs every step after the first
            svi.step(x, y)

    return step


def _program(h: int, x: torch.Tensor, y: torch.Tensor, torch_compile: bool = False) -> CompiledSVI:
    """Our BBB model's compiled step, after one step (the optimiser takes in the parameters by
    their store names; with ``torch_compile`` that step compiles, tens of seconds on a CPU)."""
    # A param store of its own: the step holds its tensors and never reads the store again.
    with pyro.get_param_store().scope():
        model, guide = _bbb(h, x.device)
        optim = JointAdam(1e-3)
        program = compile_svi(model, guide, x, y, optim=optim, torch_compile=torch_compile)
        program.step(x, y)
    return program


def pyro_dwp_bbb_compiled(h: int, x: torch.Tensor, y: torch.Tensor) -> Step:
    program = _program(h, x, y)
    return lambda: program.step(x, y)


def pyro_dwp_bbb_graphed(h: int, x: torch.Tensor, y: torch.Tensor) -> Step:
    graphed = GraphedSVI(_program(h, x, y))  # refuses a CPU device
    for _ in range(WARMUP_STEPS + 1):  # the eager warm-up, then the capture
        graphed.step(x, y)
    return lambda: graphed.step(x, y)


def pyro_dwp_bbb_inductor(h: int, x: torch.Tensor, y: torch.Tensor) -> Step:
    program = _program(h, x, y, torch_compile=True)
    if not program.uses_torch_compile:  # not timed under this name: the warning says why
        raise RuntimeError("torch.compile was not used for the step (see the warning above)")
    return lambda: program.step(x, y)


def pyro_autonormal(h: int, x: torch.Tensor, y: torch.Tensor) -> Step:
    from pyro.infer.autoguide import AutoNormal
    from pyro.nn import PyroModule, PyroSample

    pyro.clear_param_store()
    zero, one = torch.tensor(0.0, device=x.device), torch.tensor(1.0, device=x.device)

    class Net(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = PyroModule[nn.Linear](784, h)
            self.l2 = PyroModule[nn.Linear](h, h)
            self.l3 = PyroModule[nn.Linear](h, 10)
            for layer in (self.l1, self.l2, self.l3):
                layer.weight = PyroSample(
                    dist.Normal(zero, one).expand(layer.weight.shape).to_event(2)
                )
                layer.bias = PyroSample(dist.Normal(zero, one).expand(layer.bias.shape).to_event(1))

        def forward(self, v: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
            out = self.l3(F.relu(self.l2(F.relu(self.l1(v)))))
            with pyro.plate("data", N, subsample_size=v.shape[0]):
                pyro.sample("y", dist.Categorical(logits=out), obs=t)
            return out

    net = Net().to(x.device)
    svi = SVI(net, AutoNormal(net, init_scale=1e-2), pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    return lambda: svi.step(x, y)


def blitz(h: int, x: torch.Tensor, y: torch.Tensor) -> Step:
    from blitz.modules import BayesianLinear
    from blitz.utils import variational_estimator

    @variational_estimator
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            kw = dict(prior_pi=0.5, prior_sigma_1=1.0, prior_sigma_2=math.exp(-6))
            self.l1 = BayesianLinear(784, h, **kw)
            self.l2 = BayesianLinear(h, h, **kw)
            self.l3 = BayesianLinear(h, 10, **kw)

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.l3(F.relu(self.l2(F.relu(self.l1(v)))))

    net = Net().to(x.device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    crit = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad()
        net.sample_elbo(
            inputs=x, labels=y, criterion=crit, sample_nbr=1, complexity_cost_weight=1 / N
        ).backward()
        opt.step()

    return step


def bayesian_torch(h: int, x: torch.Tensor, y: torch.Tensor) -> Step:
    from bayesian_torch.layers import LinearReparameterization as Layer

    layers = [Layer(784, h).to(x.device), Layer(h, h).to(x.device), Layer(h, 10).to(x.device)]
    opt = torch.optim.Adam([p for layer in layers for p in layer.parameters()], 1e-3)

    def step() -> None:
        opt.zero_grad()
        out, kl1 = layers[0](x)
        out, kl2 = layers[1](F.relu(out))
        out, kl3 = layers[2](F.relu(out))
        (F.cross_entropy(out, y) + (kl1 + kl2 + kl3) / N).backward()
        opt.step()

    return step


CONTENDERS = {
    "deterministic": deterministic,
    "deterministic_fused_adam": partial(deterministic, fused=True),
    "pyro_dwp_bbb": pyro_dwp_bbb,
    "pyro_dwp_bbb_compiled": pyro_dwp_bbb_compiled,
    "pyro_dwp_bbb_graphed": pyro_dwp_bbb_graphed,
    "pyro_dwp_bbb_inductor": pyro_dwp_bbb_inductor,
    "bbb_floor": bbb_floor,
    "pyro_autonormal": pyro_autonormal,
    "blitz": blitz,
    "bayesian_torch": bayesian_torch,
}


def main(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 784, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps: dict[str, Step] = {}
    skipped: dict[str, str] = {}
    for name, make in CONTENDERS.items():
        try:
            step = make(args.hidden, x, y)
            for _ in range(args.warmup):
                step()
            steps[name] = step
        except Exception as e:  # a peer that is not installed is reported, not fatal
            skipped[name] = f"{type(e).__name__}: {str(e)[:100]}"
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            times[name].append((time.perf_counter() - t) / args.steps)
    base = statistics.median(times["deterministic"])
    rows = {
        k: {"ms": 1e3 * statistics.median(v), "ratio": statistics.median(v) / base}
        for k, v in times.items()
    }
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "hidden": args.hidden,
        "batch": args.batch,
        "rounds": args.rounds,
        "steps": args.steps,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "results": rows,
        "skipped": skipped,
    }
    if args.profile:
        result["profile"] = _profile(steps["pyro_dwp_bbb"], device)
        result["profile_compiled"] = _profile(steps["pyro_dwp_bbb_compiled"], device)
    _write(result, Path(args.results_dir), device.type)
    return result


def _profile(step: Step, device: torch.device, top: int = 15) -> str:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(5):
            step()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=top)
    print(table)
    return table


def _write(result: dict, out: Path, device: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_time_{device}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Step time, 784-{result['hidden']}-{result['hidden']}-10 MLP, batch {result['batch']}, "
        f"{device}",
        "",
        f"{result['date']}, `{result['command']}`, {result['device']}, "
        f"{result['threads']} threads, torch {result['torch']}, pyro {result['pyro']}; "
        f"median of {result['rounds']} interleaved rounds of {result['steps']} steps.",
        "",
        "| contender | ms / step | x deterministic |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v['ms']:.2f} | {v['ratio']:.2f} |" for k, v in result["results"].items()]
    lines += [f"| {k} | skipped: {why} | |" for k, why in result["skipped"].items()]
    if "profile" in result:
        lines += ["", "Profile of our step (top items):", "", "```", result["profile"], "```"]
        lines += ["", "Profile of our compiled step (top items):", "", "```"]
        lines += [result["profile_compiled"], "```"]
    (out / f"step_time_{device}.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--hidden", type=int, default=1200)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    return p.parse_args(argv)


if __name__ == "__main__":
    out = main(parse_args())
    print(json.dumps(out["results"], indent=2))

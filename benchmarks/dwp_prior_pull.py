"""How hard a deep weight prior pulls a filter bank onto one filter, before any network is trained.

With few labels the prior term of the DWP's bound dominates the data term, and a mean-field
posterior with small scales follows the gradient of the prior's log-density: every kernel moves
towards the density's mode. This script measures that pull for kernel VAEs, without data: it
starts from ``--kernels`` samples of each layer's prior and runs Adam ascent (``--steps``, step
size ``--lr`` times the samples' std) on the per-kernel term that the network's bound uses,
``log p(w | z) + log p(z) - log r(z | w)`` with one code ``z ~ r(z | w)`` and the reverse model
``r`` = the VAE's encoder. It records, every ``--every`` steps, the kernels' ``similarity``
(mean |cosine| between distinct kernels, :func:`pyro_dwp.data.kernel_similarity`: 1 = all
kernels are multiples of one), their mean norm and the mean log-density term, and splits the
term at the encoder means into the decoder's ``-sum log sigma(z)``, the distance to the
decoder's mean ``-|w - mu(z)|^2 / (2 sigma^2)`` and ``log p(z)``, at the start and the end.

A prior whose samples collapse here (similarity near 1 within a few hundred steps) made the
trained N = 50 networks collapse too (``benchmarks/results/dwp_mnist_ablation.md``, section 10).
Writes ``dwp_prior_pull.{json,md}`` to ``--results-dir``::

    {"priors": {name: {layer: {"steps": [...], "similarity": [...], "mean_norm": [...],
                               "log_density": [...], "terms": {"start": {...}, "end": {...}}}}}}

Example (CPU, about two minutes)::

    python benchmarks/dwp_prior_pull.py --prior shipped=pretrained:notmnist \\
        --prior other=runs/dwp/prior --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from pyro_dwp.data import kernel_similarity
from pyro_dwp.distributions.deep_weight_prior import iwae_log_marginal
from pyro_dwp.models.kernel_vae import KernelVAE, load_kernel_vae
from pyro_dwp.pretrained import LAYERS, pretrained_dir

TERMS = ("neg_log_scale", "distance", "log_p_z")
"""The parts of the log-density term that :func:`density_terms` returns."""


def load_vaes(spec: str) -> dict[str, KernelVAE]:
    """``pretrained:NAME`` (a shipped prior) or a folder with ``vae_conv1.pt``, ``vae_conv2.pt``."""
    folder = pretrained_dir(spec.split(":", 1)[1]) if spec.startswith("pretrained:") else Path(spec)
    return {layer: load_kernel_vae(folder / f"vae_{layer}.pt")[0] for layer in LAYERS}


@torch.no_grad()
def density_terms(encoder: nn.Module, decoder: nn.Module, w: Tensor) -> dict[str, float]:
    """The per-kernel log-density split at the encoder means ``z = E r(z | w)`` of kernels ``w``
    ``(n, k, k)``: mean over kernels of ``-sum log sigma(z)``, ``-|w - mu(z)|^2 / (2 sigma^2)``
    (summed over pixels) and ``log p(z)`` (without the constants)."""
    z, _ = encoder(w)
    mu, sigma = decoder(z)
    return {
        "neg_log_scale": -sigma.log().flatten(1).sum(1).mean().item(),
        "distance": (-((w - mu) ** 2) / (2 * sigma**2)).flatten(1).sum(1).mean().item(),
        "log_p_z": (-0.5 * z**2).sum(-1).mean().item(),
    }


def prior_pull(
    vae: KernelVAE, *, kernels: int, steps: int, lr: float, every: int, seed: int
) -> dict[str, object]:
    """Adam ascent of ``kernels`` prior samples ``(kernels, k, k)`` on the bound's per-kernel
    prior term (module docstring); returns the recorded curves and the split terms."""
    torch.manual_seed(seed)
    encoder, decoder = vae.encoder.requires_grad_(False), vae.decoder.requires_grad_(False)
    with torch.no_grad():
        z = torch.randn(kernels, vae.z_dim)
        loc, scale = decoder(z)
        w0 = loc + scale * torch.randn_like(loc)
    w = w0.clone().requires_grad_(True)
    optim = torch.optim.Adam([w], lr=lr * w0.std().item())
    record: dict[str, list] = {"steps": [], "similarity": [], "mean_norm": [], "log_density": []}
    start = density_terms(encoder, decoder, w0)
    for step in range(steps + 1):
        _, term = iwae_log_marginal(encoder, decoder, w, 1)
        if step % every == 0 or step == steps:
            kernels_now = w.detach()
            record["steps"].append(step)
            record["similarity"].append(kernel_similarity(kernels_now))
            record["mean_norm"].append(kernels_now.flatten(1).norm(dim=1).mean().item())
            record["log_density"].append(term.mean().item())
        if step == steps:
            break
        optim.zero_grad()
        (-term.sum()).backward()
        optim.step()
    return {**record, "terms": {"start": start, "end": density_terms(encoder, decoder, w.detach())}}


def _markdown(result: dict) -> str:
    lines = [
        "# How hard each deep weight prior pulls its kernels together (no data)",
        "",
        f"`{result['command']}`, {result['date']}; {result['settings']}; priors: "
        + ", ".join(f"{name} = {spec}" for name, spec in result["sources"].items()),
        "",
        "| prior | layer | similarity start -> end | mean norm start -> end | log-density gain "
        "(nats / kernel) | of which -sum log sigma | distance to the mean | log p(z) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, layers in result["priors"].items():
        for layer, r in layers.items():
            s, e = r["terms"]["start"], r["terms"]["end"]
            lines.append(
                f"| {name} | {layer} | {r['similarity'][0]:.2f} -> {r['similarity'][-1]:.3f} | "
                f"{r['mean_norm'][0]:.3f} -> {r['mean_norm'][-1]:.3f} | "
                f"{r['log_density'][-1] - r['log_density'][0]:+.1f} | "
                + " | ".join(f"{e[k] - s[k]:+.1f}" for k in TERMS)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    specs = dict(p.split("=", 1) for p in args.prior)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/dwp_prior_pull.py", *sys.argv[1:]]),
        "settings": {k: getattr(args, k) for k in ("kernels", "steps", "lr", "every", "seed")},
        "sources": specs,
        "priors": {
            name: {
                layer: prior_pull(
                    vae,
                    kernels=args.kernels,
                    steps=args.steps,
                    lr=args.lr,
                    every=args.every,
                    seed=args.seed,
                )
                for layer, vae in load_vaes(spec).items()
            }
            for name, spec in specs.items()
        },
    }
    write_report(result, args.results_dir, "dwp_prior_pull", _markdown(result))
    return result


def write_report(result: dict, results_dir: str | Path, name: str, markdown: str) -> None:
    """Write ``NAME.json`` (``result``) and ``NAME.md`` (``markdown``) into ``results_dir`` and
    print the markdown (this script's and ``dwp_code_prior.py``'s outputs)."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--prior",
        action="append",
        required=True,
        metavar="NAME=SPEC",
        help="a prior to measure: SPEC is pretrained:NAME or a folder with vae_conv1.pt, "
        "vae_conv2.pt (repeat the option for several)",
    )
    p.add_argument("--kernels", type=int, default=512, help="prior samples per layer")
    p.add_argument("--steps", type=int, default=600, help="Adam steps")
    p.add_argument("--lr", type=float, default=0.02, help="Adam step size / the samples' std")
    p.add_argument("--every", type=int, default=100, help="record every this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--results-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    bad = [p for p in args.prior if "=" not in p]
    if bad:
        p.error(f"--prior takes NAME=SPEC, got {bad}")
    if min(args.kernels, args.steps, args.every) < 1 or args.kernels < 2:
        p.error("--kernels must be >= 2, --steps and --every >= 1")
    return args


if __name__ == "__main__":
    main(parse_args())

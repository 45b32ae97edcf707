"""Does a code prior fitted to the source kernels' codes weaken the DWP's pull onto one kernel?

A deep weight prior is ``p(w) = int p(w | z) p(z) dz`` with ``p(z) = N(0, I)``. With few labels
a filter bank under it drifts towards the kernels decoded from the centre of ``z``, which share a
direction (``dwp_prior_pull.py``, ``dwp_mnist_ablation.md`` section 12). This script swaps
``p(z)`` for a VampPrior-like mixture, ``p(z) = 1/J sum_j r(z | w_j)``, the reverse model
(the VAE's encoder) at ``J`` random training kernels of the source set, or for a mixture of
``C`` diagonal Gaussians fitted by EM to codes of all training kernels (``--mixtures``, the
library's :func:`~pyro_dwp.infer.code_prior.fit_code_prior`, ``dwp-prior
--code-prior-components``), keeping the VAE's decoder and encoder as they are. For each code
prior and layer it reports:

- the held-out fit: the mean IWAE ``log p(w)`` of ``--held-out`` test kernels of the source set
  (``--iwae-samples`` codes from the encoder per kernel), and the zero-kernel gap (the all-zero
  kernel's IWAE minus that mean);
- the pull (as ``dwp_prior_pull.py``): ``--pull-kernels`` samples of the prior, moved by
  ``--steps`` Adam steps of ascent on the bound's per-kernel term
  ``log p(w | z) + log p(z) - log r(z | w)`` (one ``z ~ r(z | w)``); their mean ``|cosine|``
  similarity (1: all one direction) and mean norm at the start and the end.

Writes ``dwp_code_prior.{json,md}`` to ``--results-dir``::

    python benchmarks/dwp_code_prior.py --kernels runs/dwp_source_shipped --layers conv2 \\
        --components 1000 4000 --mixtures 16 64 256 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from dwp_prior_pull import load_vaes, write_report
from torch import Tensor, nn

from pyro_dwp.data import kernel_similarity
from pyro_dwp.distributions.deep_weight_prior import iwae_log_marginal
from pyro_dwp.experiments.dwp_prior import load_kernel_set
from pyro_dwp.infer.code_prior import fit_code_prior

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
LogPrior = Callable[[Tensor], Tensor]
"""``z (..., d) -> log p(z) (...)``."""


def _log_normal(z: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    """Elementwise ``log N(z | loc, scale^2)``."""
    return -0.5 * ((z - loc) / scale) ** 2 - torch.log(torch.as_tensor(scale)) - _HALF_LOG_2PI


def standard_normal(z: Tensor) -> Tensor:
    """``log N(z | 0, I)``: ``(..., d) -> (...)``."""
    return _log_normal(z, 0.0, 1.0).sum(-1)


def vamp(loc: Tensor, scale: Tensor) -> LogPrior:
    """``log (1/J) sum_j N(z | loc_j, scale_j^2)`` for components ``loc``, ``scale`` ``(J, d)``."""

    def log_prob(z: Tensor) -> Tensor:
        per_component = _log_normal(z.unsqueeze(-2), loc, scale).sum(-1)  # (..., J)
        return torch.logsumexp(per_component, -1) - math.log(loc.shape[0])

    return log_prob


@torch.no_grad()
def mean_iwae(
    encoder: nn.Module, decoder: nn.Module, w: Tensor, log_prior: LogPrior, k: int
) -> float:
    """Mean over kernels ``w`` ``(n, s, s)`` of the IWAE ``log p(w)`` with ``k`` codes each
    (:func:`~pyro_dwp.distributions.deep_weight_prior.iwae_log_marginal`, in parts that keep a
    mixture's ``(codes, kernels, J, d)`` densities small)."""
    parts = [
        iwae_log_marginal(encoder, decoder, part, k, chunk_size=10, log_p_z=log_prior)[0]
        for part in w.split(250)
    ]
    return torch.cat(parts).mean().item()


def pull(
    encoder: nn.Module, decoder: nn.Module, w0: Tensor, log_prior: LogPrior, steps: int
) -> dict[str, float]:
    """Adam ascent of kernels ``w0`` ``(n, s, s)`` on the bound's per-kernel term (one code
    ``z ~ r(z | w)`` per kernel and step, as ``dwp_prior_pull.py``)."""
    w = w0.clone().requires_grad_(True)
    optim = torch.optim.Adam([w], lr=0.02 * w0.std().item())
    for _ in range(steps):
        optim.zero_grad()
        _, term = iwae_log_marginal(encoder, decoder, w, 1, log_p_z=log_prior)
        (-term.sum()).backward()
        optim.step()
    end = w.detach()
    return {
        "similarity_start": kernel_similarity(w0),
        "similarity_end": kernel_similarity(end),
        "norm_start": w0.flatten(1).norm(dim=1).mean().item(),
        "norm_end": end.flatten(1).norm(dim=1).mean().item(),
    }


def compare(vae: nn.Module, train: Tensor, test: Tensor, args: argparse.Namespace) -> dict:
    """``{code prior: figures}`` for one layer's VAE and its source kernels ``(n, s, s)``."""
    encoder, decoder = vae.encoder.requires_grad_(False), vae.decoder.requires_grad_(False)
    torch.manual_seed(args.seed)
    picks = torch.randperm(len(train))
    with torch.no_grad():
        codes = encoder(train[picks[: max(args.components, default=1)]])
    held = test[: args.held_out]
    zero = torch.zeros(1, *train.shape[1:])
    priors: dict[str, tuple[LogPrior, Callable[[int], Tensor]]] = {
        "standard normal": (standard_normal, lambda n: torch.randn(n, vae.z_dim))
    }
    for j in args.components:
        loc, scale = codes[0][:j], codes[1][:j]

        def draw(n: int, loc: Tensor = loc, scale: Tensor = scale) -> Tensor:
            idx = torch.randint(len(loc), (n,))
            return loc[idx] + scale[idx] * torch.randn(n, loc.shape[1])

        priors[f"vamp J={j}"] = (vamp(loc, scale), draw)
    for c in args.mixtures:
        mixture, _ = fit_code_prior(encoder, train, c, seed=args.seed)
        priors[f"mixture C={c}"] = (mixture.log_prob, lambda n, m=mixture: m.sample((n,)))
    out = {}
    for name, (log_prior, draw) in priors.items():
        torch.manual_seed(args.seed + 1)
        fit = mean_iwae(encoder, decoder, held, log_prior, args.iwae_samples)
        gap = mean_iwae(encoder, decoder, zero, log_prior, args.iwae_samples) - fit
        with torch.no_grad():
            mean, sd = decoder(draw(args.pull_kernels))
            w0 = mean + sd * torch.randn_like(mean)
        out[name] = {
            "held_out_iwae": fit,
            "zero_kernel_gap": gap,
            **pull(encoder, decoder, w0, log_prior, args.steps),
        }
        print(args.prior, name, {k: round(v, 3) for k, v in out[name].items()}, flush=True)
    return out


def _markdown(result: dict) -> str:
    lines = [
        "# A code prior fitted to the source kernels' codes (VampPrior, EM mixture) against "
        "N(0, I)",
        "",
        f"`{result['command']}`, {result['date']}; {result['settings']}",
        "",
        "| layer | p(z) | held-out IWAE log p(w) | zero-kernel gap | pull: similarity start -> "
        "end | mean norm start -> end |",
        "|---|---|---|---|---|---|",
    ]
    for layer, rows in result["layers"].items():
        for name, r in rows.items():
            lines.append(
                f"| {layer} | {name} | {r['held_out_iwae']:.2f} | {r['zero_kernel_gap']:+.2f} | "
                f"{r['similarity_start']:.3f} -> {r['similarity_end']:.3f} | "
                f"{r['norm_start']:.3f} -> {r['norm_end']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    vaes = load_vaes(args.prior)
    layers = {}
    for layer in args.layers:
        train, test, _, _ = load_kernel_set(Path(args.kernels) / f"kernels_{layer}.pt", layer)
        layers[layer] = compare(vaes[layer], train, test, args)
    settings = (
        "prior",
        "components",
        "mixtures",
        "held_out",
        "iwae_samples",
        "pull_kernels",
        "steps",
        "seed",
    )
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/dwp_code_prior.py", *sys.argv[1:]]),
        "settings": {k: getattr(args, k) for k in settings},
        "layers": layers,
    }
    write_report(result, args.results_dir, "dwp_code_prior", _markdown(result))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", default="pretrained:notmnist", help="pretrained:NAME or a folder")
    p.add_argument("--kernels", required=True, help="a pyro-dwp dwp-source --out folder")
    p.add_argument("--layers", nargs="+", choices=["conv1", "conv2"], default=["conv2"])
    p.add_argument("--components", type=int, nargs="*", default=[1000, 4000], help="J values")
    p.add_argument(
        "--mixtures", type=int, nargs="*", default=[], help="C values of EM-fitted mixtures"
    )
    p.add_argument("--held-out", type=int, default=1000, help="test kernels for the IWAE")
    p.add_argument("--iwae-samples", type=int, default=100)
    p.add_argument("--pull-kernels", type=int, default=512)
    p.add_argument("--steps", type=int, default=600, help="Adam steps of the pull")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    if min(args.components + args.mixtures + [args.held_out, args.iwae_samples, args.steps]) < 1:
        p.error("--components, --held-out, --iwae-samples and --steps must be >= 1")
    if args.pull_kernels < 2:
        p.error("--pull-kernels must be >= 2")
    return args


if __name__ == "__main__":
    main(parse_args())

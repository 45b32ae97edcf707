"""Copy kernel VAEs of ``pyro-dwp dwp-prior`` into the package as a shipped prior.

Writes ``pyro_dwp/pretrained/NAME/{vae_conv1.pt, vae_conv2.pt, metadata.json}``: the metadata
records the commands and commit that made the files, the source kernels' statistics (from
``source_report.json`` of ``dwp-source``), each VAE's held-out fit (from the file itself) and
each file's SHA-256, which :func:`pyro_dwp.pretrained.pretrained` checks on every load::

    python scripts/ship_prior.py --name notmnist --conv1 runs/prior/vae_conv1.pt \\
        --conv2 runs/prior/vae_conv2.pt --source-report runs/source/source_report.json \\
        --commit 3a4451a --command "dwp-source ..." --command "dwp-prior ..."
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from pathlib import Path

from pyro_dwp.models.kernel_vae import load_kernel_vae
from pyro_dwp.pretrained import METADATA, sha256

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_dwp" / "pretrained"
FIT_KEYS = (
    "test_elbo",
    "test_iwae",
    "recon_over_std",
    "decoder_scale_over_std",
    "sample_std_over_std",
    "zero_kernel_gap",
    "smoothness",
)


def main(args: argparse.Namespace) -> dict:
    out = PACKAGE / args.name
    out.mkdir(parents=True, exist_ok=True)
    source = json.loads(args.source_report.read_text())
    layers = {}
    for layer, path in (("conv1", args.conv1), ("conv2", args.conv2)):
        _, meta = load_kernel_vae(path)
        target = out / f"vae_{layer}.pt"
        if path.resolve() != target.resolve():  # re-shipping a layer keeps its file
            shutil.copyfile(path, target)
        layers[layer] = {
            "kernel_size": meta["kernel_size"],
            "z_dim": meta["z_dim"],
            "hidden": meta["hidden"],
            "decoder_scale": meta.get("decoder_scale", "per-code"),
            "decoder_mean": meta.get("decoder_mean", "direct"),
            "code_prior_components": meta.get("code_prior_components"),
            "source_recipe": meta.get("provenance"),
            "vae_training": meta.get("training"),
            "fit_on_held_out_kernels": {k: meta[k] for k in FIT_KEYS if k in meta},
            "source_kernels": source["layers"][layer],
        }
    metadata = {
        "name": args.name,
        "date": datetime.date.today().isoformat(),
        "commit": args.commit,
        "commands": args.command,
        "device": args.device,
        "source_nets": [
            {"seed": net["seed"], "notmnist_test_accuracy": net["test_accuracy"]}
            for net in source["nets"]
        ],
        "layers": layers,
        "sha256": {f"vae_{layer}.pt": sha256(out / f"vae_{layer}.pt") for layer in layers},
    }
    (out / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--conv1", type=Path, required=True, help="vae_conv1.pt (7x7 kernels)")
    p.add_argument("--conv2", type=Path, required=True, help="vae_conv2.pt (5x5 kernels)")
    p.add_argument("--source-report", type=Path, required=True)
    p.add_argument("--commit", required=True, help="the commit the files were made with")
    p.add_argument("--command", action="append", default=[], help="a command that made them")
    p.add_argument("--device", default="cpu", help="where they were made")
    print(json.dumps(main(p.parse_args())["sha256"], indent=2))

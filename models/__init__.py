"""The papers' networks, as plain ``torch.nn`` modules to be made Bayesian with ``BNN``."""

from .dwp_cnn import DWPConvNet, conv_layers
from .kernel_vae import (
    KernelDecoder,
    KernelEncoder,
    KernelVAE,
    dihedral_augment,
    fit_kernel_vae,
    iwae_log_marginal,
    load_kernel_vae,
    save_kernel_vae,
)
from .mlp import mlp

__all__ = [
    "DWPConvNet",
    "KernelDecoder",
    "KernelEncoder",
    "KernelVAE",
    "conv_layers",
    "dihedral_augment",
    "fit_kernel_vae",
    "iwae_log_marginal",
    "load_kernel_vae",
    "mlp",
    "save_kernel_vae",
]

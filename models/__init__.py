"""The papers' networks, as plain ``torch.nn`` modules to be made Bayesian with ``BNN``."""

from .kernel_vae import KernelDecoder, KernelEncoder, KernelVAE, fit_kernel_vae, iwae_log_marginal
from .mlp import mlp

__all__ = [
    "KernelDecoder",
    "KernelEncoder",
    "KernelVAE",
    "fit_kernel_vae",
    "iwae_log_marginal",
    "mlp",
]

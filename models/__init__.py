"""The papers' networks, as plain ``torch.nn`` modules to be made Bayesian with ``BNN``."""

from .dwp_cnn import DWPConvNet, conv_layers
from .kernel_vae import KernelDecoder, KernelEncoder, KernelVAE, load_kernel_vae, save_kernel_vae
from .markov_chain_vae import GaussianTransition, MarkovChainVAE
from .mlp import mlp
from .mnist_vae import MNISTConvVAE
from .sparse import SparseLinear

__all__ = [
    "DWPConvNet",
    "GaussianTransition",
    "KernelDecoder",
    "KernelEncoder",
    "KernelVAE",
    "MNISTConvVAE",
    "MarkovChainVAE",
    "SparseLinear",
    "conv_layers",
    "load_kernel_vae",
    "mlp",
    "save_kernel_vae",
]

"""Inference helpers: minibatch KL weights, training (SVI, the kernel VAE), prediction,
reparameterisations.

Modules that build on the guides are imported by path: :mod:`pyro_dwp.infer.compiled` (the
compiled SVI step behind ``fit(..., engine="compiled")``), :mod:`pyro_dwp.infer.pruning`
(signal-to-noise pruning), :mod:`pyro_dwp.infer.dwp_gap` (the auxiliary bound's gap),
:mod:`pyro_dwp.infer.markov_chain_reparam` and :mod:`pyro_dwp.infer.markov_chain_gap` (the
Markov-chain prior's reparameterisation and bound gap).
"""

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    non_finite_paths,
    set_param_store_state,
)
from .fit import SVITrainer, fit, save_checkpoint
from .interrupt import TrainingInterrupted
from .kernel_vae import dihedral_augment, fit_kernel_vae
from .kl import KLScaleMessenger, kl_weights
from .local_reparam import LocalReparameterizationMessenger
from .markov_chain_vae import fit_markov_chain_vae
from .optim import JointAdam, JointOptimizer, JointSGD, linear_decay, name_rate_factor
from .predict import predict
from .reparam import DeepWeightPriorReparam, DeepWeightPriorStrategy, latent_site_name

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DeepWeightPriorReparam",
    "DeepWeightPriorStrategy",
    "JointAdam",
    "JointOptimizer",
    "JointSGD",
    "KLScaleMessenger",
    "LocalReparameterizationMessenger",
    "SVITrainer",
    "TrainingInterrupted",
    "dihedral_augment",
    "fit",
    "fit_kernel_vae",
    "fit_markov_chain_vae",
    "kl_weights",
    "latent_site_name",
    "linear_decay",
    "name_rate_factor",
    "load_checkpoint",
    "non_finite_paths",
    "predict",
    "save_checkpoint",
    "set_param_store_state",
]

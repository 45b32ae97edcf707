"""Inference helpers: minibatch KL weights, training, prediction."""

from .fit import CheckpointError, fit, load_checkpoint, save_checkpoint
from .kl import KLScaleMessenger, kl_weights
from .predict import predict
from .reparam import DeepWeightPriorReparam, latent_site_name

__all__ = [
    "CheckpointError",
    "DeepWeightPriorReparam",
    "KLScaleMessenger",
    "fit",
    "kl_weights",
    "latent_site_name",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
]

"""Data of the papers' experiments: MNIST and notMNIST images, kernel sets, the regression curve,
UCI Mushroom."""

from pyro_dwp.data.images import (
    BBB_PIXEL_SCALE,
    CACHE_ENV_VAR,
    DATA_ENV_VAR,
    DWP_PIXEL_SCALE,
    SUBSETS,
    find_data_dir,
    load_mnist,
    load_notmnist,
    random_affine,
)
from pyro_dwp.data.kernels import (
    kernel_similarity,
    kernel_smoothness,
    kernel_stats,
    select_kernels,
    split_kernels,
)
from pyro_dwp.data.mushroom import MUSHROOM_CONTEXT_DIM, load_mushroom
from pyro_dwp.data.regression import curve, make_regression_data, noise_in_y, true_curve
from pyro_dwp.data.splits import stratified_subset

__all__ = [
    "BBB_PIXEL_SCALE",
    "CACHE_ENV_VAR",
    "DATA_ENV_VAR",
    "DWP_PIXEL_SCALE",
    "MUSHROOM_CONTEXT_DIM",
    "SUBSETS",
    "curve",
    "find_data_dir",
    "kernel_similarity",
    "kernel_smoothness",
    "kernel_stats",
    "load_mnist",
    "load_mushroom",
    "load_notmnist",
    "make_regression_data",
    "noise_in_y",
    "random_affine",
    "select_kernels",
    "split_kernels",
    "stratified_subset",
    "true_curve",
]

"""Data of the papers' experiments: MNIST and notMNIST images, and the 1-D regression curve."""

from pyro_dwp.data.images import (
    CACHE_ENV_VAR,
    DATA_ENV_VAR,
    find_data_dir,
    load_mnist,
    load_notmnist,
)
from pyro_dwp.data.regression import curve, make_regression_data, true_curve

__all__ = [
    "CACHE_ENV_VAR",
    "DATA_ENV_VAR",
    "curve",
    "find_data_dir",
    "load_mnist",
    "load_notmnist",
    "make_regression_data",
    "true_curve",
]

"""Shared test fixtures: every test starts seeded and with an empty Pyro param store."""

import pyro
import pytest
import torch

from pyro_dwp.models.kernel_vae import KernelVAE, save_kernel_vae


@pytest.fixture(autouse=True)
def _seed_and_clear_param_store():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def one_thread():
    """Tiny convolutions: one intra-op thread is faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def vae_dir(tmp_path):
    """A folder with untrained kernel VAEs ``vae_conv1.pt`` (7x7) and ``vae_conv2.pt`` (5x5)."""
    save_kernel_vae(tmp_path / "vae_conv1.pt", KernelVAE(7, 2, 4))
    save_kernel_vae(tmp_path / "vae_conv2.pt", KernelVAE(5, 2, 4))
    return tmp_path

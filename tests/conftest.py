"""Shared test fixtures: every test starts seeded and with an empty Pyro param store."""

import pyro
import pytest
import torch


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

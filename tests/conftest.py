"""Shared test fixtures: every test starts seeded and with an empty Pyro param store."""

import pyro
import pytest


@pytest.fixture(autouse=True)
def _seed_and_clear_param_store():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()

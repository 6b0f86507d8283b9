"""The fixtures every test file may ask for; the shared functions and classes are in helpers.py."""

import os

import pyro
import pytest
import torch
from helpers import trained_on_digits

from pyro_vae import VAE, load_dataset

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores: one thread each, and for the processes they start (examples,
    # notebook kernels), where OpenMP threads spinning against the other worker slowed NUTS 10x.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture
def small_vae(digits):
    pyro.set_rng_seed(0)
    return VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))


@pytest.fixture(scope="session")
def trained_vae(digits):
    """A VAE (z_dim 6, one hidden layer of 64) trained for 15 epochs on the digits: the tests that
    need trained weights and do not change them."""
    return trained_on_digits(digits, epochs=15, z_dim=6, hidden_dims=(64,))


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    # Tests must not leak Pyro's global param store or validation flag into each other.
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    pyro.enable_validation(True)

import pyro
import pytest
import torch

from pyro_vae import VAE, load_dataset


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture
def small_vae(digits):
    pyro.set_rng_seed(0)
    return VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    # Tests must not leak Pyro's global param store or validation flag into each other.
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    pyro.enable_validation(True)


def binary_batch(n: int, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, *shape, generator=g), generator=g)

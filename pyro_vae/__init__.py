"""pyro-vae: variational autoencoders written as Pyro probabilistic programs.

>>> import pyro, pyro_vae
>>> data = pyro_vae.load_dataset("digits")
>>> pyro.set_rng_seed(0)
>>> vae = pyro_vae.VAE(data.x_shape, z_dim=16)
>>> history = pyro_vae.train(vae, data, epochs=20)   # SVI with Trace_ELBO
"""

__version__ = "0.1.0"

from .checkpoint import load_run, save_checkpoint  # noqa: E402
from .data import Dataset, load_dataset  # noqa: E402
from .elbo import dataset_elbo  # noqa: E402
from .errors import ConfigError, DataError, PyroVAEError  # noqa: E402
from .evaluate import evaluate, evaluate_run  # noqa: E402
from .model import VAE  # noqa: E402
from .train import History, train  # noqa: E402

__all__ = [
    "VAE",
    "ConfigError",
    "DataError",
    "Dataset",
    "History",
    "PyroVAEError",
    "dataset_elbo",
    "evaluate",
    "evaluate_run",
    "load_dataset",
    "load_run",
    "save_checkpoint",
    "train",
]

"""pyro-vae: variational autoencoders written as Pyro probabilistic programs.

>>> import pyro, pyro_vae
>>> data = pyro_vae.load_dataset("digits")
>>> pyro.set_rng_seed(0)
>>> vae = pyro_vae.VAE(data.x_shape, z_dim=16)
>>> history = pyro_vae.train(vae, data, epochs=20)   # SVI with Trace_ELBO

or, with a run folder (what ``pyro-vae train`` writes):

>>> run = pyro_vae.Run.create("runs/digits", pyro_vae.RunConfig(epochs=20))
>>> history = run.train()

and then use it: ``pyro_vae.encode`` (codes), ``pyro_vae.linear_probe``, ``pyro_vae.score``
(log p(x) and out-of-distribution scores per example), ``pyro_vae.interpolate`` (latent walks).
"""

from pyro_vae.analysis.codes import encode, linear_probe
from pyro_vae.analysis.evaluation import evaluate
from pyro_vae.analysis.scores import score
from pyro_vae.analysis.walks import interpolate
from pyro_vae.config import RunConfig
from pyro_vae.data.sources import Dataset, load_dataset
from pyro_vae.errors import ConfigError, DataError, PyroVAEError
from pyro_vae.infer.elbo import dataset_elbo
from pyro_vae.models import MODELS, build_model
from pyro_vae.models.cvae import CVAE
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE
from pyro_vae.runs.folder import Run
from pyro_vae.training.state import History
from pyro_vae.training.trainer import train
from pyro_vae.version import __version__

__all__ = [
    "CVAE",
    "M2",
    "MODELS",
    "VAE",
    "ConfigError",
    "DataError",
    "Dataset",
    "History",
    "PyroVAEError",
    "Run",
    "RunConfig",
    "__version__",
    "build_model",
    "dataset_elbo",
    "encode",
    "evaluate",
    "interpolate",
    "linear_probe",
    "load_dataset",
    "score",
    "train",
]

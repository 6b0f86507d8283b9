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

The names above are loaded when first used (PEP 562): ``import pyro_vae`` imports none of the
subpackages, and ``import pyro_vae.config`` or ``import pyro_vae.errors`` no more than those
modules need. The subpackages follow the flow of the work: :mod:`pyro_vae.data` (data sets),
:mod:`pyro_vae.parts` (priors, likelihoods, guides, networks), :mod:`pyro_vae.infer` (the
objectives, by Pyro and by hand, over any model), :mod:`pyro_vae.models` (the model protocol and
the kinds), :mod:`pyro_vae.training` (the trainer), :mod:`pyro_vae.analysis` (what a trained
model says), :mod:`pyro_vae.runs` (the run folder, which trains and analyses) and
:mod:`pyro_vae.cli` (the command line).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pyro_vae.version import __version__

if TYPE_CHECKING:  # what a type checker and an editor see: the names below, from their modules
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

# each public name, with the module that defines it and is imported on the name's first use
_EXPORTS = {
    "CVAE": "pyro_vae.models.cvae",
    "M2": "pyro_vae.models.m2",
    "MODELS": "pyro_vae.models",
    "VAE": "pyro_vae.models.vae",
    "ConfigError": "pyro_vae.errors",
    "DataError": "pyro_vae.errors",
    "Dataset": "pyro_vae.data.sources",
    "History": "pyro_vae.training.state",
    "PyroVAEError": "pyro_vae.errors",
    "Run": "pyro_vae.runs.folder",
    "RunConfig": "pyro_vae.config",
    "build_model": "pyro_vae.models",
    "dataset_elbo": "pyro_vae.infer.elbo",
    "encode": "pyro_vae.analysis.codes",
    "evaluate": "pyro_vae.analysis.evaluation",
    "interpolate": "pyro_vae.analysis.walks",
    "linear_probe": "pyro_vae.analysis.codes",
    "load_dataset": "pyro_vae.data.sources",
    "score": "pyro_vae.analysis.scores",
    "train": "pyro_vae.training.trainer",
}

# the subpackages and modules, imported on first use as attributes: ``pyro_vae.data.sources``
# after a bare ``import pyro_vae`` (a module inside a subpackage that does not import it itself,
# such as ``pyro_vae.analysis.plots``, takes its own import, as in any package)
_SUBMODULES = {
    "analysis",
    "cli",
    "config",
    "data",
    "device",
    "errors",
    "infer",
    "models",
    "parts",
    "runs",
    "training",
    "validation",
    "version",
}

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


def __getattr__(name: str):
    """A public name or a subpackage, imported on its first use and kept (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next use finds it without this function
    return value


def __dir__() -> list[str]:
    """The module's names, the public ones not yet loaded and the subpackages included."""
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)

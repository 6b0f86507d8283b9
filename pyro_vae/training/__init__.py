"""Training: the trainer (:mod:`pyro_vae.training.trainer`), its batches
(:mod:`pyro_vae.training.batches`), step (:mod:`pyro_vae.training.step`), test ELBO
(:mod:`pyro_vae.training.test_set`) and watchers (:mod:`pyro_vae.training.callbacks`), where it
stands (:mod:`pyro_vae.training.state`), torchrun (:mod:`pyro_vae.training.distributed`) and
stopping on signals (:mod:`pyro_vae.training.signals`)."""

from pyro_vae.training.state import (  # noqa: F401
    History,
    TrainingError,
    TrainingInterrupted,
    TrainState,
    kl_weight_at,
)
from pyro_vae.training.trainer import Trainer, train  # noqa: F401

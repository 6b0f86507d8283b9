"""Training: stochastic variational inference on a model. The trainer and
:func:`~pyro_vae.training.trainer.train` (:mod:`pyro_vae.training.trainer`) run an epoch of steps
top to bottom from parts: the batches (:mod:`pyro_vae.training.batches`), the SVI step
(:mod:`pyro_vae.training.step`), the test ELBO (:mod:`pyro_vae.training.test_set`), the watchers
of progress, finiteness and stopping (:mod:`pyro_vae.training.callbacks`) and where training
stands (:mod:`pyro_vae.training.state`); data-parallel training under torchrun
(:mod:`pyro_vae.training.distributed`), and stopping after a step on Ctrl-C or SIGTERM
(:mod:`pyro_vae.training.signals`).

In the flow data -> parts and models -> infer -> training -> runs -> analysis -> cli, training
takes the data, a model and an objective of :mod:`pyro_vae.infer`; it knows nothing of run folders
(:mod:`pyro_vae.runs`), which call it. The names imported here are documented where they are
defined."""

from pyro_vae.training.state import (  # noqa: F401
    History,
    TrainingError,
    TrainingInterrupted,
    TrainState,
    kl_weight_at,
)
from pyro_vae.training.trainer import Trainer, train  # noqa: F401

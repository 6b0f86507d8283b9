"""Training: stochastic variational inference on a model, the trainer and
:func:`~pyro_vae.training.trainer.train` (:mod:`pyro_vae.training.trainer`), data-parallel
training under torchrun (:mod:`pyro_vae.training.distributed`), and stopping after a step on
Ctrl-C or SIGTERM (:mod:`pyro_vae.training.signals`).

In the flow data -> parts and models -> infer -> training -> runs -> analysis -> cli, training
takes the data, a model and an objective of :mod:`pyro_vae.infer`; it knows nothing of run folders
(:mod:`pyro_vae.runs`), which call it. The names imported here are those of
:mod:`pyro_vae.training.trainer`, documented there."""

from pyro_vae.training.trainer import (  # noqa: F401
    ACCURACY_COLUMN,
    AUTO_TIMED_STEPS,
    CHECK_EVERY,
    COMPILE,
    EPOCH_COLUMNS,
    History,
    Trainer,
    TrainingError,
    TrainingInterrupted,
    TrainState,
    check_labeled,
    check_objective,
    kl_weight_at,
    train,
)

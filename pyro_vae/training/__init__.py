"""Training: the trainer (:mod:`pyro_vae.training.trainer`), torchrun
(:mod:`pyro_vae.training.distributed`) and stopping on signals
(:mod:`pyro_vae.training.signals`)."""

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

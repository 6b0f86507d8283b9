"""Where training stands: the per-epoch history, the state a run resumes from, and the errors
that end training early."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.training import distributed

EPOCH_COLUMNS = ("epoch", "train_elbo", "test_elbo", "seconds", "kl_weight")
ACCURACY_COLUMN = "test_accuracy"  # M2's, after EPOCH_COLUMNS


@dataclass
class History:
    """Per-epoch figures in nats per example, a list entry per epoch, and how training ran.

    :param epoch: the epoch, counted from 1.
    :param train_elbo: the training objective over the epoch's batches: the ELBO with the KL
        term weighed by ``kl_weight``, or the IWAE bound for the IWAE objectives.
    :param test_elbo: the ELBO itself (weight 1, one particle), comparable across runs.
    :param seconds: the seconds of training in that epoch.
    :param kl_weight: the weight of the KL term in that epoch.
    :param test_accuracy: for M2, its classifier's accuracy on the test set after each epoch.
    :param step_loss: each step's loss, the negative objective of its batch, nats per example.
    :param compile: what became of compiling the step, in one line.
    :param data: where the training set lived, in one line.
    :param compile_seconds: capturing and compiling, all told.
    """

    epoch: list[int] = field(default_factory=list)
    train_elbo: list[float] = field(default_factory=list)
    test_elbo: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    kl_weight: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    compile: str = "off"
    data: str = ""
    compile_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.epoch and not self.kl_weight:  # a history from before the KL was weighed
            self.kl_weight = [1.0] * len(self.epoch)

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of ``metrics.csv``: EPOCH_COLUMNS, and M2's test accuracy."""
        return EPOCH_COLUMNS + ((ACCURACY_COLUMN,) if self.test_accuracy else ())

    def rows(self) -> list[dict[str, float]]:
        """One dict per epoch, keyed like the columns of ``metrics.csv``."""
        names = self.columns
        columns = [getattr(self, name) for name in names]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


@dataclass
class TrainState:
    """Where training stands, with everything needed to go on exactly from there: the same
    batches in the same order, the same random draws, the same Adam moments.

    :param epoch: the epochs finished.
    :param step_in_epoch: the steps of the next epoch taken.
    :param history: the finished epochs' figures.
    :param optimizer: Adam's ``state_dict``.
    :param rng: the batch-order generator's state from before the unfinished epoch drew its
        permutation, and each rank's torch (and CUDA) generator state.
    :param partial_losses: the summed losses of the steps taken in the unfinished epoch.
    :param partial_seconds: their time.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    history: History = field(default_factory=History)
    optimizer: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    partial_losses: list[float] = field(default_factory=list)
    partial_seconds: float = 0.0


class TrainingError(PyroVAEError):
    """Training cannot go on, e.g. the loss stopped being finite."""


class TrainingInterrupted(PyroVAEError):
    """Training stopped between two steps because ``stop()`` said so (a signal, in the CLI).

    The state at the stop was handed to ``checkpoint`` before this was raised.

    :param state: where training stopped: the state handed to ``checkpoint``.
    :param steps_per_epoch: the steps of an epoch, for the message.
    """

    def __init__(self, state: TrainState, steps_per_epoch: int):
        self.state = state
        if state.step_in_epoch:
            where = f"step {state.step_in_epoch} of {steps_per_epoch} in epoch {state.epoch + 1}"
        else:
            where = f"epoch {state.epoch}"
        super().__init__(f"stopped after {where}")


def kl_weight_at(epoch: int, beta: float, kl_warmup: int) -> float:
    """The KL term's weight in ``epoch`` (counted from 1): ``beta * epoch / kl_warmup`` during a
    warm-up of ``kl_warmup`` epochs, ``beta`` after it, or throughout when ``kl_warmup`` is 0.

    :param epoch: the epoch, counted from 1.
    :param beta: the weight after the warm-up.
    :param kl_warmup: the warm-up's length in epochs; 0 for none.
    """
    return beta * min(1.0, epoch / kl_warmup) if kl_warmup else beta


def snapshot(
    history: History,
    optimizer: torch.optim.Optimizer,
    order_state: torch.Tensor,
    device: torch.device,
    epoch: int,
    step_in_epoch: int,
    losses: list[torch.Tensor],
    seconds: float,
) -> TrainState:
    """The state after ``epoch`` whole epochs and ``step_in_epoch`` steps of the next, with every
    rank's random state (gathered under torchrun).

    :param history: the finished epochs' figures.
    :param optimizer: Adam, whose ``state_dict`` is kept.
    :param order_state: the batch order's generator state from before the unfinished epoch drew
        its permutation.
    :param device: where training runs, whose generator state is kept too.
    :param epoch: the whole epochs done.
    :param step_in_epoch: the steps of the next epoch done.
    :param losses: the losses of the unfinished epoch's steps, tensors on the device.
    :param seconds: the time of those steps.
    """
    ranks = distributed.gather_objects(_rng_state(device))
    return TrainState(
        epoch=epoch,
        step_in_epoch=step_in_epoch,
        history=history,
        optimizer=optimizer.state_dict(),
        rng={"batch_order": order_state, "ranks": ranks},
        partial_losses=torch.stack(losses).tolist() if losses else [],
        partial_seconds=seconds,
    )


def resume_from(
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    order: torch.Generator,
    *,
    lr: float,
    rank: int,
    world: int,
    device: torch.device,
) -> None:
    """Put ``state``'s Adam moments, batch order and this rank's random state back, so that the
    steps go on as if never stopped; a different number of processes is refused.

    :param state: a state handed to ``checkpoint`` earlier.
    :param optimizer: Adam, which takes the saved moments.
    :param order: the batch order's generator.
    :param lr: the learning rate, which a resumed run may change.
    :param rank: this process's rank.
    :param world: the number of processes now.
    :param device: where training runs.
    """
    rng = state.rng or {}
    if state.optimizer is None or "batch_order" not in rng or "ranks" not in rng:
        raise ConfigError("the checkpoint lacks the optimizer or random state needed to resume")
    if len(rng["ranks"]) != world:
        raise ConfigError(
            f"the checkpoint was written by {len(rng['ranks'])} process(es); resume it with "
            f"the same number (now {world}), so that every rank's batches and draws go on"
        )
    optimizer.load_state_dict(state.optimizer)
    for group in optimizer.param_groups:  # a resumed run may change the learning rate
        group["lr"] = lr
    _set_rng_state(rng["ranks"][rank], device)
    order.set_state(rng["batch_order"].cpu())


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    # generator states are CPU byte tensors, wherever the checkpoint was mapped to
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)

"""Training: stochastic variational inference on a VAE, on the CPU or a CUDA device.

Each step draws a mini-batch, estimates the negative ELBO with a Pyro objective (``Trace_ELBO`` by
default) and takes an Adam step on its gradient, which flows through the reparameterized z. This is
``pyro.infer.SVI.step`` with one ``torch.optim.Adam`` over ``vae.parameters()`` in place of
``pyro.optim``'s one optimizer per parameter: the same update, without the global param store, so
that the optimizer's state is a plain ``state_dict`` and any number of VAEs can train in one
process. It is also the optimizer of the pure-PyTorch trainer (``objective="manual"``, the
hand-written ELBO with no ``pyro.infer``), so that the two trainers take the very same steps and
their loss trajectories can be compared number for number.

The whole training set lives on the device as one tensor and batches are drawn by a shuffled index,
so no per-example data loader runs in the hot loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from . import distributed
from .data import Dataset, binarize, binarize_afresh, is_binary
from .elbo import closed_form_kl, dataset_elbo, make_loss
from .errors import ConfigError, DataError, PyroVAEError
from .model import VAE

BINARIZATION = ("dynamic", "none")
# The test set of grey data is binarized once, with this seed, so every run and every
# evaluation of a binary likelihood scores the same binary images.
TEST_BINARIZATION_SEED = 0


EPOCH_COLUMNS = ("epoch", "train_elbo", "test_elbo", "seconds")


@dataclass
class History:
    """Per-epoch figures: ELBOs in nats per example, ``seconds`` of training in that epoch; and
    ``step_loss``, each step's loss (the negative ELBO of its batch, nats per example)."""

    epoch: list[int] = field(default_factory=list)
    train_elbo: list[float] = field(default_factory=list)
    test_elbo: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)

    def rows(self) -> list[dict[str, float]]:
        """One dict per epoch, keyed like the columns of ``metrics.csv``."""
        columns = [getattr(self, name) for name in EPOCH_COLUMNS]
        return [dict(zip(EPOCH_COLUMNS, row, strict=True)) for row in zip(*columns, strict=True)]


@dataclass
class TrainState:
    """Where training stands, with everything needed to go on exactly from there: the same
    batches in the same order, the same random draws, the same Adam moments.

    ``epoch`` epochs are finished and ``step_in_epoch`` steps of the next one are taken;
    ``partial_losses`` are the summed losses of those steps and ``partial_seconds`` their time.
    ``rng`` holds the batch-order generator's state from before the unfinished epoch drew its
    permutation, and each rank's torch (and CUDA) generator state.
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
    """

    def __init__(self, state: TrainState, steps_per_epoch: int):
        self.state = state
        if state.step_in_epoch:
            where = f"step {state.step_in_epoch} of {steps_per_epoch} in epoch {state.epoch + 1}"
        else:
            where = f"epoch {state.epoch}"
        super().__init__(f"stopped after {where}")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when there is a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = str(spec).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: no CUDA GPU is available here; use --device cpu or auto"
            )
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"--device {name}: not a device name; use cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are present"
            )
        return device
    raise ConfigError(f"unknown device {str(spec)!r}; choose auto, cpu, cuda or cuda:N")


def check_shape(vae: VAE, data: Dataset, where: str = "") -> None:
    """Raise :class:`DataError` unless ``data``'s examples have the shape ``vae`` was built for.

    :param where: what the data are, for the message, e.g. ``"the data set of run X"``.
    """
    if tuple(data.x_shape) != vae.x_shape:
        raise DataError(
            f"{where or 'the data'} has examples of shape {tuple(data.x_shape)} but the model "
            f"expects {vae.x_shape}"
        )


def needs_binarization(vae: VAE, x: torch.Tensor, binarization: str) -> bool:
    """Whether ``x`` must be binarized for ``vae``'s likelihood; checks ``x`` fits it otherwise."""
    if binarization not in BINARIZATION:
        raise ConfigError(
            f"unknown binarization {binarization!r}; choose one of: {', '.join(BINARIZATION)}"
        )
    if binarization == "dynamic" and vae.likelihood.binary and not is_binary(x):
        return True
    vae.likelihood.check_data(x)
    return False


def eval_inputs(vae: VAE, x_test: torch.Tensor, binarization: str = "dynamic") -> torch.Tensor:
    """The test set as the likelihood scores it: a fixed binarization of grey data if needed."""
    if needs_binarization(vae, x_test, binarization):
        return binarize(x_test, TEST_BINARIZATION_SEED)
    return x_test


# Adam's first step divides the learning rate by 1 - beta1 = 0.1 in float32: keep it far below
# float32's largest number.
MAX_LR = 1e30


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not 0 < value < math.inf:
            flag = name.replace("_", "-")
            raise ConfigError(f"--{flag} must be positive and finite, got {value}")


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


def _check_resumable(state: TrainState, world: int) -> None:
    rng = state.rng or {}
    if state.optimizer is None or "batch_order" not in rng or "ranks" not in rng:
        raise ConfigError("the checkpoint lacks the optimizer or random state needed to resume")
    if len(rng["ranks"]) != world:
        raise ConfigError(
            f"the checkpoint was written by {len(rng['ranks'])} process(es); resume it with "
            f"the same number (now {world}), so that every rank's batches and draws go on"
        )


def train(
    vae: VAE,
    data: Dataset,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    seed: int = 0,
    objective: str = "trace",
    binarization: str = "dynamic",
    progress: bool = True,
    checkpoint: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
    stop: Callable[[], bool] | None = None,
) -> History:
    """Fit ``vae`` to ``data.x_train`` by SVI; return the per-epoch history.

    :param objective: ``"trace"`` (``Trace_ELBO``), ``"meanfield"`` (``TraceMeanField_ELBO``) or
        ``"manual"`` (:func:`pyro_vae.elbo.manual_elbo`, plain PyTorch, no ``pyro.infer``).
    :param binarization: ``"dynamic"``: for a binary likelihood, grey training data is binarized
        afresh in every batch (x ~ Bernoulli(pixel)) and the test set once with a fixed seed;
        ``"none"``: the data are used as they are.
    :param seed: seeds the batch order, the binarization and the guide's noise. The initial
        weights come from the RNG state when ``vae`` was built: seed before building it
        (``pyro.set_rng_seed``) for a fully repeatable run.
    :param checkpoint: called with the :class:`TrainState` after every epoch and when ``stop``
        ends training early, e.g. to write a checkpoint.
    :param resume: a state handed to ``checkpoint`` earlier (``vae`` holding the weights of that
        moment): training goes on from it and takes the very steps the uninterrupted run would.
    :param stop: asked after every step; when it returns true, the state is handed to
        ``checkpoint`` and :class:`TrainingInterrupted` is raised.

    The test ELBO after each epoch is :func:`pyro_vae.elbo.dataset_elbo` with ``seed``. A loss
    that stops being finite raises :class:`TrainingError` (checked every 10 steps and at the
    end of each epoch), before ``checkpoint`` can see the broken weights.

    Inside a ``torch.distributed`` process group (``torchrun``), each rank trains on its shard
    of every global batch of ``batch_size`` and the gradients are summed over ranks
    (:mod:`pyro_vae.distributed`); the history is the same on every rank.
    """
    _check_positive(epochs=epochs, batch_size=batch_size, lr=lr)
    if lr > MAX_LR:
        raise ConfigError(f"--lr must be at most {MAX_LR:g}, got {lr:g}")
    check_shape(vae, data)
    rank, world = distributed.rank_and_world()
    if batch_size < world:
        raise ConfigError(f"--batch-size {batch_size} is smaller than the {world} processes")
    device = resolve_device(device)
    vae.to(device)
    x_train = data.x_train.to(device)
    x_test = eval_inputs(vae, data.x_test, binarization).to(device)
    dynamic = needs_binarization(vae, data.x_train, binarization)
    loss_fn = make_loss(vae, objective)
    if objective == "meanfield":  # Pyro would quietly fall back to the sampled KL instead
        with torch.no_grad():
            closed_form_kl(vae, vae.posterior_dist(x_test[:1]), vae.prior(1, x_test))
    parameters = list(vae.parameters())
    optimizer = torch.optim.Adam(parameters, lr=lr)
    if world > 1 and resume is None:
        distributed.broadcast_parameters(vae)

    batch_order = torch.Generator()
    state = resume or TrainState()
    if resume is None:
        # every rank its own draws; rank 0 of any world draws what a single process would
        pyro.set_rng_seed((seed + rank) % 2**32)  # numpy takes seeds below 2**32
        batch_order.manual_seed(seed)
    else:
        _check_resumable(resume, world)
        optimizer.load_state_dict(resume.optimizer)
        for group in optimizer.param_groups:  # a resumed run may change the learning rate
            group["lr"] = lr
        _set_rng_state(resume.rng["ranks"][rank], device)
        batch_order.set_state(resume.rng["batch_order"].cpu())
    history = state.history
    n = len(x_train)
    steps_per_epoch = math.ceil(n / batch_size)

    def snapshot(order_state: torch.Tensor, step_in_epoch: int, losses, seconds) -> TrainState:
        ranks = distributed.gather_objects(_rng_state(device))
        return TrainState(
            epoch=epoch - 1 if step_in_epoch else epoch,
            step_in_epoch=step_in_epoch,
            history=history,
            optimizer=optimizer.state_dict(),
            rng={"batch_order": order_state, "ranks": ranks},
            partial_losses=torch.stack(losses).tolist() if losses else [],
            partial_seconds=seconds,
        )

    def check_finite(losses: list[torch.Tensor], checked: int, epoch: int) -> int:
        """Raise if a loss from ``losses[checked]`` on is not finite; return the count checked."""
        if checked < len(losses):
            finite = torch.isfinite(torch.stack(losses[checked:]))
            if not bool(finite.all()):
                first = checked + int((~finite).nonzero()[0])
                raise TrainingError(
                    f"the loss stopped being finite at step {first + 1} of {steps_per_epoch} in "
                    f"epoch {epoch}; nothing from that epoch was saved. Try a lower --lr (now "
                    f"{lr:g})"
                )
        return len(losses)

    step, stopping = 0, False
    first_step_in_epoch = state.step_in_epoch
    with tqdm(
        total=epochs * steps_per_epoch,
        initial=min(state.epoch * steps_per_epoch + first_step_in_epoch, epochs * steps_per_epoch),
        disable=not progress or rank != 0,
        unit="step",
        dynamic_ncols=True,
    ) as bar:
        for epoch in range(state.epoch + 1, epochs + 1):
            bar.set_description(f"epoch {epoch}/{epochs}")
            start = time.perf_counter() - state.partial_seconds
            order_state = batch_order.get_state()
            # summed over each batch, kept on the device until the epoch ends
            batch_losses = [torch.tensor(v, device=device) for v in state.partial_losses]
            checked = 0
            batches = torch.randperm(n, generator=batch_order).to(device).split(batch_size)
            for i, index in enumerate(batches[first_step_in_epoch:], start=first_step_in_epoch):
                x = x_train[index.tensor_split(world)[rank]] if world > 1 else x_train[index]
                if dynamic:
                    x = binarize_afresh(x)
                # Pyro's validation on the first step makes a malformed model fail loudly; after
                # that it costs 0.5-1 ms a step (15% of a digits step on 2 CPU cores).
                with pyro.validation_enabled(step == 0):
                    loss = loss_fn(x) if len(x) else torch.zeros((), device=device)
                if loss.requires_grad:
                    loss.backward()
                stopping = stop is not None and stop()
                if world > 1:
                    loss, stopping = distributed.all_reduce_step(parameters, loss, stopping)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                batch_losses.append(loss.detach())
                step += 1
                bar.update()
                if (i + 1) % 10 == 0:
                    checked = check_finite(batch_losses, checked, epoch)
                    bar.set_postfix(loss=f"{loss.item() / len(index):.2f}")
                if stopping and i + 1 < len(batches):
                    check_finite(batch_losses, checked, epoch)
                    seconds = time.perf_counter() - start
                    state = snapshot(order_state, i + 1, batch_losses, seconds)
                    if checkpoint is not None:
                        checkpoint(state)
                    raise TrainingInterrupted(state, steps_per_epoch)
            first_step_in_epoch = 0
            state.partial_losses, state.partial_seconds = [], 0.0
            check_finite(batch_losses, checked, epoch)
            batch_losses = torch.stack(batch_losses)
            sizes = torch.full_like(batch_losses, batch_size)
            sizes[-1] = n - batch_size * (len(sizes) - 1)
            history.step_loss += (batch_losses / sizes).tolist()
            # in float64: each batch's float32 loss may be finite while their sum is not
            train_elbo = -batch_losses.double().sum().item() / n
            history.epoch.append(epoch)
            history.train_elbo.append(train_elbo)
            history.seconds.append(time.perf_counter() - start)
            history.test_elbo.append(dataset_elbo(vae, x_test, seed=seed, objective=objective))
            bar.set_postfix(
                train_elbo=f"{train_elbo:.2f}", test_elbo=f"{history.test_elbo[-1]:.2f}"
            )
            state = snapshot(batch_order.get_state(), 0, [], 0.0)
            if checkpoint is not None:
                checkpoint(state)
            if stopping and epoch < epochs:
                raise TrainingInterrupted(state, steps_per_epoch)
    return history

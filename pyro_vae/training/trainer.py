"""Training: stochastic variational inference on a model, on the CPU or a CUDA device.

Each step draws a mini-batch (:mod:`pyro_vae.training.batches`), estimates the negative objective
(Pyro's ``Trace_ELBO`` by default) and takes an Adam step on its gradient, which flows through the
reparameterized z (:mod:`pyro_vae.training.step`). An epoch reads top to bottom in
:meth:`Trainer.run_epoch`: step, check, report, and at its end the test ELBO and a snapshot for
the checkpoint. The step is compiled when :class:`~pyro_vae.infer.compiling.CompilePolicy` says
so; the progress bar, the finiteness check and agreeing to stop are small watchers
(:mod:`pyro_vae.training.callbacks`) that look at the device's values every
:data:`~pyro_vae.training.callbacks.CHECK_EVERY` steps, never in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyro
import torch

from pyro_vae import validation
from pyro_vae.config import (
    ObjectiveConfig,
    TrainingConfig,
    check_objective,
    training_sections,
)
from pyro_vae.data.sources import Dataset, check_shape, eval_inputs, needs_binarization
from pyro_vae.device import resolve_device
from pyro_vae.errors import ConfigError
from pyro_vae.infer.compiling import CompilePolicy
from pyro_vae.models.program import Program
from pyro_vae.models.user import PROBE_BATCH, as_program
from pyro_vae.parts.registry import name_of
from pyro_vae.training import distributed
from pyro_vae.training.batches import BatchSource, placement
from pyro_vae.training.callbacks import Finiteness, Progress, StopAgreement
from pyro_vae.training.state import (
    History,
    TrainingInterrupted,
    TrainState,
    kl_weight_at,
    resume_from,
    snapshot,
)
from pyro_vae.training.step import SVIStep
from pyro_vae.training.test_set import TestELBO

# compile="auto" times this many eager steps before it decides
AUTO_TIMED_STEPS = 5


def train(
    model: Program,
    data: Dataset,
    training: TrainingConfig | None = None,
    objective: ObjectiveConfig | str | None = None,
    *,
    progress: bool = True,
    checkpoint: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
    stop: Callable[[], bool] | None = None,
    **settings: Any,
) -> History:
    """Fit ``model`` to ``data.x_train`` by SVI; return the per-epoch history.

    How training runs is a :class:`~pyro_vae.config.TrainingConfig` and what it maximizes an
    :class:`~pyro_vae.config.ObjectiveConfig`, the sections of a run's
    :class:`~pyro_vae.config.RunConfig`, with their defaults and help text; any of their settings
    may also be given by name, ``train(vae, data, epochs=50, objective="iwae", num_particles=5)``.
    Among them: ``epochs`` counts all epochs, with ``resume`` those already done too (for M2, passes
    over its unlabelled examples, each step also taking the next ``min(batch_size, labeled)`` of an
    endless stream of seeded permutations of its labelled ones); ``seed`` seeds the batch order,
    the binarization and the guide's noise (seed the initial weights with ``pyro.set_rng_seed``
    before building the model); ``compile`` ``"auto"`` compiles the step
    (:mod:`pyro_vae.infer.compiling`) when the steps ahead repay it, ``history.compile`` says what
    happened; ``clip_norm`` clips the gradients' global norm, after the all-reduce under torchrun.

    :param model: the model, trained in place (and moved to the device): any model of
        :data:`~pyro_vae.models.MODELS` (:func:`~pyro_vae.models.build_model`), any
        :class:`~pyro_vae.models.program.Program`, or your own Pyro program, a module with
        ``model(x)`` and ``guide(x)`` methods (:func:`~pyro_vae.models.user.as_program`).
    :param data: the data set, as :func:`~pyro_vae.data.sources.load_dataset` gives it: training
        on ``x_train``, the test ELBO on ``x_test``; examples of the shape ``model.x_shape``, and
        labels for the models that take them.
    :param training: how training runs; ``None``: the defaults.
    :param objective: what training maximizes, or the objective's name (``"trace"``,
        ``"meanfield"``, ``"iwae"``, ...); ``None``: the defaults.
    :param progress: show a progress bar and say where the data live and what came of compiling
        (on stderr; under torchrun, rank 0 alone).
    :param checkpoint: called with the :class:`~pyro_vae.training.state.TrainState` after every
        epoch and when ``stop`` ends training early, e.g. to write a checkpoint.
    :param resume: a state handed to ``checkpoint`` earlier (``model`` holding the weights of that
        moment): training goes on from it and takes the very steps the uninterrupted run would.
    :param stop: asked after every step; when it returns true, the state is handed to
        ``checkpoint`` and :class:`~pyro_vae.training.state.TrainingInterrupted` is raised. Under
        torchrun the ranks agree every :data:`~pyro_vae.training.callbacks.CHECK_EVERY` steps, so
        all of them stop after the same step.
    :param settings: settings of either section by name, over ``training`` and ``objective``.

    A loss that stops being finite raises :class:`~pyro_vae.training.state.TrainingError`; under
    torchrun each rank trains on its shard of every batch (:mod:`pyro_vae.training.distributed`).
    """
    training, objective = training_sections(training, objective, settings)
    try:
        trainer = Trainer(model, data, training, objective)
        if resume is not None:
            trainer.restore(resume)
        return trainer.fit(training.epochs, progress=progress, checkpoint=checkpoint, stop=stop)
    except torch.OutOfMemoryError:  # the GPU's: activations come on top of Trainer's arithmetic
        raise ConfigError(
            f"training ran out of the memory of {resolve_device(training.device)}; try a smaller "
            "{batch_size} or smaller {hidden_dims} (the last checkpoint is kept)"
        ) from None


class Trainer:
    """The moving parts of one training run, set up once: the batches, the step, the random
    generators and the :class:`~pyro_vae.training.state.TrainState`; :meth:`fit` runs epochs of
    steps. :func:`~pyro_vae.training.train` says more.

    :param model: the model to train, in place (:class:`~pyro_vae.models.program.Program`).
    :param data: the data set: training on ``x_train``, the test ELBO on ``x_test``.
    :param training: how training runs.
    :param objective: what training maximizes.
    """

    def __init__(
        self, model: Program, data: Dataset, training: TrainingConfig, objective: ObjectiveConfig
    ):
        model = as_program(model, data.x_shape, data.x_train[:PROBE_BATCH])  # your own, wrapped
        self.num_particles, self.beta, self.kl_warmup = check_objective(
            objective.objective, objective.num_particles, objective.beta, objective.kl_warmup,
            guide=_guide_of(model), model=model.name, objectives=model.objectives,
        )  # fmt: skip
        self.training, self.objective = training, objective.objective
        self.lr, self.seed, self.batch_size = training.lr, training.seed, training.batch_size
        check_shape(model.x_shape, data)
        self.rank, self.world = distributed.rank_and_world()
        if self.batch_size < self.world:
            raise ConfigError(
                f"{self.batch_size} is smaller than the {self.world} processes", "batch_size"
            )
        self.model, self.device = model, resolve_device(training.device)
        self.x_test = eval_inputs(model.likelihood, data.x_test, training.binarization)
        streamed, self.placement = placement(
            model, data, self.device, stream=training.stream, workers=training.workers,
            batch_size=self.batch_size, num_particles=self.num_particles, world=self.world,
            x_test=self.x_test,
        )  # fmt: skip
        model.check_labeled(training.labeled)
        self.source = BatchSource(
            model, data, self.device, batch_size=self.batch_size, seed=self.seed,
            labeled=training.labeled, streamed=streamed, workers=training.workers,
            rank=self.rank, world=self.world,
            dynamic=needs_binarization(model.likelihood, data.train_values(),
                                       training.binarization),
        )  # fmt: skip
        self.x_test = self.x_test.to(self.device)
        self.y_test = None if data.y_test is None else data.y_test.to(self.device)
        model.to(self.device)
        self._set_up_step()
        self.steps_per_epoch = self.source.steps_per_epoch
        self.steps_taken, self.resumed = 0, False
        self.state = TrainState(history=History(data=self.placement))
        # every rank its own draws; rank 0 of any world draws what a single process would
        pyro.set_rng_seed((self.seed + self.rank) % 2**32)  # numpy takes seeds below 2**32
        if self.world > 1:
            distributed.broadcast_parameters(model)

    def _set_up_step(self) -> None:
        """The training step, the test ELBO's loss, and one compile policy for each."""
        model, agree = self.model, lambda worth: distributed.any_rank(worth, self.device)
        compile, clip_norm = self.training.compile, self.training.clip_norm
        policy = CompilePolicy("the training step", compile, timed=AUTO_TIMED_STEPS,
                               device=self.device, agree=agree)  # fmt: skip
        weight = None if self.kl_warmup else self.beta
        self.step = SVIStep(model, self.objective, self.num_particles, self.lr, weight, policy,
                            self.world, clip_norm, self.source.prepare)  # fmt: skip
        self.test_elbo = TestELBO(model, self.x_test, self.y_test, seed=self.seed,
                                  objective=self.objective, compile=compile,
                                  agree=agree)  # fmt: skip
        if self.objective == "meanfield":  # Pyro would quietly fall back to the sampled KL instead
            labels = None if self.y_test is None else self.y_test[:2]
            model.check_closed_form_kl(self.x_test[:2], labels)

    def restore(self, state: TrainState) -> None:
        """Go on from ``state``, handed to ``checkpoint`` earlier, with the model holding the
        weights of that moment: the same batches, draws and Adam moments as if never stopped.

        :param state: a state handed to ``checkpoint`` earlier, e.g. read back by
            :func:`~pyro_vae.runs.checkpoint.train_state`.
        """
        resume_from(state, self.step.optimizer, self.source.order, lr=self.lr, rank=self.rank,
                    world=self.world, device=self.device)  # fmt: skip
        self.step.place_state()
        self.state, self.resumed = state, True
        state.history.data = self.placement  # a resumed run may be streamed, or no longer

    def fit(
        self,
        epochs: int,
        *,
        progress: bool = True,
        checkpoint: Callable[[TrainState], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> History:
        """Train until ``epochs`` epochs are done; see :func:`~pyro_vae.training.train`.

        :param epochs: the total of epochs, those already done included.
        :param progress: show a progress bar (under torchrun, rank 0 alone).
        :param checkpoint: called with the state after every epoch and when ``stop`` ends
            training early.
        :param stop: asked after every step; true ends training with
            :class:`~pyro_vae.training.state.TrainingInterrupted`.
        """
        epochs = validation.count("epochs", epochs)
        check_objective(self.objective, self.num_particles, self.beta, self.kl_warmup, epochs,
                        None, self.model.name, self.model.objectives)  # fmt: skip
        total = epochs * self.steps_per_epoch
        done = self.state.epoch * self.steps_per_epoch + self.state.step_in_epoch
        self.steps_left, self.epochs = total - done, epochs
        self.progress = Progress(progress and self.rank == 0, total, done, self.placement)
        self.finite = Finiteness(self.steps_per_epoch, self.lr)
        self.stopper = StopAgreement(stop, self.steps_per_epoch, self.world, self.device)
        try:
            for epoch in range(self.state.epoch + 1, epochs + 1):
                self.progress.epoch(epoch, epochs)
                stopping = self.run_epoch(epoch)
                if checkpoint is not None:
                    checkpoint(self.state)
                if stopping and (self.state.step_in_epoch or epoch < epochs):
                    raise TrainingInterrupted(self.state, self.steps_per_epoch)
        finally:
            self.progress.close()
        if not self.step.policy.decided:
            self.state.history.compile = "the training step stayed eager: too few batches to decide"
        return self.state.history

    def run_epoch(self, epoch: int) -> bool:
        """Take the steps of ``epoch`` that are left and close it, or stop after a step when all
        agree to; returns whether they did. ``self.state`` is then where training stands.

        :param epoch: the epoch, counted from 1.
        """
        state, step = self.state, self.step
        if self.kl_warmup:
            step.set_kl_weight(kl_weight_at(epoch, self.beta, self.kl_warmup))
        start = time.perf_counter() - state.partial_seconds
        order_state = self.source.order.get_state()
        losses = [torch.tensor(v, device=self.device) for v in state.partial_losses]
        self.finite.begin()
        self.stopper.begin()
        step.policy.restart()  # the steps of one epoch are timed, not the test ELBO between
        for i, batch in self.source.epoch(epoch, state.step_in_epoch):
            full = len(batch[0]) == self.source.full_shard
            # Pyro's validation on a new run's first step makes a malformed model fail loudly;
            # after that it costs a tenth of a small step (benchmarks/results/svi-overhead-*.md).
            validate = self.steps_taken == 0 and not self.resumed
            if full and not validate:
                self._report(step.consider_compiling(batch, self.steps_left))
            with pyro.validation_enabled(validate):
                losses.append(step(*batch, full=full))
            self.steps_taken, self.steps_left = self.steps_taken + 1, self.steps_left - 1
            self.finite.check(losses, epoch, i)
            self.progress.step(i, losses, self.batch_size)
            if self.stopper.after(i) and i + 1 < self.steps_per_epoch:
                self.finite.check(losses, epoch)
                seconds = time.perf_counter() - start
                self.state = self.snapshot(epoch - 1, i + 1, order_state, losses, seconds)
                return True
        self.finite.check(losses, epoch)
        self._end_epoch(epoch, torch.stack(losses), time.perf_counter() - start)
        return self.stopper.at_end()

    def _end_epoch(self, epoch: int, losses: torch.Tensor, seconds: float) -> None:
        """Add the finished epoch to the history, with the test figures, and snapshot the state."""
        history, n = self.state.history, len(self.source.x)
        sizes = torch.full_like(losses, self.batch_size)
        sizes[-1] = n - self.batch_size * (len(sizes) - 1)
        history.step_loss += (losses / sizes).tolist()
        # in float64: each batch's float32 loss may be finite while their sum is not
        history.train_elbo.append(-losses.double().sum().item() / n)
        history.epoch.append(epoch)
        history.seconds.append(seconds)
        history.kl_weight.append(kl_weight_at(epoch, self.beta, self.kl_warmup))
        test_elbo, message = self.test_elbo(self.epochs - epoch)
        history.test_elbo.append(test_elbo)
        if message is not None:
            history.compile = f"{history.compile}; {message}"
            history.compile_seconds += self.test_elbo.policy.seconds
            self.progress.say(message)
        shown = {"train_elbo": f"{history.train_elbo[-1]:.2f}"}
        shown["test_elbo"] = f"{history.test_elbo[-1]:.2f}"
        for name, value in self.model.test_metrics(self.x_test, self.y_test).items():
            getattr(history, name).append(value)
            shown[name] = f"{value:.4f}"
        self.progress.figures(shown)
        self.state = self.snapshot(epoch, 0, self.source.order.get_state(), [], 0.0)

    def _report(self, message: str | None) -> None:
        """Say what came of compiling the step, in the history and above the progress bar."""
        if message is not None:
            history = self.state.history
            history.compile = message
            history.compile_seconds += self.step.policy.seconds
            self.progress.say(message)

    def snapshot(self, epoch: int, step: int, order: torch.Tensor, losses: list, seconds: float):
        """The state after ``epoch`` whole epochs and ``step`` steps of the next
        (:func:`~pyro_vae.training.state.snapshot`).

        :param epoch: the whole epochs done.
        :param step: the steps of the next epoch done.
        :param order: the batch order's generator state from before that epoch drew its order.
        :param losses: the losses of the unfinished epoch's steps, tensors on the device.
        :param seconds: the time of those steps.
        """
        history, optimizer = self.state.history, self.step.optimizer
        return snapshot(history, optimizer, order, self.device, epoch, step, losses, seconds)


def _guide_of(model: Program) -> str | None:
    # the guide family's name, for the objectives that need one; a program may have none
    posterior = getattr(model, "posterior", None)
    return None if posterior is None else name_of(posterior)

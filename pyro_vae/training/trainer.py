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

import pyro
import torch

from pyro_vae import validation
from pyro_vae.data.sources import Dataset, check_shape, eval_inputs, needs_binarization
from pyro_vae.device import resolve_device
from pyro_vae.errors import ConfigError
from pyro_vae.infer.compiling import COMPILE, CompilePolicy
from pyro_vae.infer.elbo import closed_form_kl
from pyro_vae.models import MODELS
from pyro_vae.models.program import Program
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
    vae: Program,
    data: Dataset,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    seed: int = 0,
    objective: str = "trace",
    num_particles: int = 1,
    beta: float = 1.0,
    kl_warmup: int = 0,
    labeled: int | None = None,
    binarization: str = "dynamic",
    compile: str | bool = "off",
    stream: bool = False,
    workers: int = 2,
    progress: bool = True,
    checkpoint: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
    stop: Callable[[], bool] | None = None,
) -> History:
    """Fit ``vae`` to ``data.x_train`` by SVI; return the per-epoch history.

    :param vae: the model, trained in place (and moved to ``device``): a
        :class:`~pyro_vae.models.vae.VAE`, :class:`~pyro_vae.models.cvae.CVAE` or
        :class:`~pyro_vae.models.m2.M2`, any model of :data:`~pyro_vae.models.MODELS` (as
        :func:`~pyro_vae.models.build_model` makes them): an ``nn.Module`` whose Pyro programs
        ``model`` and ``guide`` share its parameters.
    :param data: the data set, a :class:`~pyro_vae.data.sources.Dataset` as
        :func:`~pyro_vae.data.sources.load_dataset` gives it: training on ``x_train``, the test ELBO
        on ``x_test``. Its examples must have the shape ``vae.x_shape``; the CVAE and M2 need its
        labels.
    :param epochs: the passes over the training set (for M2, over its unlabelled examples); with
        ``resume``, the total, the epochs already done included.
    :param batch_size: the examples of a step (the last batch of an epoch may be smaller); under
        torchrun, of all the ranks together.
    :param lr: Adam's learning rate.
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (a CUDA GPU if there is one,
        else the CPU), or a :class:`torch.device`: where the model and the data are put.
    :param objective: ``"trace"`` (``Trace_ELBO``), ``"meanfield"`` (``TraceMeanField_ELBO``),
        ``"iwae"`` (``RenyiELBO(alpha=0)``: the importance-weighted bound of Burda et al. 2015),
        or the hand-written twins ``"manual"`` (:func:`pyro_vae.infer.elbo.manual_elbo`, plain
        PyTorch, no ``pyro.infer``) and ``"manual-iwae"`` (:func:`pyro_vae.infer.elbo.iwae_bound`).
    :param num_particles: K, the vectorized particles each example's objective averages over
        (the ELBOs) or log-mean-exps over (the IWAE bound).
    :param beta: the weight of the KL term, ``E_q[log p(x|z)] - beta KL(q(z|x) || p(z))``
        (Higgins et al. 2017); 1 is the ELBO. Not for the IWAE objectives, which have no KL term.
    :param kl_warmup: N > 0: the weight rises linearly over the first N epochs, beta/N in the
        first, 2 beta/N in the second, ..., beta in the N-th and after (Bowman et al. 2016,
        Sonderby et al. 2016); 0: beta throughout. ``history.kl_weight`` has each epoch's weight;
        the test ELBO is always the ELBO itself, weight 1.
    :param labeled: for a semi-supervised model (M2), the number of training examples whose
        labels it sees, chosen with ``seed`` and balanced over the classes
        (:func:`pyro_vae.data.sources.labeled_split`); the others are its unlabelled examples. An
        epoch is one pass over the unlabelled ones, ``batch_size`` a step; each step also takes the
        next ``min(batch_size, labeled)`` labelled examples from an endless stream of seeded
        permutations of them, so every step's batch mixes both, half and half (one shape, one
        compiled graph), and the few labelled examples are seen far more often than once an
        epoch (``benchmarks/results/semi-supervised-*.md``: this beat the tutorial's once an epoch).
        The CVAE (``"all"``) takes every example's label; both need ``data``'s labels.
    :param binarization: ``"dynamic"``: for a binary likelihood, grey training data is binarized
        afresh in every batch and the test set once with a fixed seed (:mod:`pyro_vae.data`);
        ``"none"``: the data are used as they are.
    :param compile: ``"on"`` (or ``True``): after the first step, capture the step on a full
        batch (the Pyro program's loss and gradients) as one graph and compile it
        (:mod:`pyro_vae.infer.compiling`); ``"off"`` (``False``): every step eager; ``"auto"``: time
        a few eager steps and compile when the steps ahead repay the compile time. A program that
        cannot be captured trains eagerly; ``history.compile`` says what happened, in one line.
        Compiled steps agree with eager ones to float32 rounding.
    :param stream: keep the training set in host memory and bring each batch to the device
        through a ``DataLoader`` with ``workers`` worker processes (0: in this process), as is
        done anyway for a set larger than half the device's memory (:mod:`pyro_vae.data.streaming`).
        The same steps as in memory, number for number; ``history.data`` says which was used.
    :param workers: the ``DataLoader``'s worker processes for a streamed training set; 0 loads
        the batches in this process. Unused when the set is kept on the device.
    :param seed: seeds the batch order, the binarization and the guide's noise. The initial
        weights come from the RNG state when ``vae`` was built: seed before building it
        (``pyro.set_rng_seed``) for a fully repeatable run.
    :param progress: show a progress bar and say where the data live and what came of compiling
        (on stderr; under torchrun, rank 0 alone).
    :param checkpoint: called with the :class:`TrainState` after every epoch and when ``stop``
        ends training early, e.g. to write a checkpoint.
    :param resume: a state handed to ``checkpoint`` earlier (``vae`` holding the weights of that
        moment): training goes on from it and takes the very steps the uninterrupted run would.
    :param stop: asked after every step; when it returns true, the state is handed to
        ``checkpoint`` and :class:`TrainingInterrupted` is raised. Under torchrun the ranks agree
        every :data:`CHECK_EVERY` steps, so all of them stop after the same step.

    The test ELBO after each epoch is :func:`pyro_vae.infer.elbo.dataset_elbo` with ``seed``. A loss
    that stops being finite raises :class:`TrainingError` (checked every :data:`CHECK_EVERY`
    steps and at the end of each epoch), before ``checkpoint`` can see the broken weights.

    Inside a ``torch.distributed`` process group (``torchrun``), each rank trains on its shard
    of every global batch of ``batch_size`` and the gradients are summed over ranks
    (:mod:`pyro_vae.training.distributed`); the history is the same on every rank.
    """
    settings = dict(seed=seed, objective=objective, binarization=binarization, compile=compile)
    settings.update(num_particles=num_particles, beta=beta, kl_warmup=kl_warmup, labeled=labeled)
    settings.update(stream=stream, workers=workers)
    try:
        trainer = Trainer(vae, data, batch_size=batch_size, lr=lr, device=device, **settings)
        if resume is not None:
            trainer.restore(resume)
        return trainer.fit(epochs, progress=progress, checkpoint=checkpoint, stop=stop)
    except torch.OutOfMemoryError:  # the GPU's: activations come on top of Trainer's arithmetic
        raise ConfigError(
            f"training ran out of the memory of {resolve_device(device)}; try a smaller "
            "{batch_size} or smaller {hidden_dims} (the last checkpoint is kept)"
        ) from None


def check_objective(
    objective: str,
    num_particles: int = 1,
    beta: float = 1.0,
    kl_warmup: int = 0,
    epochs: int | None = None,
    guide: str | None = None,
    model: str = "vae",
) -> tuple[int, float, int]:
    """``(num_particles, beta, kl_warmup)``, checked against each other, the objective, the
    ``epochs`` of training, the ``guide`` family and the ``model``: a warm-up longer than
    training, a KL weight for an objective with no KL term, more particles than the objective
    draws, or a guide or model the objective cannot use, is a :class:`ConfigError` naming the
    setting.

    :param objective: the objective's name, as :func:`train` takes it.
    :param num_particles: K, the particles per example.
    :param beta: the weight of the KL term.
    :param kl_warmup: the warm-up's length in epochs; 0 for none.
    :param epochs: the epochs of training, which the warm-up must not outlast; ``None``: not
        checked.
    :param guide: the guide family's name; ``None``: not checked.
    :param model: the model's name in :data:`~pyro_vae.models.MODELS`, whose objectives are allowed.
    """
    objectives = MODELS[validation.choice("model", model, list(MODELS))].objectives
    if objective not in objectives:
        raise ConfigError(
            f"{objective!r} is not one of: {', '.join(objectives)} (the objectives of {{model}} "
            f"{model!r})",
            "objective",
        )
    families = objectives[objective].guides
    if guide is not None and families and guide not in families:
        raise ConfigError(
            f"objective {objective!r} needs the guide {' or '.join(map(repr, families))}, not "
            f"{{guide}} {guide!r}: it scores z with the guide's parameters held fixed",
        )
    most = objectives[objective].max_particles
    if most == 1 and num_particles != 1:
        raise ConfigError(
            f"must be 1 for {{model}} {model!r}, which sums over the labels exactly and draws "
            "one z per label",
            "num_particles",
        )
    num_particles = validation.whole("num_particles", num_particles, high=most)
    beta = validation.positive("beta", beta)
    kl_warmup = validation.whole("kl_warmup", kl_warmup, low=0)
    if epochs is not None and kl_warmup > epochs:
        raise ConfigError(
            f"({kl_warmup} epochs) is longer than the training ({{epochs}} {epochs})",
            "kl_warmup",
        )
    if not objectives[objective].weighs_kl:
        for name, value, default in (("beta", beta, 1.0), ("kl_warmup", kl_warmup, 0)):
            if value != default:
                raise ConfigError(
                    f"weighs the KL term of the ELBO, and objective {objective!r}, the IWAE "
                    "bound, has none: use it with objective 'trace' or 'meanfield'",
                    name,
                )
    return num_particles, beta, kl_warmup


def check_labeled(model: str, labeled: int | None) -> int | None:
    """``labeled``, the labelled examples of a semi-supervised ``model`` (M2), checked: M2 needs
    it and the other models take none.

    :param model: the model's name in :data:`~pyro_vae.models.MODELS`.
    :param labeled: the number of labelled examples, or ``None``.
    """
    return MODELS[validation.choice("model", model, list(MODELS))].check_labeled(labeled)


class Trainer:
    """The moving parts of one training run, set up once: the batches, the step, the random
    generators and the :class:`~pyro_vae.training.state.TrainState`; :meth:`fit` runs epochs of
    steps. The parameters are :func:`~pyro_vae.training.train`'s, which says more.

    :param model: the model to train, in place (:class:`~pyro_vae.models.program.Program`).
    :param data: the data set: training on ``x_train``, the test ELBO on ``x_test``.
    :param batch_size: the examples of a step, of all ranks together.
    :param lr: Adam's learning rate.
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a :class:`torch.device`.
    :param seed: seeds the batch order, the binarization and the guide's noise.
    :param objective: the objective's name (``"trace"``, ``"meanfield"``, ``"iwae"``, ...).
    :param binarization: ``"dynamic"`` or ``"none"``.
    :param compile: ``"on"``, ``"off"`` or ``"auto"`` (or ``True``, ``False``).
    :param num_particles: K, the vectorized particles of each example's objective.
    :param beta: the weight of the KL term (after the warm-up).
    :param kl_warmup: the epochs over which the KL weight rises to ``beta``; 0 for none.
    :param labeled: the labelled examples of a semi-supervised model; ``None`` for the others.
    :param stream: stream the training set to the device by a ``DataLoader``, even if it fits.
    :param workers: the ``DataLoader``'s worker processes, when streamed.
    """

    def __init__(
        self,
        model: Program,
        data: Dataset,
        *,
        batch_size: int,
        lr: float,
        device: str | torch.device,
        seed: int,
        objective: str,
        binarization: str,
        compile: str | bool = "off",
        num_particles: int = 1,
        beta: float = 1.0,
        kl_warmup: int = 0,
        labeled: int | None = None,
        stream: bool = False,
        workers: int = 2,
    ):
        batch_size = validation.count("batch_size", batch_size)
        self.num_particles, self.beta, self.kl_warmup = check_objective(
            objective, num_particles, beta, kl_warmup, guide=_guide_of(model), model=model.name
        )
        compile = {True: "on", False: "off"}.get(compile, compile)
        compile = validation.choice("compile", compile, COMPILE)
        self.lr, self.seed = validation.positive("lr", lr), validation.seed("seed", seed)
        check_shape(model.x_shape, data)
        self.rank, self.world = distributed.rank_and_world()
        if batch_size < self.world:
            raise ConfigError(
                f"{batch_size} is smaller than the {self.world} processes", "batch_size"
            )
        self.model, self.objective, self.device = model, objective, resolve_device(device)
        self.batch_size, self.compile = batch_size, compile
        workers = validation.whole("workers", workers, low=0)
        self.x_test = eval_inputs(model.likelihood, data.x_test, binarization)
        streamed, self.placement = placement(
            model, data, self.device, stream=validation.flag("stream", stream), workers=workers,
            batch_size=batch_size, num_particles=self.num_particles, world=self.world,
            x_test=self.x_test,
        )  # fmt: skip
        model.check_labeled(labeled)
        self.source = BatchSource(
            model, data, self.device, batch_size=batch_size, seed=self.seed, labeled=labeled,
            streamed=streamed, workers=workers, rank=self.rank, world=self.world,
            dynamic=needs_binarization(model.likelihood, data.x_train, binarization),
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
        policy = CompilePolicy("the training step", self.compile, timed=AUTO_TIMED_STEPS,
                               device=self.device, agree=agree)  # fmt: skip
        weight = None if self.kl_warmup else self.beta
        self.step = SVIStep(
            model, self.objective, self.num_particles, self.lr, weight, policy, self.world
        )
        self.test_elbo = TestELBO(model, self.x_test, self.y_test, seed=self.seed,
                                  objective=self.objective, compile=self.compile,
                                  agree=agree)  # fmt: skip
        if self.objective == "meanfield":  # Pyro would quietly fall back to the sampled KL instead
            with torch.no_grad():
                labels = None if self.y_test is None else self.y_test[:1]
                cond = model.condition(labels, self.x_test)
                q = model.posterior_dist(self.x_test[:1], *cond)
                closed_form_kl(model, q, model.prior(1, self.x_test))

    def restore(self, state: TrainState) -> None:
        """Go on from ``state``, handed to ``checkpoint`` earlier, with the model holding the
        weights of that moment: the same batches, draws and Adam moments as if never stopped.

        :param state: a state handed to ``checkpoint`` earlier, e.g. read back by
            :func:`~pyro_vae.runs.checkpoint.train_state`.
        """
        resume_from(state, self.step.optimizer, self.source.order, lr=self.lr, rank=self.rank,
                    world=self.world, device=self.device)  # fmt: skip
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
                        None, self.model.name)  # fmt: skip
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

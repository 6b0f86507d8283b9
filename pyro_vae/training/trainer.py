"""Training: stochastic variational inference on a VAE, on the CPU or a CUDA device.

Each step draws a mini-batch, estimates the negative ELBO with a Pyro objective (``Trace_ELBO`` by
default) and takes an Adam step on its gradient, which flows through the reparameterized z. This is
``pyro.infer.SVI.step`` with one ``torch.optim.Adam`` over ``vae.parameters()`` in place of
``pyro.optim``'s one optimizer per parameter: the same update, without the global param store, so
that the optimizer's state is a plain ``state_dict`` and any number of VAEs can train in one
process. It is also the optimizer of the pure-PyTorch trainer (``objective="manual"``, the
hand-written ELBO with no ``pyro.infer``), so that the two trainers take the very same steps and
their loss trajectories can be compared number for number.

A training set that fits the device lives there as one tensor (8-bit images as ``uint8``, made
floats a batch at a time) and batches are drawn by a shuffled index, so no per-example data loader
runs in the hot loop; a larger one is streamed to the device by a ``DataLoader``, batch by batch,
in the same order and with the same random draws (:mod:`pyro_vae.data.streaming`).
:meth:`Trainer.step` never waits for the device: values are read back every :data:`CHECK_EVERY`
steps and at the end of each epoch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae import validation
from pyro_vae.config import COMPILE, check_labeled, check_objective
from pyro_vae.data.sources import (
    Dataset,
    as_floats,
    binarize_afresh,
    check_labels,
    check_shape,
    eval_inputs,
    labeled_split,
    needs_binarization,
)
from pyro_vae.data.streaming import should_stream, stream_batches
from pyro_vae.device import check_fits, resolve_device
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.infer.compiling import CompiledLoss, compile_when_it_pays
from pyro_vae.infer.elbo import (
    EVAL_BATCH_SIZE,
    MODEL_OBJECTIVES,
    closed_form_kl,
    dataset_elbo,
    make_loss,
)
from pyro_vae.models.conditional import accuracy, one_hot
from pyro_vae.models.vae import VAE
from pyro_vae.parts.networks import activation_numbers
from pyro_vae.parts.registry import name_of
from pyro_vae.training import distributed

EPOCH_COLUMNS = ("epoch", "train_elbo", "test_elbo", "seconds", "kl_weight")
ACCURACY_COLUMN = "test_accuracy"  # M2's, after EPOCH_COLUMNS
#: Steps between looks at the device's values: the losses' finiteness, the progress bar's loss,
#: and (under torchrun) whether any rank was asked to stop.
CHECK_EVERY = 10
# compile="auto" times this many eager steps before it decides (compiled.compile_when_it_pays)
AUTO_TIMED_STEPS = 5


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
        :class:`~pyro_vae.models.vae.VAE`, :class:`~pyro_vae.models.conditional.CVAE` or
        :class:`~pyro_vae.models.conditional.M2`, any model of :data:`~pyro_vae.models.MODELS` (as
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
    :param labeled: for M2 (``vae.labels == "some"``), the number of training examples whose
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


def kl_weight_at(epoch: int, beta: float, kl_warmup: int) -> float:
    """The KL term's weight in ``epoch`` (counted from 1): ``beta * epoch / kl_warmup`` during a
    warm-up of ``kl_warmup`` epochs, ``beta`` after it, or throughout when ``kl_warmup`` is 0.

    :param epoch: the epoch, counted from 1.
    :param beta: the weight after the warm-up.
    :param kl_warmup: the warm-up's length in epochs; 0 for none.
    """
    return beta * min(1.0, epoch / kl_warmup) if kl_warmup else beta


class Trainer:
    """The moving parts of one training run, set up once: the data on the device, the loss, the
    optimizer, the random generators and the :class:`TrainState`. :meth:`step` is the hot path;
    :meth:`fit` runs epochs of steps. The parameters are :func:`train`'s, which says more.

    :param vae: the model to train, in place: any model of :data:`~pyro_vae.models.MODELS`.
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
    :param labeled: M2's number of labelled examples; ``None`` for the other models.
    :param stream: stream the training set to the device by a ``DataLoader``, even if it fits.
    :param workers: the ``DataLoader``'s worker processes, when streamed.
    """

    def __init__(
        self,
        vae: VAE,
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
        self.batch_size = validation.count("batch_size", batch_size)
        self.num_particles, self.beta, self.kl_warmup = check_objective(
            objective, num_particles, beta, kl_warmup, guide=name_of(vae.posterior), model=vae.kind
        )
        self.compile = validation.choice(
            "compile", {True: "on", False: "off"}.get(compile, compile), COMPILE
        )
        self.lr = validation.positive("lr", lr)
        self.seed = validation.seed("seed", seed)
        check_shape(vae.x_shape, data)
        self.rank, self.world = distributed.rank_and_world()
        if self.batch_size < self.world:
            raise ConfigError(
                f"{batch_size} is smaller than the {self.world} processes", "batch_size"
            )
        self.vae, self.objective, self.device = vae, objective, resolve_device(device)
        self.workers = validation.whole("workers", workers, low=0)
        self.dynamic = needs_binarization(vae.likelihood, data.x_train, binarization)
        self.x_test = eval_inputs(vae.likelihood, data.x_test, binarization)
        self.streamed = self._place_data(data, validation.flag("stream", stream))
        self._set_up_labels(data, labeled)
        self.x_test = self.x_test.to(self.device)
        vae.to(self.device)
        self._set_up_objective()
        self.parameters = list(vae.parameters())
        # foreach: one call per step for all parameters, bitwise the for-loop Adam's numbers
        self.optimizer = torch.optim.Adam(self.parameters, lr=self.lr, foreach=True)
        self.steps_per_epoch = math.ceil(len(self.x_train) / self.batch_size)
        self.steps_taken, self.resumed = 0, False
        self.compiled: CompiledLoss | None = None
        self._decided, self._timer, self._say = self.compile == "off", None, False
        self.eval: CompiledLoss | None = None  # the test ELBO's objective, when compiled
        self._eval_decided = self.compile == "off"
        # the size of this rank's shard of a full batch: the one shape that is compiled
        shards = torch.arange(min(self.batch_size, len(self.x_train))).tensor_split(self.world)
        self.full_shard = len(shards[self.rank])
        self.state = TrainState(history=History(data=self.placement))
        self.batch_order = torch.Generator().manual_seed(self.seed)
        # every rank its own draws; rank 0 of any world draws what a single process would
        pyro.set_rng_seed((self.seed + self.rank) % 2**32)  # numpy takes seeds below 2**32
        if self.world > 1:
            distributed.broadcast_parameters(vae)

    def _set_up_labels(self, data: Dataset, labeled: int | None) -> None:
        """What the steps draw from: ``x_train`` (for M2, its unlabelled part), and the labels
        the programs take: every example's for the CVAE (``y_train``, and ``test_cond`` for the
        test ELBO), the ``labeled`` examples' for M2 (``x_labeled``, ``y_labeled``); one-hot."""
        vae, device, floats = self.vae, self.device, self.x_test
        check_labeled(vae.kind, labeled)
        self.x_labeled = self.y_labeled = self.y_train = None
        self.test_cond: tuple[torch.Tensor, ...] = ()
        x_train = data.x_train
        home = torch.device("cpu") if self.streamed else device  # where the training set lives
        if vae.labels != "none":
            check_labels(data, vae.num_classes)
            y_train = one_hot(data.y_train, vae.num_classes, floats.to("cpu"))
        if vae.labels == "all":
            self.y_train = y_train.to(home)
            self.test_cond = (one_hot(data.y_test, vae.num_classes, floats).to(device),)
        if vae.labels == "some":
            self.y_test = data.y_test.to(device)
            index, rest = labeled_split(data.y_train, labeled, vae.num_classes, self.seed)
            self.x_labeled, self.y_labeled = x_train[index].to(device), y_train[index].to(device)
            x_train = x_train[rest]
        self.x_train = x_train.to(home)
        # M2: the labelled examples each step takes, as many as unlabelled ones (all, if fewer)
        labeled_count = 0 if self.x_labeled is None else len(self.x_labeled)
        self.labeled_per_step = min(labeled_count, self.batch_size)
        self._labeled_order: tuple[int, torch.Generator, torch.Tensor] | None = None

    def _set_up_objective(self) -> None:
        """The training loss, with the KL weight bound in or (during a warm-up) as an input, and
        the test ELBO's loss."""
        vae, objective = self.vae, self.objective
        loss = make_loss(vae, objective, self.num_particles)
        # a weight that changes from epoch to epoch is an input of the (compiled) step
        self.loss_fn = loss if self.kl_warmup else partial(loss, kl_weight=self.beta)
        self.weight: tuple[torch.Tensor, ...] = ()  # the warm-up's weight in this epoch
        self.elbo_fn = make_loss(vae, MODEL_OBJECTIVES[vae.kind][objective].elbo)
        if objective == "meanfield":  # Pyro would quietly fall back to the sampled KL instead
            with torch.no_grad():
                q = vae.posterior_dist(self.x_test[:1], *(y[:1] for y in self.test_cond))
                closed_form_kl(vae, q, vae.prior(1, self.x_test))

    def _place_data(self, data: Dataset, stream: bool) -> bool:
        """Whether the training set is streamed (see :mod:`pyro_vae.data.streaming`), said in
        ``history.data``; raises if what must be on the device does not fit there."""
        train_bytes = data.x_train.numel() * data.x_train.element_size()
        streamed, why = should_stream(train_bytes, self.device, stream)
        where = (
            f"streamed to {self.device} by a DataLoader ({self.workers} workers)"
            if streamed
            else f"kept on {self.device}"
        )
        self.placement = f"{data.describe()}; the training set {where}: {why}"
        # weights, gradients and Adam's two moments, and the data: activations come on top
        weights = sum(p.numel() * p.element_size() for p in self.vae.parameters())
        data_bytes = self.x_test.numel() * self.x_test.element_size()
        data_bytes += 0 if streamed else train_bytes
        check_fits(4 * weights + data_bytes, self.device, "the weights, Adam's state and the data")
        # each particle of each example runs the decoder and the likelihoods (M2's, once for
        # every label it sums over); kept for backward
        vae = self.vae
        where = next(vae.parameters()).device  # the caller's VAE may be on the GPU already
        z, cond = (
            torch.zeros(1, vae.z_dim, device=where),
            (torch.zeros(1, vae.num_classes, device=where),),
        )
        decoded = activation_numbers(vae.decoder, z, *cond[: bool(vae.num_classes)])
        per_particle = decoded + 4 * data.x_train[0].numel()
        if vae.labels == "some":
            per_particle *= vae.num_classes
        shard = -(-min(self.batch_size, len(data.x_train)) // self.world)
        needed = 2 * self.num_particles * shard * per_particle * self.x_test.element_size()
        what = f"{{param}} = {self.num_particles}: the activations of {self.num_particles} "
        check_fits(needed, self.device, f"{what}particles of {shard} examples", "num_particles")
        return streamed

    def restore(self, state: TrainState) -> None:
        """Go on from ``state``, handed to ``checkpoint`` earlier, with the VAE holding the
        weights of that moment: the same batches, draws and Adam moments as if never stopped.

        :param state: a state handed to ``checkpoint`` earlier, e.g. read back by
            :func:`~pyro_vae.runs.checkpoint.train_state`.
        """
        rng = state.rng or {}
        if state.optimizer is None or "batch_order" not in rng or "ranks" not in rng:
            raise ConfigError("the checkpoint lacks the optimizer or random state needed to resume")
        if len(rng["ranks"]) != self.world:
            raise ConfigError(
                f"the checkpoint was written by {len(rng['ranks'])} process(es); resume it with "
                f"the same number (now {self.world}), so that every rank's batches and draws go on"
            )
        self.optimizer.load_state_dict(state.optimizer)
        for group in self.optimizer.param_groups:  # a resumed run may change the learning rate
            group["lr"] = self.lr
        for values in self.optimizer.state.values():  # Adam's counters belong on the CPU
            values["step"] = values["step"].cpu()
        _set_rng_state(rng["ranks"][self.rank], self.device)
        self.batch_order.set_state(rng["batch_order"].cpu())
        self.state, self.resumed = state, True
        state.history.data = self.placement  # a resumed run may be streamed, or no longer

    def step(self, *batch: torch.Tensor) -> torch.Tensor:
        """One SVI step on ``batch``, this rank's shard of a batch (``x``, then the labels or
        labelled examples of the models that take them: see :meth:`batches`): the loss and its
        gradient (summed over ranks) and one Adam step. Returns the whole batch's loss,
        detached, on the device.

        :param batch: this rank's shard of a batch, as :meth:`batches` gives it: ``x``, then the
            CVAE's labels, or M2's labelled examples and their labels.
        """
        if self.compiled is not None and len(batch[0]) == self.full_shard:
            loss, grads = self.compiled(*batch, *self.weight)
            for p, g in zip(self.parameters, grads, strict=True):
                p.grad = g
        else:
            empty = not len(batch[0])
            zero = torch.zeros((), device=self.device)
            loss = zero if empty else self.loss_fn(*batch, *self.weight)
            if loss.requires_grad:
                loss.backward()
        if self.world > 1:
            loss = distributed.all_reduce_gradients(self.parameters, loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def batches(self, epoch: int, start: int) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        """``(i, batch)`` for each batch ``i`` of ``epoch`` from ``start`` on, this rank's shard,
        binarized afresh if the likelihood needs it: ``(x,)``; ``(x, y)`` for the CVAE; for M2
        ``(x, x_labeled, y_labeled)``, the unlabelled batch and the step's labelled examples.

        :param epoch: the epoch, counted from 1: M2's labelled examples follow the step count.
        :param start: the first batch to give, counted from 0: a resumed epoch's next step.
        """
        order = torch.randperm(len(self.x_train), generator=self.batch_order)
        indices = order.to(self.x_train.device).split(self.batch_size)[start:]
        if self.world > 1:
            indices = [index.tensor_split(self.world)[self.rank] for index in indices]
        for i, rows in enumerate(self._rows(indices), start=start):
            x = self._binarized(as_floats(rows[0]))
            if self.y_train is not None:
                yield i, (x, rows[1])
            elif self.x_labeled is not None:
                labeled = self._labeled_index((epoch - 1) * self.steps_per_epoch + i)
                if self.world > 1:
                    labeled = labeled.tensor_split(self.world)[self.rank]
                x_labeled = as_floats(self.x_labeled[labeled])
                yield i, (x, self._binarized(x_labeled), self.y_labeled[labeled])
            else:
                yield i, (x,)

    def _rows(self, indices: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, ...]]:
        """The training examples (and the CVAE's labels) at each batch of ``indices``, on the
        device: indexed there, or streamed to it."""
        tensors = (self.x_train,) + (() if self.y_train is None else (self.y_train,))
        if self.streamed:
            yield from stream_batches(tensors, indices, self.device, self.workers)
        else:
            for index in indices:
                yield tuple(t[index] for t in tensors)

    def _binarized(self, x: torch.Tensor) -> torch.Tensor:
        return binarize_afresh(x) if self.dynamic else x

    def _labeled_index(self, step: int) -> torch.Tensor:
        """The labelled examples of training step ``step`` (counted from 0 over the whole run):
        the next :attr:`labeled_per_step` of the endless stream of permutations of them, a
        function of the step alone, so a resumed run takes the very same ones."""
        n, size = len(self.x_labeled), self.labeled_per_step
        start, parts = step * size, []
        while size:
            permutation, offset = divmod(start, n)
            take = min(size, n - offset)
            parts.append(self._labeled_permutation(permutation)[offset : offset + take])
            start, size = start + take, size - take
        return torch.cat(parts)

    def _labeled_permutation(self, j: int) -> torch.Tensor:
        """The ``j``-th draw of ``randperm`` from a generator seeded with the run's seed (drawn
        again from the start when a resumed run asks for an earlier one)."""
        if self._labeled_order is None or self._labeled_order[0] > j:
            self._labeled_order = (-1, torch.Generator().manual_seed(self.seed), torch.empty(0))
        drawn, generator, permutation = self._labeled_order
        while drawn < j:
            permutation, drawn = torch.randperm(len(self.x_labeled), generator=generator), drawn + 1
        self._labeled_order = (drawn, generator, permutation)
        return permutation.to(self.device)

    def fit(
        self,
        epochs: int,
        *,
        progress: bool = True,
        checkpoint: Callable[[TrainState], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> History:
        """Train until ``epochs`` epochs are done; see :func:`train`.

        :param epochs: the total of epochs, those already done included.
        :param progress: show a progress bar (under torchrun, rank 0 alone).
        :param checkpoint: called with the :class:`TrainState` after every epoch and when ``stop``
            ends training early.
        :param stop: asked after every step; true ends training with :class:`TrainingInterrupted`.
        """
        epochs = validation.count("epochs", epochs)
        check_objective(
            self.objective,
            self.num_particles,
            self.beta,
            self.kl_warmup,
            epochs,
            None,
            self.vae.kind,
        )
        total = epochs * self.steps_per_epoch
        done = self.state.epoch * self.steps_per_epoch + self.state.step_in_epoch
        show = progress and self.rank == 0
        self.steps_left, self._say, self.epochs = total - done, show, epochs
        if show:
            tqdm.write(f"pyro-vae: {self.placement}", file=sys.stderr)
        with tqdm(
            total=total, initial=min(done, total), disable=not show, unit="step", dynamic_ncols=True
        ) as bar:
            for epoch in range(self.state.epoch + 1, epochs + 1):
                bar.set_description(f"epoch {epoch}/{epochs}")
                stopping = self.run_epoch(epoch, bar, stop or (lambda: False))
                if checkpoint is not None:
                    checkpoint(self.state)
                if stopping and (self.state.step_in_epoch or epoch < epochs):
                    raise TrainingInterrupted(self.state, self.steps_per_epoch)
        if not self._decided:
            self.state.history.compile = "the training step stayed eager: too few batches to decide"
        return self.state.history

    def run_epoch(self, epoch: int, bar: tqdm, stop: Callable[[], bool]) -> bool:
        """Take the steps of ``epoch`` that are left and close it, or stop after a step when
        ``stop`` asks to; returns whether it asked. ``self.state`` is then where training stands.

        :param epoch: the epoch, counted from 1.
        :param bar: the progress bar, advanced a step at a time.
        :param stop: asked after every step whether to stop.
        """
        state = self.state
        if self.kl_warmup:
            weight = kl_weight_at(epoch, self.beta, self.kl_warmup)
            self.weight = (torch.tensor(weight, device=self.device),)
        start = time.perf_counter() - state.partial_seconds
        order_state = self.batch_order.get_state()
        losses = [torch.tensor(v, device=self.device) for v in state.partial_losses]
        checked, asked = 0, False
        for i, batch in self.batches(epoch, state.step_in_epoch):
            # Pyro's validation on a new run's first step makes a malformed model fail loudly;
            # after that it costs a tenth of a small step (benchmarks/results/svi-overhead-*.md).
            validate = self.steps_taken == 0 and not self.resumed
            if not (validate or self._decided) and len(batch[0]) == self.full_shard:
                self._consider_compiling(batch, epoch)
            with pyro.validation_enabled(validate):
                losses.append(self.step(*batch))
            self.steps_taken += 1
            self.steps_left -= 1
            bar.update()
            asked = stop() or asked
            if (i + 1) % CHECK_EVERY == 0:
                checked = self._check_finite(losses, checked, epoch)
                bar.set_postfix(loss=f"{losses[-1].item() / self.batch_size:.2f}")
            if self._agree_to_stop(asked, i) and i + 1 < self.steps_per_epoch:
                self._check_finite(losses, checked, epoch)
                seconds = time.perf_counter() - start
                self.state = self.snapshot(epoch - 1, i + 1, order_state, losses, seconds)
                return True
        self._check_finite(losses, checked, epoch)
        self._end_epoch(epoch, torch.stack(losses), time.perf_counter() - start, bar)
        return self._agree_to_stop(asked, self.steps_per_epoch - 1)

    def _consider_compiling(self, batch: tuple[torch.Tensor, ...], epoch: int) -> None:
        """Before a step on a full batch (not a new run's first, eager and validated), capture
        the step and compile it: at once (``"on"``), or (``"auto"``) once AUTO_TIMED_STEPS eager
        steps of one epoch are timed, if the steps ahead repay the compile time."""
        eager_seconds = None
        if self.compile == "auto":
            if self._timer is None or self._timer[0] != epoch:
                self._timer = (epoch, self.steps_taken, self._clock())
                return
            _, first, start = self._timer
            if self.steps_taken - first < AUTO_TIMED_STEPS:
                return
            eager_seconds = (self._clock() - start) / (self.steps_taken - first)
        self._decided = True
        self.compiled, message, seconds = compile_when_it_pays(
            "the training step",
            lambda: CompiledLoss(self.vae, self.loss_fn, *batch, *self.weight),
            batch[0],
            eager_seconds,
            self.steps_left,
            lambda worth: distributed.any_rank(worth, self.device),
        )
        self._report(message, seconds)

    def _test_elbo(self, epoch: int) -> float:
        """The test ELBO with the run's seed; with ``compile`` on or auto, its batches compiled
        once they are timed (at the first epoch's end) and the epochs ahead repay it."""
        first = self.x_test[:EVAL_BATCH_SIZE]
        first_cond = tuple(y[:EVAL_BATCH_SIZE] for y in self.test_cond)
        batches = max(1, len(self.x_test) // len(first))  # those shaped like the first
        start = self._clock() if not self._eval_decided else 0.0  # timed once, to decide
        value = dataset_elbo(
            self.vae,
            self.x_test,
            seed=self.seed,
            objective=self.objective,
            full_batch=self.eval,
            labels=self.test_cond[0] if self.test_cond else None,
        )
        if not self._eval_decided:
            self._eval_decided = True
            compiled, message, seconds = compile_when_it_pays(
                "the test ELBO",
                lambda: CompiledLoss(self.vae, self.elbo_fn, first, *first_cond, gradients=False),
                first,
                (self._clock() - start) / batches,
                (self.epochs - epoch) * batches,
                lambda worth: distributed.any_rank(worth, self.device),
            )
            self.eval = compiled
            self._report(message, seconds, append=True)
        return value

    def _clock(self) -> float:
        if self.device.type == "cuda":  # a few times a run, to time eager work before compiling
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _report(self, message: str, seconds: float, append: bool = False) -> None:
        history = self.state.history
        history.compile = f"{history.compile}; {message}" if append else message
        history.compile_seconds += seconds
        if self._say:
            tqdm.write(f"pyro-vae: {message}", file=sys.stderr)

    def _agree_to_stop(self, asked: bool, i: int) -> bool:
        """Whether to stop after step ``i``: at once in one process; under torchrun, where every
        rank looks (every CHECK_EVERY steps and at the epoch's end), if any rank was asked."""
        if self.world == 1:
            return asked
        if (i + 1) % CHECK_EVERY and i + 1 < self.steps_per_epoch:
            return False
        return distributed.any_rank(asked, self.device)

    def _check_finite(self, losses: list[torch.Tensor], checked: int, epoch: int) -> int:
        """Raise if a loss from ``losses[checked]`` on is not finite; return the count checked."""
        if checked < len(losses):
            finite = torch.isfinite(torch.stack(losses[checked:]))
            if not bool(finite.all()):
                first = checked + int((~finite).nonzero()[0])
                raise TrainingError(
                    f"the loss stopped being finite at step {first + 1} of {self.steps_per_epoch} "
                    f"in epoch {epoch}; nothing from that epoch was saved. Try a lower {{lr}} "
                    f"(now {self.lr:g})"
                )
        return len(losses)

    def _end_epoch(self, epoch: int, losses: torch.Tensor, seconds: float, bar: tqdm) -> None:
        """Add the finished epoch to the history, with the test ELBO, and snapshot the state."""
        history, n = self.state.history, len(self.x_train)
        sizes = torch.full_like(losses, self.batch_size)
        sizes[-1] = n - self.batch_size * (len(sizes) - 1)
        history.step_loss += (losses / sizes).tolist()
        # in float64: each batch's float32 loss may be finite while their sum is not
        history.train_elbo.append(-losses.double().sum().item() / n)
        history.epoch.append(epoch)
        history.seconds.append(seconds)
        history.kl_weight.append(kl_weight_at(epoch, self.beta, self.kl_warmup))
        test_elbo = self._test_elbo(epoch)
        history.test_elbo.append(test_elbo)
        shown = {"train_elbo": f"{history.train_elbo[-1]:.2f}", "test_elbo": f"{test_elbo:.2f}"}
        if self.vae.labels == "some":
            history.test_accuracy.append(accuracy(self.vae, self.x_test, self.y_test))
            shown["test_accuracy"] = f"{history.test_accuracy[-1]:.4f}"
        bar.set_postfix(shown)
        self.state = self.snapshot(epoch, 0, self.batch_order.get_state(), [], 0.0)

    def snapshot(
        self,
        epoch: int,
        step_in_epoch: int,
        order_state: torch.Tensor,
        losses: list[torch.Tensor],
        seconds: float,
    ) -> TrainState:
        """The state after ``epoch`` whole epochs and ``step_in_epoch`` steps of the next.

        :param epoch: the whole epochs done.
        :param step_in_epoch: the steps of the next epoch done.
        :param order_state: the batch-order generator's state from before the unfinished epoch drew
            its permutation.
        :param losses: the losses of the unfinished epoch's steps, tensors on the device.
        :param seconds: the time of those steps.
        """
        ranks = distributed.gather_objects(_rng_state(self.device))
        return TrainState(
            epoch=epoch,
            step_in_epoch=step_in_epoch,
            history=self.state.history,
            optimizer=self.optimizer.state_dict(),
            rng={"batch_order": order_state, "ranks": ranks},
            partial_losses=torch.stack(losses).tolist() if losses else [],
            partial_seconds=seconds,
        )


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

"""The run folder: one training run on disk, created, checkpointed, finished and loaded here.

+------------------------+-------------------------------------------------------------------------+
| ``config.json``        | the :class:`~pyro_vae.config.RunConfig`, exactly: ``--config`` reads it |
| ``checkpoint.pt``      | weights, example shape, training state; after every epoch and on a stop |
| ``checkpoint.prev.pt`` | the checkpoint before it, kept as the next is written: :meth:`Run.open` |
|                        | goes back to it, saying so, when ``checkpoint.pt`` is unreadable        |
| ``metrics.csv``        | ``epoch,train_elbo,test_elbo,seconds``, rewritten with the checkpoint   |
| ``summary.json``       | the final figures, the device and the versions, when training ends      |
| ``*.png``              | test images over their reconstructions, samples, ELBO curves, and for   |
|                        | the label models a column of samples per class (``classes.png``)        |
| ``evaluation.json``    | :meth:`Run.evaluate`'s figures, the linear probe's                      |
|                        | (:meth:`~Run.record`)                                                   |
| ``sample-seedS-nN.png``| what the commands on a trained run write, each to a name of its own     |
| ``reconstruct-nN.png`` | (:mod:`pyro_vae.runs.layout`), so that training's pictures are kept     |
| ``codes.npz``, ...     |                                                                         |
| ``tensorboard/``       | with ``tensorboard``: TensorBoard event files, after every epoch        |
|                        | (:mod:`pyro_vae.runs.board`)                                            |
+------------------------+-------------------------------------------------------------------------+

::

    run = Run.create("runs/a", RunConfig(epochs=50))    # writes config.json
    run.train()                                         # checkpoints, summary, pictures
    run = Run.open("runs/a")                            # the VAE as its last checkpoint left it
    run.train(epochs=80)                                # goes on exactly where it stopped
    run = Run.resume("runs/a", {"epochs": 90})          # the same, settings checked first
    run.evaluate(iwae_k=5000)                           # writes evaluation.json

Under ``torchrun`` every rank holds the run and trains; rank 0 alone writes the folder. The
reports of a trained run (the summary, pictures, evaluation) are :mod:`pyro_vae.runs.reports`'.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from pyro_vae import validation
from pyro_vae.config import RESUMABLE, ModelConfig, RunConfig, check_objective
from pyro_vae.data.sources import (
    Dataset,
    check_shape,
    labeled_split,
)
from pyro_vae.device import resolve_device
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.files import atomic_write, write_json
from pyro_vae.models import MODELS, build_model
from pyro_vae.models.importing import ProgramUnavailable, program_spec
from pyro_vae.models.vae import VAE
from pyro_vae.runs import board
from pyro_vae.runs.checkpoint import load_checkpoint, load_weights, save_checkpoint, train_state
from pyro_vae.runs.layout import (
    BOARD,
    CHECKPOINT,
    CLASS_PICTURE,
    CONFIG,
    METRICS,
    PREVIOUS,
    RECONSTRUCTED,
    RUN_FILES,
)
from pyro_vae.runs.reports import RunReports
from pyro_vae.training import distributed
from pyro_vae.training.state import History, TrainState
from pyro_vae.training.trainer import train


def new_model(config: ModelConfig, data: Dataset, seed: int) -> VAE:
    """The untrained model ``config`` names, for ``data``'s examples (and classes, for a model
    that learns from labels), its initial weights seeded by ``seed``: what a new run starts from.

    :param config: the model's settings.
    :param data: the data set it is for.
    :param seed: seeds the initial weights.
    """
    classes = MODELS[config.model].label_classes(data)
    pyro.set_rng_seed(seed)
    return build_model(config.model, data.x_shape, classes, **config.options())


class RunExists(ConfigError):
    """:meth:`Run.create` was asked for a folder that already holds a run."""


class Run(RunReports):
    """A run folder and what it holds: the config, the VAE, its data and the training state.

    Make one with :meth:`create` (a new run) or :meth:`open` (a run on disk); :meth:`train` trains
    it or goes on training it, and :meth:`~pyro_vae.runs.reports.RunReports.evaluate` scores it.

    :param path: the run folder.
    :param config: the run's settings.
    :param vae: its model, holding the weights as they are.
    :param state: where its training stands.
    :param device: the device the weights were last trained on, by name.
    """

    def __init__(self, path: Path, config: RunConfig, vae: VAE, state: TrainState, device: str):
        self.path, self.config, self.vae, self.state = path, config, vae, state
        self.device = device  # where the weights were last trained
        self._written = config  # config.json, which train() rewrites when self.config differs
        self.summary: dict[str, Any] | None = None  # summary.json, once training is done
        self._data: Dataset | None = None
        # False after falling back: the unreadable checkpoint.pt must not become the previous one
        self._keep_last = True

    @classmethod
    def create(
        cls,
        path: str | Path,
        config: RunConfig,
        *,
        program: nn.Module | None = None,
        overwrite: bool = False,
    ) -> Run:
        """A new run of ``config`` in ``path``: the data loaded, the VAE built (its weights seeded
        by the config's seed) and ``config.json`` written. A folder that already holds a run is
        refused unless ``overwrite``, which deletes its checkpoints.

        :param path: the folder to write the run into, made if missing.
        :param config: the run's settings.
        :param program: your own Pyro program (a module with ``model`` and ``guide``), trained as
            it is; its class must be defined at the top of a file, which the run records with
            ``config``'s ``program_options``, the class's keyword arguments, to build it again.
        :param overwrite: replace a run already in ``path``.
        """
        path = Path(path)
        if any((path / name).exists() for name in (CHECKPOINT, PREVIOUS)) and not overwrite:
            raise RunExists(f"{path} already holds a trained run; open it to go on training it")
        _check_board(config)
        if program is not None:  # your own module: the run records where its class is
            config = config.replace(program=program_spec(program))
        data, training = _load_data(config), config.training
        vae = new_model(config.model, data, training.seed)
        if program is not None:
            vae = vae.adopt(program)
        config = config.replace(**vae.recorded_settings())  # a program's file, by its hash
        objective = config.objective  # a program's own objectives, before anything is written
        check_objective(objective.objective, objective.num_particles, objective.beta,
                        objective.kl_warmup, model=vae.name, objectives=vae.objectives)  # fmt: skip
        if training.labeled is not None:  # refused before the folder is written, not after
            classes = MODELS[config.model.model].label_classes(data)
            labeled_split(data.y_train, training.labeled, classes, training.seed)
        if distributed.is_main_process():
            path.mkdir(parents=True, exist_ok=True)
            for name in (CHECKPOINT, PREVIOUS):  # an overwritten run's, never to be gone back to
                (path / name).unlink(missing_ok=True)
            write_json(path / CONFIG, config.to_dict())
        run = cls(path, config, vae, TrainState(), str(resolve_device(training.device)))
        run._data = data
        return run

    @classmethod
    def open(cls, path: str | Path, device: str | torch.device = "cpu") -> Run:
        """The run in ``path`` as its last checkpoint left it, its VAE on ``device``; as the one
        before left it (``checkpoint.prev.pt``), with one line on stderr saying so, when the last
        is unreadable or does not fit the run's config.

        :param path: the run folder, as ``pyro-vae train`` wrote it.
        :param device: where to put the VAE: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a
            :class:`torch.device`.
        """
        path = Path(path)
        if not path.is_dir():
            raise PyroVAEError(f"no run folder at {path}")
        if not (path / CONFIG).is_file():
            raise PyroVAEError(f"{path} has no {CONFIG}; was it written by pyro-vae train?")
        config = RunConfig.load(path / CONFIG)
        try:
            vae, state, trained_on = _restore(config, path / CHECKPOINT)
            fell_back = False
        except ProgramUnavailable:  # no checkpoint fits a missing or changed program
            raise
        except PyroVAEError as last:
            vae, state, trained_on = _fall_back(config, path, last)
            fell_back = True
        run = cls(path, config, vae.to(resolve_device(device)), state, trained_on)
        run._keep_last = not fell_back
        return run

    @classmethod
    def resume(cls, path: str | Path, settings: dict[str, Any] | None = None) -> Run:
        """The run in ``path`` (:meth:`open`), to go on training with ``settings`` on top of its
        config; :meth:`train` writes them into ``config.json``. Only the settings a resumed run
        may change (:data:`~pyro_vae.config.RESUMABLE`: the epochs, the learning rate, where and
        how it runs) may differ from the run's: any other difference is an error naming them.

        :param path: the run folder, as ``pyro-vae train`` wrote it.
        :param settings: settings by name, as :meth:`RunConfig.replace
            <pyro_vae.config.RunConfig.replace>` takes them, e.g. ``{"epochs": 80}``; ``None``: the
            run's own.
        """
        run = cls.open(path)
        config = run.config.replace(**(settings or {}))
        changed = [
            f"{{{name}}}: {old!r} -> {new!r}"
            for name, old, new in run.config.changes(config)
            if name not in RESUMABLE
        ]
        if changed:
            resumable = ", ".join(f"{{{name}}}" for name in RESUMABLE)
            raise ConfigError(
                f"{{param}}: asks for other settings than the run in {path} "
                f"({'; '.join(changed)}); only {resumable} may change",
                "resume",
            )
        run.config = config
        return run

    @property
    def data(self) -> Dataset:
        """The run's data set, loaded when first asked for and checked against its model."""
        if self._data is None:
            data, config = _load_data(self.config), self.config.data
            source = f"{config.dataset} ({config.data_path})" if config.data_path else None
            check_shape(
                self.vae.x_shape, data, f"the data set of {self.path}, {source or config.dataset},"
            )
            self.vae.check_data(data)
            self._data = data
        return self._data

    def train(
        self,
        *,
        progress: bool = True,
        stop: Callable[[], bool] | None = None,
        **settings: Any,
    ) -> History:
        """Train the run to its config's epochs, going on from its last checkpoint exactly as if
        it had never stopped. ``settings`` may change what a resumed run may change
        (:data:`~pyro_vae.config.RESUMABLE`: ``epochs``, ``lr``, ``device``, ``compile``,
        ``stream``, ``workers``, ``tensorboard``); the config, with :meth:`resume`'s settings too,
        is rewritten with them.

        A checkpoint and ``metrics.csv`` are written after every epoch and when ``stop`` ends
        training (:class:`~pyro_vae.training.state.TrainingInterrupted`), the checkpoint before
        kept as ``checkpoint.prev.pt`` (:meth:`open` goes back to it), with ``tensorboard`` the
        epoch's TensorBoard figures before them (:mod:`pyro_vae.runs.board`); ``summary.json`` and
        the pictures when it is done.

        :param progress: show a progress bar.
        :param stop: asked after every step; when it returns true, the state is saved and
            :class:`~pyro_vae.training.state.TrainingInterrupted` raised.
        :param settings: resumable settings by name (``epochs=80``); ``None`` values are the
            config's.
        """
        unknown = sorted(set(settings) - set(RESUMABLE))
        if unknown:
            raise TypeError(
                f"Run.train() cannot change {', '.join(unknown)}; a run may change "
                f"{', '.join(RESUMABLE)}"
            )
        asked = settings
        config = self.config.replace(**{k: v for k, v in asked.items() if v is not None})
        resume = self.state if self.state.optimizer is not None else None
        self._check_can_train(config, resume)
        if config != self._written and distributed.is_main_process():
            write_json(self.path / CONFIG, config.to_dict())
        self.config = self._written = config
        self.device = str(resolve_device(config.training.device))
        with self._checkpoints() as checkpoint:
            history = train(
                self.vae,
                self.data,
                config.training,
                config.objective,
                progress=progress,
                checkpoint=checkpoint,
                resume=resume,
                stop=stop,
            )
        self.finish()
        return history

    def _check_can_train(self, config: RunConfig, resume: TrainState | None) -> None:
        """Refuse, before any work, settings the run cannot train on with from ``resume``."""
        _check_board(config)
        epochs = config.training.epochs
        if resume is not None and resume.epoch >= epochs:
            raise ConfigError(
                f"{self.path} has finished {resume.epoch} of {epochs} epochs; ask for more "
                "{epochs} to train on"
            )

    def files(self) -> tuple[str, ...]:
        """The files (and folders, ending in ``/``) training writes into the run folder."""
        files = (*RUN_FILES, CLASS_PICTURE) if self.vae.drawable_labels else RUN_FILES
        files = tuple(f for f in files if (self.path / f).exists())  # a program may draw none
        return files + ((f"{BOARD}/",) if self.config.tensorboard else ())

    @contextmanager
    def _checkpoints(self) -> Iterator[Callable[[TrainState], None]]:
        """What training hands each state to: :meth:`save`; for a run with ``tensorboard``, on
        rank 0, :meth:`_watch` of a finished epoch first (before the checkpoint: an epoch whose
        figures were written and whose checkpoint was not is trained again and rewritten)."""
        if not (self.config.tensorboard and distributed.is_main_process()):
            yield self.save
            return

        def checkpoint(state: TrainState) -> None:
            if not state.step_in_epoch:  # a stop mid-epoch: its steps are written at its end
                self._watch(watching, state.history)
            self.save(state)

        with board.Board(self.path / BOARD, self.state.history) as watching:
            yield checkpoint

    def _watch(self, watching: board.Board, history: History) -> None:
        """Write the epochs of ``history`` that ``watching`` lacks, and the figures and pictures
        of the VAE as it is, on the test set (:meth:`pyro_vae.runs.board.Board.write_epoch`)."""
        x, labels = self.inputs("test")
        watching.write_epoch(
            history,
            self.vae,
            x,
            labels,
            lambda: self.reconstructions(RECONSTRUCTED, x.device),
            seed=self.config.training.seed,
            objective=self.config.objective.objective,
        )

    def save(self, state: TrainState) -> None:
        """Write ``state`` and the weights as the run's checkpoint, the one before kept as the
        previous (unless it is the unreadable one :meth:`open` went back from), with
        ``metrics.csv``.

        Under torchrun rank 0 writes, atomically, and every rank waits until it has
        (:func:`~pyro_vae.training.distributed.main_process_writes`): a node that dies after this
        leaves the checkpoint of the epoch every rank finished, and a failed write fails all ranks.

        :param state: the training state, as training hands it over.
        """
        self.state = state
        with distributed.main_process_writes(f"the checkpoint of {self.path}") as writer:
            if writer:
                previous = self.path / PREVIOUS if self._keep_last else None
                save_checkpoint(self.path / CHECKPOINT, self.vae, state, self.device, previous)
                self._keep_last = True
                atomic_write(self.path / METRICS, lambda f: f.write(_metrics_csv(state.history)))


def _restore(config: RunConfig, file: Path) -> tuple[VAE, TrainState, str]:
    """The VAE of ``config`` with the weights of the checkpoint ``file``, the training state it
    holds and the device it was trained on."""
    checkpoint = load_checkpoint(file)
    try:
        shape, classes = checkpoint["x_shape"], checkpoint.get("num_classes", 0)
        vae = build_model(config.model.model, shape, classes, **config.model.options())
    except ProgramUnavailable:  # no checkpoint fits another program: said as it is
        raise
    except (KeyError, PyroVAEError) as e:
        raise PyroVAEError(f"{file} does not fit {file.parent / CONFIG} ({e})") from None
    load_weights(vae, checkpoint, file)
    return vae, train_state(checkpoint), str(checkpoint.get("device", "cpu"))


def _fall_back(config: RunConfig, path: Path, last: PyroVAEError) -> tuple[VAE, TrainState, str]:
    """:func:`_restore` of the previous checkpoint, since the last failed with ``last``; one line
    says so. Decided by the files alone, so every rank of a torchrun goes back to the same one."""
    previous = path / PREVIOUS
    if not previous.exists():  # a run of one checkpoint so far: the last one's error stands
        raise last
    try:
        vae, state, trained_on = _restore(config, previous)
    except PyroVAEError as e:
        raise PyroVAEError(f"{last.problem}; the previous one is no better: {e.problem}") from None
    moment = f"epoch {state.epoch}"
    if state.step_in_epoch:
        moment = f"step {state.step_in_epoch} of epoch {state.epoch + 1}"
    _note(f"{last.problem}; going back to {previous}, written after {moment}")
    return vae, state, trained_on


def _note(message: str) -> None:
    """``pyro-vae: message`` on stderr, from rank 0 alone."""
    # torchrun's RANK too: a run is opened before its processes have joined their group
    if distributed.is_main_process() and os.environ.get("RANK", "0") == "0":
        print(f"pyro-vae: {message}", file=sys.stderr)


def _check_board(config: RunConfig) -> None:
    """A run that writes TensorBoard's files needs the package, checked before any work."""
    if config.tensorboard:
        validation.installed("tensorboard", board.PACKAGE, board.EXTRA)


def _load_data(config: RunConfig) -> Dataset:
    # rank 0 first under torchrun: it may download the data set into the shared folder
    with distributed.main_process_first():
        return config.data.load()


def _metrics_csv(history: History) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history.columns))
    writer.writeheader()
    writer.writerows(history.rows())
    return buffer.getvalue().encode()

"""Watching a run: TensorBoard event files in the run folder, written after every epoch.

With ``pyro-vae train --tensorboard`` (``RunConfig(tensorboard=True)``), rank 0 writes event files
into ``RUN_DIR/tensorboard`` (watch them with ``tensorboard --logdir runs``). Every value is at
its global step, the training steps taken since the run began:

- ``train/loss``: each step's loss, the negative training objective of its batch in nats per
  example (``History.step_loss``);
- at each epoch's last step, its columns of ``metrics.csv``: ``train/elbo``, ``test/elbo``,
  ``train/kl_weight``, ``train/seconds``, and M2's ``test/accuracy``;
- the two terms of the test ELBO, ``test/reconstruction`` E_q[log p(x|z)] and ``test/kl``
  KL(q(z|x) || p(z)) (:func:`~pyro_vae.infer.elbo.elbo_terms`, by the test ELBO's own draws, so that
  reconstruction - kl = test/elbo), and ``test/active_units``
  (:func:`~pyro_vae.analysis.evaluation.active_units`);
- ``images/reconstructions``, test images over their reconstructions, and ``images/samples``,
  samples of the same z at every epoch, drawn as the run folder's pictures are.

All of it is written when an epoch has ended, from figures the history then holds as Python
numbers: no training step waits for it. A resumed run appends after the steps of its last
checkpoint, and hides from TensorBoard anything an earlier process wrote past them (the writer's
``purge_step``); a run that had none gets the epochs its history holds, then goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import torch

from pyro_vae.analysis.evaluation import active_units
from pyro_vae.analysis.plots import picture, reconstruction_rows
from pyro_vae.device import random_state_kept
from pyro_vae.infer.elbo import elbo_terms
from pyro_vae.models.user import skipped_without_method
from pyro_vae.models.vae import VAE
from pyro_vae.training.state import History

PACKAGE, EXTRA = "tensorboard", "tensorboard"  # the optional dependency, and what installs it
EVENT_FILES = "events.out.tfevents.*"
#: the columns of metrics.csv written at each epoch's last step, and their tags
EPOCH_TAGS = {
    "train_elbo": "train/elbo",
    "test_elbo": "test/elbo",
    "kl_weight": "train/kl_weight",
    "seconds": "train/seconds",
    "test_accuracy": "test/accuracy",
}
SAMPLES = 64  #: the samples pictured, in a run folder's samples.png and on TensorBoard


class Board:
    """A run's TensorBoard event files in ``folder``, opened when training starts (``history``:
    the run's history at that moment), written after each epoch, closed when it stops.

    torch's ``SummaryWriter`` is imported here, when the board is opened: TensorBoard is an
    optional dependency, and importing it costs seconds.

    :param folder: the folder of the event files, ``tensorboard/`` in the run folder.
    :param history: the run's history when training starts: what the files already hold, if any are
        there.
    """

    def __init__(self, folder: str | Path, history: History):
        from torch.utils.tensorboard import SummaryWriter

        kept = any(Path(folder).glob(EVENT_FILES))  # an earlier process wrote up to the history
        self.epochs = len(history.epoch) if kept else 0  # the epochs written
        steps = len(history.step_loss) if kept else 0
        # TensorBoard drops what was written at these steps and after before this writer began
        self.writer = SummaryWriter(str(folder), purge_step=steps + 1)

    def __enter__(self) -> Board:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.writer.close()

    def write_history(self, history: History) -> int:
        """Each step's loss, and each epoch's columns of ``metrics.csv`` (:data:`EPOCH_TAGS`) at
        its last step, for the epochs of ``history`` not yet written; returns the last step.

        :param history: the run's history so far.
        """
        per_epoch = len(history.step_loss) // max(1, len(history.epoch))
        for k, row in enumerate(history.rows()[self.epochs :], start=self.epochs):
            end = (k + 1) * per_epoch
            for step in range(k * per_epoch, end):
                self.writer.add_scalar("train/loss", history.step_loss[step], step + 1)
            for column, tag in EPOCH_TAGS.items():
                if column in row:
                    self.writer.add_scalar(tag, row[column], end)
        self.epochs = len(history.epoch)
        return len(history.step_loss)

    def write_epoch(
        self,
        history: History,
        vae: VAE,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        reconstructions: Callable[[], tuple[torch.Tensor, torch.Tensor]],
        *,
        seed: int,
        objective: str,
    ) -> None:
        """After an epoch: :meth:`write_history`, then ``vae``'s :func:`figures` on the test
        set ``x`` (integer ``labels``, or ``None``) and :func:`pictures` of ``reconstructions``
        (inputs and outputs) and of samples, all at the epoch's last step; flushed to disk.

        :param history: the run's history so far.
        :param vae: the model as it is after the epoch.
        :param x: the test set as the model scores it, on its device.
        :param labels: the test set's integer labels, or ``None``.
        :param reconstructions: gives ``(inputs, outputs)``: test images and their
            reconstructions.
        :param seed: the run's seed, for the same draws at every epoch.
        :param objective: the run's training objective, whose ELBO is split into its terms.
        """
        step = self.write_history(history)
        for tag, value in figures(vae, x, labels, seed=seed, objective=objective).items():
            self.writer.add_scalar(tag, value, step)
        for tag, image in pictures(vae, reconstructions, seed=seed).items():
            self.writer.add_image(tag, image, step)
        self.writer.flush()


def figures(
    vae: VAE, x: torch.Tensor, labels: torch.Tensor | None, *, seed: int, objective: str
) -> dict[str, float]:
    """``test/reconstruction`` and ``test/kl``, the terms of the test ELBO by its own draws
    (``seed``, the ELBO of ``objective``; given the labels for the conditional VAE, summed out
    for M2), and ``test/active_units`` (of q(z|x,y) at the true ``labels`` for the label
    models).

    :param vae: the model as it is after the epoch.
    :param x: the test set as the model scores it, on its device.
    :param labels: the test set's integer labels, or ``None``.
    :param seed: the run's seed, for the same draws at every epoch.
    :param objective: the run's training objective, whose ELBO is split into its terms.
    """
    terms = elbo_terms(vae, x, seed=seed, objective=objective, labels=labels)
    units = active_units(vae, x, labels=labels)[0]
    return {
        "test/reconstruction": terms.reconstruction,
        "test/kl": terms.kl,
        "test/active_units": units,
    }


def pictures(
    vae: VAE, reconstructions: Callable[[], tuple[torch.Tensor, torch.Tensor]], *, seed: int
) -> dict[str, torch.Tensor]:
    """``images/reconstructions``, test images in rows over their ``reconstructions``, and
    ``images/samples``, :data:`SAMPLES` samples drawn with ``seed`` (the global random state
    left as it was): ``(C, H, W)`` pictures with values in [0, 1].

    :param vae: the model as it is after the epoch.
    :param reconstructions: gives ``(x, x_rec)``: test images, ``(N, C, H, W)``, values in
        [0, 1], and their reconstructions, shaped alike; skipped, with one line, for a program
        without ``reconstruct``.
    :param seed: seeds the samples' draws.
    """
    result = {}
    with skipped_without_method("images/reconstructions"):
        images, nrow = reconstruction_rows(*reconstructions())
        result["images/reconstructions"] = picture(images, nrow)
    with random_state_kept(next(vae.parameters()).device), skipped_without_method("images/samples"):
        torch.manual_seed(seed)
        result["images/samples"] = picture(vae.sample(SAMPLES))
    return result

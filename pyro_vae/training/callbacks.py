"""The small watchers of a training loop: the progress bar, the finiteness check, and agreeing
to stop. Each looks at the device's values only every :data:`CHECK_EVERY` steps and at an epoch's
end, so that the steps in between never wait for the device."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from pyro_vae.training import distributed
from pyro_vae.training.state import TrainingError

#: Steps between looks at the device's values: the losses' finiteness, the progress bar's loss,
#: and (under torchrun) whether any rank was asked to stop.
CHECK_EVERY = 10


class Progress:
    """The progress bar over the steps, and the lines training says (on stderr; under torchrun,
    rank 0 alone).

    :param show: whether to show anything.
    :param total: the steps of the whole run.
    :param done: the steps already taken (a resumed run's).
    :param first: a line to say before the bar appears (where the data live, say).
    """

    def __init__(self, show: bool, total: int, done: int, first: str):
        self.show = show
        self.say(first)
        self.bar = tqdm(
            total=total, initial=min(done, total), disable=not show, unit="step", dynamic_ncols=True
        )

    def say(self, message: str) -> None:
        """Write one line above the bar.

        :param message: the line, without the ``pyro-vae:`` prefix.
        """
        if self.show:
            tqdm.write(f"pyro-vae: {message}", file=sys.stderr)

    def epoch(self, epoch: int, epochs: int) -> None:
        """Label the bar with the epoch.

        :param epoch: the epoch beginning, counted from 1.
        :param epochs: the epochs of the run.
        """
        self.bar.set_description(f"epoch {epoch}/{epochs}")

    def step(self, i: int, losses: list[torch.Tensor], batch_size: int) -> None:
        """Advance a step; every :data:`CHECK_EVERY` steps show the last loss per example.

        :param i: the step just taken, counted from 0 in its epoch.
        :param losses: the epoch's losses so far, on the device.
        :param batch_size: the examples of a batch.
        """
        self.bar.update()
        if (i + 1) % CHECK_EVERY == 0:
            self.bar.set_postfix(loss=f"{losses[-1].item() / batch_size:.2f}")

    def figures(self, shown: dict[str, str]) -> None:
        """Show an epoch's figures beside the bar.

        :param shown: figures by name, formatted.
        """
        self.bar.set_postfix(shown)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


class Finiteness:
    """Raises :class:`~pyro_vae.training.state.TrainingError` when a loss stops being finite,
    before a checkpoint can see the broken weights.

    :param steps_per_epoch: the steps of an epoch, for the message.
    :param lr: the learning rate, which the message suggests lowering.
    """

    def __init__(self, steps_per_epoch: int, lr: float):
        self.steps_per_epoch, self.lr, self.checked = steps_per_epoch, lr, 0

    def begin(self) -> None:
        """Look at an epoch's losses from the first."""
        self.checked = 0

    def check(self, losses: list[torch.Tensor], epoch: int, i: int | None = None) -> None:
        """Look at the losses not yet looked at: every :data:`CHECK_EVERY` steps (after step
        ``i``), or at once (``i`` None).

        :param losses: the epoch's losses so far, on the device.
        :param epoch: the epoch, for the message.
        :param i: the step just taken, counted from 0; ``None``: look now.
        """
        if i is not None and (i + 1) % CHECK_EVERY:
            return
        if self.checked < len(losses):
            finite = torch.isfinite(torch.stack(losses[self.checked :]))
            if not bool(finite.all()):
                first = self.checked + int((~finite).nonzero()[0])
                raise TrainingError(
                    f"the loss stopped being finite at step {first + 1} of {self.steps_per_epoch} "
                    f"in epoch {epoch}; nothing from that epoch was saved. Try a lower {{lr}} "
                    f"(now {self.lr:g})"
                )
        self.checked = len(losses)


class StopAgreement:
    """Whether to stop after a step: at once in one process when ``stop()`` says so; under
    torchrun, where every rank looks (every :data:`CHECK_EVERY` steps and at an epoch's end), if
    any rank was asked, so that all stop after the same step.

    :param stop: asked after every step; true asks training to stop.
    :param steps_per_epoch: the steps of an epoch.
    :param world: the number of processes.
    :param device: where the ranks' answers are gathered.
    """

    def __init__(
        self,
        stop: Callable[[], bool] | None,
        steps_per_epoch: int,
        world: int,
        device: torch.device,
    ):
        self.stop = stop or (lambda: False)
        self.steps_per_epoch, self.world, self.device = steps_per_epoch, world, device
        self.asked = False

    def begin(self) -> None:
        """Forget an earlier epoch's asking."""
        self.asked = False

    def at_end(self) -> bool:
        """Whether all agree to stop at the epoch's end, having been asked during it."""
        return self._agreed(self.steps_per_epoch - 1)

    def after(self, i: int) -> bool:
        """Ask ``stop()`` after step ``i`` (counted from 0 in its epoch); whether all agree to
        stop now.

        :param i: the step just taken.
        """
        self.asked = self.stop() or self.asked
        return self._agreed(i)

    def _agreed(self, i: int) -> bool:
        if self.world == 1:
            return self.asked
        if (i + 1) % CHECK_EVERY and i + 1 < self.steps_per_epoch:
            return False
        return distributed.any_rank(self.asked, self.device)

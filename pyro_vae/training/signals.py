"""Stopping on a signal: Ctrl-C or SIGTERM ends training after the current step, with a checkpoint.

::

    with StopOnSignals() as signals:
        run.train(stop=signals.requested)     # raises TrainingInterrupted after a signal
"""

from __future__ import annotations

import signal
import sys


class StopOnSignals:
    """While active, SIGINT (Ctrl-C) and SIGTERM ask training to stop after the current step;
    a second SIGINT stops at once (the last checkpoint on disk is kept).

    :param announce: print a line on stderr when a signal arrives.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce

    def __enter__(self) -> StopOnSignals:
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(
                f"\npyro-vae: {signal.Signals(signum).name} received: finishing the current step "
                "and writing a checkpoint (Ctrl-C again stops at once)",
                file=sys.stderr,
            )

    def requested(self) -> bool:
        """Whether a signal has asked training to stop: pass as :func:`pyro_vae.train`'s
        ``stop``."""
        return self.signum is not None

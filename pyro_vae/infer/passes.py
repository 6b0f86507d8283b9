"""One seeded pass over a data set, the way every estimate in pyro-vae goes over one.

Estimates are made in batches of :data:`EVAL_BATCH_SIZE` examples under torch's generator seeded
with the estimate's seed, with no gradients and without Pyro's validation (outputs that overflow
give a NaN to check, not a ValueError), and the global random state is put back afterwards, so
that estimating never changes the course of training. The batch size is fixed because the Monte
Carlo draws, and so the estimate for a given seed, depend on how the data set is cut.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from pyro import validation_enabled
from tqdm.auto import tqdm

from pyro_vae.device import random_state_kept

#: the examples of each batch of a seeded pass
EVAL_BATCH_SIZE = 1000

Batch = tuple[torch.Tensor, tuple[torch.Tensor, ...]]


@contextmanager
def seeded_pass(
    x: torch.Tensor,
    given: Sequence[torch.Tensor] = (),
    *,
    seed: int,
    progress: bool = False,
    desc: str = "",
) -> Iterator[Iterable[Batch]]:
    """``(batch, rows)`` for each batch of :data:`EVAL_BATCH_SIZE` examples of ``x``, ``rows``
    the batch's rows of each tensor of ``given``, to be scored under torch's generator seeded with
    ``seed``, without gradients or Pyro's validation; the global random state is restored when
    the ``with`` block ends, however it ends.

    :param x: the examples, ``(N, ...)``.
    :param given: tensors with a row per example (one-hot labels, say), split alike.
    :param seed: seeds torch's generator for the pass.
    :param progress: show a progress bar (tqdm) over the batches.
    :param desc: the progress bar's label.
    """
    parts = [t.split(EVAL_BATCH_SIZE) for t in given]
    batches = [(b, tuple(p[i] for p in parts)) for i, b in enumerate(x.split(EVAL_BATCH_SIZE))]
    with random_state_kept(x.device), torch.no_grad(), validation_enabled(False):
        torch.manual_seed(seed)
        yield tqdm(batches, desc=desc, disable=not progress)


def announce(line: str, show: bool = True) -> None:
    """Write ``pyro-vae: line`` on stderr above a pass's progress bar (tqdm's own way, so the
    bar is not torn), when ``show``: what a long pass says before it goes on.

    :param line: the line, without the ``pyro-vae:`` prefix.
    :param show: whether to write it (a pass's ``progress``).
    """
    if show:
        tqdm.write(f"pyro-vae: {line}", file=sys.stderr)

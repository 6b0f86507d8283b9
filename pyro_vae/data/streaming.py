"""Where the training set lives while a run trains: on the device, or streamed to it.

A training set that fits the device's memory budget (:data:`DEVICE_DATA_SHARE` of its memory) is
moved there once, and every batch is an index into it: no per-example loader in the hot loop.
A larger one, or any with ``stream=True``, stays in host memory and :func:`stream_batches` brings
each batch to the device through a ``torch.utils.data.DataLoader``: worker processes gather the
rows, pinned memory and ``non_blocking`` copies overlap the transfer with the step, and
``prefetch_factor`` batches wait ready per worker.

A memory-mapped training set (a prepared copy, :mod:`pyro_vae.data.mapped`) is read the same
way, a batch's rows at a time, whichever process gathers them: from its file, a ``pread`` a row,
which leaves nothing in the process's resident memory however large the file is.

Either way the trainer chooses the batches (which rows, in which order, which shard of each for
this rank) before the data are touched, so the two paths take the very same steps: the same
examples, the same random draws, the same ``metrics.csv``. Under torchrun each rank's loader
gathers only its own shard of every batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from pyro_vae.device import memory_bytes

#: The share of a device's memory the training set may take before it is streamed instead: the
#: rest is for the weights, Adam's state, the test set and the activations.
DEVICE_DATA_SHARE = 0.5
PREFETCH_FACTOR = 4  # batches each worker keeps ready


def should_stream(nbytes: int, device: torch.device, stream: bool) -> tuple[bool, str]:
    """``(streamed, why)``: whether a training set of ``nbytes`` is streamed to ``device``
    (asked for, or larger than its budget) or kept there, and why, in a few words.

    :param nbytes: the training set's size in bytes, as stored.
    :param device: the device training runs on.
    :param stream: whether streaming was asked for.
    """
    budget = int(DEVICE_DATA_SHARE * memory_bytes(device))
    if stream:
        return True, "as asked"
    if nbytes > budget:
        return True, f"it is more than {DEVICE_DATA_SHARE:.0%} of {device}'s memory"
    return False, f"it fits in {DEVICE_DATA_SHARE:.0%} of {device}'s memory"


class Rows(torch.utils.data.Dataset):
    """The rows of some tensors at a batch of indices: one gather per batch, not per example.

    :param tensors: host or device tensors of equal length.
    :param read: reads the rows of ``tensors[0]`` at an index from its file, for a
        memory-mapped one (:meth:`MappedArrays.reader <pyro_vae.data.mapped.MappedArrays.reader>`);
        ``None``: indexed.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        read: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.tensors, self.read = tensors, read

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        first = self.tensors[0][index] if self.read is None else self.read(index)
        return (first, *(t[index] for t in self.tensors[1:]))


def stream_batches(
    rows: Rows,
    index_batches: Iterable[torch.Tensor],
    device: torch.device,
    workers: int,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """The rows of ``rows``' tensors (host tensors of equal length) at each of ``index_batches``
    (CPU int64 indices), on ``device``, in that order: gathered by ``workers`` processes (0: in
    this one) and copied from pinned memory when ``device`` is a GPU.

    :param rows: the training set's tensors (examples, and labels if any), in host memory or
        memory-mapped.
    :param index_batches: the batches' row indices, CPU int64 tensors, in the order to give them.
    :param device: the device to bring each batch to.
    :param workers: the ``DataLoader``'s worker processes; 0 gathers in this process.
    """
    pin = device.type == "cuda"
    loader = DataLoader(
        rows,
        sampler=list(index_batches),  # each item a whole batch: batch_size=None gathers it once
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=PREFETCH_FACTOR if workers else None,
        # its own generator for the workers' seeds: drawn from the global one, they would shift
        # the draws of the steps (binarization, the guide's noise) away from the in-memory path's
        generator=torch.Generator(),
    )
    for rows in loader:
        yield tuple(t.to(device, non_blocking=pin) for t in rows)

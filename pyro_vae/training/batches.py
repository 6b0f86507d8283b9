"""Where the training batches come from: the examples a model's steps draw (its
:meth:`~pyro_vae.models.program.Program.training_data`), placed on the device or streamed to it,
shuffled by a generator of their own, sharded per rank, binarized afresh.

A training set that fits the device lives there as one tensor (8-bit images as ``uint8``, made
floats a batch at a time) and batches are drawn by a shuffled index, so no per-example data loader
runs in the hot loop; a larger one is streamed to the device by a ``DataLoader``, batch by batch,
in the same order and with the same random draws (:mod:`pyro_vae.data.streaming`). A labelled pool
(M2's labelled examples) is an endless stream of seeded permutations that every step takes the
next rows of, a function of the step alone, so a resumed run takes the very same ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from pyro_vae.data.sources import Dataset, as_floats, binarize_afresh
from pyro_vae.data.streaming import Rows, should_stream, stream_batches
from pyro_vae.device import check_fits
from pyro_vae.models.program import Program

Batch = tuple[torch.Tensor, ...]


class BatchSource:
    """The batches of one training run: ``(x, *given, *pool)``, this rank's shard of each global
    batch of ``batch_size``.

    :param model: the model, whose ``training_data`` says what the steps draw from.
    :param data: the data set.
    :param device: where the steps run.
    :param batch_size: the examples of a global batch, all ranks together.
    :param seed: seeds the batch order and the labelled pool's permutations.
    :param labeled: the labelled examples, for a semi-supervised model.
    :param streamed: stream the training set from host memory by a ``DataLoader``.
    :param workers: the ``DataLoader``'s worker processes, when streamed.
    :param dynamic: binarize each batch afresh (for a binary likelihood of grey data).
    :param rank: this process's rank under torchrun.
    :param world: the number of processes.
    """

    def __init__(
        self,
        model: Program,
        data: Dataset,
        device: torch.device,
        *,
        batch_size: int,
        seed: int,
        labeled: int | None,
        streamed: bool,
        workers: int,
        dynamic: bool,
        rank: int = 0,
        world: int = 1,
    ):
        self.device, self.batch_size, self.seed = device, batch_size, seed
        self.streamed, self.workers, self.dynamic = streamed, workers, dynamic
        self.rank, self.world = rank, world
        home = torch.device("cpu") if streamed else device  # where the training set lives
        drawn = model.training_data(data, labeled, seed)
        self.x = drawn.x.to(home)
        self.given = tuple(t.to(home) for t in drawn.given)
        # a memory-mapped set still on the CPU is read from its file, a batch's rows at a time
        read = data.mapped.reader(self.x) if data.mapped is not None else None
        self.rows = Rows((self.x, *self.given), read)
        data.release_pages()  # those read to copy the set to the device, or to draw from it
        self.pool = tuple(t.to(device) for t in drawn.labeled)
        # the pool's rows each step takes, as many as the batch's (all, if fewer)
        self.pool_per_step = min(len(self.pool[0]) if self.pool else 0, batch_size)
        self.steps_per_epoch = math.ceil(len(self.x) / batch_size)
        # the size of this rank's shard of a full batch: the one shape that is compiled
        shards = torch.arange(min(batch_size, len(self.x))).tensor_split(world)
        self.full_shard = len(shards[rank])
        self.order = torch.Generator().manual_seed(seed)
        self._pool_order: tuple[int, torch.Generator, torch.Tensor] | None = None

    def epoch(self, epoch: int, start: int) -> Iterator[tuple[int, Batch]]:
        """``(i, raw)`` for each batch ``i`` of ``epoch`` from ``start`` on, this rank's shard as
        the step takes it, :meth:`prepare` making it ready inside the step: ``x`` as stored, its
        rows of the model's given tensors (the CVAE's labels), and for a labelled pool the step's
        rows of it and the pool's tensors (M2's ``x_labeled, y_labeled``). The batch order is
        drawn from ``order`` as the epoch begins.

        :param epoch: the epoch, counted from 1: the pool's rows follow the step count.
        :param start: the first batch to give, counted from 0: a resumed epoch's next step.
        """
        permutation = torch.randperm(len(self.x), generator=self.order)
        indices = permutation.to(self.x.device).split(self.batch_size)[start:]
        if self.world > 1:
            indices = [index.tensor_split(self.world)[self.rank] for index in indices]
        for i, raw in enumerate(self._rows(indices), start=start):
            if self.pool:
                rows = self._pool_index((epoch - 1) * self.steps_per_epoch + i)
                if self.world > 1:
                    rows = rows.tensor_split(self.world)[self.rank]
                raw += (rows, *self.pool)
            yield i, raw

    def prepare(self, x: torch.Tensor, *rest: torch.Tensor) -> Batch:
        """The batch the model's objective takes from a raw one of :meth:`epoch`: ``x`` as floats,
        binarized afresh if the likelihood needs it, its given rows, and the labelled pool's rows
        (gathered here), binarized likewise. Tensor operations alone, so that the compiled step
        holds them too.

        :param x: the batch's examples as stored (8-bit images, or floats).
        :param rest: the given rows, then for a labelled pool its rows' index and its tensors.
        """
        given, pooled = rest[: len(self.given)], rest[len(self.given) :]
        batch = (self._binarized(as_floats(x)), *given)
        if pooled:
            rows, *pool = pooled
            x_pool, *given_pool = (t[rows] for t in pool)
            batch += (self._binarized(as_floats(x_pool)), *given_pool)
        return batch

    def _rows(self, indices: list[torch.Tensor]) -> Iterator[Batch]:
        """The examples and their given rows at each batch of ``indices``, on the device: indexed
        there, or streamed to it."""
        if self.streamed:
            yield from stream_batches(self.rows, indices, self.device, self.workers)
        else:
            for index in indices:
                yield self.rows[index]

    def _binarized(self, x: torch.Tensor) -> torch.Tensor:
        return binarize_afresh(x) if self.dynamic else x

    def _pool_index(self, step: int) -> torch.Tensor:
        """The pool's rows of training step ``step`` (counted from 0 over the whole run): the next
        :attr:`pool_per_step` of the endless stream of permutations of the pool."""
        n, size = len(self.pool[0]), self.pool_per_step
        start, parts = step * size, []
        while size:
            permutation, offset = divmod(start, n)
            take = min(size, n - offset)
            parts.append(self._pool_permutation(permutation)[offset : offset + take])
            start, size = start + take, size - take
        return torch.cat(parts)

    def _pool_permutation(self, j: int) -> torch.Tensor:
        """The ``j``-th draw of ``randperm`` from a generator seeded with the run's seed (drawn
        again from the start when a resumed run asks for an earlier one)."""
        if self._pool_order is None or self._pool_order[0] > j:
            self._pool_order = (-1, torch.Generator().manual_seed(self.seed), torch.empty(0))
        drawn, generator, permutation = self._pool_order
        while drawn < j:
            permutation, drawn = torch.randperm(len(self.pool[0]), generator=generator), drawn + 1
        self._pool_order = (drawn, generator, permutation)
        return permutation.to(self.device)


def placement(
    model: Program,
    data: Dataset,
    device: torch.device,
    *,
    stream: bool,
    workers: int,
    batch_size: int,
    num_particles: int,
    world: int,
    x_test: torch.Tensor,
) -> tuple[bool, str]:
    """Whether the training set is streamed (see :mod:`pyro_vae.data.streaming`), and where it
    lives, in one line; raises if what must be on the device does not fit there.

    :param model: the model: its weights, and the activations it keeps per particle.
    :param data: the data set.
    :param device: where training runs.
    :param stream: stream the training set even if it fits.
    :param workers: the ``DataLoader``'s worker processes, for the line.
    :param batch_size: the examples of a global batch.
    :param num_particles: the particles of each example's objective.
    :param world: the number of processes under torchrun.
    :param x_test: the test set as the model scores it, which lives on the device.
    """
    train_bytes = data.x_train.numel() * data.x_train.element_size()
    mapped = data.mapped is not None and device.type == "cpu"  # read where it lies, by rows
    if mapped and not stream:
        streamed, why = False, "a batch reads its rows alone"
    else:
        streamed, why = should_stream(train_bytes, device, stream)
    where = f"kept on {device}"
    if streamed:
        where = f"streamed to {device} by a DataLoader ({workers} workers)"
    elif mapped:
        where = "read from its memory-mapped files"
    # weights, gradients and Adam's two moments, and the data: activations come on top
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    resident = 0 if streamed or mapped else train_bytes
    data_bytes = x_test.numel() * x_test.element_size() + resident
    check_fits(4 * weights + data_bytes, device, "the weights, Adam's state and the data")
    # each particle of each example keeps its activations for backward
    shard = -(-min(batch_size, len(data.x_train)) // world)
    needed = 2 * num_particles * shard * model.activation_numbers() * x_test.element_size()
    what = f"{{param}} = {num_particles}: the activations of {num_particles} "
    check_fits(needed, device, f"{what}particles of {shard} examples", "num_particles")
    return streamed, f"{data.describe()}; the training set {where}: {why}"

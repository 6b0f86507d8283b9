"""Data-parallel training on PyTorch's own distributed engine, as launched by ``torchrun``.

Every process (rank) holds the whole model and the same random batch order. Each global batch
of ``batch_size`` examples is cut into ``world_size`` contiguous shards, rank r scores shard r,
and one all-reduce per step sums the gradients of the shards' summed losses:

    grad sum_{i in batch} -ELBO_i  =  sum_r  grad sum_{i in shard r} -ELBO_i

which is the gradient one process would compute on the whole batch, so every rank takes the
same Adam step and the weights stay identical on all ranks. (DistributedDataParallel averages
the gradients of per-rank *mean* losses; the loss here is a sum over examples, as Pyro's ELBO
is, so the same reduction is a sum.) The same all-reduce carries the batch loss. Every few steps
the ranks also agree whether any of them was asked to stop (:func:`any_rank`), so that a signal
received by any rank stops all of them after the same step. Rank 0 alone writes the run folder,
and every rank waits until it has (:func:`main_process_writes`), so no rank trains on, or exits,
before the checkpoint of the epoch it finished is on disk.

Backends: ``nccl`` for CUDA, ``gloo`` for the CPU, chosen from the device.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional_collectives

from pyro_vae.errors import ConfigError, PyroVAEError


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment; return this rank's
    device (``cuda:LOCAL_RANK`` on GPUs, else ``device``).

    :param device: the device asked for: a CUDA one is replaced by this rank's GPU.
    """
    if dist.is_initialized():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU: this machine has "
                f"{torch.cuda.device_count()}; start fewer processes per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0, the one process that writes the run folder and draws the progress bar."""
    return rank_and_world()[0] == 0


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers.

    :param module: the model, the same on every rank after.
    """
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(parameters: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    """Sum the gradients and the batch loss of all ranks, in one all-reduce; return the global
    batch's loss.

    The loss comes back as a tensor of its own, not a view into the flat buffer the all-reduce
    fills: a view would keep that gradient-sized buffer alive for as long as the loss is kept.

    :param parameters: the parameters whose ``grad`` is summed (a missing one counts as zeros).
    :param loss: this rank's loss of its shard, a 0-dim tensor.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().to(grads[0].dtype).reshape(1)])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(parameters, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(p)
        offset += g.numel()
    return flat[-1].clone()


def summed_in_graph(
    loss: torch.Tensor, grads: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss and the gradients summed over all ranks by one all-reduce, as
    :func:`all_reduce_gradients` sums them, in a form a captured graph holds: torch's functional
    all-reduce, whose result is a new tensor. (``torch.distributed._functional_collectives`` is
    private, and the one all-reduce that ``make_fx`` traces; the compiled torchrun tests fail
    loudly should it change.)

    :param loss: this rank's loss of its shard, a 0-dim tensor.
    :param grads: this rank's gradients, one per parameter.
    """
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.to(grads[0].dtype).reshape(1)])
    flat = functional_collectives.all_reduce(flat, "sum", dist.group.WORLD)
    sizes = [g.numel() for g in grads]
    parts = flat[:-1].split(sizes)
    return flat[-1], [part.view_as(g) for part, g in zip(parts, grads, strict=True)]


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank. Every rank must call it at the same point; it waits
    for the device, so the trainer calls it every few steps, not every step.

    :param flag: this rank's answer.
    :param device: the device of the all-reduce: this rank's.
    """
    if rank_and_world()[1] == 1:
        return flag
    flags = torch.tensor([float(flag)], device=device)
    dist.all_reduce(flags)
    return bool(flags[0] > 0)


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the body first (a download, say), the other ranks after it has finished, or
    failed: then they fail the same way, rather than wait for ever."""
    rank, world = rank_and_world()
    if world > 1 and rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if world > 1 and rank == 0:
            dist.barrier()


@contextmanager
def main_process_writes(what: str = "its files") -> Iterator[bool]:
    """Rank 0 writes in the body (a checkpoint, on a file system every node sees); no rank leaves
    it before rank 0 has finished. Yields whether this rank is the one that writes.

    The wait is an all-reduce of whether the write failed, a barrier that carries the news: rank 0
    reaches it in a ``finally``, so when its write fails the other ranks raise a
    :class:`~pyro_vae.errors.PyroVAEError` too, rather than train on without the checkpoint or wait
    for ever on a rank that is gone.

    :param what: what rank 0 writes, for the other ranks' error.
    """
    rank, world = rank_and_world()
    if world == 1:
        yield True
        return
    failed = True
    try:
        yield rank == 0
        failed = False
    finally:  # reached by rank 0 when its write raised, which then goes on up from here
        someone_failed = any_rank(failed, _collective_device())
    if someone_failed:
        raise PyroVAEError(f"rank 0 could not write {what}; its own error says why")


def _collective_device() -> torch.device:
    """Where a small tensor for a collective lives: this rank's GPU under ``nccl``, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (a list of one outside a process group).

    :param obj: this rank's object, which pickle can carry.
    """
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    out: list[object] = [None] * world
    dist.all_gather_object(out, obj)
    return out

r"""The whole training step as one graph: the batch made ready, the loss and its gradients, the
gradients clipped, and Adam's update of the parameters and its moments, written in place.

A compiled loss (:class:`~pyro_vae.infer.compiling.CompiledLoss`) leaves the rest of a step to
eager PyTorch: the batch's floats and fresh binarization before it, M2's gather of its labelled
rows, the clipping and Adam's update after it, each a few launches of its own. Here they are one
function of the parameters, Adam's moments and step counters, and the raw batch, recorded by
``make_fx`` and compiled by inductor, which fuses the update into the gradients' last kernels.

Adam is written out (:func:`adam_update`), with the step counters tensors on the device, so the
update reads nothing back to the host:

    m_t = b1 m + (1 - b1) g,   v_t = b2 v + (1 - b2) g^2,
    p_t = p - lr / (1 - b1^t) * m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps),

``torch.optim.Adam``'s update to float32 rounding, on the very tensors of its ``state``: the
optimizer stays a ``torch.optim.Adam``, its ``state_dict`` what a checkpoint keeps, and the
steps that are not compiled (the last, shorter batch of an epoch) are its own.

On a GPU the compiled step is recorded once more as a CUDA graph and each step is one replay
(:class:`CudaGraphReplay`). Under torchrun the gradients and the loss are summed over the ranks
between the backward pass and the update inside the graph too, by a functional all-reduce
(:func:`~pyro_vae.training.distributed.summed_in_graph`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pyro_vae.device import random_state_kept
from pyro_vae.infer.compiling import (
    CaptureError,
    CompiledGraph,
    loss_and_gradients,
    zero_filled,
)
from pyro_vae.training import distributed

CLIP_EPS = 1e-6  # clip_grad_norm_'s guard against a zero norm


def adam_state(optimizer: torch.optim.Adam) -> tuple[list, list, list]:
    """The first and second moments and the step counters of ``optimizer``'s parameters, in
    their order, made as ``torch.optim.Adam`` makes them before its first step if there are none.

    :param optimizer: a ``torch.optim.Adam`` of one parameter group, without weight decay,
        AMSGrad or maximization (which :func:`adam_update` does not do).
    """
    if len(optimizer.param_groups) != 1:
        raise CaptureError("the optimizer has more than one parameter group")
    group = optimizer.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
        raise CaptureError("the graph's Adam has no weight decay, AMSGrad or maximize")
    moments: tuple[list, list, list] = ([], [], [])
    for p in group["params"]:
        state = optimizer.state[p]
        if not state:
            place = p.device if group["capturable"] else torch.device("cpu")
            state["step"] = torch.zeros((), dtype=torch.float32, device=place)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        for values, key in zip(moments, ("exp_avg", "exp_avg_sq", "step"), strict=True):
            values.append(state[key])
    return moments


def adam_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
) -> None:
    """Adam's update of ``params`` and its state, in place (see the module's docstring); a
    parameter whose gradient is ``None`` is left as it is, as ``torch.optim.Adam`` leaves it.

    :param params: the parameters.
    :param grads: their gradients, or ``None``.
    :param exp_avgs: the first moments.
    :param exp_avg_sqs: the second moments.
    :param steps: the step counters, 0-dim float tensors.
    :param lr: the learning rate.
    :param betas: the moments' decay rates.
    :param eps: the denominator's guard.
    """
    beta1, beta2 = betas
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        if g is None:
            continue
        t.add_(1)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        # in float64 like torch's Python floats: bias corrections near 0 early in training
        step_size = -lr / (1 - beta1 ** t.double())
        denom = (v.sqrt() / (1 - beta2 ** t.double()).sqrt()).add_(eps)
        p.add_(m / denom * step_size)


def clipped(grads: list[torch.Tensor | None], max_norm: float) -> list[torch.Tensor | None]:
    """``grads`` scaled by ``min(1, max_norm / (norm + 1e-6))``, ``norm`` their global 2-norm, as
    ``torch.nn.utils.clip_grad_norm_`` scales them.

    :param grads: the gradients, ``None`` for a parameter without one.
    :param max_norm: the largest global norm.
    """
    norm = torch.nn.utils.get_total_norm([g for g in grads if g is not None])
    scale = (max_norm / (norm + CLIP_EPS)).clamp(max=1.0)
    return [None if g is None else g * scale for g in grads]


class WholeStep(CompiledGraph):
    """One training step of ``model`` as one compiled graph: ``step(*inputs)`` computes
    ``loss_fn``'s loss of the step's inputs (the raw batch, made ready inside) and its gradients,
    sums both over the ``world`` ranks of a torchrun, clips the gradients to ``clip_norm`` and
    takes Adam's step with ``optimizer``'s settings on its state; it returns the (global) loss.

    :param model: the model whose parameters are trained.
    :param loss_fn: ``loss_fn(*inputs)``, the loss of the step's inputs, a 0-dim tensor.
    :param optimizer: the ``torch.optim.Adam`` whose state the step updates.
    :param clip_norm: the gradients' largest global norm, or ``None``.
    :param inputs: a full batch's inputs of the step, the shape the graph is for.
    :param world: the processes of a torchrun, whose gradients and losses are summed.
    """

    inductor_cuda_graphs = False  # it writes into its inputs: recorded by CudaGraphReplay

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        optimizer: torch.optim.Adam,
        clip_norm: float | None,
        *inputs: torch.Tensor,
        world: int = 1,
    ):
        # the tensors the step writes in place, its first arguments at every call: the optimizer's
        # state is not replaced while this step is in use (a resumed run restores it first)
        self.live = ([p.detach() for p in model.parameters()], *adam_state(optimizer))
        gradients = loss_and_gradients(model, loss_fn)
        group = optimizer.param_groups[0]
        hyper = dict(lr=group["lr"], betas=group["betas"], eps=group["eps"])

        def step(params: list, avgs: list, sqs: list, steps: list, *inputs: torch.Tensor) -> Any:
            loss, grads = gradients(params, *inputs)
            if world > 1:
                loss, grads = distributed.summed_in_graph(loss, zero_filled(params, grads))
            if clip_norm is not None:
                grads = clipped(list(grads), clip_norm)
            with torch.no_grad():
                adam_update(params, list(grads), avgs, sqs, steps, **hyper)
            return loss

        rest = inputs[1:]

        def arguments(x: torch.Tensor) -> tuple:  # copies: capture and compile change nothing
            params = [p.clone().requires_grad_() for p in self.live[0]]
            return params, *[[t.clone() for t in part] for part in self.live[1:]], x, *rest

        super().__init__(step, arguments, inputs[0])

    def compile(self, x: torch.Tensor) -> None:
        """Compile with inductor (:meth:`CompiledGraph.compile`); on a GPU, record the compiled
        step as a CUDA graph too.

        :param x: a full batch's first input, which the compiled step runs on.
        """
        super().compile(x)
        if self.device.type == "cuda":
            self.fn = CudaGraphReplay(self.fn, (*self.live, x, *self.arguments(x)[5:]))

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """One step on ``inputs``; returns the loss, detached."""
        with torch.no_grad():
            out = self.fn(*self.live, *inputs)
        return out.clone() if self.device.type == "cuda" else out


class CudaGraphReplay:
    """``fn(*args)`` recorded once as a CUDA graph (``torch.cuda.CUDAGraph``) and replayed: a
    step is one launch. The tensors ``fn`` reads are recorded where they are; a later call's
    tensors that live elsewhere (a new batch) are copied into them first, so the parameters and
    Adam's state, written in place and never moved, cost nothing. The warm-up runs that recording
    needs run on copies of the state the step writes, put back afterwards.

    :param fn: the compiled step.
    :param args: its arguments, nested one level in lists.
    """

    def __init__(self, fn: Callable, args: tuple):
        self.args = [t for a in args for t in (a if isinstance(a, list) else [a])]
        self.structure = [len(a) if isinstance(a, list) else None for a in args]
        kept = [t.clone() for t in self.args]
        device = self.args[0].device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with random_state_kept(device), torch.cuda.stream(stream):
            for _ in range(2):  # kernels load and cuBLAS makes its workspace
                fn(*args)
        torch.cuda.current_stream(device).wait_stream(stream)
        for t, k in zip(self.args, kept, strict=True):
            t.copy_(k)
        self.graph = torch.cuda.CUDAGraph()
        with random_state_kept(device), torch.cuda.graph(self.graph):
            self.out = fn(*args)

    def __call__(self, *args: Any) -> Any:
        flat = [t for a in args for t in (a if isinstance(a, list) else [a])]
        for recorded, t in zip(self.args, flat, strict=True):
            if t.data_ptr() != recorded.data_ptr():
                recorded.copy_(t, non_blocking=True)
        self.graph.replay()
        return self.out

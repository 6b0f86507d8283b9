"""One SVI step: the objective's loss and gradient, summed over ranks, and one Adam step.

This is ``pyro.infer.SVI.step`` with one ``torch.optim.Adam`` over ``model.parameters()`` in
place of ``pyro.optim``'s one optimizer per parameter: the same update, without the global param
store, so that the optimizer's state is a plain ``state_dict`` and any number of models can train
in one process. It is also the optimizer of the hand-written objectives (``objective="manual"``,
no ``pyro.infer``), so that Pyro's and the hand-written trainer take the very same steps and
their loss trajectories can be compared number for number. A step (:class:`SVIStep`) never waits
for the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyro_vae.infer.compiling import CompilePolicy
from pyro_vae.infer.elbo import make_loss
from pyro_vae.models.program import Program
from pyro_vae.training import distributed
from pyro_vae.training.whole_step import WholeStep


class SVIStep:
    """The training step of ``model`` by ``objective``: eager, or compiled once its
    :class:`~pyro_vae.infer.compiling.CompilePolicy` decides so, as one graph from the raw batch
    to Adam's update (:class:`~pyro_vae.training.whole_step.WholeStep`).

    :param model: the model, whose parameters Adam updates.
    :param objective: the objective's name among ``model.objectives``.
    :param num_particles: K, the vectorized particles of each example's objective.
    :param lr: Adam's learning rate.
    :param kl_weight: the KL term's weight: a number, or ``None`` when it changes from epoch to
        epoch (a warm-up), which makes it an input of the step (:meth:`set_kl_weight`).
    :param policy: when to compile the step.
    :param world: the number of processes under torchrun, whose gradients are summed.
    :param clip_norm: the largest global norm of the gradients, which are scaled down to it when
        larger (after the all-reduce, so alike on every rank); ``None``: not clipped.
    :param prepare: ``prepare(*raw)``, the batch the objective takes from the raw one the step is
        given (:meth:`~pyro_vae.training.batches.BatchSource.prepare`); ``None``: as it is.
    """

    def __init__(
        self,
        model: Program,
        objective: str,
        num_particles: int,
        lr: float,
        kl_weight: float | None,
        policy: CompilePolicy,
        world: int = 1,
        clip_norm: float | None = None,
        prepare: Callable[..., tuple] | None = None,
    ):
        self.model, self.policy, self.world, self.clip_norm = model, policy, world, clip_norm
        self.prepare = prepare if prepare is not None else lambda *batch: batch
        self.loss_fn = make_loss(model, objective, num_particles)
        self.kl_weight = kl_weight  # a weight that changes from epoch to epoch is an input
        self.weight: tuple[torch.Tensor, ...] = ()  # the warm-up's weight in this epoch
        self.parameters = list(model.parameters())
        self.device = self.parameters[0].device
        # foreach: one call per step for all parameters, bitwise the for-loop Adam's numbers;
        # capturable on a GPU: the step counters live there, for the graph that updates them
        self.optimizer = torch.optim.Adam(self.parameters, lr=lr, foreach=True,
                                          capturable=self.device.type == "cuda")  # fmt: skip

    def set_kl_weight(self, weight: float) -> None:
        """This epoch's KL weight, during a warm-up: a device tensor, the step's input.

        :param weight: the KL term's weight.
        """
        self.weight = (torch.tensor(weight, device=self.device),)

    def place_state(self) -> None:
        """Put Adam's step counters where this step keeps them (a GPU's, or the CPU), after a
        ``state_dict`` written elsewhere was loaded."""
        capturable = self.device.type == "cuda"
        for group in self.optimizer.param_groups:
            group["capturable"] = capturable
        for values in self.optimizer.state.values():
            values["step"] = values["step"].to(self.device if capturable else "cpu")

    def loss(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The loss of the step's ``inputs``: the raw batch, then this epoch's KL weight (if it
        changes from epoch to epoch).

        :param inputs: the raw batch and the weight.
        """
        raw = inputs[: len(inputs) - len(self.weight)]
        weight = inputs[len(raw) :]
        if self.kl_weight is not None:
            return self.loss_fn(*self.prepare(*raw), kl_weight=self.kl_weight)
        return self.loss_fn(*self.prepare(*raw), *weight)

    def consider_compiling(self, batch: tuple[torch.Tensor, ...], steps_left: int) -> str | None:
        """Before an eager step on a full batch: capture and compile the step when the policy
        says it is time; returns the policy's one line once it has decided.

        :param batch: a full raw batch, the shape compiled.
        :param steps_left: the steps still to take, which compiling would speed up.
        """
        if not self.policy.ready():
            return None
        self.policy.decide(
            lambda: WholeStep(
                self.model,
                self.loss,
                self.optimizer,
                self.clip_norm,
                *batch,
                *self.weight,
                world=self.world,
            ),  # fmt: skip
            batch[0],
            steps_left,
        )
        return self.policy.message

    def __call__(self, *batch: torch.Tensor, full: bool = True) -> torch.Tensor:
        """One step on ``batch``, this rank's shard of a raw batch: the loss and its gradient
        (summed over ranks) and one Adam step. Returns the whole batch's loss, detached, on the
        device.

        :param batch: this rank's shard of a raw batch, as the batch source gives it.
        :param full: whether it has the compiled shape.
        """
        compiled = self.policy.compiled
        if compiled is not None and full:
            return compiled(*batch, *self.weight)
        empty = not len(batch[0])
        loss = torch.zeros((), device=self.device) if empty else self.loss(*batch, *self.weight)
        if loss.requires_grad:
            loss.backward()
        if self.world > 1:
            loss = distributed.all_reduce_gradients(self.parameters, loss)
        if self.clip_norm is not None:  # foreach, no error check: no read back to the host
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

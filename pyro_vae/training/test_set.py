"""The test ELBO after every epoch: one seeded pass over the test set, compiled once timed if
the epochs ahead repay it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyro_vae.infer.compiling import CompiledLoss, CompilePolicy
from pyro_vae.infer.elbo import dataset_elbo, make_loss
from pyro_vae.infer.passes import EVAL_BATCH_SIZE
from pyro_vae.models.program import Program


class TestELBO:
    """The ELBO of the test set with the run's seed (:func:`~pyro_vae.infer.elbo.dataset_elbo`),
    its batches compiled once the first pass is timed, if the passes ahead repay it; even
    ``compile="on"`` compiles it only then.

    :param model: the model.
    :param x: the test set as the model scores it, on its device.
    :param labels: its integer labels, or ``None``.
    :param seed: the run's seed: the same draws after every epoch.
    :param objective: the training objective, whose ELBO is reported.
    :param compile: ``"auto"``, ``"on"`` or ``"off"``.
    :param agree: makes the ranks of a torchrun decide alike.
    """

    __test__ = False  # not a test class, for pytest

    def __init__(
        self,
        model: Program,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        *,
        seed: int,
        objective: str,
        compile: str,
        agree: Callable[[bool], bool],
    ):
        self.model, self.x, self.labels = model, x, labels
        self.seed, self.objective = seed, objective
        mode = "off" if compile == "off" else "auto"
        self.policy = CompilePolicy("the test ELBO", mode, device=x.device, agree=agree)
        self.elbo_fn = make_loss(model, model.objectives[objective].elbo)

    def __call__(self, passes_ahead: int) -> tuple[float, str | None]:
        """The test ELBO, and the line on compiling it once that is decided (else ``None``).

        :param passes_ahead: the passes still to come after this one.
        """
        first = self.x[:EVAL_BATCH_SIZE]
        batches = max(1, len(self.x) // len(first))  # those shaped like the first
        self.policy.ready()  # the first ask starts the clock
        value = dataset_elbo(self.model, self.x, seed=self.seed, objective=self.objective,
                             full_batch=self.policy.compiled, labels=self.labels)  # fmt: skip
        if not self.policy.ready(calls=batches):
            return value, None
        labels = None if self.labels is None else self.labels[: len(first)]
        cond = self.model.condition(labels, first)
        self.policy.decide(
            lambda: CompiledLoss(self.model, self.elbo_fn, first, *cond, gradients=False),
            first,
            passes_ahead * batches,
        )
        return value, self.policy.message

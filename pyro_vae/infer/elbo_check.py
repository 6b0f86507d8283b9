"""Pyro against the hand-written ELBO: the same numbers under the same draws, or the reason why not.

:func:`check_elbo` runs Pyro's ``Trace_ELBO`` and :func:`~pyro_vae.infer.elbo.manual_elbo` on one
batch with the same seed and compares the values and every parameter's gradient; then
``TraceMeanField_ELBO`` against ``manual_elbo(..., analytic_kl=True)``; both again with the KL
term weighed (a beta, or a warm-up's weight); Pyro's IWAE objective (``RenyiELBO(alpha=0)``)
against the hand-written :func:`~pyro_vae.infer.elbo.iwae_bound`, and its doubly reparameterized
gradient against :func:`~pyro_vae.infer.elbo.iwae_dreg_gradients`; then reports the IWAE
bound for several k, whose k = 1 value must equal, example by example, the single-sample ELBO that
Pyro computes from its own traces of the guide and the model (:func:`pyro_single_sample_elbo`)
under the same seed.

Both checks run on a float64 copy of the model and the batch, so that a difference is a different
computation and not float32 rounding, which grows with the size of the log densities (thousands
of nats for a colour image): the model given is left as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import OBJECTIVES, iwae_bound, iwae_dreg_gradients, make_loss, manual_elbo

if TYPE_CHECKING:  # the types of the models checked; the models import this module
    from pyro_vae.models.program import Program
    from pyro_vae.models.vae import VAE

# Largest difference accepted, relative to the size of the quantity (at least 1): rounding of
# sums in a different order, never a different estimator. compare() alone may see float32.
TOLERANCE = 1e-5
# The IWAE gradients weigh by exp(log w - logsumexp log w), log w hundreds of nats in float32:
# the weights carry that rounding, about 1e-5 of a weight, into every gradient.
IWAE_TOLERANCE = 1e-4


@dataclass
class Comparison:
    """Pyro's loss against the negated manual ELBO, and the largest gradient difference.

    :param name: what was compared, as ``check-elbo`` prints it.
    :param pyro_loss: Pyro's loss of the batch, nats summed over it.
    :param manual_loss: the hand-written twin's, likewise.
    :param loss_difference: ``|pyro_loss - manual_loss|``.
    :param largest_gradient: the largest magnitude of any of Pyro's gradients.
    :param gradient_difference: the largest magnitude of a difference between the two gradients.
    :param tolerance: the largest difference accepted, relative to the larger of 1 and the size
        of the quantity.
    """

    name: str
    pyro_loss: float
    manual_loss: float
    loss_difference: float
    largest_gradient: float
    gradient_difference: float
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        """Whether loss and gradients agree to ``tolerance``, relative to the larger of 1 and their
        own size."""
        return self.loss_difference <= self.tolerance * max(
            1.0, abs(self.pyro_loss)
        ) and self.gradient_difference <= self.tolerance * max(1.0, self.largest_gradient)


@dataclass
class ElboCheck:
    """Everything ``pyro-vae check-elbo`` prints; ``failures`` is empty when all equalities hold.

    :param comparisons: each objective against its hand-written twin.
    :param skipped: the comparisons not made, each with its reason (no closed-form KL, say).
    :param iwae: the IWAE bound's mean per example, nats, by k.
    :param iwae_k1_difference: the largest difference, over the examples, between the IWAE bound
        with k = 1 and Pyro's single-sample ELBO.
    :param failures: what did not agree, one line each.
    """

    comparisons: list[Comparison] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    iwae: dict[int, float] = field(default_factory=dict)
    iwae_k1_difference: float = 0.0
    failures: list[str] = field(default_factory=list)


def loss_and_grads(
    model: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    args: tuple[Any, ...],
    seed: int,
) -> tuple[float, tuple[torch.Tensor | None, ...]]:
    """``loss_fn(*args)`` under ``seed``, and its gradient with respect to each of ``model``'s
    parameters (``None`` for a parameter the loss does not use), in the order of
    ``model.parameters()``: one side of every comparison here, and the tests' too.

    :param model: the model whose parameters the gradients are of, a VAE or a label model.
    :param loss_fn: computes the loss, a 0-dim tensor, from ``args``.
    :param args: the arguments of ``loss_fn``.
    :param seed: seeds torch's global generator just before ``loss_fn`` runs, so that two losses
        computed under the same seed make the same draws.
    """
    torch.manual_seed(seed)
    loss = loss_fn(*args)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return float(loss.detach()), grads


# How check-elbo names each Pyro objective and its hand-written twin
LABELS = {
    "trace": "Trace_ELBO vs manual",
    "meanfield": "TraceMeanField vs analytic KL",
    "iwae": "IWAE (RenyiELBO a=0) vs iwae_bound",
    "iwae-dreg": "IWAE-DReG vs iwae_dreg_gradients",
}


def compare(
    vae: VAE,
    x: torch.Tensor,
    objective: str,
    seed: int,
    num_particles: int = 1,
    kl_weight: float = 1.0,
) -> Comparison:
    """Pyro's ``objective`` (``trace``, ``meanfield``, ``iwae`` or ``iwae-dreg``) against its
    hand-written twin
    on batch ``x``, with ``num_particles`` particles and the KL term weighed by ``kl_weight``.

    :param vae: the model, a VAE.
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param objective: ``"trace"``, ``"meanfield"``, ``"iwae"`` or ``"iwae-dreg"``.
    :param seed: seeds both computations alike, so they make the same draws.
    :param num_particles: the vectorized particles per example.
    :param kl_weight: the weight of the KL term (not for the IWAE objectives).
    """
    pyro_fn = partial(OBJECTIVES[objective].make(vae, num_particles), kl_weight=kl_weight)

    def manual_fn(b: torch.Tensor) -> torch.Tensor:
        if objective == "iwae":  # the IWAE bound has no KL term to weigh
            return -iwae_bound(vae, b, num_particles).sum()
        analytic = objective == "meanfield"
        return -manual_elbo(vae, b, num_particles, analytic, kl_weight=kl_weight)

    weight = f", KL weight {kl_weight:g}" if kl_weight != 1 else ""
    name = f"{LABELS[objective]} (K={num_particles}{weight})"
    tolerance = IWAE_TOLERANCE if objective.startswith("iwae") else TOLERANCE
    if objective != "iwae-dreg":
        return _compared(name, vae, pyro_fn, manual_fn, (x,), seed, tolerance)
    # DReG: a gradient estimator written out, not a loss to differentiate
    pyro_loss, pyro_grads = loss_and_grads(vae, pyro_fn, (x,), seed)
    torch.manual_seed(seed)
    bound, grads = iwae_dreg_gradients(vae, x, num_particles, list(vae.parameters()))
    manual_grads = [None if g is None else -g for g in grads]
    return _comparison(name, pyro_loss, pyro_grads, -float(bound), manual_grads, tolerance)


def _compared(
    name: str,
    vae: VAE,
    pyro_fn: Callable[..., torch.Tensor],
    manual_fn: Callable[..., torch.Tensor],
    args: tuple[Any, ...],
    seed: int,
    tolerance: float = TOLERANCE,
) -> Comparison:
    """``pyro_fn(*args)`` against ``manual_fn(*args)``, each under ``seed``: value, gradients."""
    pyro_loss, pyro_grads = loss_and_grads(vae, pyro_fn, args, seed)
    manual_loss, manual_grads = loss_and_grads(vae, manual_fn, args, seed)
    return _comparison(name, pyro_loss, pyro_grads, manual_loss, manual_grads, tolerance)


def _comparison(
    name: str,
    pyro_loss: float,
    pyro_grads: Sequence[torch.Tensor | None],
    manual_loss: float,
    manual_grads: Sequence[torch.Tensor | None],
    tolerance: float,
) -> Comparison:
    pairs = [(a, b) for a, b in zip(pyro_grads, manual_grads, strict=True) if a is not None]
    return Comparison(
        name=name,
        pyro_loss=pyro_loss,
        manual_loss=manual_loss,
        loss_difference=abs(pyro_loss - manual_loss),
        largest_gradient=max(float(a.abs().max()) for a, _ in pairs),
        gradient_difference=max(float((a - b).abs().max()) for a, b in pairs),
        tolerance=tolerance,
    )


def pyro_single_sample_elbo(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x, z) - log q(z|x) of each example of ``x`` (shape ``(B,)``, nats), for one draw
    z ~ q(z|x), computed by Pyro as ``Trace_ELBO`` computes it: the guide is traced, the model is
    replayed with the guide's z, and the log densities of the traces' sample sites are added up,
    per example, model minus guide. Nothing of :mod:`pyro_vae.infer.elbo` is used.

    Under the same seed z is the draw that :func:`~pyro_vae.infer.elbo.iwae_bound` with k = 1 makes.

    :param vae: the model, a VAE.
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    """
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    elbo = x.new_zeros(x.shape[0])
    for trace, sign in ((model_trace, 1), (guide_trace, -1)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                elbo = elbo + sign * site["log_prob"]
    return elbo


def check_elbo(
    vae: VAE,
    x: torch.Tensor,
    *,
    seed: int = 0,
    num_particles: int = 1,
    kl_weight: float = 0.5,
    iwae_particles: int = 5,
    ks: Sequence[int] = (1, 10, 100),
) -> ElboCheck:
    """Compare Pyro's objectives with the hand-written ones on batch ``x``: the two ELBOs with
    ``num_particles`` particles, at weight 1 and with the KL term weighed by ``kl_weight`` (a beta
    or a warm-up's weight), and the IWAE objective with ``iwae_particles``; see the module doc.

    :param vae: the model, a VAE; a float64 copy is checked, it is left as it is.
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param seed: seeds each computation alike.
    :param num_particles: the particles of the two ELBOs.
    :param kl_weight: the KL weight of the weighed comparisons.
    :param iwae_particles: the particles of the IWAE objectives.
    :param ks: the k at which the IWAE bound is reported.
    """
    vae, x = _in_float64(vae, x)
    report = ElboCheck()
    rows = [(o, num_particles, w) for w in (1.0, kl_weight) for o in ("trace", "meanfield")]
    rows += [("iwae", iwae_particles, 1.0), ("iwae-dreg", iwae_particles, 1.0)]
    for objective, particles, weight in rows:
        try:
            report.comparisons.append(compare(vae, x, objective, seed, particles, weight))
        except ConfigError as e:  # no closed-form KL for this prior: nothing to compare
            if weight == 1.0:
                report.skipped.append(f"{objective}: {e}")
    with torch.no_grad():
        for k in ks:
            torch.manual_seed(seed)
            report.iwae[k] = float(iwae_bound(vae, x, k).mean())
        torch.manual_seed(seed)
        k1 = iwae_bound(vae, x, 1)
        torch.manual_seed(seed)
        report.iwae_k1_difference = float((k1 - pyro_single_sample_elbo(vae, x)).abs().max())
    _record_failures(report)
    if report.iwae_k1_difference > TOLERANCE * max(1.0, abs(report.iwae.get(1, 1.0))):
        report.failures.append(
            f"the IWAE bound with k=1 differs from Pyro's single-sample ELBO by "
            f"{report.iwae_k1_difference:.3g}"
        )
    return report


def _in_float64(vae: VAE, x: torch.Tensor) -> tuple[VAE, torch.Tensor]:
    """A float64 copy of ``vae``, and ``x`` in float64: the checks' arithmetic."""
    return copy.deepcopy(vae).double(), x.double()


def _record_failures(report: ElboCheck) -> None:
    for c in report.comparisons:
        if not c.ok:
            report.failures.append(
                f"{c.name}: loss differs by {c.loss_difference:.3g} and gradients by "
                f"{c.gradient_difference:.3g}, more than {c.tolerance:g} relative"
            )


def check_label_model(
    model: Program, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0, kl_weight: float = 0.5
) -> ElboCheck:
    """Compare Pyro's objectives of a label model with the hand-written ones on batch ``x`` and its
    one-hot labels ``y``, at weight 1 and with the KL term weighed by ``kl_weight``: the rows the
    model's ``twin_rows`` names (:meth:`~pyro_vae.models.cvae.CVAE.twin_rows`: ``Trace_ELBO`` and
    ``TraceMeanField_ELBO`` against :func:`~pyro_vae.infer.elbo.manual_elbo` given y;
    :meth:`~pyro_vae.models.m2.M2.twin_rows`: ``TraceEnum_ELBO`` on the unlabelled program against
    :func:`~pyro_vae.models.m2.m2_elbo`, the labelled and auxiliary programs, and the step as
    trained against :func:`~pyro_vae.models.m2.m2_objective`).

    :param model: a label model with ``twin_rows``; a float64 copy is checked.
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param y: their one-hot labels, ``(B, K)``.
    :param seed: seeds each computation alike.
    :param kl_weight: the KL weight of the weighed comparisons.
    """
    model, x = _in_float64(model, x)
    report = ElboCheck()
    for name, pyro_fn, manual_fn, args in model.twin_rows(x, y.double(), (1.0, kl_weight)):
        try:
            report.comparisons.append(_compared(name, model, pyro_fn, manual_fn, args, seed))
        except ConfigError as e:  # no closed-form KL for this prior: nothing to compare
            report.skipped.append(f"{name}: {e}")
    _record_failures(report)
    return report


def check_twins(
    model: Program,
    batch: tuple[torch.Tensor, ...],
    *,
    seed: int = 0,
    num_particles: int = 1,
    kl_weight: float = 0.5,
) -> ElboCheck:
    """Compare each of ``model.objectives`` that names a hand-written ``twin`` with that twin on
    ``batch`` (a training step's arguments), loss and gradients, at weight 1 and (for the
    objectives with a KL term) with it weighed by ``kl_weight``: the check of a model with no
    rows of its own.

    :param model: the model; a float64 copy is checked.
    :param batch: what a training step takes, ``(x, ...)``, floats as the likelihood scores them.
    :param seed: seeds each computation alike.
    :param num_particles: the particles of each objective.
    :param kl_weight: the KL weight of the weighed comparisons.
    """
    model = copy.deepcopy(model).double()
    batch = tuple(t.double() for t in batch)
    report = ElboCheck()
    for name, objective in model.objectives.items():
        if objective.twin is None:
            continue
        pyro_fn = make_loss(model, name, num_particles)
        twin = make_loss(model, objective.twin, num_particles)
        for w in (1.0, kl_weight) if objective.weighs_kl else (1.0,):
            label = f"{name} vs {objective.twin}" + (f", KL weight {w:g}" if w != 1 else "")
            report.comparisons.append(
                _compared(label, model, pyro_fn, twin, (*batch, w), seed)
            )
    if not report.comparisons:
        raise ConfigError(
            f"model {model.name!r} has no hand-written twin to hold Pyro's objectives against "
            "(a program's is a manual_elbo or manual_iwae method)"
        )
    _record_failures(report)
    return report


def negated(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn``'s value negated: a hand-written objective as a loss, to hold against Pyro's.

    :param fn: a function returning a tensor.
    """
    return lambda *args, **kwargs: -fn(*args, **kwargs)



def format_check(report: ElboCheck, batch_size: int) -> str:
    """The report as the plain-text table ``pyro-vae check-elbo`` prints.

    :param report: the check's result.
    :param batch_size: the examples of the batch checked, for the heading.
    """
    lines = [
        f"batch of {batch_size} examples; losses are summed over the batch (nats)",
        "",
        f"{'comparison':<52}{'Pyro loss':>14}{'-manual ELBO':>14}{'|difference|':>14}"
        f"{'max |grad|':>12}{'max |grad diff|':>17}",
    ]
    for c in report.comparisons:
        lines.append(
            f"{c.name:<52}{c.pyro_loss:>14.4f}{c.manual_loss:>14.4f}{c.loss_difference:>14.3g}"
            f"{c.largest_gradient:>12.4g}{c.gradient_difference:>17.3g}"
        )
    lines += [f"skipped {reason}" for reason in report.skipped]
    if report.iwae:  # the rows of the IWAE bound's own check, where it was made
        lines += [
            "",
            "IWAE bound, mean per example (nats): "
            + ", ".join(f"k={k}: {v:.4f}" for k, v in report.iwae.items()),
            f"IWAE k=1 against Pyro's single-sample ELBO, largest |difference|: "
            f"{report.iwae_k1_difference:.3g}",
        ]
    return "\n".join(lines)

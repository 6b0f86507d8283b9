"""Pyro against the hand-written ELBO: the same numbers under the same draws, or the reason why not.

:func:`check_elbo` runs Pyro's ``Trace_ELBO`` and :func:`~pyro_vae.elbo.manual_elbo` on one batch
with the same seed and compares the values and every parameter's gradient; then
``TraceMeanField_ELBO`` against ``manual_elbo(..., analytic_kl=True)``; then reports the IWAE
bound for several k, whose k = 1 value must equal, example by example, the single-sample ELBO that
Pyro computes from its own traces of the guide and the model (:func:`pyro_single_sample_elbo`)
under the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .elbo import OBJECTIVES, iwae_bound, manual_elbo
from .errors import ConfigError
from .model import VAE

# Largest difference accepted, relative to the size of the quantity (at least 1): float32
# rounding of sums in a different order, never a different estimator.
TOLERANCE = 1e-5


@dataclass
class Comparison:
    """Pyro's loss against the negated manual ELBO, and the largest gradient difference."""

    name: str
    pyro_loss: float
    manual_loss: float
    loss_difference: float
    largest_gradient: float
    gradient_difference: float

    @property
    def ok(self) -> bool:
        return self.loss_difference <= TOLERANCE * max(
            1.0, abs(self.pyro_loss)
        ) and self.gradient_difference <= TOLERANCE * max(1.0, self.largest_gradient)


@dataclass
class ElboCheck:
    """Everything ``pyro-vae check-elbo`` prints; ``failures`` is empty when all equalities hold."""

    comparisons: list[Comparison] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    iwae: dict[int, float] = field(default_factory=dict)
    iwae_k1_difference: float = 0.0
    failures: list[str] = field(default_factory=list)


def _loss_and_grads(vae: VAE, loss_fn, x: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    loss = loss_fn(x)
    grads = torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True)
    return float(loss.detach()), grads


def compare(vae: VAE, x: torch.Tensor, objective: str, seed: int, num_particles: int = 1):
    """Pyro's ``objective`` (``trace`` or ``meanfield``) against the manual ELBO on batch ``x``."""
    analytic_kl = objective == "meanfield"
    pyro_loss, pyro_grads = _loss_and_grads(vae, OBJECTIVES[objective](vae, num_particles), x, seed)
    manual_loss, manual_grads = _loss_and_grads(
        vae, lambda b: -manual_elbo(vae, b, num_particles, analytic_kl), x, seed
    )
    pairs = [(a, b) for a, b in zip(pyro_grads, manual_grads, strict=True) if a is not None]
    label = "Trace_ELBO vs manual" if objective == "trace" else "TraceMeanField vs analytic KL"
    return Comparison(
        name=f"{label} ({num_particles} particle{'s' if num_particles > 1 else ''})",
        pyro_loss=pyro_loss,
        manual_loss=manual_loss,
        loss_difference=abs(pyro_loss - manual_loss),
        largest_gradient=max(float(a.abs().max()) for a, _ in pairs),
        gradient_difference=max(float((a - b).abs().max()) for a, b in pairs),
    )


def pyro_single_sample_elbo(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x, z) - log q(z|x) of each example of ``x`` (shape ``(B,)``, nats), for one draw
    z ~ q(z|x), computed by Pyro as ``Trace_ELBO`` computes it: the guide is traced, the model is
    replayed with the guide's z, and the log densities of the traces' sample sites are added up,
    per example, model minus guide. Nothing of :mod:`pyro_vae.elbo` is used.

    Under the same seed z is the draw that :func:`~pyro_vae.elbo.iwae_bound` with k = 1 makes.
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
    ks: Sequence[int] = (1, 10, 100),
) -> ElboCheck:
    """Compare Pyro's objectives with the hand-written ones on batch ``x``; see the module doc."""
    report = ElboCheck()
    for objective in ("trace", "meanfield"):
        try:
            report.comparisons.append(compare(vae, x, objective, seed, num_particles))
        except ConfigError as e:  # no closed-form KL for this prior: nothing to compare
            report.skipped.append(f"{objective}: {e}")
    with torch.no_grad():
        for k in ks:
            torch.manual_seed(seed)
            report.iwae[k] = float(iwae_bound(vae, x, k).mean())
        torch.manual_seed(seed)
        k1 = iwae_bound(vae, x, 1)
        torch.manual_seed(seed)
        report.iwae_k1_difference = float((k1 - pyro_single_sample_elbo(vae, x)).abs().max())
    for c in report.comparisons:
        if not c.ok:
            report.failures.append(
                f"{c.name}: loss differs by {c.loss_difference:.3g} and gradients by "
                f"{c.gradient_difference:.3g}, more than {TOLERANCE:g} relative"
            )
    if report.iwae_k1_difference > TOLERANCE * max(1.0, abs(report.iwae.get(1, 1.0))):
        report.failures.append(
            f"the IWAE bound with k=1 differs from Pyro's single-sample ELBO by "
            f"{report.iwae_k1_difference:.3g}"
        )
    return report


def format_check(report: ElboCheck, batch_size: int) -> str:
    """The report as the plain-text table ``pyro-vae check-elbo`` prints."""
    lines = [
        f"batch of {batch_size} examples; losses are summed over the batch (nats)",
        "",
        f"{'comparison':<42}{'Pyro loss':>14}{'-manual ELBO':>14}{'|difference|':>14}"
        f"{'max |grad|':>12}{'max |grad diff|':>17}",
    ]
    for c in report.comparisons:
        lines.append(
            f"{c.name:<42}{c.pyro_loss:>14.4f}{c.manual_loss:>14.4f}{c.loss_difference:>14.3g}"
            f"{c.largest_gradient:>12.4g}{c.gradient_difference:>17.3g}"
        )
    lines += [f"skipped {reason}" for reason in report.skipped]
    lines += [
        "",
        "IWAE bound, mean per example (nats): "
        + ", ".join(f"k={k}: {v:.4f}" for k, v in report.iwae.items()),
        f"IWAE k=1 against Pyro's single-sample ELBO, largest |difference|: "
        f"{report.iwae_k1_difference:.3g}",
    ]
    return "\n".join(lines)

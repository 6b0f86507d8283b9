r"""The objective: the evidence lower bound, by Pyro and by hand.

For one example x, Jensen's inequality under the guide q(z|x) gives

    log p(x) = log E_q[ p(x, z) / q(z|x) ]  >=  E_q[ log p(x|z) + log p(z) - log q(z|x) ] = ELBO(x).

The expectation is over z, whose distribution depends on the encoder's parameters, so its gradient
cannot be taken inside the expectation as it stands: a sampling node has no derivative. The
reparameterization trick (Kingma & Welling, "Auto-Encoding Variational Bayes", arXiv:1312.6114)
moves the randomness into a parameter-free eps:

    z = mu(x) + sigma(x) * eps,   eps ~ N(0, I)
    ELBO(x) = E_eps[ log p(x | z(eps)) + log p(z(eps)) - log q(z(eps) | x) ],

and the Monte Carlo average over draws of eps is an unbiased estimate whose gradient is the
gradient of the ELBO. Where KL(q(z|x) || p(z)) has a closed form (a diagonal Gaussian guide and
a Gaussian prior), ``E_q[log p(z) - log q(z|x)] = -KL(q || p)`` is used exactly instead.

Pyro's ``Trace_ELBO`` computes the first estimator from the guide and model traces and
``TraceMeanField_ELBO`` the second; :func:`manual_elbo` computes both with no ``pyro.infer`` and no
poutine, and the tests show they agree to float32 rounding, value and gradients, under the same
random draws. Pyro's *loss* is the negative ELBO. :func:`iwae_bound` is the importance-weighted
bound of Burda et al. (arXiv:1509.00519), which tightens towards log p(x) as k grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import pyro.distributions as dist
import torch
from pyro.infer import ELBO
from torch.distributions import kl_divergence

from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.infer.passes import EVAL_BATCH_SIZE, seeded_pass
from pyro_vae.infer.sync_free import (
    SyncFreeIWAE_DReG_ELBO,
    SyncFreeIWAE_ELBO,
    SyncFreeTrace_ELBO,
    SyncFreeTraceMeanField_ELBO,
)
from pyro_vae.parts.guides import normal_log_density
from pyro_vae.parts.registry import name_of
from pyro_vae.validation import MAX_PARTICLES

if TYPE_CHECKING:  # the types of the models these functions take; the models import this module
    from pyro_vae.models.program import Program
    from pyro_vae.models.vae import VAE

LossFn = Callable[..., torch.Tensor]  # (x, kl_weight=1.0) -> loss

#: iwae_bound holds at most about this many decoder outputs at once, whatever k is
IWAE_CHUNK_ELEMENTS = 2**24


def log_weight_terms(
    vae: VAE, x: torch.Tensor, num_particles: int = 1, cond: tuple[torch.Tensor, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dist.Distribution, dist.Distribution]:
    """One reparameterized draw of z per particle and example, and the three log densities.

    The operations run in the order Pyro runs them (guide, then model, then the model's log
    densities, then the guide's), so that the random draws and even the rounding of the
    gradients are the same as ``Trace_ELBO``'s with vectorized particles.

    :param vae: the model: its guide family, prior and likelihood.
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param num_particles: the draws of z per example, vectorized.
    :param cond: what a label-conditioned model's networks also take: ``(y,)``, one-hot,
        ``(B, K)``, or ``(K, 1, K)`` for every label at once, which gives densities of shape
        ``(num_particles, K, B)``.
    :returns: ``(log p(x|z), log p(z), log q(z|x), q, p(z))``, each density of shape
        ``(num_particles, B)``.
    """
    x = vae.inputs(x)
    z, q, log_q_at_z = vae.posterior.draw(vae.encoder(x, *cond), num_particles)
    p_z = vae.prior(x.shape[0], x)
    p_x = vae.likelihood_dist(z, *cond)
    log_p_z = p_z.log_prob(z)
    log_p_x = p_x.log_prob(x)
    log_q = log_q_at_z()
    return log_p_x, log_p_z, log_q, q, p_z


def manual_elbo(
    vae: VAE,
    x: torch.Tensor,
    num_particles: int = 1,
    analytic_kl: bool = False,
    kl_weight: float | torch.Tensor = 1.0,
    cond: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """The ELBO of the batch ``x``, summed over examples and averaged over particles, in nats
    (given the one-hot labels ``cond = (y,)`` for the conditional VAE).

    With ``analytic_kl=False`` this is ``log p(x|z) + w log p(z) - w log q(z|x)`` at
    z = loc + scale * eps, eps ~ N(0, I), drawn with ``torch.randn`` in the order Pyro draws it,
    with w = ``kl_weight`` (1: the ELBO; beta, or a warm-up's weight, otherwise):
    ``-manual_elbo(vae, x, K, kl_weight=w)`` equals
    ``Trace_ELBO(num_particles=K, vectorize_particles=True).differentiable_loss(vae.model,
    vae.guide, x, w)`` under the same seed. With ``analytic_kl=True`` the term
    ``w (log p(z) - log q(z|x))`` becomes ``-w KL(q(z|x) || p(z))`` in closed form, as in
    ``TraceMeanField_ELBO``.

    :param vae: the model: a VAE, or a CVAE given ``cond``.
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param num_particles: K, the vectorized draws of z per example the ELBO averages over.
    :param analytic_kl: take the KL term in closed form, as ``TraceMeanField_ELBO`` does, rather
        than from the draws.
    :param kl_weight: w, the weight of the KL term: a number or a 0-dim tensor; 1 for the ELBO.
    :param cond: the conditional VAE's ``(y,)``, one-hot, ``(B, K)``; ``()`` for the VAE.
    :raises ConfigError: if ``analytic_kl`` is asked for and no closed-form KL exists between
        the guide family and the prior.
    """
    log_p_x, log_p_z, log_q, q, p_z = log_weight_terms(vae, x, num_particles, cond)
    if not analytic_kl:
        weighted = (log_p_z * kl_weight).sum() + log_p_x.sum() - (log_q * kl_weight).sum()
        return weighted / num_particles
    kl = closed_form_kl(vae, q, p_z)
    return log_p_x.sum() / num_particles - (kl * kl_weight).sum()


def closed_form_kl(vae: VAE, q: dist.Distribution, p_z: dist.Distribution) -> torch.Tensor:
    """KL(q(z|x) || p(z)) in closed form, or a :class:`ConfigError` naming guide and prior.

    :param vae: the model, whose guide and prior the error names.
    :param q: q(z|x), the guide's distribution.
    :param p_z: p(z), the prior's distribution.
    """
    try:
        return kl_divergence(q, p_z)
    except NotImplementedError:
        raise ConfigError(
            f"no closed-form KL between the {name_of(vae.posterior)!r} guide and the "
            f"{name_of(vae.prior)!r} prior, so objective 'meanfield' (analytic KL) cannot be "
            "used; use objective 'trace' (sampled KL)"
        ) from None


def iwae_chunk(vae: VAE, x: torch.Tensor, particles: int, *cond: torch.Tensor) -> torch.Tensor:
    """log sum_i p(x, z_i) / q(z_i|x) over ``particles`` draws z_i ~ q(z|x), per example: one
    chunk of :func:`iwae_bound` (given the labels ``cond``, for the label models).

    :param vae: the model.
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param particles: the draws z_i per example in this chunk.
    :param cond: a label model's one-hot labels ``y``, ``(B, K)`` or ``(K, 1, K)``; none for the
        VAE.
    """
    log_p_x, log_p_z, log_q, _, _ = log_weight_terms(vae, x, particles, cond)
    return torch.logsumexp(log_p_x + log_p_z - log_q, dim=0)


def iwae_chunk_size(vae: VAE, x: torch.Tensor, k: int, *cond: torch.Tensor) -> int:
    """The particles :func:`iwae_bound` draws at once for the batch ``x`` (and labels ``cond``:
    every label at once multiplies the decoder's outputs).

    :param vae: the model (its ``z_dim``).
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param k: the particles of the whole bound: no chunk is larger.
    :param cond: a label model's one-hot labels ``y``; with ``(K, 1, K)`` each particle has K times
        the outputs.
    """
    copies = math.prod(cond[0].shape[:-2]) if cond else 1
    per_particle = copies * x.shape[0] * max(x[0].numel(), vae.z_dim)
    return max(1, min(k, IWAE_CHUNK_ELEMENTS // per_particle))


def iwae_bound(
    model: Program,
    x: torch.Tensor,
    k: int,
    full_chunk: Callable[..., torch.Tensor] | None = None,
    cond: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """The importance-weighted bound log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), per
    example of ``x`` (shape ``(B,)``, nats); with a label model's ``cond = (y,)``, the bound on
    log p(x | y).

    k = 1 is the single-sample ELBO; the bound rises towards log p(x) as k grows. Particles are
    drawn in chunks of ``model.iwae_chunk_size`` (each ``model.iwae_chunk``, for the VAE
    :func:`iwae_chunk`), combined with logsumexp, so that k = 5000 fits in memory. It is
    differentiable: ``-iwae_bound(vae, x, k).sum()`` is the hand-written twin of Pyro's IWAE
    objective (:class:`~pyro_vae.infer.sync_free.SyncFreeIWAE_ELBO`), the same value and gradients
    under the same seed; estimates that need no gradient run it under ``torch.no_grad()``.

    :param model: the model (:class:`~pyro_vae.models.program.Program`).
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param k: the particles per example; 1 is the single-sample ELBO.
    :param full_chunk: ``(x, *cond) -> chunk``, computing a chunk of ``model.iwae_chunk_size``
        particles (a compiled ``model.iwae_chunk``, say); ``None``: ``model.iwae_chunk`` computes
        every chunk.
    :param cond: what the programs take after ``x``; ``()`` for the VAE.
    """
    if k < 1:
        raise ConfigError(f"the IWAE bound needs k >= 1 particles, got {k}")
    chunk = model.iwae_chunk_size(x, k, *cond)
    partial_sums = []
    for start in range(0, k, chunk):
        size = min(chunk, k - start)
        full = full_chunk is not None and size == chunk
        partial_sums.append(full_chunk(x, *cond) if full else model.iwae_chunk(x, size, *cond))
    return torch.logsumexp(torch.stack(partial_sums), dim=0) - math.log(k)


def iwae_dreg_gradients(
    vae: VAE, x: torch.Tensor, num_particles: int, parameters: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The IWAE bound of the batch ``x`` (summed over examples) and its doubly reparameterized
    gradient with respect to ``parameters`` (Tucker et al. 2018), written out for the diagonal
    Gaussian guide: with z_k = loc + scale * eps_k, log w_k = log p(x, z_k) - log q(z_k | x)
    and the normalized weights w~_k,

        model's path (z held):        sum_k w~_k grad log w_k
        guide's path (through z_k):   sum_k w~_k^2 (d log w_k / d z_k) (d z_k / d params)

    where log q is scored with loc and scale held fixed. The hand-written twin of
    :class:`~pyro_vae.infer.sync_free.SyncFreeIWAE_DReG_ELBO`: two explicit gradient computations,
    no hooks; the draws are Pyro's, in Pyro's order.

    :param vae: a VAE with the ``diagonal`` Gaussian guide.
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param num_particles: K, the particles per example.
    :param parameters: the tensors the gradient is taken with respect to, e.g.
        ``list(vae.parameters())``; one not reached gets ``None``.
    """
    if name_of(vae.posterior) != "diagonal":
        raise ConfigError(
            "the doubly reparameterized gradient needs the 'diagonal' {param}", "guide"
        )
    loc, scale = vae.encode(x)
    eps = torch.randn(num_particles, *loc.shape, dtype=loc.dtype, device=loc.device)
    z = loc + eps * scale
    held = z.detach().requires_grad_()
    log_p_z = vae.prior(x.shape[0], x).log_prob(held)
    log_p_x = vae.likelihood_dist(held).log_prob(x)
    log_w = log_p_x + log_p_z - normal_log_density(held, loc.detach(), scale.detach()).sum(-1)
    weights = torch.softmax(log_w.detach(), dim=0)
    *model_path, dz = torch.autograd.grad(
        (weights * log_w).sum(), [*parameters, held], allow_unused=True
    )
    guide_path = torch.autograd.grad(
        z, parameters, grad_outputs=weights.unsqueeze(-1) * dz, allow_unused=True
    )
    grads = [_added(a, b) for a, b in zip(model_path, guide_path, strict=True)]
    bound = torch.logsumexp(log_w.detach(), dim=0) - math.log(num_particles)
    return bound.sum(), grads


def _added(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


def _pyro_loss(elbo_class: type[ELBO], vae: VAE, num_particles: int) -> LossFn:
    elbo = elbo_class(
        num_particles=num_particles,
        vectorize_particles=True,
        max_plate_nesting=vae.max_plate_nesting,
    )
    return partial(elbo.differentiable_loss, vae.model, vae.guide)


def _manual_loss(vae: VAE, num_particles: int) -> LossFn:
    return lambda x, kl_weight=1.0: -manual_elbo(vae, x, num_particles, kl_weight=kl_weight)


def _manual_iwae_loss(vae: VAE, num_particles: int) -> LossFn:
    return lambda x, kl_weight=1.0: -iwae_bound(vae, x, num_particles).sum()


@dataclass(frozen=True)
class Objective:
    """A training objective, by the name :func:`make_loss` takes.

    :param make: ``make(model, num_particles)`` gives its loss ``(*batch, kl_weight) ->
        -objective``, summed over the batch.
    :param weighs_kl: whether it has a KL term for a beta or a warm-up to weigh.
    :param elbo: the name of the objective whose one-particle value is the ELBO reported for runs
        trained with this one (the test ELBO).
    :param guides: the guide families it works with; ``()`` for any.
    :param max_particles: the most particles it may draw per example.
    :param analytic_kl: whether its KL term is in closed form (``TraceMeanField_ELBO``'s).
    :param twin: the name of its hand-written twin among the model's objectives, which
        ``check-elbo`` holds it against; ``None`` for a twin itself, or none.
    """

    make: Callable[[Program, int], LossFn]
    weighs_kl: bool
    elbo: str
    guides: tuple[str, ...] = ()
    max_particles: int = MAX_PARTICLES
    analytic_kl: bool = False
    twin: str | None = None


TRACE = Objective(partial(_pyro_loss, SyncFreeTrace_ELBO), True, "trace", twin="manual")
MEANFIELD = Objective(
    partial(_pyro_loss, SyncFreeTraceMeanField_ELBO), True, "meanfield", analytic_kl=True
)
IWAE = Objective(partial(_pyro_loss, SyncFreeIWAE_ELBO), False, "trace", twin="manual-iwae")
#: the objectives of any Pyro program whose ``model`` and ``guide`` take ``(*batch, kl_weight)``:
#: Pyro's Trace_ELBO, TraceMeanField_ELBO and RenyiELBO(alpha=0) without their host round trips
#: (:mod:`pyro_vae.infer.sync_free`)
PYRO_OBJECTIVES: dict[str, Objective] = {"trace": TRACE, "meanfield": MEANFIELD, "iwae": IWAE}
#: the VAE's: Pyro's, the IWAE bound with the doubly reparameterized gradient, and the
#: hand-written twins
OBJECTIVES: dict[str, Objective] = PYRO_OBJECTIVES | {
    "iwae-dreg": Objective(
        partial(_pyro_loss, SyncFreeIWAE_DReG_ELBO), False, "trace", guides=("diagonal",)
    ),
    "manual": Objective(_manual_loss, True, "manual"),
    "manual-iwae": Objective(_manual_iwae_loss, False, "manual"),
}


def make_loss(model: Program, objective: str = "trace", num_particles: int = 1) -> LossFn:
    """``(*batch, kl_weight=1) -> -objective(batch)`` summed over the batch, differentiable, by
    the objective's name among ``model.objectives``: for the VAE ``trace`` (Pyro's
    ``Trace_ELBO``), ``meanfield`` (``TraceMeanField_ELBO``), ``iwae`` (``RenyiELBO(alpha=0)``,
    the IWAE bound), ``iwae-dreg`` (the same bound with the doubly reparameterized guide
    gradient), or their hand-written twins ``manual`` (:func:`manual_elbo`, no ``pyro.infer``)
    and ``manual-iwae`` (:func:`iwae_bound`), each with ``num_particles`` vectorized particles.
    ``kl_weight`` weighs the KL term of the ELBOs.

    :param model: the model whose programs the loss scores
        (:class:`~pyro_vae.models.program.Program`).
    :param objective: the objective's name, one of ``model.objectives``.
    :param num_particles: the vectorized particles per example.
    """
    objectives = model.objectives
    if objective not in objectives:
        raise ConfigError(
            f"unknown objective {objective!r} for model {model.name!r}; choose one of: "
            f"{', '.join(objectives)}"
        )
    return objectives[objective].make(model, num_particles)


def dataset_elbo(
    model: Program,
    x: torch.Tensor,
    *,
    seed: int,
    objective: str = "trace",
    num_particles: int = 1,
    full_batch: Callable[..., torch.Tensor] | None = None,
    labels: torch.Tensor | None = None,
) -> float:
    """The mean ELBO per example of ``x`` in nats, a Monte Carlo estimate with a fixed seed.

    The same ``model``, ``x`` and ``seed`` give the same number on the same device. The global
    random state is saved and restored, so estimating never changes the course of training
    (:func:`~pyro_vae.infer.passes.seeded_pass`). M2's is the ELBO of log p(x), its labels summed
    out; the conditional VAE's that of log p(x | y) at the given ``labels``.

    :param model: the model.
    :param x: the examples, as the model scores them (:func:`~pyro_vae.data.sources.eval_inputs`).
    :param seed: seeds the draws of z.
    :param objective: the ELBO of this objective, with weight 1 (``trace`` for ``iwae``: see
        :class:`Objective`).
    :param num_particles: the particles each example's ELBO averages over.
    :param full_batch: if given, computes the loss of the batches shaped like the first (a
        compiled objective, say).
    :param labels: the examples' integer labels, ``(N,)``, for a model whose programs take them
        (:meth:`~pyro_vae.models.program.Program.condition`); ``None`` for none.
    :raises PyroVAEError: if the estimate is not finite (weights or outputs that overflow, as
        after a diverged training step).
    """
    loss = make_loss(model, model.objectives[objective].elbo, num_particles)
    shape = x[:EVAL_BATCH_SIZE].shape
    total = 0.0
    with seeded_pass(x, model.condition(labels, x), seed=seed) as batches:
        for batch, cond in batches:
            compute = full_batch if full_batch is not None and batch.shape == shape else loss
            total += float(compute(batch, *cond))
    if not math.isfinite(total):
        raise PyroVAEError(
            f"the ELBO is {-total} on these data: the model's weights or outputs overflow, as "
            "after a training step that diverged (try a lower {lr})"
        )
    return -total / len(x)


class ELBOTerms(NamedTuple):
    """The ELBO's two terms, nats per example; their difference is the ELBO.

    :param reconstruction: E_q[log p(x|z)].
    :param kl: KL(q(z|x) || p(z)).
    """

    reconstruction: float
    kl: float


def elbo_terms(
    model: Program,
    x: torch.Tensor,
    *,
    seed: int,
    objective: str = "trace",
    labels: torch.Tensor | None = None,
) -> ELBOTerms:
    """The mean ELBO per example of ``x`` as its two terms,

        ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)),

    estimated with the very draws of :func:`dataset_elbo` with the same ``seed``, ``objective``
    and ``labels``, so that ``reconstruction - kl`` is its ELBO to float rounding
    (:meth:`~pyro_vae.models.program.Program.elbo_terms`). The KL term is in closed form where that
    objective's ELBO takes it so (``meanfield``), else ``log q(z|x) - log p(z)`` at the same draw
    of z. For M2, whose labels are summed out, both terms are averaged over q(y|x), and the KL is
    that of q(y, z|x) against p(y) p(z): E_q(y|x)[KL(q(z|x,y) || p(z))] + KL(q(y|x) || p(y)).

    The global random state is left as it was, as by :func:`dataset_elbo`.

    :param model: the model.
    :param x: the examples, as the model scores them (:func:`~pyro_vae.data.sources.eval_inputs`).
    :param seed: seeds the draws of z, as for :func:`dataset_elbo`.
    :param objective: the training objective, whose ELBO is split (``meanfield``: the KL in closed
        form).
    :param labels: the examples' integer labels, for a model whose programs take them.
    """
    elbo = model.objectives[objective].elbo
    analytic = model.objectives[elbo].analytic_kl
    totals = torch.zeros(2, dtype=torch.float64, device=x.device)
    with seeded_pass(x, model.condition(labels, x), seed=seed) as batches:
        for batch, cond in batches:
            totals += torch.stack(model.elbo_terms(batch, cond, analytic)).double()
    reconstruction, kl = (totals / len(x)).tolist()
    return ELBOTerms(reconstruction, kl)


def vae_elbo_terms(
    vae: VAE, x: torch.Tensor, cond: tuple[torch.Tensor, ...], analytic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's summed log p(x|z) and KL, one hand-written draw of z per example (given
    ``cond``): the VAE's :meth:`~pyro_vae.models.program.Program.elbo_terms`.

    :param vae: the model.
    :param x: a batch of examples, ``(B, *x_shape)``.
    :param cond: what its networks take after ``x``.
    :param analytic: the KL in closed form rather than at the draw.
    """
    log_p_x, log_p_z, log_q, q, p_z = log_weight_terms(vae, x, 1, cond)
    kl = closed_form_kl(vae, q, p_z) if analytic else log_q - log_p_z
    return log_p_x.sum(), kl.sum()

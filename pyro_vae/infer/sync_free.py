r"""Pyro's ELBO objectives with no host round trip: the loss stays a tensor on the device.

Pyro's ``Trace_ELBO.differentiable_loss`` adds up the log densities of the sample sites as
Python floats (one ``.item()`` per site) and returns ``loss + (surrogate - surrogate.item())``:
the value of the float sum, the gradient of the surrogate. On a GPU each ``.item()`` waits for
the device, and a program that reads values into Python cannot be captured as one graph. The
classes here compute the same two things as tensors:

    loss      = -sum_sites log_prob_sum   (model sites minus guide sites, summed in float64)
    surrogate = Pyro's surrogate ELBO, term for term
    returned  = float32(loss) + (surrogate - surrogate.detach())

which is Pyro's value to the last bit (Pyro's float sum is float64 too, cast to float32 by the
final addition) and Pyro's gradient, from the very same surrogate graph. ``TraceMeanField_ELBO``'s
value is already a float32 tensor sum in Pyro, returned here without the ``.item()``.

Pyro's ``warn_if_nan`` is not called: it reads the loss back to the host. The trainer checks the
losses' finiteness every few steps instead.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import (
    check_fully_reparametrized,
    get_dependent_plate_dims,
    is_validation_enabled,
    torch_sum,
)
from pyro.poutine import Trace
from torch.distributions import Independent, Normal, kl_divergence

from pyro_vae.errors import ConfigError


def _trace_terms(model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
    """``(elbo, surrogate_elbo)`` of one particle, as ``Trace_ELBO`` computes them: the ELBO's
    value (float64, no gradient) and the surrogate whose gradient is the ELBO's."""
    elbo, surrogate, log_r = 0.0, 0.0, None
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            elbo = elbo + site["log_prob_sum"].detach().double()
            surrogate = surrogate + site["log_prob_sum"]
    for site in guide_trace.nodes.values():
        if site["type"] == "sample":
            _, score_function_term, entropy_term = site["score_parts"]
            elbo = elbo - site["log_prob_sum"].detach().double()
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):  # a site with no rsample
                if log_r is None:
                    # Pyro's own REINFORCE weights; private, and tested against Trace_ELBO
                    log_r = _compute_log_r(model_trace, guide_trace)
                weights = log_r.sum_to(site["cond_indep_stack"])
                surrogate = surrogate + (weights * score_function_term).sum()
    return elbo, surrogate


def _mean_field_terms(model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
    """``(elbo, elbo)`` of one particle as ``TraceMeanField_ELBO`` computes it: KL(q || p) in
    closed form where torch has it, else the sampled log-density difference."""
    elbo = 0.0
    for name, model_site in model_trace.nodes.items():
        if model_site["type"] != "sample":
            continue
        if model_site["is_observed"]:
            elbo = elbo + model_site["log_prob_sum"]
            continue
        guide_site = guide_trace.nodes[name]
        if is_validation_enabled():
            check_fully_reparametrized(guide_site)
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            entropy_term = guide_site["score_parts"].entropy_term
            elbo = elbo + model_site["log_prob_sum"] - entropy_term.sum()
            continue
        kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
        batch = torch.Size(guide_site["fn"].batch_shape).numel()
        elbo = elbo - (kl.sum() if torch.is_tensor(kl) else kl * batch)
    for name, guide_site in guide_trace.nodes.items():  # the guide's auxiliary sites
        if guide_site["type"] == "sample" and name not in model_trace.nodes:
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            elbo = elbo - guide_site["score_parts"].entropy_term.sum()
    return elbo.detach().double(), elbo


class _SyncFree:
    """``differentiable_loss`` for a Pyro ELBO class whose particle terms are ``_terms``."""

    _terms: Any

    def differentiable_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The negative ELBO of ``model`` against ``guide``: Pyro's value and gradient, as a
        tensor that never went through the host."""
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo, surrogate_elbo = type(self)._terms(model_trace, guide_trace)
            loss = loss - elbo / self.num_particles
            surrogate = surrogate - surrogate_elbo / self.num_particles
        return loss.to(surrogate.dtype) + (surrogate - surrogate.detach())

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO as a float, as Pyro's ``loss`` (one read back, at the end)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


class SyncFreeTrace_ELBO(_SyncFree, Trace_ELBO):
    """``pyro.infer.Trace_ELBO`` whose loss is a tensor: the same value, bit for bit, and the
    same gradient, with no ``.item()``."""

    _terms = staticmethod(_trace_terms)


class SyncFreeTraceMeanField_ELBO(_SyncFree, TraceMeanField_ELBO):
    """``pyro.infer.TraceMeanField_ELBO`` whose loss is a tensor: the same value and gradient,
    with no ``.item()``."""

    _terms = staticmethod(_mean_field_terms)


def _enum_terms(model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
    """``(elbo, elbo)`` of one particle as ``TraceEnum_ELBO`` computes it for a program whose
    guide enumerates one site y in parallel (M2's label) and reparameterizes the others: each
    log density that depends on y is weighed by q(y) (terms of zero probability dropped, as
    Pyro's Dice does), the others summed, so the expectation over y is exact."""
    enumerated = [
        site
        for site in guide_trace.nodes.values()
        if site["type"] == "sample" and site["infer"].get("enumerate")
    ]
    if len(enumerated) > 1 or any(
        site["type"] == "sample" and site["infer"].get("enumerate") and name not in guide_trace
        for name, site in model_trace.nodes.items()
    ):
        raise ConfigError("the enumerating objective sums over one label site of the guide")
    q = enumerated[0]["log_prob"].exp() if enumerated else None
    enum_dim = enumerated[0]["infer"]["_enumerate_dim"] if enumerated else 0
    elbo = 0.0
    for sign, trace in ((1, model_trace), (-1, guide_trace)):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            if sign < 0 and not site["infer"].get("enumerate"):
                if not is_identically_zero(site["score_parts"].score_function):
                    raise ConfigError("the enumerating objective needs a reparameterized guide")
            term = site["log_prob"]
            if q is not None and term.dim() >= -enum_dim and term.shape[enum_dim] > 1:
                term = torch.where(q > 0, q * term, 0.0)
            elbo = elbo + sign * term.sum()
    return elbo.detach().double(), elbo


class SyncFreeTraceEnum_ELBO(_SyncFree, TraceEnum_ELBO):
    """``pyro.infer.TraceEnum_ELBO`` whose loss is a tensor, for programs whose guide enumerates
    one site (``_enum_terms``): Pyro's value and gradient to float32 rounding (its tensor
    contractions sum in another order), with no ``.item()`` and no ``masked_select``, whose
    output's size depends on values, so that the step can be captured as one graph."""

    _terms = staticmethod(_enum_terms)


def _iwae_terms(
    model_trace: Trace, guide_trace: Trace, held_fixed: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``(log_weight, surrogate, latents)`` of RenyiELBO's particle: log p(x, z) - log q(z|x) per
    example (no gradient), the same with its gradient (reparameterized sites only: RenyiELBO
    refuses others), and the guide's sample values. With ``held_fixed`` the surrogate scores
    log q with the guide's parameters detached (the doubly reparameterized gradient)."""
    sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
    log_weight, surrogate, latents = 0.0, 0.0, []
    for sign, trace in ((1, model_trace), (-1, guide_trace)):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            scored = site["log_prob"]
            if sign < 0:
                if not is_identically_zero(site["score_parts"].score_function):
                    raise ConfigError("the IWAE objective needs a reparameterized guide", "guide")
                latents.append(site["value"])
                if held_fixed:
                    held = _held_fixed(site["fn"]).log_prob(site["value"])
                    scored = scale_and_mask(held, site["scale"], site["mask"])
            log_weight = log_weight + sign * torch_sum(site["log_prob"], sum_dims).detach()
            surrogate = surrogate + sign * torch_sum(scored, sum_dims)
    return log_weight, surrogate, latents


def _held_fixed(fn: Any) -> Any:
    """The diagonal Normal ``fn`` with its parameters detached: it scores z, not its own
    parameters' gradient."""
    base = fn.base_dist if isinstance(fn, Independent) else fn
    if not isinstance(base, Normal):
        raise ConfigError(
            "the doubly reparameterized gradient needs a diagonal Normal {param}", "guide"
        )
    held = Normal(base.loc.detach(), base.scale.detach())
    return Independent(held, fn.reinterpreted_batch_ndims) if base is not fn else held


class SyncFreeIWAE_ELBO(RenyiELBO):
    r"""``pyro.infer.RenyiELBO(alpha=0)``, the importance-weighted bound of Burda et al. (2015),
    with a ``differentiable_loss`` that never reads back to the host:

        IWAE(x) = sum_b log (1/K) sum_k p(x_b, z_bk) / q(z_bk | x_b),   z_bk ~ q(z | x_b).

    With vectorized particles, RenyiELBO sums each site's log density over the plates that not
    every site shares (:func:`pyro.infer.util.get_dependent_plate_dims`); the data plate is shared,
    so the log weights keep the shape ``(K, B)`` and the log-mean-exp over K is taken per example,
    as above. The gradient is RenyiELBO's, ``sum_b sum_k w_bk grad log w_bk`` with the normalized
    weights w_bk held constant; the value is RenyiELBO's to the last bit.

    :param num_particles: K, the particles per example whose weights the bound log-mean-exps.
    :param kwargs: ``RenyiELBO``'s other options (``vectorize_particles``, ``max_plate_nesting``,
        ...).
    """

    def __init__(self, num_particles: int = 1, **kwargs: Any):
        super().__init__(alpha=0, num_particles=num_particles, **kwargs)

    def differentiable_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The negative IWAE bound, summed over the batch: RenyiELBO's value and gradient.

        :param model: the model program, e.g. ``vae.model``.
        :param guide: the guide program, e.g. ``vae.guide``.
        :param args: the programs' positional arguments: the batch x, then what else they take.
        :param kwargs: the programs' keyword arguments.
        """
        log_weights, surrogates, latents = [], [], []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            log_weight, surrogate, values = self._terms(model_trace, guide_trace)
            log_weights.append(log_weight)
            surrogates.append(surrogate)
            latents.append(values)
        if self.vectorize_particles and self.num_particles > 1:
            log_weights, surrogates = log_weights[0], surrogates[0]
        else:
            log_weights, surrogates = torch.stack(log_weights), torch.stack(surrogates)
        log_mean = torch.logsumexp(log_weights, dim=0, keepdim=True) - math.log(self.num_particles)
        normalized = (log_weights - log_mean).exp()
        self._reweigh(latents, normalized / self.num_particles)
        surrogate_loss = -(normalized * surrogates).sum() / self.num_particles
        return -log_mean.sum() + (surrogate_loss - surrogate_loss.detach())

    _terms = staticmethod(_iwae_terms)

    def _reweigh(self, latents: list[list[torch.Tensor]], weights: torch.Tensor) -> None:
        """IWAE's gradient is the surrogate's as it stands (the DReG subclass weighs the
        latents' gradients here)."""

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The negative IWAE bound as a float, as Pyro's ``loss``.

        :param model: the model program, e.g. ``vae.model``.
        :param guide: the guide program, e.g. ``vae.guide``.
        :param args: the programs' positional arguments: the batch x, then what else they take.
        :param kwargs: the programs' keyword arguments.
        """
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


class SyncFreeIWAE_DReG_ELBO(SyncFreeIWAE_ELBO):
    r"""The IWAE bound with the doubly reparameterized gradient of Tucker, Lawson, Gu & Maddison
    (2018, "Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives"): the value of
    :class:`SyncFreeIWAE_ELBO`, the model's gradient of IWAE, and for the guide

        grad_phi = sum_b sum_k w_bk^2 (d log w_bk / d z_bk) (d z_bk / d phi),

    with w the normalized weights and log w = log p(x, z) - log q(z | x) scored with q's
    parameters held fixed (``detach``): the score term of IWAE's guide gradient, whose variance
    does not shrink as K grows, has expectation zero and is left out; what remains flows through
    the reparameterized z. The extra w is a hook on each latent's gradient. Only diagonal Normal
    guides (``Normal(...).to_event(1)``), whose parameters can be held fixed.
    """

    _terms = staticmethod(partial(_iwae_terms, held_fixed=True))

    def _reweigh(self, latents: list[list[torch.Tensor]], weights: torch.Tensor) -> None:
        """Each latent's gradient, w_bk of IWAE's gradient, weighed by w_bk once more."""
        for k, values in enumerate(latents):
            weight = weights if self.vectorize_particles and self.num_particles > 1 else weights[k]
            for value in values:
                if value.requires_grad:
                    extra = value.dim() - weight.dim()
                    value.register_hook(partial(torch.mul, other=weight[(...,) + (None,) * extra]))

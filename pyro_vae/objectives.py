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

from typing import Any

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled
from pyro.poutine import Trace
from torch.distributions import kl_divergence


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

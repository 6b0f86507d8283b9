r"""Posterior inspection: how good is the guide q(z|x) as an approximation of p(z|x)?

For one input x of a trained VAE the decoder fixes the joint p(x, z) = p(z) p(x|z), and so the true
posterior p(z|x) = p(x, z) / p(x). This module looks at the guide against it in four ways.

- :func:`posterior_samples`: draws of z ~ q(z|x) as ``arviz.InferenceData`` (variable ``"z"``,
  dims ``chain, draw, obs, z_dim``), so ``az.summary``, ``az.plot_posterior``, ``az.plot_forest``
  and ``az.plot_pair`` work on them as they are.
- Importance diagnostics (:func:`importance_diagnostics`): the log importance weights
  log w_s = log p(x, z_s) - log q(z_s|x), z_s ~ q(z|x), Pareto-smoothed by ``az.psislw``. The
  fitted shape k-hat of the weights' upper tail says whether q is a usable proposal for p(z|x)
  (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?: Evaluating variational
  inference", arXiv:1802.02538): k-hat < 0.5 good, 0.5-0.7 usable, > 0.7 the weights have so heavy
  a tail that importance sampling (and the IWAE bound) cannot be trusted and q misses mass of
  p(z|x). :func:`importance_resample` turns the weights into draws of p(z|x) itself (sampling
  importance resampling).
- :func:`nuts_posterior`: a gold standard, draws of p(z|x) by NUTS (``pyro.infer.MCMC``) on the
  model with its networks frozen; :func:`compare_to_nuts` measures the guide against them.
- :func:`amortization_gap`: the gap log p(x) - ELBO(q) split into the *approximation gap* (the
  best member of the guide's family is still not p(z|x)) and the *amortization gap* (the encoder
  does not give that best member), as in Cremer, Li & Duvenaud 2018, "Inference Suboptimality in
  Variational Autoencoders" (arXiv:1801.03558).

Every function takes a ``seed`` and leaves the global random state (torch, NumPy, ``random``) as
it found it, so inspecting a model never changes what a later training run does. Inputs must be
what the likelihood scores, e.g. ``pyro_vae.data.sources.eval_inputs(vae.likelihood, data.x_test)``
for grey data under a Bernoulli likelihood.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_value
from torch.distributions import constraints

from pyro_vae.device import random_state_kept
from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import iwae_chunk_size
from pyro_vae.models.vae import VAE
from pyro_vae.parts.guides import MIN_SCALE, DiagonalNormal

with warnings.catch_warnings():  # ArviZ 0.2x announces its coming 1.0 rewrite on every import
    warnings.filterwarnings("ignore", "ArviZ is undergoing", FutureWarning)
    import arviz as az

# Yao et al. (2018): above this k-hat the importance weights' variance is effectively infinite.
KHAT_THRESHOLD = 0.7
DIMS = ("obs", "z_dim")


# ----------------------------------------------------------------------------------------------
# Shared pieces


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch, NumPy and ``random`` (as ``pyro.set_rng_seed``) inside, and restore all three
    afterwards: results depend on ``seed`` only, and the caller's random stream is untouched."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with random_state_kept(device):
        pyro.set_rng_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextmanager
def _frozen(vae: VAE) -> Iterator[None]:
    """The VAE's parameters with ``requires_grad`` off inside, restored afterwards: gradients of
    log p(x, z) are then taken with respect to z (or a local guide) only, and cost no backward
    pass through the weights."""
    flags = [(p, p.requires_grad) for p in vae.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _log_joint(vae: VAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x, z) = log p(z) + log p(x|z) for codes ``z`` of shape ``(..., B, z_dim)``."""
    return vae.prior(x.shape[0], x).log_prob(z) + vae.likelihood_dist(z).log_prob(x)


def _draw_weighted(
    vae: VAE, x: torch.Tensor, q: dist.Distribution, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` draws z_s ~ q per input, ``(S, B, z_dim)``, and their log importance
    weights log p(x, z_s) - log q(z_s), ``(S, B)``; drawn in chunks, as ``iwae_bound`` does, so
    that thousands of draws fit in memory."""
    chunk = iwae_chunk_size(vae, x, num_samples)
    zs, log_ws = [], []
    for start in range(0, num_samples, chunk):
        # Scored right after sampling: a flow guide reads log q from its transforms' cache.
        z = q.sample((min(chunk, num_samples - start),))
        zs.append(z)
        log_ws.append(_log_joint(vae, x, z) - q.log_prob(z))
    return torch.cat(zs), torch.cat(log_ws)


def _inference_data(
    z: np.ndarray,
    labels: torch.Tensor | np.ndarray | None = None,
    sample_stats: dict[str, np.ndarray] | None = None,
    per_obs: dict[str, np.ndarray] | None = None,
    attrs: dict | None = None,
) -> az.InferenceData:
    """InferenceData with ``z`` of shape ``(chain, draw, obs, z_dim)`` as the posterior variable
    ``"z"``, coords 0..B-1 and 0..z_dim-1, per-input values (``label`` and ``per_obs``) over
    ``obs`` in ``constant_data``, and ``attrs`` (how the draws were made) on the posterior."""
    _, _, num_obs, z_dim = z.shape
    constant = dict(per_obs or {})
    if labels is not None:
        labels = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
        if labels.shape != (num_obs,):
            raise ConfigError(f"labels must have shape ({num_obs},), got {labels.shape}")
        constant["label"] = labels
    return az.from_dict(
        posterior={"z": z},
        sample_stats=sample_stats,
        constant_data=constant or None,
        coords={"obs": np.arange(num_obs), "z_dim": np.arange(z_dim)},
        dims={"z": list(DIMS), **{name: ["obs"] for name in constant}},
        posterior_attrs=attrs,
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _psis(log_w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``az.psislw`` of ``(B, S)`` log weights of independent draws (relative efficiency 1):
    the smoothed normalized log weights ``(B, S)``, k-hat ``(B,)`` and the ESS 1 / sum_s w_s^2
    of the smoothed weights ``(B,)``."""
    smoothed, khat = az.psislw(_numpy(log_w), reff=1.0)
    smoothed, khat = np.asarray(smoothed), np.atleast_1d(np.asarray(khat, dtype=np.float64))
    return smoothed, khat, 1.0 / np.exp(2 * smoothed).sum(axis=1)


def _unconditional_inputs(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``vae`` takes it (:meth:`~pyro_vae.models.program.Program.inputs`), once ``vae``
    is known to be a model without labels."""
    if vae.drawable_labels:
        raise ConfigError(
            f"posterior inspection scores q(z|x) and p(x|z) of the plain VAE; model {vae.name!r} "
            "conditions them on a label"
        )
    return vae.inputs(x)


# ----------------------------------------------------------------------------------------------
# Guide samples


@torch.no_grad()
def posterior_samples(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 500,
    *,
    seed: int = 0,
    labels: torch.Tensor | np.ndarray | None = None,
) -> az.InferenceData:
    """Draws z ~ q(z|x) of the amortized guide for each input of the batch ``x``.

    :param vae: a trained model of p(x | z), the VAE (not a label model).
    :param x: a batch of inputs, ``(B, *x_shape)``, as the model scores them, on its device.
    :param num_samples: the draws per input.
    :param seed: seeds the draws; the global random state is left as it was.
    :param labels: optional ``(B,)`` class labels, kept as ``constant_data["label"]`` over
        ``obs`` (e.g. to colour :func:`pyro_vae.analysis.plots.plot_latent_scatter` by them).
    :returns: ``InferenceData`` whose ``posterior`` group holds ``"z"`` with dims
        ``("chain", "draw", "obs", "z_dim")``: one chain of ``num_samples`` independent draws,
        coords ``obs = 0..B-1`` and ``z_dim = 0..z_dim-1``.

    With one chain ``az.summary`` cannot compute a split r-hat (the draws are independent, so it
    has nothing to check); use ``az.summary(idata, kind="stats")``.
    """
    x = _unconditional_inputs(vae, x)
    with _seeded(seed, x.device):
        z = vae.posterior_dist(x).sample((num_samples,))
    return _inference_data(_numpy(z)[None], labels, attrs={"method": "guide q(z|x)"})


# ----------------------------------------------------------------------------------------------
# Importance weights and Pareto k-hat


@torch.no_grad()
def log_importance_weights(
    vae: VAE, x: torch.Tensor, num_samples: int = 1000, *, seed: int = 0
) -> torch.Tensor:
    """log w_s = log p(x, z_s) - log q(z_s|x) for z_s ~ q(z|x), ``(B, S)`` in nats.

    ``logsumexp(log_w, 1) - log S`` is the IWAE bound with k = S and ``log_w.mean(1)`` the ELBO,
    both estimated from the same draws.

    :param vae: a trained model of p(x | z), the VAE (not a label model).
    :param x: a batch of inputs, ``(B, *x_shape)``, as the model scores them, on its device.
    :param num_samples: S, the draws per input.
    :param seed: seeds the draws; the global random state is left as it was.
    """
    x = _unconditional_inputs(vae, x)
    with _seeded(seed, x.device):
        _, log_w = _draw_weighted(vae, x, vae.posterior_dist(x), num_samples)
    return log_w.T.contiguous()


@dataclass
class ImportanceDiagnostics:
    r"""Pareto-smoothed importance sampling of p(z|x) with the guide q(z|x) as the proposal.

    :param log_weights: ``(B, S)`` torch tensor, log p(x, z_s) - log q(z_s|x), z_s ~ q(z|x).
    :param smoothed_log_weights: ``(B, S)`` NumPy array, the weights after Pareto smoothing of
        their largest values, normalized: ``logsumexp`` over draws is 0 for each input.
    :param khat: ``(B,)`` NumPy array, the fitted generalized Pareto shape of each input's
        weight tail: < 0.5 good, 0.5-0.7 usable, > 0.7 q is a poor proposal.
    :param ess: ``(B,)`` NumPy array, the effective sample size 1 / sum_s w_s^2 of the smoothed
        normalized weights (out of S).
    :param flagged: indices of the inputs with ``khat > 0.7``, a NumPy integer array.
    :param log_px: ``(B,)`` torch tensor, the IWAE estimate log (1/S) sum_s w_s of log p(x) from
        the raw weights (a lower bound in expectation).
    """

    log_weights: torch.Tensor
    smoothed_log_weights: np.ndarray
    khat: np.ndarray
    ess: np.ndarray
    flagged: np.ndarray
    log_px: torch.Tensor


def importance_diagnostics(
    vae: VAE, x: torch.Tensor, num_samples: int = 1000, *, seed: int = 0
) -> ImportanceDiagnostics:
    """Per-input Pareto k-hat, effective sample size and IWAE log p(x) from ``num_samples``
    importance weights of the guide (:func:`log_importance_weights`), smoothed by ``az.psislw``.

    The draws are independent, so the relative efficiency ``reff`` is 1. k-hat needs a tail to
    fit: with fewer than about 100 draws it is unreliable (Vehtari et al. 2024 suggest the
    threshold min(1 - 1/log10 S, 0.7), 0.67 at S = 1000).

    :param vae: a trained model of p(x | z), the VAE (not a label model).
    :param x: a batch of inputs, ``(B, *x_shape)``, as the model scores them, on its device.
    :param num_samples: S, the importance weights per input.
    :param seed: seeds the draws; the global random state is left as it was.
    """
    log_w = log_importance_weights(vae, x, num_samples, seed=seed)
    smoothed, khat, ess = _psis(log_w)
    return ImportanceDiagnostics(
        log_weights=log_w,
        smoothed_log_weights=smoothed,
        khat=khat,
        ess=ess,
        flagged=np.flatnonzero(khat > KHAT_THRESHOLD),
        log_px=torch.logsumexp(log_w, dim=1) - math.log(num_samples),
    )


@torch.no_grad()
def importance_resample(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 500,
    *,
    proposals: int = 5000,
    seed: int = 0,
    labels: torch.Tensor | np.ndarray | None = None,
) -> az.InferenceData:
    """Draws of the true posterior p(z|x) by sampling importance resampling (Rubin 1987):
    ``proposals`` draws z_s ~ q(z|x) per input, then ``num_samples`` of them drawn with
    replacement with probabilities proportional to their Pareto-smoothed importance weights.

    As ``proposals`` grows the draws' distribution tends to p(z|x), however poor q is, as long as
    q covers p(z|x); how fast is told by the importance ESS: ``num_samples`` resampled draws carry
    at most about ``ess`` distinct values. ``constant_data`` holds each input's ``khat`` and
    ``importance_ess`` (and ``label``): where k-hat > 0.7 these draws are not to be trusted.
    Smoothing the tail (instead of resampling by the raw weights) keeps one huge weight from
    making every resampled draw the same z.

    :param vae: a trained model of p(x | z), the VAE (not a label model).
    :param x: a batch of inputs, ``(B, *x_shape)``, as the model scores them, on its device.
    :param num_samples: the resampled draws per input.
    :param proposals: the guide's draws per input to resample from.
    :param seed: seeds the draws; the global random state is left as it was.
    :param labels: optional ``(B,)`` class labels, kept as ``constant_data["label"]``.
    :returns: ``InferenceData`` with the dims of :func:`posterior_samples`.
    """
    x = _unconditional_inputs(vae, x)
    with _seeded(seed, x.device):
        z, log_w = _draw_weighted(vae, x, vae.posterior_dist(x), proposals)  # (S, B, ...)
        smoothed, khat, ess = _psis(log_w.T)
        weights = torch.from_numpy(np.exp(smoothed)).to(x.device)  # (B, S), rows sum to 1
        index = torch.multinomial(weights, num_samples, replacement=True)  # (B, num_samples)
        draws = z.permute(1, 0, 2).gather(1, index[..., None].expand(-1, -1, vae.z_dim))
    per_obs = {"khat": khat, "importance_ess": ess}
    return _inference_data(
        _numpy(draws.permute(1, 0, 2))[None],
        labels,
        per_obs=per_obs,
        attrs={"method": "importance resampling", "proposals": proposals},
    )


# ----------------------------------------------------------------------------------------------
# NUTS


def nuts_posterior(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 300,
    num_chains: int = 2,
    *,
    warmup_steps: int = 300,
    seed: int = 0,
    progress: bool = True,
    labels: torch.Tensor | np.ndarray | None = None,
) -> az.InferenceData:
    """Draws of the true posterior p(z|x) by the No-U-Turn Sampler, with the VAE's networks and
    prior fixed: the gold standard against which to judge the guide.

    The model is the VAE's, for the B inputs at once::

        with pyro.plate("data", B):
            z ~ p(z)                   the VAE's prior, learned or not
            x ~ p(x | decoder(z))      observed

    Its posterior factorizes over the inputs, so one NUTS run in B * z_dim dimensions samples the
    B independent posteriors jointly (the step size is shared; the diagonal mass matrix adapts
    to each coordinate). The weights are frozen. Chains run one after another in this process
    (Pyro's parallel chains fork processes, costly and fragile on a CPU). Warmup adapts the step
    size and mass matrix in Stan's windows: give it 100 steps or more. Divergent transitions
    raise a ``RuntimeWarning``.

    :param vae: a trained model of p(x | z), the VAE (not a label model).
    :param x: a batch of inputs, ``(B, *x_shape)``, as the model scores them, on its device.
    :param num_samples: the draws per chain, after warmup.
    :param num_chains: the chains, run one after another.
    :param warmup_steps: the adaptation steps of each chain, discarded.
    :param seed: seeds the draws; the global random state is left as it was.
    :param progress: show Pyro's progress bar.
    :param labels: optional ``(B,)`` class labels, kept as ``constant_data["label"]``.
    :returns: ``InferenceData``: ``posterior["z"]`` with dims ``chain, draw, obs, z_dim``,
        ``sample_stats["diverging"]`` (``chain, draw``), and ``posterior.attrs`` with each
        chain's acceptance rate and adapted step size. ``az.rhat``, ``az.ess`` and
        ``az.summary`` work on it.
    """
    x = _unconditional_inputs(vae, x)
    if num_chains < 1 or num_samples < 1 or warmup_steps < 0:
        raise ConfigError("nuts_posterior needs num_chains >= 1, num_samples >= 1, warmup >= 0")

    model, chains = _flat_prior_model(vae, x.shape[0]), []
    with _frozen(vae), _seeded(seed, x.device):
        for _ in range(num_chains):
            # Pyro's init_to_uniform: each coordinate uniform in [-2, 2], a different start for
            # each chain, so that r-hat can tell chains that have not forgotten their start.
            start = x.new_empty(x.shape[0], vae.z_dim).uniform_(-2, 2)
            chains.append(
                _nuts_chain(model, x.detach(), start, num_samples, warmup_steps, progress)
            )
    z, diverging, acceptance, step_size = zip(*chains, strict=True)
    diverging = np.stack(diverging)
    _warn_if_diverged(diverging, warmup_steps)
    return _inference_data(
        np.stack(z),
        labels,
        sample_stats={"diverging": diverging},
        attrs={
            "method": "NUTS",
            "warmup_steps": warmup_steps,
            "acceptance_rate": list(acceptance),
            "step_size": list(step_size),
        },
    )


def _warn_if_diverged(diverging: np.ndarray, warmup_steps: int) -> None:
    if diverging.any():
        warnings.warn(
            f"{int(diverging.sum())} of {diverging.size} NUTS transitions diverged, so the draws "
            f"may not follow p(z|x); raise warmup_steps (now {warmup_steps})",
            RuntimeWarning,
            stacklevel=3,  # the caller of nuts_posterior
        )


def _flat_prior_model(vae: VAE, num_obs: int) -> Callable[[torch.Tensor], None]:
    """``vae.model``, but with z ~ p(z) written as a flat density on R^z_dim times the factor
    p(z): the same potential energy, and NUTS needs only the support, all of R^z_dim, which Pyro
    cannot derive from a mixture prior's support. No pyro.module either: nothing goes into
    Pyro's global param store."""

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", num_obs):
            flat = dist.ImproperUniform(constraints.real_vector, (num_obs,), (vae.z_dim,))
            z = pyro.sample("z", flat)
            pyro.factor("log_prior", vae.prior(num_obs, x).log_prob(z))
            pyro.sample("x", vae.likelihood_dist(z), obs=x)

    return model


def _nuts_chain(
    model: Callable[[torch.Tensor], None],
    x: torch.Tensor,
    start: torch.Tensor,
    num_samples: int,
    warmup_steps: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One NUTS chain from ``start``: its draws of z, which transitions diverged, its acceptance
    rate and its adapted step size."""
    kernel = NUTS(model, init_strategy=init_to_value(values={"z": start}), max_plate_nesting=1)
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        num_chains=1,
        disable_progbar=not progress,
    )
    mcmc.run(x)
    stats = mcmc.diagnostics()  # per-chain entries are keyed "chain 0"
    diverging = np.zeros(num_samples, dtype=bool)
    diverging[np.asarray(stats["divergences"]["chain 0"], dtype=int)] = True
    acceptance = float(stats["acceptance rate"]["chain 0"])
    return _numpy(mcmc.get_samples()["z"]), diverging, acceptance, float(kernel.step_size)


def compare_to_nuts(guide: az.InferenceData, nuts: az.InferenceData) -> dict[str, object]:
    r"""How far draws of an approximation (the guide's, or importance-resampled ones) are from
    NUTS's draws of p(z|x), per input and latent dimension.

    :param guide: the approximation's draws, ``InferenceData`` as :func:`posterior_samples` or
        :func:`importance_resample` make them.
    :param nuts: NUTS's draws, as :func:`nuts_posterior` makes them. The inputs compared are its
        ``obs`` coords, picked out of ``guide`` by label, so ``guide`` may hold more inputs (its
        ``obs`` must label the same inputs).
    :returns: a dict of NumPy values:

        - ``mean_difference_in_sd``: ``(obs, z_dim)``, (E_q[z] - E_p[z]) / sd_p[z]: 0 is
          perfect; a value of 1 puts the guide's mean one posterior standard deviation off;
        - ``variance_ratio``: ``(obs, z_dim)``, Var_q[z] / Var_p[z]: 1 is perfect, < 1 the
          guide is too narrow (the usual failure of KL(q || p) fits), > 1 too wide;
        - ``max_abs_mean_difference_in_sd``, ``median_variance_ratio``: floats over all
          entries;
        - ``nuts_rhat_max``, ``nuts_ess_bulk_min``: floats, az.rhat and az.ess (bulk) of the
          NUTS draws: trust the comparison where r-hat < 1.01-1.05 and the ESS is in the
          hundreds;
        - ``obs``: the compared inputs' coords.
    """
    p = nuts.posterior["z"]
    q = guide.posterior["z"].sel(obs=p["obs"].values)
    sample = ("chain", "draw")
    sd_p = p.std(sample, ddof=1)
    mean_diff = ((q.mean(sample) - p.mean(sample)) / sd_p).transpose(*DIMS).values
    var_ratio = (q.var(sample, ddof=1) / p.var(sample, ddof=1)).transpose(*DIMS).values
    return {
        "mean_difference_in_sd": mean_diff,
        "variance_ratio": var_ratio,
        "max_abs_mean_difference_in_sd": float(np.abs(mean_diff).max()),
        "median_variance_ratio": float(np.median(var_ratio)),
        "nuts_rhat_max": float(az.rhat(nuts, var_names=["z"])["z"].max()),
        "nuts_ess_bulk_min": float(az.ess(nuts, var_names=["z"])["z"].min()),
        "obs": p["obs"].values,
    }


# ----------------------------------------------------------------------------------------------
# Amortization gap


@dataclass
class AmortizationGap:
    r"""The inference gap of each input split in two (Cremer et al. 2018), in nats; all but
    ``elbo_trace`` are ``(B,)`` torch tensors.

    :param log_px: log p(x), estimated by the IWAE bound with k draws (the tighter of those under
        the amortized and the optimized guide).
    :param elbo_optimized: ELBO of the best guide of the family for this input alone, q*(z|x).
    :param elbo_amortized: ELBO of the encoder's guide q(z|x).
    :param approximation_gap: log p(x) - ELBO(q*): what the family cannot represent.
    :param amortization_gap: ELBO(q*) - ELBO(q): what the encoder loses by predicting the
        guide's parameters for every input at once instead of fitting each.
    :param elbo_trace: ``(steps, B)``, each optimization step's ELBO estimate
        (``num_particles`` draws), to check that the optimization has levelled off.
    """

    log_px: torch.Tensor
    elbo_optimized: torch.Tensor
    elbo_amortized: torch.Tensor
    approximation_gap: torch.Tensor
    amortization_gap: torch.Tensor
    elbo_trace: torch.Tensor

    def means(self) -> dict[str, float]:
        """The mean over inputs of each per-input quantity, in nats."""
        names = (
            "log_px",
            "elbo_optimized",
            "elbo_amortized",
            "approximation_gap",
            "amortization_gap",
        )
        return {name: float(getattr(self, name).mean()) for name in names}


LOCAL_FAMILIES = ("guide", "diagonal")


def _local_start(vae: VAE, x: torch.Tensor, family: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The family of per-input guides and its starting parameters h0 ``(B, ...)``: the amortized
    guide is ``family_module(encoder(x))``, and per-input guides are ``family_module(h)`` for free
    parameters h, one row per input."""
    h = vae.encoder(x)
    if family == "guide" or (family == "diagonal" and isinstance(vae.posterior, DiagonalNormal)):
        return vae.posterior, h
    # A diagonal Gaussian matched to q's mean and standard deviation (exact where q has them).
    q = vae.posterior(h)
    try:
        loc, scale = q.mean, q.variance.sqrt()
    except NotImplementedError:
        z = q.sample((4096,))
        loc, scale = z.mean(0), z.std(0)
    raw_scale = torch.log(torch.expm1((scale - MIN_SCALE).clamp_min(1e-6)))  # softplus^-1
    return DiagonalNormal(vae.z_dim).to(x.device), torch.cat([loc, raw_scale], dim=-1)


def _fit_local_guides(
    vae: VAE, x: torch.Tensor, family: str, steps: int, lr: float, num_particles: int
) -> tuple[Callable[[torch.Tensor], dist.Distribution], torch.Tensor, list[torch.Tensor]]:
    """One guide of ``family`` per input, started at the encoder's output and fitted by ``steps``
    Adam steps on its reparameterized ELBO: the family, the fitted parameters ``(B, ...)`` and
    each step's ELBOs ``(B,)``."""
    with torch.no_grad():
        local, h_start = _local_start(vae, x, family)
    h = h_start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([h], lr=lr)
    trace = []
    with torch.enable_grad():
        for _ in range(steps):
            q = local(h)
            z = q.rsample((num_particles,))
            elbo = (_log_joint(vae, x, z) - q.log_prob(z)).mean(0)  # (B,)
            optimizer.zero_grad(set_to_none=True)
            # The inputs' ELBOs share no parameter: one sum gives each h_i its own gradient.
            (-elbo.sum()).backward()
            optimizer.step()
            trace.append(elbo.detach())
    return local, h.detach(), trace


def amortization_gap(
    vae: VAE,
    x: torch.Tensor,
    *,
    k: int = 5000,
    steps: int = 500,
    lr: float = 1e-2,
    num_particles: int = 16,
    seed: int = 0,
    family: str = "guide",
) -> AmortizationGap:
    r"""log p(x), the optimized-guide ELBO and the amortized ELBO of each input of ``x``, and the
    approximation and amortization gaps between them (Cremer, Li & Duvenaud 2018).

    The amortized guide is q(z|x) = Q(h(x)), a member of the guide family Q picked by the
    encoder's output h(x). For each input a free copy h_i of those parameters, started at
    h(x_i), is fitted by stochastic variational inference: Adam (``lr``) on the reparameterized
    ELBO with ``num_particles`` draws, ``steps`` times, the decoder, prior and the family's own
    networks frozen. The fitted Q(h_i) approximates q*(x_i), the best member of the family.

    :param vae: a trained model of p(x | z), the VAE (not a label model).
    :param x: a batch of inputs, ``(B, *x_shape)``, as the model scores them, on its device.
    :param k: the draws of each guide's ELBO and IWAE estimates.
    :param steps: the Adam steps of each input's guide.
    :param lr: Adam's learning rate for those steps.
    :param num_particles: the draws of each step's ELBO estimate.
    :param seed: seeds the fits and the estimates; the global random state is left as it was.
    :param family: ``"guide"`` (default): the per-input guides are the VAE's own family
        (diagonal Gaussians for the diagonal guide; full-rank Gaussians for ``full-rank``; for
        ``iaf`` the flow with its shared networks and a free base Gaussian and context), so the
        amortization gap is exactly what a perfect encoder would recover. ``"diagonal"``: a
        diagonal Gaussian per input whatever the family, started from q's mean and standard
        deviation; for a full-rank or flow guide its ELBO may fall below the amortized one, the
        family being smaller.

    Estimates: each guide's ELBO and IWAE bound come from the same ``k`` draws (mean and
    log-mean-exp of the log weights), and both guides are scored with the same seed, so that
    for the diagonal family the two sets of draws share their noise eps and the difference of
    the ELBOs is far more precise than either. Both IWAE estimates are lower bounds of log p(x)
    in expectation, so the larger is the tighter: that is ``log_px`` (with k in the thousands
    their Monte Carlo error is small next to the gaps, so taking the larger adds no bias to
    speak of; where k-hat > 0.7 neither can be trusted). With the mean-versus-log-
    mean-exp inequality on the same draws, ``log_px >= elbo_optimized`` holds exactly, so the
    approximation gap is never negative.
    """
    x = _unconditional_inputs(vae, x)
    if family not in LOCAL_FAMILIES:
        raise ConfigError(f"unknown family {family!r}; choose one of: {', '.join(LOCAL_FAMILIES)}")
    if k < 1 or steps < 0 or num_particles < 1 or not lr > 0:
        raise ConfigError("amortization_gap needs k >= 1, steps >= 0, num_particles >= 1, lr > 0")
    with _frozen(vae), _seeded(seed, x.device):
        local, h, trace = _fit_local_guides(vae, x, family, steps, lr, num_particles)
    with torch.no_grad():
        estimates = []
        for q in (vae.posterior_dist(x), local(h)):
            with _seeded(seed + 1, x.device):  # the same draws of noise for both guides
                _, log_w = _draw_weighted(vae, x, q, k)
            estimates.append((log_w.mean(0), torch.logsumexp(log_w, 0) - math.log(k)))
    (elbo_amortized, iwae_amortized), (elbo_optimized, iwae_optimized) = estimates
    log_px = torch.maximum(iwae_amortized, iwae_optimized)
    return AmortizationGap(
        log_px=log_px,
        elbo_optimized=elbo_optimized,
        elbo_amortized=elbo_amortized,
        approximation_gap=log_px - elbo_optimized,
        amortization_gap=elbo_optimized - elbo_amortized,
        elbo_trace=torch.stack(trace) if trace else x.new_zeros(0, x.shape[0]),
    )

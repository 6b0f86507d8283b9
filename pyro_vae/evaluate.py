"""Evaluation of a trained VAE on its test set.

- ``test_elbo``: the ELBO, nats per example, a seeded Monte Carlo estimate.
- ``iwae_log_likelihood``: log p(x) estimated by the importance-weighted bound with k particles
  (Burda et al. 2015, arXiv:1509.00519), log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x): a
  lower bound that tightens as k grows; papers report k = 5000.
- ``kl_per_dim``: E_x KL(q(z_d|x) || p(z_d)) for each latent dimension, where both factorize.
- ``active_units``: dimensions whose posterior mean varies across inputs, Cov_x(E_q[z_d]) > 0.01.
- ``baseline_log_likelihood`` (binary likelihoods): the *independent-pixel* model, every pixel an
  independent Bernoulli with the training set's pixel mean (smoothed by half a count, so an unseen
  value costs finite nats). A VAE that has learned anything about shapes beats it widely.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, NamedTuple

import torch
from torch.distributions import Independent, kl_divergence
from tqdm.auto import tqdm

from . import checks
from .compiled import CompiledLoss, compile_when_it_pays
from .data import Dataset, check_shape, eval_inputs
from .device import random_state_kept
from .elbo import EVAL_BATCH_SIZE, dataset_elbo, iwae_bound, iwae_chunk, iwae_chunk_size
from .model import VAE


def independent_pixel_log_likelihood(x_train: torch.Tensor, x_test: torch.Tensor) -> float:
    """Mean log-likelihood (nats per example) of binary ``x_test`` under independent Bernoulli
    pixels with p_i = (sum_n x_train[n, i] + 1/2) / (N + 1)."""
    p = (x_train.double().sum(0) + 0.5) / (len(x_train) + 1)
    x = x_test.double()
    log_lik = x * p.log() + (1 - x) * torch.log1p(-p)
    return float(log_lik.flatten(1).sum(1).mean())


@torch.no_grad()
def posterior_means(vae: VAE, x: torch.Tensor, num_samples: int = 256) -> torch.Tensor:
    """E_q[z|x] for each example, ``(B, z_dim)``: exact where the guide has a mean, else the
    average of ``num_samples`` draws (flows)."""
    means = []
    for batch in x.split(EVAL_BATCH_SIZE):
        q = vae.posterior_dist(batch)
        try:
            means.append(q.mean)
        except NotImplementedError:
            means.append(q.rsample((num_samples,)).mean(0))
    return torch.cat(means)


def active_units(vae: VAE, x: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """The number of active latent units and each unit's activity Cov_x(E_q[z_d|x]).

    A unit is active when its posterior mean varies across inputs by more than ``threshold``
    (Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders", arXiv:1509.00519).
    """
    means = posterior_means(vae, x).double()
    # one example does not vary: no unit is active (var() would warn and give NaN)
    activity = means.var(0) if len(means) > 1 else torch.zeros(means.shape[1:], dtype=means.dtype)
    return int((activity > threshold).sum()), activity


def iwae_log_likelihood(
    vae: VAE, x: torch.Tensor, k: int, *, seed: int = 0, progress: bool = False
) -> float:
    """Mean IWAE estimate of log p(x), nats per example, with ``k`` particles and a fixed seed
    (see :func:`iwae_estimate`, which can compile its chunks)."""
    return iwae_estimate(vae, x, k, seed=seed, progress=progress)[0]


class IWAEEstimate(NamedTuple):
    """The mean IWAE bound (nats per example), what became of compiling it, and the seconds that
    capturing and compiling took."""

    value: float
    compile: str
    compile_seconds: float


def iwae_estimate(
    vae: VAE,
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    progress: bool = False,
    compile: str = "off",
) -> IWAEEstimate:
    """Mean IWAE estimate of log p(x), nats per example, with ``k`` particles and a fixed seed,
    and one line on whether its chunks were compiled.

    The data go through in batches and each batch's particles in chunks (see
    :func:`pyro_vae.elbo.iwae_bound`), so that k = 5000 on 10,000 images fits in a few GB; the
    global random state is left as it was. ``compile``: ``"on"`` compiles the chunk of the
    first batch's shape (:mod:`pyro_vae.compiled`), ``"auto"`` does so after timing the first
    batch if the chunks ahead repay it, ``"off"`` never. Compiled chunks draw the same numbers
    and agree with eager ones to float32 rounding.
    """
    checks.choice("compile", compile, ("auto", "on", "off"))
    batches = x.split(EVAL_BATCH_SIZE)
    chunk = iwae_chunk_size(vae, batches[0], k)
    per_batch = k // chunk  # full chunks per batch
    full_chunks = sum(1 for b in batches if b.shape == batches[0].shape) * per_batch
    decide_at = 0 if compile == "on" else 1  # "auto" first times a batch
    status = "off" if compile == "off" else "the IWAE bound stayed eager: too few batches to decide"
    compiled, total, elapsed, seconds = None, 0.0, 0.0, 0.0
    with random_state_kept(x.device):
        torch.manual_seed(seed)
        for i, batch in enumerate(tqdm(batches, desc=f"IWAE k={k}", disable=not progress)):
            if compile != "off" and i == decide_at and batch.shape == batches[0].shape:
                compiled, status, seconds = compile_when_it_pays(
                    "the IWAE bound",
                    lambda b=batch: CompiledLoss(
                        vae, partial(iwae_chunk, vae, particles=chunk), b, gradients=False
                    ),
                    batch,
                    None if compile == "on" else elapsed / max(1, per_batch),
                    full_chunks - i * per_batch,
                )
            start = time.perf_counter()
            full_chunk = compiled if compiled and batch.shape == compiled.shape else None
            with torch.no_grad():
                total += float(iwae_bound(vae, batch, k, full_chunk).sum())
            elapsed = time.perf_counter() - start
    return IWAEEstimate(total / len(x), status, seconds)


@torch.no_grad()
def kl_per_dim(
    vae: VAE, x: torch.Tensor, *, seed: int = 0, num_samples: int = 64
) -> list[float] | None:
    """E_x KL(q(z_d|x) || p(z_d)) for each latent dimension d, nats, or ``None`` where the guide or
    the prior does not factorize over dimensions (full-rank, flows, mixtures).

    In closed form where torch has it (a diagonal Gaussian guide against a Gaussian or Laplace
    prior), else by ``num_samples`` draws of z per input. The per-dimension KLs add up to the KL
    term of the ELBO.
    """
    totals = None
    with random_state_kept(x.device):
        torch.manual_seed(seed)
        for batch in x.split(EVAL_BATCH_SIZE):
            q, p = vae.posterior_dist(batch), vae.prior(len(batch), batch)
            if not (_factorizes(q) and _factorizes(p)):
                return None
            try:
                kl = kl_divergence(q.base_dist, p.base_dist)
            except NotImplementedError:
                z = q.base_dist.rsample((num_samples,))
                kl = (q.base_dist.log_prob(z) - p.base_dist.log_prob(z)).mean(0)
            kl = kl.double().sum(0)
            totals = kl if totals is None else totals + kl
    return (totals / len(x)).tolist()


def _factorizes(d: Any) -> bool:
    # Independent(univariate, 1) with one value per latent dimension
    return (
        isinstance(d, Independent)
        and d.reinterpreted_batch_ndims == 1
        and not d.base_dist.event_shape
    )


def baseline_log_likelihood(vae: VAE, x_train: torch.Tensor, x_test: torch.Tensor) -> float | None:
    """The independent-pixel model's mean log-likelihood of ``x_test``, the test set as ``vae``
    scores it (:func:`~pyro_vae.data.eval_inputs`), nats per example, for a binary likelihood;
    ``None`` for any other."""
    if not vae.likelihood.binary:
        return None
    return independent_pixel_log_likelihood(x_train, x_test.to(x_train.device))


def evaluate(
    vae: VAE,
    data: Dataset,
    *,
    seed: int = 0,
    objective: str = "trace",
    binarization: str = "dynamic",
    iwae_k: int = 1000,
    progress: bool = False,
    compile: str = "off",
) -> dict[str, Any]:
    """Test-set figures of ``vae`` on ``data`` (see the module doc): ``test_elbo``,
    ``iwae_log_likelihood`` with ``iwae_k`` particles (0: skip it), ``kl_per_dim``,
    ``active_units``, ``baseline_log_likelihood`` for binary likelihoods, and ``seed``. The same
    seed gives the same numbers on the same device. ``compile`` is :func:`iwae_estimate`'s, and
    ``iwae_compile`` says what came of it."""
    check_shape(vae.x_shape, data)
    iwae_k = checks.whole("iwae_k", iwae_k, low=0)
    device = next(vae.parameters()).device
    x_test = eval_inputs(vae.likelihood, data.x_test, binarization).to(device)
    result: dict[str, Any] = {
        "test_elbo": dataset_elbo(vae, x_test, seed=seed, objective=objective),
        "iwae_log_likelihood": None,
        "iwae_k": iwae_k,
        "kl_per_dim": kl_per_dim(vae, x_test, seed=seed),
        "active_units": active_units(vae, x_test)[0],
        "seed": seed,
        "num_test": len(x_test),
    }
    if iwae_k > 0:
        estimate = iwae_estimate(vae, x_test, iwae_k, seed=seed, progress=progress, compile=compile)
        result["iwae_log_likelihood"], result["iwae_compile"] = estimate.value, estimate.compile
    if vae.likelihood.binary:
        result["baseline_log_likelihood"] = baseline_log_likelihood(vae, data.x_train, x_test)
    return result

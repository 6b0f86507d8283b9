"""Evaluation of a trained VAE on its test set.

- ``test_elbo``: the ELBO, nats per example, a seeded Monte Carlo estimate.
- ``iwae_log_likelihood``: log p(x) estimated by the importance-weighted bound with k particles
  (Burda et al. 2015, arXiv:1509.00519), log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x): a
  lower bound that tightens as k grows; papers report k = 5000.
- ``kl_per_dim``: E_x KL(q(z_d|x) || p(z_d)) for each latent dimension, where both factorize.
- ``active_units``: dimensions whose posterior mean varies across inputs, Cov_x(E_q[z_d]) > 0.01.
- ``baseline_log_likelihood`` (Bernoulli and discretized logistic likelihoods): the
  *independent-pixel* model of the same family fitted to the training set: every pixel an
  independent Bernoulli with the training set's pixel mean (smoothed by half a count, so an unseen
  value costs finite nats), or an independent discretized logistic per pixel and channel
  (:func:`independent_logistic_log_likelihood`). A VAE that has learned anything about shapes
  beats it widely.
- ``*_bits_per_dim`` (likelihoods of probabilities, not densities: ``likelihood.levels``): each
  of these figures as ``-log2 p(x) / D``, D the values of an example (pixels times channels), the
  unit of the image-modelling literature (:func:`bits_per_dim`).

Every figure comes from the model's protocol (:class:`~pyro_vae.models.program.Program`): for the
label models (:mod:`pyro_vae.models.cvae`, :mod:`pyro_vae.models.m2`), the conditional VAE's ELBO
and IWAE figures are of log p(x | y) given the test labels; M2's of log p(x), its labels summed out
(:meth:`~pyro_vae.models.m2.M2.iwae_bound`), and ``test_accuracy`` is its classifier's, argmax
q(y|x). Both models' ``kl_per_dim`` and ``active_units`` are of q(z | x, y) at the true test labels.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import pyro
import torch
from torch.distributions import Independent, kl_divergence

from pyro_vae import validation
from pyro_vae.analysis.codes import encode, mean_and_scale
from pyro_vae.data.sources import Dataset, as_floats, check_shape, eval_inputs
from pyro_vae.infer.compiling import COMPILE, CompiledLoss, CompilePolicy
from pyro_vae.infer.elbo import dataset_elbo
from pyro_vae.infer.passes import EVAL_BATCH_SIZE, seeded_pass
from pyro_vae.models.program import Program as VAE
from pyro_vae.models.user import PROBE_BATCH, as_program
from pyro_vae.parts.distributions import DiscretizedLogisticDistribution
from pyro_vae.parts.registry import name_of

#: The independent discretized logistic is fitted by this many Adam steps from its moments: its
#: two numbers per value settle long before.
BASELINE_STEPS, BASELINE_LR = 100, 0.05
#: the nats figures that are also given in bits per dimension, and the names they get
BITS_PER_DIM = {
    "test_elbo": "test_bits_per_dim",
    "iwae_log_likelihood": "iwae_bits_per_dim",
    "baseline_log_likelihood": "baseline_bits_per_dim",
}


def independent_pixel_log_likelihood(x_train: torch.Tensor, x_test: torch.Tensor) -> float:
    """Mean log-likelihood (nats per example) of binary ``x_test`` under independent Bernoulli
    pixels with p_i = (sum_n x_train[n, i] + 1/2) / (N + 1).

    :param x_train: the training set, floats in [0, 1], ``(N, *x_shape)``: each pixel's mean fits
        its p_i.
    :param x_test: binary test images (0 or 1), of the same shape per example.
    """
    p = (x_train.double().sum(0) + 0.5) / (len(x_train) + 1)
    x = x_test.double()
    log_lik = x * p.log() + (1 - x) * torch.log1p(-p)
    return float(log_lik.flatten(1).sum(1).mean())


def independent_logistic_log_likelihood(
    x_train: torch.Tensor, x_test: torch.Tensor, bins: int = 256
) -> float:
    """Mean log-likelihood (nats per example) of ``x_test`` (values ``k / (bins - 1)``) under
    independent discretized logistic values, a location and a log scale for every pixel and
    channel, fitted to ``x_train`` by maximum likelihood: from the moments (location the mean,
    scale ``std * sqrt(3) / pi``), :data:`BASELINE_STEPS` Adam steps, in float64.

    An independent model sees the data only through each value's histogram over the ``bins``
    levels, so the fit works on the histograms: a step costs D x bins, whatever the examples.

    :param x_train: the training set, floats ``k / (bins - 1)`` in [0, 1], ``(N, *x_shape)``.
    :param x_test: the test set, likewise.
    :param bins: the levels a value takes, 256 for 8-bit images.
    """
    train_counts, test_counts = _level_counts(x_train, bins), _level_counts(x_test, bins)
    levels = torch.linspace(0, 1, bins, dtype=torch.float64, device=train_counts.device)
    share = train_counts / len(x_train)
    mean = share @ levels
    std = (share @ levels**2 - mean**2).clamp(min=0).sqrt().clamp(min=0.5 / (bins - 1))
    loc = mean.clone().requires_grad_()
    log_scale = (std * math.sqrt(3) / math.pi).log().requires_grad_()
    optimizer = torch.optim.Adam([loc, log_scale], lr=BASELINE_LR)

    def log_probs() -> torch.Tensor:  # (D, bins): log P_d(level k)
        fitted = DiscretizedLogisticDistribution(loc[:, None], log_scale[:, None], bins)
        return fitted.log_prob(levels)

    with torch.enable_grad(), pyro.validation_enabled(False):
        for _ in range(BASELINE_STEPS):
            loss = -(share * log_probs()).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return float((test_counts * log_probs()).sum() / len(x_test))


def _level_counts(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``(D, bins)`` float64: how many examples of ``x`` have each level at each value."""
    levels = torch.round(x.flatten(1) * (bins - 1)).long().clamp(0, bins - 1)
    index = levels + bins * torch.arange(levels.shape[1], device=x.device)
    counts = torch.bincount(index.flatten(), minlength=levels.shape[1] * bins)
    return counts.reshape(-1, bins).double()


def bits_per_dim(log_likelihood: float, x_shape: tuple[int, ...]) -> float:
    """``-log2 p(x) / D`` for a mean ``log_likelihood`` in nats of examples of ``x_shape`` with
    D values each.

    :param log_likelihood: a mean log-likelihood (or bound), nats per example.
    :param x_shape: the shape of one example; D is the product of its sizes.
    """
    return -log_likelihood / (math.prod(x_shape) * math.log(2))


def add_bits_per_dim(result: dict[str, Any], vae: VAE) -> dict[str, Any]:
    """``result`` with each figure of :data:`BITS_PER_DIM` it holds also in bits per dimension,
    when ``vae``'s likelihood gives probabilities (``likelihood.levels`` is not None).

    :param result: figures by name, as :func:`evaluate` gives them; changed in place and returned.
    :param vae: the model the figures are of: its likelihood and example shape decide.
    """
    if getattr(vae.likelihood, "levels", None):
        for key, name in BITS_PER_DIM.items():
            if result.get(key) is not None:
                result[name] = bits_per_dim(result[key], vae.x_shape)
    return result


def posterior_means(
    vae: VAE, x: torch.Tensor, num_samples: int = 256, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """E_q[z|x] for each example, ``(B, z_dim)``: exact where the guide has a mean, else the
    average of ``num_samples`` draws (flows); q(z|x,y) at the integer ``labels`` for the label
    models (:func:`~pyro_vae.analysis.codes.encode`).

    :param vae: the trained model: a :class:`~pyro_vae.models.vae.VAE`,
        :class:`~pyro_vae.models.cvae.CVAE` or :class:`~pyro_vae.models.m2.M2`.
    :param x: the examples, ``(N, *x_shape)``, floats as the model scores them
        (:func:`~pyro_vae.data.sources.eval_inputs`), on the model's device.
    :param num_samples: the draws of z averaged per example where the guide has no closed-form mean
        (flows).
    :param labels: the examples' integer labels, ``(N,)``: the label models' q(z|x,y) is taken at
        them; ``None`` for the VAE.
    """
    return encode(vae, x, labels, num_samples=num_samples, progress=False).mean


def active_units(
    vae: VAE, x: torch.Tensor, threshold: float = 0.01, labels: torch.Tensor | None = None
) -> tuple[int, torch.Tensor]:
    """The number of active latent units and each unit's activity Cov_x(E_q[z_d|x]) (of
    q(z|x,y) at the integer ``labels``, for the label models).

    A unit is active when its posterior mean varies across inputs by more than ``threshold``
    (Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders", arXiv:1509.00519).

    :param vae: the trained model: a :class:`~pyro_vae.models.vae.VAE`,
        :class:`~pyro_vae.models.cvae.CVAE` or :class:`~pyro_vae.models.m2.M2`.
    :param x: the examples, ``(N, *x_shape)``, floats as the model scores them
        (:func:`~pyro_vae.data.sources.eval_inputs`), on the model's device.
    :param threshold: the variance across inputs of a unit's posterior mean above which it counts as
        active.
    :param labels: the examples' integer labels, ``(N,)``: the label models' q(z|x,y) is taken at
        them; ``None`` for the VAE.
    """
    by_site = units_by_site(vae, x, threshold, labels)
    activity = torch.cat([a for _, a in by_site.values()])
    return int((activity > threshold).sum()), activity


def units_by_site(
    vae: VAE,
    x: torch.Tensor,
    threshold: float = 0.01,
    labels: torch.Tensor | None = None,
    num_samples: int = 256,
) -> dict[str, tuple[int, torch.Tensor]]:
    """For each latent site of the guide, its active units and each unit's activity
    Cov_x(E_q[z_d|x]), as :func:`active_units` counts them (a site below the first taken at one
    draw of those before it).

    :param vae: the trained model.
    :param x: the examples, floats as the model scores them, on the model's device.
    :param threshold: the activity above which a unit counts as active.
    :param labels: the examples' integer labels, for the label models' q(z|x,y).
    :param num_samples: the draws of z averaged where a guide has no closed-form mean (flows).
    """
    means: dict[str, list[torch.Tensor]] = {}
    with seeded_pass(x, vae.encoder_condition(labels, x), seed=0) as batches:
        for batch, cond in batches:
            for site, (q, _) in vae.latent_dists(batch, *cond).items():
                means.setdefault(site, []).append(mean_and_scale(q, num_samples)[0].flatten(1))
    result = {}
    for site, parts in means.items():
        m = torch.cat(parts).double()
        # one example does not vary: no unit is active (var() would warn and give NaN)
        activity = m.var(0) if len(m) > 1 else torch.zeros(m.shape[1:], dtype=m.dtype)
        result[site] = (int((activity > threshold).sum()), activity)
    return result


def _chunk(vae: VAE, particles: int, x: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
    return vae.iwae_chunk(x, particles, *cond)


def iwae_log_likelihood(
    vae: VAE, x: torch.Tensor, k: int, *, seed: int = 0, progress: bool = True
) -> float:
    """Mean IWAE estimate of log p(x), nats per example, with ``k`` particles and a fixed seed
    (see :func:`iwae_estimate`, which can compile its chunks).

    :param vae: the trained model: a :class:`~pyro_vae.models.vae.VAE`,
        :class:`~pyro_vae.models.cvae.CVAE` or :class:`~pyro_vae.models.m2.M2`.
    :param x: the examples, ``(N, *x_shape)``, floats as the model scores them
        (:func:`~pyro_vae.data.sources.eval_inputs`), on the model's device.
    :param k: the particles per example, k in the bound.
    :param seed: seeds the draws of z; the global random state is left as it was.
    :param progress: show a progress bar over the batches.
    """
    return iwae_estimate(vae, x, k, seed=seed, progress=progress)[0]


class IWAEEstimate(NamedTuple):
    """An IWAE estimate of log p(x), as :func:`iwae_estimate` gives it.

    :param value: the mean IWAE bound, nats per example.
    :param compile: what became of compiling it, in one line.
    :param compile_seconds: the seconds that capturing and compiling took.
    :param per_example: the bound of each example, ``(N,)``, on the data's device.
    """

    value: float
    compile: str
    compile_seconds: float
    per_example: torch.Tensor


def iwae_estimate(
    vae: VAE,
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    progress: bool = True,
    compile: str = "off",
    labels: torch.Tensor | None = None,
) -> IWAEEstimate:
    """Mean IWAE estimate of log p(x), nats per example, with ``k`` particles and a fixed seed,
    and one line on whether its chunks were compiled: of log p(x | y) at the integer ``labels``
    for the conditional VAE, of log p(x) (:meth:`~pyro_vae.models.m2.M2.iwae_bound`) for M2.

    It costs about ``k`` test ELBOs, in chunks of particles (:func:`pyro_vae.infer.elbo.iwae_bound`)
    so that k = 5000 on 10,000 images fits in a few GB; the global random state is left as it
    was. Compiled chunks draw the same numbers and agree with eager ones to float32 rounding.

    :param vae: the trained model: a :class:`~pyro_vae.models.vae.VAE`,
        :class:`~pyro_vae.models.cvae.CVAE` or :class:`~pyro_vae.models.m2.M2`.
    :param x: the examples, ``(N, *x_shape)``, floats as the model scores them
        (:func:`~pyro_vae.data.sources.eval_inputs`), on the model's device.
    :param k: the particles per example, k in the bound.
    :param seed: seeds the draws of z; the global random state is left as it was.
    :param progress: show a progress bar (tqdm) over the batches; ``False`` for none.
    :param compile: ``"on"`` compiles the chunk of the first batch's shape
        (:mod:`pyro_vae.infer.compiling`), ``"auto"`` does so after timing the first batch if the
        chunks ahead repay it, ``"off"`` never.
    :param labels: the examples' integer labels, ``(N,)``, which the conditional VAE is given;
        unused by the VAE and M2 (which sums its labels out).
    """
    validation.choice("compile", compile, COMPILE)
    x = vae.inputs(x)
    given = vae.condition(labels, x)
    first = (x[:EVAL_BATCH_SIZE], *(g[:EVAL_BATCH_SIZE] for g in given))
    chunk = vae.iwae_chunk_size(*first[:1], k, *first[1:])
    per_batch = k // chunk  # full chunks per batch
    full_chunks = max(1, len(x) // EVAL_BATCH_SIZE) * per_batch  # in batches shaped like the first
    policy = CompilePolicy("the IWAE bound", compile, timed=per_batch, device=x.device)
    total, bounds = 0.0, []
    with seeded_pass(x, given, seed=seed, progress=progress, desc=f"IWAE k={k}") as batches:
        for i, (batch, cond) in enumerate(batches):
            # "auto" times the first batch's chunks and decides at the second
            if batch.shape == first[0].shape and policy.ready(calls=per_batch):
                policy.decide(
                    lambda b=batch, c=cond: CompiledLoss(
                        vae, partial(_chunk, vae, chunk), b, *c, gradients=False
                    ),
                    batch,
                    full_chunks - i * per_batch,
                )
            compiled = policy.compiled
            full_chunk = compiled if compiled and batch.shape == compiled.shape else None
            bound = vae.iwae_bound(batch, k, full_chunk, cond)
            total += float(bound.sum())
            bounds.append(bound)
    undecided = "the IWAE bound stayed eager: too few batches to decide"
    status = policy.message if policy.decided else undecided
    return IWAEEstimate(total / len(x), status, policy.seconds, torch.cat(bounds))


@torch.no_grad()
def kl_per_dim(
    vae: VAE,
    x: torch.Tensor,
    *,
    seed: int = 0,
    num_samples: int = 64,
    labels: torch.Tensor | None = None,
) -> list[float] | None:
    """E_x KL(q(z_d|x) || p(z_d)) for each latent dimension d, nats, or ``None`` where the guide or
    the prior does not factorize over dimensions (full-rank, flows, mixtures).

    In closed form where torch has it (a diagonal Gaussian guide against a Gaussian or Laplace
    prior), else by ``num_samples`` draws of z per input. The per-dimension KLs add up to the KL
    term of the ELBO. For the label models, of q(z|x,y) at the integer ``labels``.

    :param vae: the trained model: a :class:`~pyro_vae.models.vae.VAE`,
        :class:`~pyro_vae.models.cvae.CVAE` or :class:`~pyro_vae.models.m2.M2`.
    :param x: the examples, ``(N, *x_shape)``, floats as the model scores them
        (:func:`~pyro_vae.data.sources.eval_inputs`), on the model's device.
    :param seed: seeds the draws of z where the KL has no closed form; the global random state is
        left as it was.
    :param num_samples: the draws of z per input where the KL has no closed form.
    :param labels: the examples' integer labels, ``(N,)``: the label models' q(z|x,y) is taken at
        them; ``None`` for the VAE.
    """
    totals = None
    with seeded_pass(x, vae.encoder_condition(labels, x), seed=seed) as batches:
        for batch, cond in batches:
            sites = []
            for q, p in vae.latent_dists(batch, *cond).values():
                if not (_factorizes(q) and _factorizes(p)):
                    return None
                try:
                    kl = kl_divergence(q.base_dist, p.base_dist)
                except NotImplementedError:
                    z = q.base_dist.rsample((num_samples,))
                    kl = (q.base_dist.log_prob(z) - p.base_dist.log_prob(z)).mean(0)
                sites.append(kl.double().sum(0))
            kl = torch.cat(sites)
            totals = kl if totals is None else totals + kl
    return (totals / len(x)).tolist()


def _factorizes(d: Any) -> bool:
    # Independent(univariate, 1) with one value per latent dimension
    return (
        isinstance(d, Independent)
        and d.reinterpreted_batch_ndims == 1
        and not d.base_dist.event_shape
    )


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(classes, classes)`` counts: row = true label, column = predicted label.

    :param predicted: the predicted int64 labels, ``(N,)``.
    :param labels: the true int64 labels, ``(N,)``, on any device.
    :param classes: K, the number of classes.
    """
    index = labels.to(predicted.device) * classes + predicted
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes).cpu()


def baseline_log_likelihood(vae: VAE, x_train: torch.Tensor, x_test: torch.Tensor) -> float | None:
    """The independent-pixel model of ``vae``'s likelihood family (:data:`BASELINES`) fitted to
    ``x_train`` (as stored: 8-bit images or floats): its mean log-likelihood of ``x_test``, the
    test set as ``vae`` scores it (:func:`~pyro_vae.data.sources.eval_inputs`), nats per example;
    ``None`` for a family without one.

    :param vae: the model, whose likelihood names the family.
    :param x_train: the training set as stored: 8-bit ``uint8`` images or floats in [0, 1].
    :param x_test: the test set as ``vae`` scores it, floats.
    """
    fit = BASELINES.get(name_of(vae.likelihood))
    if fit is None:
        return None
    return fit(vae.likelihood, as_floats(x_train), x_test.to(x_train.device))


#: The independent-pixel baselines, by likelihood name: (likelihood, x_train, x_test) -> nats.
BASELINES = {
    "bernoulli": lambda _, x_train, x_test: independent_pixel_log_likelihood(x_train, x_test),
    "discretized-logistic": lambda likelihood, x_train, x_test: independent_logistic_log_likelihood(
        x_train, x_test, likelihood.bins
    ),
}


def evaluate(
    vae: VAE,
    data: Dataset,
    *,
    seed: int = 0,
    objective: str = "trace",
    binarization: str = "dynamic",
    iwae_k: int = 1000,
    progress: bool = True,
    compile: str = "off",
) -> dict[str, Any]:
    """Test-set figures of ``vae`` on ``data`` (see the module doc).

    The same seed gives the same numbers on the same device. The IWAE estimate is most of the
    work: it decodes ``iwae_k`` codes of every test example, about ``iwae_k`` times what the
    test ELBO costs, so the default k = 1000 on 10,000 images takes minutes on a CPU (its
    progress bar says how long); ``iwae_k=0`` skips it, and 100 is a quick first look.

    :param vae: the trained model: a :class:`~pyro_vae.models.vae.VAE`,
        :class:`~pyro_vae.models.cvae.CVAE` or :class:`~pyro_vae.models.m2.M2`.
    :param data: its data set; the test set is scored, the training set fits the baseline.
    :param seed: seeds every estimate.
    :param objective: the training objective, whose ELBO is the test ELBO
        (:func:`~pyro_vae.infer.elbo.dataset_elbo`).
    :param binarization: ``"dynamic"`` or ``"none"``, as in training: the test set is binarized
        once with a fixed seed for a binary likelihood (:func:`~pyro_vae.data.sources.eval_inputs`).
    :param iwae_k: the particles of the IWAE estimate; 0 skips it.
    :param progress: show a progress bar (tqdm) for the IWAE estimate; ``False`` for none.
    :param compile: ``"on"``, ``"auto"`` or ``"off"``, for the IWAE estimate's chunks
        (:func:`iwae_estimate`).
    :returns: a dict of ``test_elbo``, ``iwae_log_likelihood`` (and ``iwae_compile``, what came
        of compiling it), ``iwae_k``, ``kl_per_dim``, ``active_units`` (and by latent site,
        ``active_units_by_site``), ``seed``, ``num_test``,
        ``baseline_log_likelihood``, ``test_accuracy`` for M2, and the figures in bits per
        dimension for a likelihood of probabilities.
    """
    vae = as_program(vae, data.x_shape, data.x_train[:PROBE_BATCH])  # your own, wrapped
    check_shape(vae.x_shape, data)
    iwae_k = validation.whole("iwae_k", iwae_k, low=0)
    device = next(vae.parameters()).device
    x_test = eval_inputs(vae.likelihood, data.x_test, binarization).to(device)
    labels = None if data.y_test is None else data.y_test.to(device)
    by_site = units_by_site(vae, x_test, labels=labels)
    result: dict[str, Any] = {
        "test_elbo": dataset_elbo(vae, x_test, seed=seed, objective=objective, labels=labels),
        "iwae_log_likelihood": None,
        "iwae_k": iwae_k,
        "kl_per_dim": kl_per_dim(vae, x_test, seed=seed, labels=labels),
        "active_units": sum(n for n, _ in by_site.values()),
        "active_units_by_site": {site: n for site, (n, _) in by_site.items()},
        "seed": seed,
        "num_test": len(x_test),
    }
    result.update(vae.test_metrics(x_test, labels))
    if iwae_k > 0:
        estimate = iwae_estimate(
            vae, x_test, iwae_k, seed=seed, progress=progress, compile=compile, labels=labels
        )
        result["iwae_log_likelihood"], result["iwae_compile"] = estimate.value, estimate.compile
    result["baseline_log_likelihood"] = baseline_log_likelihood(vae, data.x_train, x_test)
    return add_bits_per_dim(result, vae)

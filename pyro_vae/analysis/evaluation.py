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
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import pyro
import torch
from torch.distributions import Independent, kl_divergence

# torch documents TorchDispatchMode (the one way to see each operation run) in this private module
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from pyro_vae import validation
from pyro_vae.analysis.codes import encode, mean_and_scale
from pyro_vae.data.mapped import row_slices
from pyro_vae.data.sources import Dataset, as_floats, check_shape, eval_inputs
from pyro_vae.device import random_state_kept
from pyro_vae.errors import ConfigError
from pyro_vae.infer.compiling import COMPILE, CompiledLoss, CompilePolicy
from pyro_vae.infer.elbo import dataset_elbo
from pyro_vae.infer.passes import EVAL_BATCH_SIZE, announce, seeded_pass
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
#: the chunks of an IWAE pass timed before it says how long it will take (the fastest counts)
TIMED_CHUNKS = 2
#: ``iwae_k="auto"``: the k of the IWAE estimate chosen for the job and the device
#: (:func:`choose_iwae_k`)
AUTO = "auto"
#: the k an automatic choice takes: the largest whose pass fits :data:`AUTO_K_SECONDS`
AUTO_K = (1000, 500, 200, 100, 50, 20, 10)
#: the seconds an automatic k's IWAE pass is reckoned to take at most
AUTO_K_SECONDS = 300.0
#: What an automatic k reckons a device type does each second: FLOPs of matrix products (as
#: torch's ``FlopCounterMode`` counts them) and numbers written by the other operations. For the
#: CPU, 2 cores with the chunks compiled: a 784-400-50 VAE's or M2's chunk on Fashion-MNIST (15
#: GFLOP, 90 M numbers) took 0.23 s (issue 28); for CUDA, a modest GPU. Figures, not a timing:
#: a job gets the same k, and so the same numbers for its seed, on every machine of a kind.
NOMINAL_RATES = {"cpu": (1e11, 1e9), "cuda": (1e13, 1e11)}


def independent_pixel_log_likelihood(
    x_train: torch.Tensor, x_test: torch.Tensor, release: Callable[[], None] | None = None
) -> float:
    """Mean log-likelihood (nats per example) of binary ``x_test`` under independent Bernoulli
    pixels with p_i = (sum_n x_train[n, i] + 1/2) / (N + 1).

    :param x_train: the training set, floats in [0, 1] or 8-bit images, ``(N, *x_shape)``: each
        pixel's mean fits its p_i. Read a slice of rows at a time: it may be memory-mapped.
    :param x_test: binary test images (0 or 1), of the same shape per example.
    :param release: lets go of the pages of a memory-mapped ``x_train`` after each slice.
    """
    total = torch.zeros(x_train.shape[1:], dtype=torch.float64, device=x_train.device)
    for rows in row_slices(x_train, release):
        total += as_floats(rows).double().sum(0)
    p = (total + 0.5) / (len(x_train) + 1)
    x = x_test.double()
    log_lik = x * p.log() + (1 - x) * torch.log1p(-p)
    return float(log_lik.flatten(1).sum(1).mean())


def independent_logistic_log_likelihood(
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    bins: int = 256,
    release: Callable[[], None] | None = None,
) -> float:
    """Mean log-likelihood (nats per example) of ``x_test`` (values ``k / (bins - 1)``) under
    independent discretized logistic values, a location and a log scale for every pixel and
    channel, fitted to ``x_train`` by maximum likelihood: from the moments (location the mean,
    scale ``std * sqrt(3) / pi``), :data:`BASELINE_STEPS` Adam steps, in float64.

    An independent model sees the data only through each value's histogram over the ``bins``
    levels, so the fit works on the histograms: a step costs D x bins, whatever the examples.

    :param x_train: the training set, floats ``k / (bins - 1)`` in [0, 1] or 8-bit images,
        ``(N, *x_shape)``, read a slice of rows at a time: it may be memory-mapped.
    :param x_test: the test set, floats ``k / (bins - 1)``.
    :param bins: the levels a value takes, 256 for 8-bit images.
    :param release: lets go of the pages of a memory-mapped ``x_train`` after each slice.
    """
    train_counts = sum(
        _level_counts(as_floats(rows), bins) for rows in row_slices(x_train, release)
    )
    test_counts = _level_counts(x_test, bins)
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


def iwae_k_setting(param: str, value: Any, low: int = 0) -> int | str:
    """``value`` checked as the k of an IWAE estimate: ``"auto"`` (:func:`choose_iwae_k`), or a
    whole number of at least ``low``.

    :param param: the parameter's name as the library spells it, for the error message.
    :param value: the value to check.
    :param low: the smallest k allowed: 0 where it skips the estimate, else 1.
    """
    if isinstance(value, str):
        if value == AUTO:
            return AUTO
        raise ConfigError(f"must be {AUTO!r} or a whole number, got {value[:40]!r}", param)
    return validation.whole(param, value, low=low)


class IWAECost(NamedTuple):
    """The reckoned seconds of one example's IWAE chunk of p particles on a device type, split
    as ``chunk + p particle`` (:func:`iwae_cost`).

    :param particle: the seconds of each particle: the decoder and the likelihood, once for each
        label summed out.
    :param chunk: the seconds of each chunk, whatever its particles: the encoder.
    """

    particle: float
    chunk: float


def iwae_cost(vae: VAE, x: torch.Tensor, *given: torch.Tensor) -> IWAECost:
    """The reckoned seconds of the IWAE chunks of the first example of ``x`` on x's device type:
    the FLOPs of its matrix products (torch's ``FlopCounterMode``) and the numbers its operations
    write (a measure of their memory traffic), each at the type's :data:`NOMINAL_RATES`, counted
    at one particle and at two. A forward pass of one example; the global random state is kept.

    :param vae: the model, whose ``iwae_chunk`` is counted.
    :param x: examples as the model scores them; the first is counted.
    :param given: what the programs take after ``x``
        (:meth:`~pyro_vae.models.program.Program.condition`).
    """
    one = (x[:1], *(g[:1] for g in given))
    flop_rate, number_rate = NOMINAL_RATES.get(x.device.type, NOMINAL_RATES["cpu"])

    def seconds(particles: int) -> float:
        flops, numbers = FlopCounterMode(display=False), _NumbersWritten()
        with random_state_kept(x.device), torch.no_grad(), pyro.validation_enabled(False):
            with flops, numbers:
                vae.iwae_chunk(one[0], particles, *one[1:])
        return flops.get_total_flops() / flop_rate + numbers.numbers / number_rate

    once, twice = seconds(1), seconds(2)
    return IWAECost(twice - once, max(0.0, 2 * once - twice))


class _NumbersWritten(TorchDispatchMode):
    """Counts the numbers that the operations run inside write (a view writes none)."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            outs = out if isinstance(out, tuple | list) else (out,)
            self.numbers += sum(t.numel() for t in outs if isinstance(t, torch.Tensor))
        return out


def reckoned_iwae_seconds(
    vae: VAE, x: torch.Tensor, k: int, *, labels: torch.Tensor | None = None
) -> float:
    """The seconds the ``k``-particle IWAE estimate over ``x`` (:func:`iwae_estimate`) is
    reckoned to take on x's device type, from one example's chunks (:func:`iwae_cost`):

        N (k T_particle + ceil(k / c) T_chunk),

    N the examples and c the particles of a chunk of the first batch (the model's
    ``iwae_chunk_size``). For M2, whose labels are summed out, T_particle is ten decoders'. A
    figure for the type, not a timing of this machine.

    :param vae: the model.
    :param x: the examples, ``(N, *x_shape)``, as the model scores them, on its device.
    :param k: the particles per example.
    :param labels: the examples' integer labels, for a model whose programs take them.
    """
    first = _first_batch(vae, x, labels)
    return _pass_seconds(vae, first, len(x), k, iwae_cost(vae, *first))


def choose_iwae_k(
    vae: VAE, x: torch.Tensor, k: int | str = AUTO, *, labels: torch.Tensor | None = None
) -> tuple[int, bool]:
    """The k of the IWAE estimate over ``x``, and whether it was chosen here: a number ``k`` is
    kept; ``"auto"`` takes the largest of :data:`AUTO_K` whose pass is reckoned to take at most
    :data:`AUTO_K_SECONDS` on x's device type (:func:`reckoned_iwae_seconds`), or else the
    smallest.

    The choice reads the model's size, the number of examples and the device type, never a
    clock: the same job gets the same k, and so the same numbers for its seed, on every machine
    of a kind. How long it takes on this one, :func:`iwae_estimate` says as it starts.

    :param vae: the model.
    :param x: the examples, ``(N, *x_shape)``, as the model scores them, on its device.
    :param k: ``"auto"``, or the particles per example.
    :param labels: the examples' integer labels, for a model whose programs take them.
    """
    k = iwae_k_setting("k", k, low=1)
    if k != AUTO:
        return k, False
    first = _first_batch(vae, x, labels)
    cost = iwae_cost(vae, *first)
    fits = (c for c in AUTO_K if _pass_seconds(vae, first, len(x), c, cost) <= AUTO_K_SECONDS)
    return next(fits, AUTO_K[-1]), True


def _first_batch(
    vae: VAE, x: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """The first batch of a seeded pass over ``x``, with what the programs take after it."""
    batch = vae.inputs(x[:EVAL_BATCH_SIZE])
    return (batch, *vae.condition(None if labels is None else labels[:EVAL_BATCH_SIZE], batch))


def _pass_seconds(
    vae: VAE, first: tuple[torch.Tensor, ...], n: int, k: int, cost: IWAECost
) -> float:
    chunk = vae.iwae_chunk_size(first[0], k, *first[1:])
    return n * (k * cost.particle + math.ceil(k / chunk) * cost.chunk)


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
    auto: bool = False,
) -> IWAEEstimate:
    """Mean IWAE estimate of log p(x), nats per example, with ``k`` particles and a fixed seed,
    and one line on whether its chunks were compiled: of log p(x | y) at the integer ``labels``
    for the conditional VAE, of log p(x) (:meth:`~pyro_vae.models.m2.M2.iwae_bound`) for M2.

    It costs about ``k`` test ELBOs, in chunks of particles (:func:`pyro_vae.infer.elbo.iwae_bound`)
    so that k = 5000 on 10,000 images fits in a few GB; the global random state is left as it
    was. Compiled chunks draw the same numbers and agree with eager ones to float32 rounding.
    With ``progress``, once the first chunk has run as the rest will (compiled or not), a line
    on stderr says how long the whole pass will take here, from its time: ``IWAE k=200 (auto):
    about 4 min on cpu for 10000 examples; k=1000 would take about 21 min``.

    :param vae: the trained model: a :class:`~pyro_vae.models.vae.VAE`,
        :class:`~pyro_vae.models.cvae.CVAE` or :class:`~pyro_vae.models.m2.M2`.
    :param x: the examples, ``(N, *x_shape)``, floats as the model scores them
        (:func:`~pyro_vae.data.sources.eval_inputs`), on the model's device.
    :param k: the particles per example, k in the bound.
    :param seed: seeds the draws of z; the global random state is left as it was.
    :param progress: show a progress bar (tqdm) over the batches, and the line on how long the
        pass will take; ``False`` for neither.
    :param compile: ``"on"`` compiles the chunk of the first batch's shape
        (:mod:`pyro_vae.infer.compiling`) before the first, ``"auto"`` after timing the first if
        the chunks ahead repay it (not with one full batch alone), ``"off"`` never.
    :param labels: the examples' integer labels, ``(N,)``, which the conditional VAE is given;
        unused by the VAE and M2 (which sums its labels out).
    :param auto: whether ``k`` was chosen for the job (:func:`choose_iwae_k`): the line says so,
        and how long the largest k of :data:`AUTO_K` would take.
    """
    validation.choice("compile", compile, COMPILE)
    x = vae.inputs(x)
    given = vae.condition(labels, x)
    first = (x[:EVAL_BATCH_SIZE], *(g[:EVAL_BATCH_SIZE] for g in given))
    chunk = vae.iwae_chunk_size(*first[:1], k, *first[1:])
    full_chunks = max(1, len(x) // EVAL_BATCH_SIZE) * (k // chunk)  # in batches like the first
    # one full batch: too few chunks to repay a compile (and the status names no timing)
    one_batch = compile == "auto" and len(x) < 2 * EVAL_BATCH_SIZE
    policy = CompilePolicy("the IWAE bound", "off" if one_batch else compile, device=x.device)

    def say(seconds: float, particles: int, examples: int) -> None:  # seconds of a chunk
        announce(_plan_line(k, auto, len(x), x.device, seconds / particles / examples))

    chunks = _FullChunks(vae, first, chunk, policy, full_chunks, say if progress else None)
    total, bounds = 0.0, []
    with seeded_pass(x, given, seed=seed, progress=progress, desc=f"IWAE k={k}") as batches:
        for batch, cond in batches:
            start = time.perf_counter()
            bound = vae.iwae_bound(batch, k, chunks, cond)
            total += float(bound.sum())  # the batch's one read: the clock below needs no sync
            bounds.append(bound)
            chunks.say(time.perf_counter() - start, k, len(batch))  # if the chunks have not
    status = "the IWAE bound stayed eager: too few batches to decide" if one_batch else None
    return IWAEEstimate(total / len(x), status or policy.message, policy.seconds, torch.cat(bounds))


class _FullChunks:
    """The chunks of full size of an IWAE pass, as the model's ``iwae_bound`` asks for them (its
    ``full_chunk``): eager, or compiled once ``policy`` decides so, before the first chunk
    (``"on"``) or after it, timed (``"auto"``). The first :data:`TIMED_CHUNKS` that run as the
    rest will are timed too, and ``timed(seconds, particles, examples)`` told the fastest, once,
    when given (a first call allocates what later ones reuse)."""

    def __init__(
        self,
        vae: VAE,
        first: tuple[torch.Tensor, ...],
        chunk: int,
        policy: CompilePolicy,
        full_chunks: int,
        timed: Any = None,
    ):
        self.vae, self.chunk, self.policy, self.timed = vae, chunk, policy, timed
        self.shape, self.device = first[0].shape, first[0].device
        self.ahead, self.kept, self.fastest = full_chunks, 0, math.inf

    def __call__(self, x: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        if x.shape != self.shape:  # a last, smaller batch: no graph has its shape
            return self.vae.iwae_chunk(x, self.chunk, *cond)
        if self.policy.ready():  # "on": now; "auto": its clock starts here
            self._decide(x, cond)
        compiled = self.policy.compiled
        start = _clock(self.device) if self.timed is not None else None
        out = compiled(x, *cond) if compiled else self.vae.iwae_chunk(x, self.chunk, *cond)
        seconds = None if start is None else _clock(self.device) - start
        self.ahead -= 1
        if self.policy.ready(calls=1):  # "auto": the chunk just timed decides
            self._decide(x, cond)
        if seconds is not None and self.policy.decided and compiled is self.policy.compiled:
            self.kept, self.fastest = self.kept + 1, min(self.fastest, seconds)  # as the rest will
            if self.kept == TIMED_CHUNKS:
                self.say(seconds, self.chunk, len(x))
        return out

    def say(self, seconds: float, particles: int, examples: int) -> None:
        """Tell ``timed`` the fastest chunk timed, or where none was, ``seconds`` of
        ``particles`` for ``examples`` (a batch's); then never again.

        :param seconds: the seconds of the work to tell of where no chunk was timed.
        :param particles: its particles per example.
        :param examples: its examples.
        """
        if self.timed is not None and self.kept:
            self.timed(self.fastest, self.chunk, self.shape[0])
        elif self.timed is not None:  # a bound that took no chunks of full size
            self.timed(seconds, particles, examples)
        self.timed = None

    def _decide(self, x: torch.Tensor, cond: tuple[torch.Tensor, ...]) -> None:
        def capture() -> CompiledLoss:
            fn = partial(_chunk, self.vae, self.chunk)
            return CompiledLoss(self.vae, fn, x, *cond, gradients=False)

        self.policy.decide(capture, x, self.ahead)


def _chunk(vae: VAE, particles: int, x: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
    return vae.iwae_chunk(x, particles, *cond)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":  # the first chunk or two of a pass: the time the line gives
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _plan_line(k: int, auto: bool, n: int, device: torch.device, seconds_each: float) -> str:
    """``IWAE k=200 (auto): about 4 min on cpu for 10000 examples; k=1000 would take about
    21 min``: the pass's time from ``seconds_each``, one particle of one example's, linear in
    both (the chunks' time is their particles' and the encoder's is small)."""
    chosen = " (auto)" if auto else ""
    took = _duration(seconds_each * k * n)
    line = f"IWAE k={k}{chosen}: about {took} on {device} for {n} examples"
    if auto and k < AUTO_K[0]:
        line += f"; k={AUTO_K[0]} would take about {_duration(seconds_each * AUTO_K[0] * n)}"
    return line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


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


def baseline_log_likelihood(
    vae: VAE,
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    release: Callable[[], None] | None = None,
) -> float | None:
    """The independent-pixel model of ``vae``'s likelihood family (:data:`BASELINES`) fitted to
    ``x_train`` (as stored: 8-bit images or floats): its mean log-likelihood of ``x_test``, the
    test set as ``vae`` scores it (:func:`~pyro_vae.data.sources.eval_inputs`), nats per example;
    ``None`` for a family without one.

    :param vae: the model, whose likelihood names the family.
    :param x_train: the training set as stored: 8-bit ``uint8`` images or floats in [0, 1], read
        a slice of rows at a time (it may be memory-mapped, and larger than memory).
    :param x_test: the test set as ``vae`` scores it, floats.
    :param release: lets go of the pages of a memory-mapped ``x_train`` after each slice
        (:meth:`Dataset.release_pages <pyro_vae.data.sources.Dataset.release_pages>`).
    """
    fit = BASELINES.get(name_of(vae.likelihood))
    if fit is None:
        return None
    return fit(vae.likelihood, x_train, x_test.to(x_train.device), release)


#: The independent-pixel baselines, by likelihood name: (likelihood, x_train, x_test, release)
#: -> nats.
BASELINES = {
    "bernoulli": lambda _, x_train, x_test, release: independent_pixel_log_likelihood(
        x_train, x_test, release
    ),
    "discretized-logistic": lambda likelihood, x_train, x_test, release: (
        independent_logistic_log_likelihood(x_train, x_test, likelihood.bins, release)
    ),
}


def evaluate(
    vae: VAE,
    data: Dataset,
    *,
    seed: int = 0,
    objective: str = "trace",
    binarization: str = "dynamic",
    iwae_k: int | str = AUTO,
    progress: bool = True,
    compile: str = "off",
) -> dict[str, Any]:
    """Test-set figures of ``vae`` on ``data`` (see the module doc).

    The same seed gives the same numbers on the same device. The IWAE estimate is most of the
    work: it decodes ``iwae_k`` codes of every test example (of every label, for M2), about
    ``iwae_k`` times what the test ELBO costs. ``"auto"`` takes the largest k of
    1000, 500, 200, ... whose pass is reckoned to take at most 5 minutes on the device's type
    (:func:`choose_iwae_k`: from the model's size and the test set's, the same k on every
    machine): k = 1000 for a VAE on 10,000 images, 200 for an M2 with ten labels, on a CPU,
    reckoned with its chunks compiled (``compile="auto"``, the command line's default: on 2
    cores about twice as fast as eager). As it starts, the estimate says on stderr how long it
    will take here (with ``progress``); ``iwae_k=0`` skips it.

    :param vae: the trained model: a :class:`~pyro_vae.models.vae.VAE`,
        :class:`~pyro_vae.models.cvae.CVAE` or :class:`~pyro_vae.models.m2.M2`.
    :param data: its data set; the test set is scored, the training set fits the baseline.
    :param seed: seeds every estimate.
    :param objective: the training objective, whose ELBO is the test ELBO
        (:func:`~pyro_vae.infer.elbo.dataset_elbo`).
    :param binarization: ``"dynamic"`` or ``"none"``, as in training: the test set is binarized
        once with a fixed seed for a binary likelihood (:func:`~pyro_vae.data.sources.eval_inputs`).
    :param iwae_k: the particles of the IWAE estimate: ``"auto"`` (see above), a number, or 0,
        which skips it.
    :param progress: show a progress bar (tqdm) for the IWAE estimate, and how long it will
        take; ``False`` for neither.
    :param compile: ``"on"``, ``"auto"`` or ``"off"``, for the IWAE estimate's chunks
        (:func:`iwae_estimate`).
    :returns: a dict of ``test_elbo``, ``iwae_log_likelihood`` (and ``iwae_compile``, what came
        of compiling it), ``iwae_k`` (the k used) and ``iwae_k_auto`` (whether it was chosen
        for the job), ``kl_per_dim``, ``active_units`` (and by latent site,
        ``active_units_by_site``), ``seed``, ``num_test``,
        ``baseline_log_likelihood``, ``test_accuracy`` for M2, and the figures in bits per
        dimension for a likelihood of probabilities.
    """
    vae = as_program(vae, data.x_shape, data.x_train[:PROBE_BATCH])  # your own, wrapped
    check_shape(vae.x_shape, data)
    iwae_k = iwae_k_setting("iwae_k", iwae_k, low=0)
    device = next(vae.parameters()).device
    x_test = eval_inputs(vae.likelihood, data.x_test, binarization).to(device)
    labels = None if data.y_test is None else data.y_test.to(device)
    k, auto = choose_iwae_k(vae, x_test, iwae_k, labels=labels) if iwae_k != 0 else (0, False)
    by_site = units_by_site(vae, x_test, labels=labels)
    result: dict[str, Any] = {
        "test_elbo": dataset_elbo(vae, x_test, seed=seed, objective=objective, labels=labels),
        "iwae_log_likelihood": None,
        "iwae_k": k,
        "iwae_k_auto": auto,
        "kl_per_dim": kl_per_dim(vae, x_test, seed=seed, labels=labels),
        "active_units": sum(n for n, _ in by_site.values()),
        "active_units_by_site": {site: n for site, (n, _) in by_site.items()},
        "seed": seed,
        "num_test": len(x_test),
    }
    result.update(vae.test_metrics(x_test, labels))
    if k > 0:
        estimate = iwae_estimate(
            vae, x_test, k, seed=seed, progress=progress, compile=compile, labels=labels, auto=auto
        )
        result["iwae_log_likelihood"], result["iwae_compile"] = estimate.value, estimate.compile
    result["baseline_log_likelihood"] = baseline_log_likelihood(
        vae, data.x_train, x_test, data.release_pages
    )
    return add_bits_per_dim(result, vae)

"""Anomaly and out-of-distribution scores: how typical a trained VAE finds each input.

The natural score of an input is its log-likelihood, log p(x), here the IWAE estimate with k
particles (:func:`~pyro_vae.analysis.evaluation.iwae_estimate`): an input unlike the training set
should be improbable. Deep generative models, however, often give *higher* likelihood to simpler
inputs from another distribution than to their own test set (Nalisnick et al. 2019, "Do Deep
Generative Models Know What They Don't Know?", arXiv:1810.09136): a Fashion-MNIST model finds MNIST
digits, mostly black, more probable than clothes. The likelihood is dominated by how complex an
input is.

Serra et al. 2020 ("Input Complexity and Out-of-distribution Detection with Likelihood-based
Generative Models", arXiv:1909.11480) correct for this with the length L(x), in bits, of a lossless
compression of x by a general-purpose image compressor (here PNG, at its strongest setting, at the
likelihood's levels: 1 bit a pixel for the Bernoulli's binary images, 8 for 8-bit ones): it
estimates -log2 of a universal model's p(x), and the difference

    corrected(x) = log2 p(x) + L(x)

is a likelihood ratio between the VAE and that universal model (Serra et al.'s S(x) is its
negative). It is only defined where p(x) is a probability of the discrete input (Bernoulli and
discretized-logistic likelihoods, ``likelihood.levels``); for a density it is not given.

Every score here is larger for a more typical input: in-distribution inputs should score high.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pyro_vae import validation
from pyro_vae.analysis.evaluation import AUTO, bits_per_dim, choose_iwae_k, iwae_estimate
from pyro_vae.files import atomic_write
from pyro_vae.models.vae import VAE

#: Each score, the column of scores.csv that holds it, and what it is.
COLUMNS = {
    "log_px": "IWAE estimate of log p(x), nats",
    "elbo": "one-sample ELBO estimate (the bound with k = 1), nats",
    "bits_per_dim": "-log2 p(x) / D, D the values of an example (lower: more typical)",
    "complexity_bits": "L(x), bits of x compressed losslessly as a PNG (discrete likelihoods)",
    "corrected": "log2 p(x) + L(x), bits: Serra et al.'s input-complexity correction",
}


def score(
    vae: VAE,
    x: torch.Tensor,
    k: int | str = AUTO,
    *,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
    compile: str = "off",
) -> dict[str, torch.Tensor]:
    """Each example's scores, by the names of :data:`~pyro_vae.analysis.scores.COLUMNS`, each
    ``(N,)`` float64 on the CPU.

    ``log_px`` is the IWAE bound of each example, the numbers whose mean
    :func:`~pyro_vae.analysis.evaluation.iwae_estimate` gives; ``elbo`` the same with one particle.
    For the conditional VAE both are of log p(x | y); for M2 of log p(x), its labels summed out.
    ``complexity_bits`` and ``corrected`` are given for the likelihoods of discrete inputs only.

    :param vae: the trained model.
    :param x: the examples as the model scores them (see
        :func:`~pyro_vae.data.sources.eval_inputs`).
    :param k: the particles of each example's IWAE bound, or ``"auto"``: the largest of 1000,
        500, 200, ... whose pass is reckoned to fit 5 minutes on the device's type
        (:func:`~pyro_vae.analysis.evaluation.choose_iwae_k`).
    :param labels: the examples' integer labels, which the conditional VAE needs.
    :param seed: seeds the draws of z.
    :param progress: show a progress bar (tqdm), and how long the pass will take; ``False`` for
        neither. The ``k``-particle bound is most of the work: about ``k`` test ELBOs.
    :param compile: ``"on"``, ``"auto"`` or ``"off"``, for the IWAE bound's chunks
        (:func:`~pyro_vae.analysis.evaluation.iwae_estimate`).
    :raises DataError: for the conditional VAE without ``labels``.
    """
    x = vae.inputs(x)
    vae.condition(labels, x)  # a model that scores log p(x | y) refuses here without labels
    k, auto = choose_iwae_k(vae, x, k, labels=labels)
    kind = {"labels": labels, "seed": seed}
    log_px = iwae_estimate(vae, x, k, compile=compile, progress=progress, auto=auto, **kind)
    log_px = log_px.per_example.double().cpu()
    # the one-particle pass costs a k-th of the first: no bar, no line of its own
    elbo = iwae_estimate(vae, x, 1, progress=False, **kind).per_example.double().cpu()
    scores = {"log_px": log_px, "elbo": elbo, "bits_per_dim": bits_per_dim(log_px, vae.x_shape)}
    levels = getattr(vae.likelihood, "levels", None)
    if levels:
        scores["complexity_bits"] = compressed_bits(x, levels)
        scores["corrected"] = log_px / math.log(2) + scores["complexity_bits"]
    return scores


def compressed_bits(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """L(x): the length in bits of each example of ``x`` (values ``k / (levels - 1)`` in [0, 1],
    shaped ``(N, C, H, W)`` or ``(N, D)``) as a PNG file at compression level 9, the values
    stored as the integers k: 1 bit a value for binary images (``levels`` 2), 8 up to 256
    levels, 16 above. One or three channels of 8 bits make one grey or colour picture;
    otherwise each channel is a grey picture of its own.

    :param x: the examples, ``(N, C, H, W)`` or ``(N, D)``, values ``k / (levels - 1)``.
    :param levels: the values a pixel takes, 2 to 65536: the likelihood's ``levels``.
    """
    validation.whole("levels", levels, low=2, high=2**16)
    k = (x.detach().cpu().double() * (levels - 1)).round().clamp(0, levels - 1)
    dtype = torch.bool if levels == 2 else torch.uint8 if levels <= 256 else torch.int32
    pixels = k.to(dtype)
    if pixels.dim() == 2:  # flat vectors: one row of pixels
        pixels = pixels[:, None, None, :]
    bits = [_png_bits(example) for example in pixels.numpy()]
    return torch.tensor(bits, dtype=torch.float64)


def _png_bits(example: np.ndarray) -> int:  # (C, H, W) of bool, uint8 or int32
    colour = len(example) == 3 and example.dtype == np.uint8
    planes = [example.transpose(1, 2, 0)] if colour else list(example)
    total = 0
    for plane in planes:
        image = Image.fromarray(plane.astype(np.uint16)) if plane.dtype == np.int32 else None
        buffer = io.BytesIO()
        (image or Image.fromarray(plane)).save(buffer, format="PNG", compress_level=9)
        total += 8 * buffer.tell()
    return total


def auroc(inliers: torch.Tensor, outliers: torch.Tensor) -> float:
    """The area under the ROC curve of telling ``inliers`` from ``outliers`` by their scores,
    higher meaning more typical: the probability that a random inlier scores above a random
    outlier, ties counting half. 1 is perfect, 0.5 chance, below 0.5 the score points the wrong
    way. By the Mann-Whitney statistic, (R - n(n + 1)/2) / (n m), R the sum of the inliers'
    ranks among all the scores (tied scores sharing their average rank).

    :param inliers: the scores of the typical examples, ``(n,)``.
    :param outliers: the scores of the others, ``(m,)``.
    """
    n, m = len(inliers), len(outliers)
    values = torch.cat([inliers, outliers]).double()
    _, which, counts = torch.unique(values, return_inverse=True, return_counts=True)
    counts = counts.double()  # float32 would round the rank sums of large sets
    average_rank = counts.cumsum(0) - (counts - 1) / 2  # 1-based, of each distinct score
    rank_sum = average_rank[which[:n]].sum()
    return float((rank_sum - n * (n + 1) / 2) / (n * m))


def most_and_least_typical(values: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices of the ``n`` largest ``values``, largest first, and of the ``n`` smallest,
    smallest first (fewer when there are fewer values).

    :param values: a score per example, ``(N,)``, higher meaning more typical.
    :param n: how many of each end.
    """
    n = min(n, len(values))
    order = torch.argsort(values, descending=True, stable=True)
    return order[:n], order.flip(0)[:n]


def write_scores(
    scores: Mapping[str, torch.Tensor], path: str | Path, labels: torch.Tensor | None = None
) -> None:
    """``scores`` as a CSV file, a row per example: ``index``, ``label`` (if ``labels``), then
    the scores' columns.

    :param scores: the scores by column name, each ``(N,)``, as :func:`score` gives them.
    :param path: the CSV file to write.
    :param labels: the examples' integer labels, ``(N,)``, for a ``label`` column; or ``None``.
    """
    names = ["index", *(["label"] if labels is not None else []), *scores]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(names)
    columns = [s.tolist() for s in scores.values()]
    if labels is not None:
        columns.insert(0, labels.tolist())
    writer.writerows([i, *row] for i, row in enumerate(zip(*columns, strict=True)))
    atomic_write(Path(path), lambda f: f.write(buffer.getvalue().encode()))

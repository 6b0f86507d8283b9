"""Likelihoods p(x|z): how the decoder's outputs become a distribution over an observed image.

A likelihood is a small ``nn.Module`` built for one per-example shape ``x_shape``. It says how many
decoder outputs it needs per pixel (``params_per_pixel``), turns the decoder's output of shape
``(..., params_per_pixel, *x_shape)`` into a distribution whose event shape is ``x_shape``
(``forward``) and into the expected image (``mean``, for pictures), and checks data before training
starts (``check_data``) so that a bad value is one clear line, not a validation error mid-epoch.
``binary = True`` marks likelihoods that need 0/1 data: grey data is then binarized by the trainer.
``levels``, the number of values a pixel can take, marks those whose p(x|z) is a probability, not
a density (``None``): -log2 p(x) is then a length in bits, the test figures are also given in bits
per dimension, and an image's compressed length is measured at that many levels.

Everything a distribution is built from comes from the decoder's output or from the likelihood's
own parameters (a learned scale is an ``nn.Parameter`` of the likelihood, so it is in the VAE's
``state_dict`` and optimizer), cast to the output's dtype and device. ``forward`` draws no random
numbers, so Pyro's ``Trace_ELBO`` and the hand-written ELBO see the very same densities.

Adding a likelihood is one class with the attributes and methods of :class:`Bernoulli` and one
line in :data:`LIKELIHOODS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import validation
from pyro_vae.errors import DataError
from pyro_vae.parts.distributions import (
    BETA_EPS,
    GRID_TOLERANCE,
    ClampedBeta,
    DiscretizedLogisticDistribution,
    Grid,
    StableContinuousBernoulli,
)

# Floor of the beta's concentrations, which must stay positive where softplus underflows.
MIN_CONCENTRATION = 1e-3
# A learned scale (gaussian-learned, laplace) starts this far above its floor.
INIT_SCALE = 0.1
# The discretized logistic's log scale is clamped below here, as in PixelCNN++ (Salimans et al.
# 2017): a bin's probability is at most 1, so this guards 1/scale only, not the objective.
MIN_LOG_SCALE = -7.0


# ----------------------------------------------------------------------------------------------
# Data checks shared by the likelihoods: one line each, saying what is wrong and what to do.


def _check_finite(name: str, x: torch.Tensor) -> None:
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise DataError(
            f"the {name} likelihood needs finite data but {bad} values are NaN or infinite; "
            "remove or replace them in the data set"
        )


def _check_unit_interval(name: str, x: torch.Tensor) -> None:
    _check_finite(name, x)
    outside = (x < 0) | (x > 1)
    bad = int(outside.sum())
    if bad:
        raise DataError(
            f"the {name} likelihood needs values in [0, 1] but {bad} values lie outside it "
            f"(smallest {float(x.min()):.4g}, largest {float(x.max()):.4g}); "
            "rescale the data to [0, 1]"
        )


def _params(out: torch.Tensor, x_shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """The decoder's ``(..., P, *x_shape)`` output as P tensors shaped ``(..., *x_shape)``."""
    return out.unbind(-1 - len(x_shape))


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


# ----------------------------------------------------------------------------------------------
# The likelihoods.


class Bernoulli(nn.Module):
    """p(x|z) = prod_pixels Bernoulli(x_i; sigmoid(logit_i(z))), for binary images.

    :param x_shape: the shape of one example, supplied by the VAE.
    """

    name = "bernoulli"
    description = "independent Bernoulli pixels; grey data is binarized afresh in each batch"
    params_per_pixel = 1
    binary = True
    levels = 2

    def __init__(self, x_shape: Sequence[int]):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Each pixel's logit, ``(..., *x_shape)``, from the decoder's output ``out``.

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        return out.squeeze(-1 - len(self.x_shape))

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        """p(x|z) for the decoder's output ``out`` of shape ``(..., params_per_pixel, *x_shape)``:
        a distribution with event shape ``x_shape``.

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        return dist.Bernoulli(logits=self.logits(out)).to_event(len(self.x_shape))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The expected image E[x|z], ``(..., *x_shape)``, from the decoder's output ``out``: each
        pixel's probability of 1.

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        return torch.sigmoid(self.logits(out))

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a :class:`DataError` unless every value of ``x`` is 0 or 1.

        :param x: the data, floats (for 8-bit images, their distinct values).
        """
        grey = int(((x != 0) & (x != 1)).sum())
        if grey:
            raise DataError(
                f"the bernoulli likelihood needs binary data but {grey} values are neither 0 "
                "nor 1; use {binarization} dynamic (the default) or a likelihood for grey values"
            )


class ContinuousBernoulli(nn.Module):
    """p(x|z) = prod_pixels CB(x_i; logit_i(z)): the continuous Bernoulli of Loaiza-Ganem &
    Cunningham (NeurIPS 2019, arXiv:1907.06845), a proper density on [0, 1] for grey values.

    ``CB(x; l) = C(l) sigmoid(l)^x (1 - sigmoid(l))^(1 - x)``; without C(l) this is the Bernoulli
    "likelihood" of grey data, which is not normalized. ``mean`` is the distribution's mean
    ``1 / (1 - exp(-l)) - 1 / l``, not ``sigmoid(l)``.

    :param x_shape: the shape of one example, supplied by the VAE.
    """

    name = "continuous-bernoulli"
    description = (
        "continuous Bernoulli on grey values in [0, 1], with its normalizing constant "
        "(Loaiza-Ganem & Cunningham 2019)"
    )
    params_per_pixel = 1
    binary = False
    levels = None

    def __init__(self, x_shape: Sequence[int]):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def _dist(self, out: torch.Tensor) -> StableContinuousBernoulli:
        (logits,) = _params(out, self.x_shape)
        return StableContinuousBernoulli(logits=logits)

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        """p(x|z) for the decoder's output ``out`` of shape ``(..., params_per_pixel, *x_shape)``:
        a distribution with event shape ``x_shape``.

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        return self._dist(out).to_event(len(self.x_shape))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The expected image E[x|z], the distribution's mean (see the class), in [0, 1].

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        return self._dist(out).mean.clamp(0, 1)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a :class:`DataError` unless every value of ``x`` is in [0, 1].

        :param x: the data, floats (for 8-bit images, their distinct values).
        """
        _check_unit_interval(self.name, x)


class Gaussian(nn.Module):
    """p(x|z) = prod_pixels N(x_i; mu_i(z), scale^2) with a fixed ``scale``.

    The mean is the decoder's raw output (no sigmoid), so that the model is a plain Gaussian
    whose log-likelihood is ``-||x - mu||^2 / (2 scale^2)`` plus a constant; ``mean`` clamps it
    into [0, 1] for pictures. Samples are not clamped.

    :param x_shape: the shape of one example, supplied by the VAE.
    :param scale: the standard deviation of every pixel, in the data's units (values in [0, 1]).
    """

    name = "gaussian"
    description = "independent Gaussian pixels, mean from the decoder, fixed scale"
    params_per_pixel = 1
    binary = False
    levels = None

    def __init__(self, x_shape: Sequence[int], scale: float = 0.1):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.scale = validation.positive("scale", scale)

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        """p(x|z) for the decoder's output ``out`` of shape ``(..., params_per_pixel, *x_shape)``:
        a distribution with event shape ``x_shape``.

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        (loc,) = _params(out, self.x_shape)
        return dist.Normal(loc, torch.full_like(loc, self.scale)).to_event(len(self.x_shape))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The expected image for pictures: the mean mu(z) clamped into [0, 1].

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        (loc,) = _params(out, self.x_shape)
        return loc.clamp(0, 1)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a :class:`DataError` unless every value of ``x`` is finite.

        :param x: the data, floats (for 8-bit images, their distinct values).
        """
        _check_finite(self.name, x)


class _LearnedScale(nn.Module):
    """A location-scale likelihood: location from the decoder (raw output, as for
    :class:`Gaussian`), one learned scale per pixel, ``softplus(raw_scale) + min_scale``.

    The floor is needed: on a pixel that is the same in every example (the border of a digit is
    always 0) the decoder can hit the value exactly, and a scale free to shrink onto it makes the
    log density, and the ELBO, go to +inf until the loss is no longer finite. With the floor the
    log density of a pixel is at most ``-log(min_scale) + const``. ``raw_scale`` starts so that
    every scale is ``min_scale + INIT_SCALE``.
    """

    family: type[dist.Distribution]
    params_per_pixel = 1
    binary = False
    levels = None

    def __init__(self, x_shape: Sequence[int], min_scale: float = 1e-3):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.min_scale = validation.positive("min_scale", min_scale)
        self.raw_scale = nn.Parameter(torch.full(self.x_shape, _inverse_softplus(INIT_SCALE)))

    def scale(self) -> torch.Tensor:
        """The per-pixel scale, shaped ``x_shape``."""
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        (loc,) = _params(out, self.x_shape)
        scale = self.scale().to(loc).expand_as(loc)
        return self.family(loc, scale).to_event(len(self.x_shape))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        (loc,) = _params(out, self.x_shape)
        return loc.clamp(0, 1)

    def check_data(self, x: torch.Tensor) -> None:
        _check_finite(self.name, x)


class GaussianLearned(_LearnedScale):
    """p(x|z) = prod_pixels N(x_i; mu_i(z), sigma_i^2), sigma_i learned per pixel, bounded below
    by ``min_scale`` (see ``_LearnedScale`` for why).

    :param x_shape: the shape of one example, supplied by the VAE.
    :param min_scale: the floor of every learned scale, positive.
    """

    name = "gaussian-learned"
    description = (
        "independent Gaussian pixels, mean from the decoder, learned per-pixel scale "
        "bounded below by min_scale"
    )
    family = dist.Normal


class Laplace(_LearnedScale):
    """p(x|z) = prod_pixels Laplace(x_i; mu_i(z), b_i), b_i learned per pixel, bounded below
    by ``min_scale`` (see ``_LearnedScale`` for why).

    :param x_shape: the shape of one example, supplied by the VAE.
    :param min_scale: the floor of every learned scale, positive.
    """

    name = "laplace"
    description = (
        "independent Laplace pixels, location from the decoder, learned per-pixel scale "
        "bounded below by min_scale"
    )
    family = dist.Laplace


class Beta(nn.Module):
    """p(x|z) = prod_pixels Beta(x_i; alpha_i(z), beta_i(z)), for grey values in [0, 1].

    Two outputs per pixel, ``alpha = softplus(out_0) + MIN_CONCENTRATION`` and likewise beta.
    A Beta density is 0 or infinite at exact 0 and 1, so values are clamped into
    ``[BETA_EPS, 1 - BETA_EPS]`` (1e-3) inside ``log_prob``: the model scores the clamped image,
    whatever calls it. ``mean`` is ``alpha / (alpha + beta)``.

    :param x_shape: the shape of one example, supplied by the VAE.
    """

    name = "beta"
    description = (
        f"independent Beta pixels (2 decoder outputs per pixel); values are clamped into "
        f"[{BETA_EPS:g}, 1 - {BETA_EPS:g}]"
    )
    params_per_pixel = 2
    binary = False
    levels = None

    def __init__(self, x_shape: Sequence[int]):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def _dist(self, out: torch.Tensor) -> ClampedBeta:
        raw1, raw0 = _params(out, self.x_shape)
        return ClampedBeta(
            F.softplus(raw1) + MIN_CONCENTRATION, F.softplus(raw0) + MIN_CONCENTRATION
        )

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        """p(x|z) for the decoder's output ``out`` of shape ``(..., params_per_pixel, *x_shape)``:
        a distribution with event shape ``x_shape``.

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        return self._dist(out).to_event(len(self.x_shape))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The expected image E[x|z] = alpha / (alpha + beta), in [0, 1].

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        return self._dist(out).mean.clamp(0, 1)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a :class:`DataError` unless every value of ``x`` is in [0, 1].

        :param x: the data, floats (for 8-bit images, their distinct values).
        """
        _check_unit_interval(self.name, x)


def _data_grid(x: torch.Tensor, largest: int = 1024) -> int | None:
    """The smallest n <= ``largest`` such that every value of ``x`` is a multiple of 1/n, or
    None."""
    values = torch.unique(x.detach().flatten().to("cpu", torch.float64))
    probe = values[torch.linspace(0, len(values) - 1, min(len(values), 64)).long()]
    for n in range(1, largest + 1):
        for v in (probe, values):  # a few values rule out most n cheaply
            if (v - torch.round(v * n) / n).abs().max() > GRID_TOLERANCE:
                break
        else:
            return n
    return None


class DiscretizedLogistic(nn.Module):
    """p(x|z) = prod_pixels DiscretizedLogistic(x_i; mu_i(z), s_i(z)) on ``bins`` values
    ``k / (bins - 1)``: a likelihood for quantized (e.g. 8-bit) images, as in PixelCNN++.

    Two outputs per pixel: the location (raw) and the log scale, clamped below at
    ``MIN_LOG_SCALE``. A probability is at most 1, so unlike a density this cannot collapse.
    The data must lie on the grid: 8-bit images need ``bins=256``, the digits data set
    (values k/16) ``bins=17``.

    :param x_shape: the shape of one example, supplied by the VAE.
    :param bins: the number of values a pixel takes, ``k / (bins - 1)``: 256 for 8-bit images.
    """

    name = "discretized-logistic"
    description = (
        "discretized logistic on the values k/(bins-1) in [0, 1], as in PixelCNN++ "
        "(bins: 256 for 8-bit data, 17 for digits)"
    )
    params_per_pixel = 2
    binary = False

    def __init__(self, x_shape: Sequence[int], bins: int = 256):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.bins = validation.bins("bins", bins)
        self.levels = self.bins

    def _dist(self, out: torch.Tensor) -> DiscretizedLogisticDistribution:
        loc, log_scale = _params(out, self.x_shape)
        return DiscretizedLogisticDistribution(loc, log_scale.clamp(min=MIN_LOG_SCALE), self.bins)

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        """p(x|z) for the decoder's output ``out`` of shape ``(..., params_per_pixel, *x_shape)``:
        a distribution with event shape ``x_shape``.

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        return self._dist(out).to_event(len(self.x_shape))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The expected image E[x|z] over the ``bins`` values, in [0, 1].

        :param out: the decoder's output, ``(..., params_per_pixel, *x_shape)``.
        """
        return self._dist(out).mean.clamp(0, 1)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a :class:`DataError` unless every value of ``x`` is one of the ``bins`` values
        in [0, 1]; the message names the grid the data lie on, if they lie on one.

        :param x: the data, floats (for 8-bit images, their distinct values).
        """
        _check_unit_interval(self.name, x)
        off = int((~Grid(self.bins).check(x)).sum())
        if off:
            grid = f"1/{self.bins - 1}" + (" (8-bit)" if self.bins == 256 else "")
            found = _data_grid(x)
            advice = (
                f'these data lie on a grid of 1/{found}: use {{likelihood_options["bins"]}} '
                f"{found + 1}"
                if found is not None
                else "quantize the data or use a likelihood for continuous values"
            )
            raise DataError(
                f"the {self.name} likelihood needs values on a grid of {grid} but {off} values "
                f"are not; {advice}"
            )


#: the likelihoods by name, as ``VAE(likelihood=...)`` and ``--likelihood`` take them
LIKELIHOODS: dict[str, type[nn.Module]] = {
    Bernoulli.name: Bernoulli,
    ContinuousBernoulli.name: ContinuousBernoulli,
    Gaussian.name: Gaussian,
    GaussianLearned.name: GaussianLearned,
    Laplace.name: Laplace,
    Beta.name: Beta,
    DiscretizedLogistic.name: DiscretizedLogistic,
}

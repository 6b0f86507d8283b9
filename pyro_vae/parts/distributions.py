"""Distributions the likelihoods need that ``pyro.distributions`` lacks or gets wrong in float32:
a continuous Bernoulli stable for large logits, a Beta that scores values clamped away from 0 and 1,
and the discretized logistic of PixelCNN++.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

# The underscored _validate_sample, _extended_shape etc.: torch's subclass helpers, none public.

# The beta likelihood scores x clamped into [BETA_EPS, 1 - BETA_EPS]: its density is 0 or infinite
# at exact 0 and 1, which image data are full of.
BETA_EPS = 1e-3
# A value lies on the discretized logistic's grid if it is this close to some k / (bins - 1).
GRID_TOLERANCE = 1e-4


class StableContinuousBernoulli(dist.ContinuousBernoulli):
    """``pyro.distributions.ContinuousBernoulli`` with its normalizing constant, mean and inverse
    CDF computed stably from the logits.

    PyTorch computes them from ``probs = sigmoid(logits)`` clamped away from 0 and 1, which in
    float32 caps ``|logits|`` at about 16: for a logit of -30 its density integrates to 0.53 and its
    mean is 0.063 instead of 0.033. Build it with ``logits=`` only. (``variance``, ``entropy``
    and ``cdf``, which nothing here uses, are still PyTorch's.)

    With ``a = |logit|`` the density is ``C(a) exp(x logit - softplus(logit))`` and
    ``log C(a) = softplus(-a) - log((1 - exp(-a)) / a)``, which is exact and finite for all a
    (the removable singularity at 0, where C = 2, is taken care of by evaluating the ratio at
    ``max(a, tiny)``, where it is 1 to the last bit).
    """

    def log_normalizer(self) -> torch.Tensor:
        """``log C(a) = softplus(-a) - log((1 - exp(-a)) / a)``, ``a = |logit|``, for each logit."""
        a = self.logits.abs()
        safe = a.clamp_min(torch.finfo(a.dtype).tiny)
        return F.softplus(-a) - torch.log(-torch.expm1(-safe) / safe)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log C(a) + x logit - softplus(logit) of each ``value`` in [0, 1].

        :param value: values in [0, 1], broadcasting against the logits.
        """
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return self.log_normalizer() - bce

    @property
    def mean(self) -> torch.Tensor:
        """1 / (1 - exp(-l)) - 1 / l for each logit l, by its Taylor series near 0, where the two
        terms cancel."""
        logits = self.logits
        small = logits.abs() < 0.5
        safe = torch.where(small, torch.ones_like(logits), logits)
        exact = 1 / -torch.expm1(-safe) - 1 / safe
        l2 = logits * logits
        taylor = 0.5 + logits * (1 / 12 - l2 * (1 / 720 - l2 * (1 / 30240 - l2 / 1209600)))
        return torch.where(small, taylor, exact)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """The inverse CDF at ``value`` u in [0, 1]: log1p(u expm1(l)) / l for l <= 0, and
        1 - F^-1(1 - u) of the logit -l for l > 0, so that ``expm1`` never overflows.

        :param value: probabilities u in [0, 1], broadcasting against the logits.
        """
        logits, value = broadcast_all(self.logits, value)
        negative = logits <= 0
        a = -logits.abs().clamp_min(torch.finfo(logits.dtype).tiny)
        u = torch.where(negative, value, 1 - value)
        x = torch.log1p(u * torch.expm1(a)) / a
        return torch.where(negative, x, 1 - x).clamp(0, 1)


class ClampedBeta(dist.Beta):
    """``pyro.distributions.Beta`` that scores values clamped into ``[BETA_EPS, 1 - BETA_EPS]``.

    Its support stays the closed interval [0, 1], so Pyro's validation accepts exact 0 and 1, and
    ``log_prob`` is finite there. Samples are those of the plain Beta.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The Beta's log density at ``value`` clamped into ``[BETA_EPS, 1 - BETA_EPS]``.

        :param value: values in [0, 1], broadcasting against the concentrations.
        """
        if self._validate_args:
            self._validate_sample(value)
        return super().log_prob(value.clamp(BETA_EPS, 1 - BETA_EPS))


class Grid(constraints.Constraint):
    """Values in [0, 1] within ``GRID_TOLERANCE`` of a multiple of ``1 / (bins - 1)``.

    :param bins: the number of values, at least 2.
    """

    is_discrete = True
    event_dim = 0

    def __init__(self, bins: int):
        self.bins = bins
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        """Whether each element of ``value`` lies on the grid, as a boolean tensor of its shape.

        :param value: the values to check, any shape.
        """
        n = self.bins - 1
        off_grid = (value - torch.round(value * n) / n).abs()
        return (value >= 0) & (value <= 1) & (off_grid <= GRID_TOLERANCE)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bins={self.bins})"


class DiscretizedLogisticDistribution(dist.TorchDistribution):
    r"""A logistic distribution discretized to ``bins`` values ``k / (bins - 1)`` in [0, 1], as in
    PixelCNN++ (Salimans et al. 2017) and the IAF paper (Kingma et al. 2016).

    With ``h = 1 / (2 (bins - 1))`` and ``s = exp(log_scale)``,
    ``P(x) = sigmoid((x + h - loc) / s) - sigmoid((x - h - loc) / s)``, where the lowest value
    takes all the mass below it (its lower edge is -inf) and the highest all the mass above it
    (upper edge +inf), so that the probabilities of the ``bins`` values sum to 1.

    The difference of sigmoids is computed in log space through the identity
    ``log(sigmoid(a) - sigmoid(b)) = logsigmoid(a) + logsigmoid(-b) + log(1 - exp(b - a))``,
    whose three terms are each stable: no fallback to the density is needed for tiny
    probabilities, in either tail or for any scale.

    :param loc: location, any real shape.
    :param log_scale: log of the logistic's scale, broadcastable with ``loc``.
    :param bins: number of values, at least 2; 256 for 8-bit data.
    :param validate_args: whether to check arguments and values, as for any torch distribution;
        ``None``: torch's global setting.
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    has_rsample = False

    def __init__(
        self,
        loc: torch.Tensor,
        log_scale: torch.Tensor,
        bins: int = 256,
        validate_args: bool | None = None,
    ):
        self.loc, self.log_scale = broadcast_all(loc, log_scale)
        self.bins = int(bins)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        """The ``bins`` values ``k / (bins - 1)`` (:class:`Grid`)."""
        return Grid(self.bins)

    def expand(self, batch_shape, _instance=None) -> DiscretizedLogisticDistribution:
        """The same distribution with batch shape ``batch_shape``, as Pyro's ``expand``.

        :param batch_shape: the new batch shape, to which the current one broadcasts.
        """
        new = self._get_checked_instance(DiscretizedLogisticDistribution, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.log_scale = self.log_scale.expand(batch_shape)
        new.bins = self.bins
        super(DiscretizedLogisticDistribution, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log P(x) of each ``value``, scored at its nearest grid value (see the class).

        :param value: values in [0, 1], broadcasting against ``loc``.
        """
        if self._validate_args:
            self._validate_sample(value)
        n = self.bins - 1
        k = torch.round(value * n).clamp(0, n)  # the bin index; scored on the exact grid value
        inv_scale = torch.exp(-self.log_scale)
        # The bin's edges, standardized; computed as (k +- 1/2) / n so that adjacent bins share
        # the very same float edge and the probabilities add up to 1 to rounding.
        upper = ((k + 0.5) / n - self.loc) * inv_scale
        lower = ((k - 0.5) / n - self.loc) * inv_scale
        log_below_upper = F.logsigmoid(upper)  # log P(X < x + h)
        log_above_lower = F.logsigmoid(-lower)  # log P(X > x - h)
        # log(1 - exp(-d)) with d = upper - lower = 1 / (n s), as log d + log((1 - exp(-d)) / d)
        width = inv_scale / n
        safe = width.clamp_min(torch.finfo(width.dtype).tiny)
        log_width = -math.log(n) - self.log_scale + torch.log(-torch.expm1(-safe) / safe)
        inner = log_below_upper + log_above_lower + log_width
        return torch.where(k <= 0, log_below_upper, torch.where(k >= n, log_above_lower, inner))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Logistic draws ``loc + s (log u - log(1 - u))``, u ~ U(0, 1), rounded to the nearest
        grid value, shape ``sample_shape + batch_shape``.

        :param sample_shape: the shape of independent draws, prepended to the batch shape.
        """
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            eps = torch.finfo(self.loc.dtype).eps
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(eps, 1 - eps)
            y = self.loc + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u))
            n = self.bins - 1
            return torch.round(y * n).clamp(0, n) / n

    @property
    def mean(self) -> torch.Tensor:
        """``E[x] = sum_{k=1}^{n} P(x >= k/n) / n``, n = ``bins`` - 1."""
        # one threshold at a time, to keep memory at one tensor whatever the number of bins
        n = self.bins - 1
        inv_scale = torch.exp(-self.log_scale)
        total = torch.zeros_like(self.loc)
        for k in range(1, n + 1):
            total = total + torch.sigmoid((self.loc - (k - 0.5) / n) * inv_scale)
        return total / n

"""Priors p(z) over the latent code.

A prior is a small ``nn.Module`` (so that learned priors keep their parameters in the VAE's
``state_dict`` and in ``vae.parameters()``, where the trainer's optimizer finds them) called as
``prior(batch_size, like)``. It returns a Pyro distribution with batch shape ``(batch_size,)`` and
event shape ``(z_dim,)``, every tensor made on ``like``'s device and dtype (or from the prior's own
parameters, which live where the VAE lives). ``forward`` draws no random numbers, so the model
and the hand-written ELBO see the very same p(z).

Each class has a registry ``name`` and a one-line ``description``; its constructor takes
``z_dim`` (and ``x_shape`` if it needs it), which the VAE supplies, and its options as keyword
arguments with defaults. A prior with an ``attach(vae)`` method is handed its VAE once the
networks exist (the VampPrior needs the encoder). Adding a prior is one class and one line in
:data:`PRIORS`.

Closed-form KL(q(z|x) || p(z)) for the diagonal Gaussian guide, as ``TraceMeanField_ELBO`` and
``--objective meanfield`` need it, exists for ``standard-normal`` and ``normal`` (Normal-Normal)
and ``laplace`` (PyTorch registers KL(Normal || Laplace)); for ``mog``, ``vamp``, ``student-t``
and ``flow`` there is none, and ``kl_divergence`` raises ``NotImplementedError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.distributions.transforms.spline import ConditionedSpline
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import AutoRegressiveNN
from torch import nn

from pyro_vae import validation
from pyro_vae.device import check_numbers_fit
from pyro_vae.errors import ConfigError

# The smallest learned scale: keeps log p(z) finite if a softplus underflows in float32.
MIN_SCALE = 1e-5
# The numbers in one z_dim = 1 flow step, Pyro's Spline(1) of 8 bins: 8 + 8 + 7 + 8.
_SPLINE_FLOATS = 31


def _raw_scale(scale: float) -> float:
    """The raw parameter r with softplus(r) + MIN_SCALE = ``scale``."""
    return math.log(math.expm1(scale - MIN_SCALE))


def _scale(raw: torch.Tensor) -> torch.Tensor:
    return F.softplus(raw) + MIN_SCALE


class StandardNormal(nn.Module):
    """p(z) = N(0, I), the prior of Kingma & Welling (2014).

    :param z_dim: the size of the code, supplied by the VAE.
    """

    name = "standard-normal"
    description = "N(0, I): the classic fixed isotropic Gaussian"

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        """N(0, I) for ``batch_size`` codes, on ``like``'s device and dtype.

        :param batch_size: the number of codes, the batch shape of p(z).
        :param like: a tensor whose device and dtype p(z) is made with (the batch x).
        """
        loc = like.new_zeros(batch_size, self.z_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)


class LearnedNormal(nn.Module):
    """p(z) = N(mu, diag sigma^2) with learned mu (initially 0) and sigma = softplus(r) + MIN_SCALE
    (initially 1): the standard normal at the start of training.

    :param z_dim: the size of the code, supplied by the VAE.
    """

    name = "normal"
    description = "N(mu, diag sigma^2) with learned mean and scale"

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.loc = nn.Parameter(torch.zeros(z_dim))
        self.raw_scale = nn.Parameter(torch.full((z_dim,), _raw_scale(1.0)))

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        """N(mu, diag sigma^2) for ``batch_size`` codes.

        :param batch_size: the number of codes, the batch shape of p(z).
        :param like: a tensor on the device of the batch; unused: the learned parameters carry
            device and dtype.
        """
        shape = (batch_size, self.z_dim)
        return dist.Normal(self.loc.expand(shape), _scale(self.raw_scale).expand(shape)).to_event(1)


class MixtureOfGaussians(nn.Module):
    """p(z) = sum_k pi_k N(mu_k, diag sigma_k^2), K learned diagonal Gaussians with learned weights.

    The means start as independent N(0, 1) draws, so that the components differ, the scales at 1
    and the weights equal.

    :param z_dim: the size of the code, supplied by the VAE.
    :param components: K, the number of Gaussians.
    """

    name = "mog"
    description = "mixture of K diagonal Gaussians, weights, means and scales learned"

    def __init__(self, z_dim: int, components: int = 10):
        super().__init__()
        self.z_dim = z_dim
        self.components = validation.count("components", components)
        # the logits, means and raw scales: K (2 z_dim + 1) numbers
        check_numbers_fit(
            self.components * (2 * z_dim + 1),
            f"{{param}} = {self.components} mixture components at {{z_dim}} = {z_dim}",
            "components",
        )
        self.logits = nn.Parameter(torch.zeros(self.components))
        self.locs = nn.Parameter(torch.randn(self.components, z_dim))
        self.raw_scales = nn.Parameter(torch.full((self.components, z_dim), _raw_scale(1.0)))

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        """The mixture for ``batch_size`` codes: a ``MixtureSameFamily`` of the K Gaussians.

        :param batch_size: the number of codes, the batch shape of p(z).
        :param like: a tensor on the device of the batch; unused: the learned parameters carry
            device and dtype.
        """
        mixture = dist.MixtureSameFamily(
            dist.Categorical(logits=self.logits),
            dist.Normal(self.locs, _scale(self.raw_scales)).to_event(1),
        )
        return mixture.expand((batch_size,))


class _BroadcastMixture(dist.MixtureSameFamily):
    """A ``MixtureSameFamily`` whose ``log_prob`` scores a value z against every component by
    expanding it to ``(..., K, *event_shape)`` instead of only inserting a size-1 component
    dimension: a component family that cannot broadcast a size-1 dimension against its K (e.g. a
    flow through Pyro's stock conditional transforms, which expand the context to z's shape)
    then works too. The expansion is a view, and the density is PyTorch's,
    log p(z) = logsumexp_k (log softmax(logits)_k + log p_k(z))."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:  # as in torch's own log_prob methods
            self._validate_sample(value)
        event_shape = self.event_shape
        components = self.mixture_distribution.logits.size(-1)
        z = value.unsqueeze(-1 - len(event_shape))
        z = z.expand(*z.shape[: -1 - len(event_shape)], components, *event_shape)
        log_weights = torch.log_softmax(self.mixture_distribution.logits, dim=-1)
        return torch.logsumexp(self.component_distribution.log_prob(z) + log_weights, dim=-1)


class VampPrior(nn.Module):
    """The VampPrior (Tomczak & Welling 2018, arXiv:1705.07120): p(z) = (1/K) sum_k q(z | u_k),
    the VAE's own guide evaluated at K learned pseudo-inputs u_k.

    The pseudo-inputs are an ``nn.Parameter`` of shape ``(K, *x_shape)``, initialized uniformly in
    [0, 1] like the data the encoder sees, and left unconstrained (the paper clips them to [0, 1]
    with a hardtanh, which stops the gradient of any pixel that leaves the range). They get
    gradients through the encoder, which thus learns from the prior term too, as in the paper.

    The default K = 50 is a tenth of the paper's 500 for MNIST: the bundled digits set has 1438
    training images of 10 classes, and every step runs the encoder on all K pseudo-inputs, so
    K = 50 adds about 40% to the encoder's work at batch size 128 where K = 500 would add 400%.

    The prior needs the encoder, which the VAE builds after its prior: the VAE calls
    :meth:`attach` with itself once its networks exist. The prior keeps the bound method
    ``vae.posterior_dist``, not the VAE as a submodule (that would be a module cycle, which
    breaks ``state_dict``, ``.to()`` and ``repr``). ``copy.deepcopy`` of the VAE rebinds it to
    the copy. The mixture components are whatever the guide family returns for the pseudo-inputs
    (batch ``(K,)``, event ``(z_dim,)``), so any guide whose q(z|x) can be a
    ``MixtureSameFamily`` component works, the diagonal Gaussian included.

    :param z_dim: the size of the code, supplied by the VAE.
    :param x_shape: the shape of one example, and of each pseudo-input; supplied by the VAE.
    :param components: K, the number of pseudo-inputs.
    """

    name = "vamp"
    description = "VampPrior: the guide's q(z|u) averaged over K learned pseudo-inputs u"

    def __init__(self, z_dim: int, x_shape: tuple[int, ...], components: int = 50):
        super().__init__()
        self.z_dim = z_dim
        self.x_shape = tuple(int(s) for s in x_shape)
        self.components = validation.count("components", components)
        check_numbers_fit(
            self.components * math.prod(self.x_shape),
            f"{{param}} = {self.components} pseudo-inputs of shape {self.x_shape}",
            "components",
        )
        self.pseudo_inputs = nn.Parameter(torch.rand(self.components, *self.x_shape))
        object.__setattr__(self, "_posterior_dist", None)

    def attach(self, vae: Any) -> None:
        """Use ``vae.posterior_dist`` (q(z|x) by the VAE's encoder and guide) for the components.

        :param vae: the VAE whose guide scores the pseudo-inputs; of this prior's ``x_shape`` and
            ``z_dim``.
        """
        if tuple(vae.x_shape) != self.x_shape or vae.z_dim != self.z_dim:
            raise ConfigError(
                f"this 'vamp' prior was made for x_shape {self.x_shape} and z_dim {self.z_dim}, "
                f"not the VAE's {tuple(vae.x_shape)} and {vae.z_dim}"
            )
        # Not a submodule: a plain attribute, invisible to state_dict(), parameters() and .to().
        object.__setattr__(self, "_posterior_dist", vae.posterior_dist)

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        """(1/K) sum_k q(z | u_k) for ``batch_size`` codes; the prior must be attached to a VAE
        (:meth:`attach`) first.

        :param batch_size: the number of codes, the batch shape of p(z).
        :param like: a tensor whose device and dtype p(z) is made with (the batch x).
        """
        posterior_dist: Callable[[torch.Tensor], dist.Distribution] | None = self._posterior_dist
        if posterior_dist is None:
            raise ConfigError(
                "the 'vamp' prior evaluates the VAE's guide at its pseudo-inputs, so it must be "
                "attached to a VAE first: VAE(..., prior='vamp') does it, or call "
                "prior.attach(vae)"
            )
        components = posterior_dist(self.pseudo_inputs)  # q(z | u_k): batch (K,)
        weights = dist.Categorical(logits=like.new_zeros(self.components))  # uniform 1/K
        return _BroadcastMixture(weights, components).expand((batch_size,))


class StandardLaplace(nn.Module):
    """p(z) = prod_i Laplace(z_i; 0, 1) = ``prod_i exp(-|z_i|) / 2``, fixed (a learned location and
    scale would add nothing the decoder's first layer cannot absorb).

    :param z_dim: the size of the code, supplied by the VAE.
    """

    name = "laplace"
    description = "Laplace(0, 1) per dimension: fixed, heavier tails than N(0, I)"

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        """Laplace(0, 1) per dimension for ``batch_size`` codes, on ``like``'s device and dtype.

        :param batch_size: the number of codes, the batch shape of p(z).
        :param like: a tensor whose device and dtype p(z) is made with (the batch x).
        """
        loc = like.new_zeros(batch_size, self.z_dim)
        return dist.Laplace(loc, torch.ones_like(loc)).to_event(1)


class StandardStudentT(nn.Module):
    """p(z) = prod_i StudentT(z_i; df, 0, 1), fixed location 0 and scale 1 (as for ``laplace``),
    with ``df`` degrees of freedom: heavy tails, N(0, I) as df grows.

    :param z_dim: the size of the code, supplied by the VAE.
    :param df: the degrees of freedom, positive; the larger, the lighter the tails.
    """

    name = "student-t"
    description = "Student-t(df, 0, 1) per dimension: fixed, heavy-tailed"

    def __init__(self, z_dim: int, df: float = 3.0):
        super().__init__()
        self.z_dim = z_dim
        self.df = validation.positive("df", df)

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        """StudentT(df, 0, 1) per dimension for ``batch_size`` codes, on ``like``'s device and
        dtype.

        :param batch_size: the number of codes, the batch shape of p(z).
        :param like: a tensor whose device and dtype p(z) is made with (the batch x).
        """
        loc = like.new_zeros(batch_size, self.z_dim)
        return dist.StudentT(torch.full_like(loc, self.df), loc, torch.ones_like(loc)).to_event(1)


class _AffineAutoregressive(T.AffineAutoregressive):
    """Pyro's affine autoregressive transform whose inverse keeps its input's dtype (Pyro 1.9's
    starts the inverse from zeros in the default dtype, which fails in a float64 model) and
    follows ``order``, the network's permutation as Python ints: indexing with the permutation
    tensor's elements would cost a GPU-to-host sync per dimension."""

    def __init__(self, autoregressive_nn: AutoRegressiveNN, order: list[int]):
        super().__init__(autoregressive_nn)
        self.order = order

    # torch's protocol for a Transform subclass: implement _call and/or _inverse.
    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = [y.new_zeros(y.shape[:-1])] * y.size(-1)
        for idx in self.order:  # one network pass per dimension: sampling only
            mean, log_scale = self.arn(torch.stack(x, dim=-1))
            log_scale = clamp_preserve_gradients(
                log_scale, min=self.log_scale_min_clip, max=self.log_scale_max_clip
            )
            x[idx] = (y[..., idx] - mean[..., idx]) * torch.exp(-log_scale[..., idx])
        # Pyro's log_abs_det_jacobian reads this private cache for the (x, y) just computed; no
        # public way to hand it over (tests/test_priors.py checks a stale one is never used).
        self._cached_log_scale = log_scale
        return torch.stack(x, dim=-1)


def _spline_params(spline: T.Spline) -> tuple[torch.Tensor, ...]:
    """The bin widths, heights, knot derivatives and lambdas of a rational-linear spline from its
    raw parameters: softmax, softmax, softplus and sigmoid, Pyro's own map (``Spline._params``,
    which is private)."""
    return (
        F.softmax(spline.unnormalized_widths, dim=-1),
        F.softmax(spline.unnormalized_heights, dim=-1),
        F.softplus(spline.unnormalized_derivatives),
        torch.sigmoid(spline.unnormalized_lambdas),
    )


def _maf_floats(z_dim: int, hidden: int) -> int:
    """The numbers in one MAF step's network (an estimate, exact for Pyro 1.9): weights and Pyro's
    masks, z_dim x hidden and hidden x 2 z_dim each, the biases, and the int64 permutation."""
    return 2 * (z_dim * hidden + hidden * 2 * z_dim) + hidden + 4 * z_dim


class FlowPrior(nn.Module):
    """p(z): N(0, I) pushed through ``flow_steps`` learned invertible transforms.

    For z_dim >= 2 each step is a masked autoregressive flow step (MAF, Papamakarios et al. 2017,
    arXiv:1705.07057): Pyro's ``AffineAutoregressive`` A, u = exp(s(z)) * z + m(z) with s_i and
    m_i computed by one masked network from z_<i, used as the inverse of the flow step. In a VAE
    the prior is scored at codes z drawn from the guide, so log p(z) needs the map from z back to
    the base noise, log p(z) = log N(A(z); 0, I) + sum_i s_i(z) per step: A's cheap direction,
    one network pass per step, whatever z is. Sampling (``vae.sample``) takes the sequential
    direction instead, z_dim passes per step. The steps alternate the natural and the reversed
    order of the dimensions; each network has one hidden layer of max(16, 3 z_dim + 1) units.

    For z_dim = 1 an autoregressive network has nothing to condition on (the step would be an
    affine map, a mere learned Gaussian), so each step is instead Pyro's elementwise rational-
    linear ``Spline`` (Dolatabadi et al. 2020), whose inverse is as cheap as its forward.

    The networks and spline parameters are the submodules ``steps``; the transform objects are
    made afresh by each call, so that Pyro's one-entry transform cache never outlives a
    distribution (a persistent cache would return a stale value for a tensor scored again after
    an optimizer step).

    :param z_dim: the size of the code, supplied by the VAE.
    :param flow_steps: the number of learned transforms.
    """

    name = "flow"
    description = "N(0, I) through a learned normalizing flow (MAF; splines if z-dim is 1)"

    def __init__(self, z_dim: int, flow_steps: int = 2):
        super().__init__()
        self.z_dim = z_dim
        self.flow_steps = validation.count("flow_steps", flow_steps)
        hidden = max(16, 3 * z_dim + 1)
        check_numbers_fit(
            self.flow_steps * (_SPLINE_FLOATS if z_dim == 1 else _maf_floats(z_dim, hidden)),
            f"{{param}} = {self.flow_steps} flow steps at {{z_dim}} = {z_dim}",
            "flow_steps",
        )
        # the variable orders of the even and the odd steps, as Python ints for the inverse
        self.orders = (list(range(z_dim)), list(range(z_dim))[::-1])
        if z_dim == 1:
            self.steps = nn.ModuleList(T.Spline(1) for _ in range(self.flow_steps))
        else:
            self.steps = nn.ModuleList(
                AutoRegressiveNN(z_dim, [hidden], permutation=torch.tensor(self.orders[i % 2]))
                for i in range(self.flow_steps)
            )

    def transforms(self) -> list[T.Transform]:
        """The flow's transforms, base noise to z, in the order they are applied."""
        if self.z_dim == 1:
            return [
                ConditionedSpline(_spline_params(s), bound=s.bound, order=s.order)
                for s in self.steps
            ]
        return [
            _AffineAutoregressive(arn, self.orders[i % 2]).inv for i, arn in enumerate(self.steps)
        ]

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        """N(0, I) for ``batch_size`` codes pushed through the flow's steps (:meth:`transforms`).

        :param batch_size: the number of codes, the batch shape of p(z).
        :param like: a tensor whose device and dtype p(z) is made with (the batch x).
        """
        loc = like.new_zeros(batch_size, self.z_dim)
        base = dist.Normal(loc, torch.ones_like(loc)).to_event(1)
        return dist.TransformedDistribution(base, self.transforms())


#: the priors by name, as ``VAE(prior=...)`` and ``--prior`` take them
PRIORS: dict[str, type[nn.Module]] = {
    StandardNormal.name: StandardNormal,
    LearnedNormal.name: LearnedNormal,
    MixtureOfGaussians.name: MixtureOfGaussians,
    VampPrior.name: VampPrior,
    StandardLaplace.name: StandardLaplace,
    StandardStudentT.name: StandardStudentT,
    FlowPrior.name: FlowPrior,
}

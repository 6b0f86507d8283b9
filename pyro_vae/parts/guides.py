"""Guide families q(z|x): how the encoder's outputs become a reparameterized distribution over z.

A family is a small ``nn.Module`` with class attributes ``name`` and ``description`` (one line, for
``pyro-vae list``), built as ``Family(z_dim, **options)`` with every option defaulted. It says how
many numbers per input it needs from the encoder (``encoder_outputs``) and turns the encoder's
``(B, encoder_outputs)`` output ``h`` into

- ``params(h)``: a tuple of tensors (what ``VAE.encode`` returns) whose first element is a
  representative code of shape ``(B, z_dim)``, the one reconstructions decode (the mean for the
  Gaussian families), followed by the family's own parameters;
- ``forward(h)``: a distribution with batch shape ``(B,)`` and event shape ``(z_dim,)`` whose
  ``rsample`` is differentiable in those parameters, so that gradients flow through the sampled
  z. Pyro's vectorized particles call ``.expand((S, B)).rsample()`` on it, giving ``(S, B,
  z_dim)``, and then ``log_prob`` of that very z, giving ``(S, B)``.

Adding a family is one class and one line in :data:`GUIDES`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import AffineAutoregressive, ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from pyro_vae import validation
from pyro_vae.device import check_numbers_fit

# The smallest posterior scale: keeps log q(z|x) finite when softplus underflows in float32.
MIN_SCALE = 1e-5


def normal_log_density(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log N(z; loc, scale^2), elementwise, written out as ``torch.distributions.Normal`` does.

    :param z: the points.
    :param loc: the means, broadcasting against ``z``.
    :param scale: the standard deviations, positive, broadcasting against ``z``.
    """
    var = scale**2
    return -((z - loc) ** 2) / (2 * var) - scale.log() - math.log(math.sqrt(2 * math.pi))


class Draw(NamedTuple):
    """Reparameterized draws from q(z|x), as :meth:`GuideFamily.draw` gives them.

    :param z: the draws, ``(num_particles, B, z_dim)``.
    :param q: q(z|x), batch ``(B,)``.
    :param log_q: ``() -> log q(z|x)`` at the draws, ``(num_particles, B)``: computed when called,
        so that the hand-written ELBO scores it where Pyro does, after the model.
    """

    z: torch.Tensor
    q: dist.Distribution
    log_q: Callable[[], torch.Tensor]


class GuideFamily(nn.Module):
    """A family of guides q(z|x): ``forward(h)`` is the distribution for the encoder's output
    ``h``, ``params(h)`` its parameters (the representative code first); :meth:`draw` the
    hand-written ELBO's reparameterized draws."""

    def draw(self, h: torch.Tensor, num_particles: int) -> Draw:
        """``num_particles`` reparameterized draws of z for each row of the encoder's output ``h``:
        by default the distribution's own ``rsample`` and ``log_prob``.

        :param h: the encoder's output, ``(B, encoder_outputs)``.
        :param num_particles: the draws per example.
        """
        q = self(h)
        z = q.expand((num_particles, *q.batch_shape)).rsample()
        return Draw(z, q, lambda: q.log_prob(z))


class DiagonalNormal(GuideFamily):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)), sigma = softplus(.) + MIN_SCALE.

    Sampling is z = mu + sigma * eps with eps ~ N(0, I): the reparameterization trick.

    :param z_dim: the size of the code, supplied by the VAE.
    """

    name = "diagonal"
    description = "diagonal Gaussian N(mu(x), diag sigma(x)^2) (default)"

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.encoder_outputs = 2 * z_dim

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)``, each ``(B, z_dim)``, from the encoder's output ``h``.

        :param h: the encoder's output, ``(B, encoder_outputs)``.
        """
        loc, raw_scale = h.split(self.z_dim, dim=-1)
        return loc, F.softplus(raw_scale) + MIN_SCALE

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        """q(z|x) = N(mu, diag sigma^2) from the encoder's output ``h``: batch ``(B,)``, event
        ``(z_dim,)``.

        :param h: the encoder's output, ``(B, encoder_outputs)``.
        """
        return dist.Normal(*self.params(h)).to_event(1)

    def draw(self, h: torch.Tensor, num_particles: int) -> Draw:
        """z = mu + sigma * eps, eps ~ N(0, I) drawn with ``torch.randn`` as Pyro draws it, and
        log q(z|x) written out (:func:`normal_log_density`).

        :param h: the encoder's output, ``(B, encoder_outputs)``.
        :param num_particles: the draws per example.
        """
        loc, scale = self.params(h)
        eps = torch.randn(num_particles, *loc.shape, dtype=loc.dtype, device=loc.device)
        z = loc + eps * scale  # the reparameterization trick
        q = dist.Normal(loc, scale).to_event(1)
        return Draw(z, q, lambda: normal_log_density(z, loc, scale).sum(-1))


class FullRankNormal(GuideFamily):
    """q(z|x) = N(mu(x), L(x) L(x)^T) with L lower-triangular: any correlation between the z's.

    The encoder gives mu (``z_dim`` numbers) and the ``z_dim (z_dim + 1) / 2`` entries of L on and
    below the diagonal, row by row; the diagonal is made positive by softplus + MIN_SCALE, so L
    is a Cholesky factor. Sampling is z = mu + L eps with eps ~ N(0, I).

    :param z_dim: the size of the code, supplied by the VAE.
    """

    name = "full-rank"
    description = "full-covariance Gaussian N(mu(x), L(x) L(x)^T), L lower-triangular"

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.encoder_outputs = z_dim + z_dim * (z_dim + 1) // 2
        rows, cols = torch.tril_indices(z_dim, z_dim)
        # Where each of the encoder's tril entries goes (buffers follow .to(device)).
        self.register_buffer("tril_rows", rows, persistent=False)
        self.register_buffer("tril_cols", cols, persistent=False)

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, L)``, shaped ``(B, z_dim)`` and ``(B, z_dim, z_dim)``, from the encoder's
        output ``h``.

        :param h: the encoder's output, ``(B, encoder_outputs)``.
        """
        loc, raw = h.split([self.z_dim, self.encoder_outputs - self.z_dim], dim=-1)
        raw_tril = raw.new_zeros(*raw.shape[:-1], self.z_dim, self.z_dim)
        raw_tril[..., self.tril_rows, self.tril_cols] = raw
        diagonal = F.softplus(raw_tril.diagonal(dim1=-2, dim2=-1)) + MIN_SCALE
        return loc, raw_tril.tril(-1) + torch.diag_embed(diagonal)

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        """q(z|x) = N(mu, L L^T) from the encoder's output ``h``: batch ``(B,)``, event
        ``(z_dim,)``.

        :param h: the encoder's output, ``(B, encoder_outputs)``.
        """
        loc, scale_tril = self.params(h)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)


class _IAFStep(AffineAutoregressive):
    """One IAF step conditioned on a context ``(*batch, context_dim)``: Pyro's affine
    autoregressive transform with ``stable=True``, with the input and the context broadcast
    against each other (so that ``log_prob`` broadcasts a z such as ``(N, 1, z_dim)`` against the
    batch, as any distribution's does), and a sequential inverse that works in any dtype (Pyro's
    starts from zeros of the default dtype) and follows ``order``, the network's permutation as
    Python ints (the permutation tensor's elements as indices cost a GPU sync each)."""

    def __init__(
        self,
        conditional_nn: ConditionalAutoRegressiveNN,
        context: torch.Tensor,
        order: list[int],
        **kw,
    ):
        def arn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            shape = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
            return conditional_nn(x.expand(*shape, x.size(-1)), context=context)

        super().__init__(arn, **kw)
        # Pyro's stable=True binds its own inverse on the instance, which would hide _inverse.
        vars(self).pop("_inverse", None)
        self.order = order
        self.context_batch_shape = context.shape[:-1]

    # torch's protocol for a Transform subclass: implement _call and/or _inverse.
    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(y.shape[:-1], self.context_batch_shape)
        y = y.expand(*shape, y.size(-1))
        x = [y.new_zeros(shape)] * y.size(-1)
        for idx in self.order:
            mean, logit_scale = self.arn(torch.stack(x, dim=-1))
            inverse_scale = 1 + torch.exp(-logit_scale[..., idx] - self.sigmoid_bias)
            x[idx] = inverse_scale * y[..., idx] + (1 - inverse_scale) * mean[..., idx]
        # Every position's scale depends only on earlier positions: all known by the last pass.
        # Pyro's log_abs_det_jacobian reads this private cache for the (x, y) just computed; no
        # public way to hand it over (tests/test_guides.py checks a stale one is never used).
        self._cached_log_scale = self.logsigmoid(logit_scale + self.sigmoid_bias)
        return torch.stack(x, dim=-1)


class _ConditionalIAFStep(ConditionalAffineAutoregressive):
    """One amortized IAF step: ``condition(h)`` gives the transform for the context ``h``;
    ``order`` is its network's permutation as Python ints."""

    def __init__(self, autoregressive_nn: ConditionalAutoRegressiveNN, order: list[int], **kw):
        super().__init__(autoregressive_nn, **kw)
        self.order = order

    def condition(self, context: torch.Tensor) -> _IAFStep:
        return _IAFStep(self.nn, context, self.order, **self.kwargs)


def _iaf_floats(z_dim: int, context_dim: int) -> int:
    """The numbers in one IAF step's network (an estimate, exact for Pyro 1.9): weights and
    Pyro's masks, (z_dim + context_dim) x 10 z_dim and 10 z_dim x 2 z_dim each, the biases, and
    the int64 permutation."""
    hidden = 10 * z_dim
    return 2 * ((z_dim + context_dim) * hidden + hidden * 2 * z_dim) + hidden + 4 * z_dim


class InverseAutoregressiveFlow(GuideFamily):
    """A diagonal Gaussian pushed through ``flow_steps`` inverse autoregressive flow steps, each
    conditioned on a context h(x) from the encoder: Algorithm 1 of Kingma et al., "Improving
    Variational Inference with Inverse Autoregressive Flow" (arXiv:1606.04934).

    The encoder gives mu, the raw sigma and a context h of ``context_dim`` numbers. Then::

        z_0 = mu + sigma * eps,                      eps ~ N(0, I)
        [m_t, s_t] = AutoregressiveNN_t(z_{t-1}, h)   (m_t[i], s_t[i] see only z_{t-1}[<i], h)
        sigma_t = sigmoid(s_t + 2)
        z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t
        log q(z_T | x) = log N(z_0; mu, sigma^2) - sum_t sum_i log sigma_t[i]

    Each step is Pyro's ``ConditionalAffineAutoregressive`` with ``stable=True`` (the gated
    update above, with the paper's +2 bias) around a ``ConditionalAutoRegressiveNN`` with one
    hidden layer of ``10 * z_dim`` units; the variable order is reversed after every step. The
    networks are submodules, so they are in ``vae.parameters()`` and the ``state_dict``.

    Scoring a z that the distribution just sampled reads the log-Jacobian from the transforms'
    cache (one pass per step); scoring any other z inverts each step sequentially (``z_dim``
    passes per step). With ``z_dim = 1`` each step is an affine map of z whose shift and scale
    depend on h only, so q stays Gaussian but its parameters get ``flow_steps`` more layers.

    :param z_dim: the size of the code, supplied by the VAE.
    :param flow_steps: the number of IAF steps.
    :param context_dim: the size of the context h(x) the encoder gives each step.
    """

    name = "iaf"
    description = "diagonal Gaussian then inverse autoregressive flow steps on h(x) (Kingma 2016)"

    def __init__(self, z_dim: int, flow_steps: int = 2, context_dim: int = 16):
        super().__init__()
        self.z_dim = z_dim
        self.flow_steps = validation.count("flow_steps", flow_steps)
        self.context_dim = validation.size("context_dim", context_dim)
        check_numbers_fit(
            self.flow_steps * _iaf_floats(z_dim, self.context_dim),
            f"{{param}} = {self.flow_steps} IAF steps at {{z_dim}} = {z_dim} "
            f"and context_dim = {self.context_dim}",
            "flow_steps",
        )
        self.encoder_outputs = 2 * z_dim + self.context_dim
        orders = (list(range(z_dim)), list(range(z_dim))[::-1])
        with warnings.catch_warnings():
            # Pyro suggests a plain affine map for z_dim = 1; conditioned on h, this is one.
            warnings.filterwarnings("ignore", "ConditionalAutoRegressiveNN input_dim = 1")
            self.steps = nn.ModuleList(
                _ConditionalIAFStep(
                    ConditionalAutoRegressiveNN(
                        z_dim,
                        self.context_dim,
                        [10 * z_dim],
                        permutation=torch.tensor(orders[t % 2]),
                    ),
                    orders[t % 2],
                    stable=True,
                )
                for t in range(self.flow_steps)
            )

    def base_params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu, sigma, context)`` of the base Gaussian and the flow, from the encoder output.

        :param h: the encoder's output, ``(B, encoder_outputs)``.
        """
        loc, raw_scale, context = h.split([self.z_dim, self.z_dim, self.context_dim], dim=-1)
        return loc, F.softplus(raw_scale) + MIN_SCALE, context

    def transforms(self, context: torch.Tensor) -> list[_IAFStep]:
        """The flow's steps conditioned on ``context`` ``(B, context_dim)``: they broadcast it
        against any leading sample dims of their input, e.g. ``(S, B, z_dim)``.

        :param context: the context h(x), ``(B, context_dim)``.
        """
        return [step.condition(context) for step in self.steps]

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(code, mu, sigma, context)``: the code is mu pushed through the flow.

        :param h: the encoder's output, ``(B, encoder_outputs)``.
        """
        loc, scale, context = self.base_params(h)
        code = loc
        for transform in self.transforms(context):
            code = transform(code)
        return code, loc, scale, context

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        """q(z|x): N(mu, diag sigma^2) pushed through the flow's steps conditioned on the context,
        from the encoder's output ``h``; batch ``(B,)``, event ``(z_dim,)``.

        :param h: the encoder's output, ``(B, encoder_outputs)``.
        """
        loc, scale, context = self.base_params(h)
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, self.transforms(context))


#: the guide families by name, as ``VAE(guide=...)`` and ``--guide`` take them
GUIDES: dict[str, type[GuideFamily]] = {
    DiagonalNormal.name: DiagonalNormal,
    FullRankNormal.name: FullRankNormal,
    InverseAutoregressiveFlow.name: InverseAutoregressiveFlow,
}

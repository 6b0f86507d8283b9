"""A VAE with L stochastic layers, written as a Pyro user writes their own model: the architecture
of Burda, Grosse & Salakhutdinov (2015), "Importance Weighted Autoencoders" (arXiv:1509.00519).

The generative story, for each of the B examples in a batch::

    z_L ~ N(0, I)
    z_l ~ N(mu_l(z_{l+1}), diag sigma_l(z_{l+1})^2)      for l = L-1, ..., 1
    x   ~ Bernoulli(sigmoid(f(z_1)))                     # independent pixels

and the guide, bottom-up, each layer reparameterized::

    z_1 ~ q(z_1 | x) = N(m_1(x), diag s_1(x)^2)
    z_l ~ q(z_l | z_{l-1}) = N(m_l(z_{l-1}), diag s_l(z_{l-1})^2)   for l = 2, ..., L

Every network is an MLP of Linear + tanh layers, as Burda's; a Gaussian layer's scale is
softplus(r) + 1e-5. With the defaults it is Burda's two-layer model x-200-200-100-100-100-50;
``z_dims=(50,), hidden_dims=((200, 200),)`` is their one-layer VAE x-200-200-50.
:meth:`HVAE.manual_elbo` and :meth:`HVAE.manual_iwae` are the hand-written twins of Pyro's
``Trace_ELBO`` and ``RenyiELBO(alpha=0)`` (the IWAE bound) on these programs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import validation
from pyro_vae.errors import ConfigError
from pyro_vae.models.importing import ProgramSource
from pyro_vae.models.user import UserProgram, make_program
from pyro_vae.parts.guides import MIN_SCALE  # the diagonal guide's floor of the scale


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers between ``sizes``, tanh after each but the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(n_in, n_out)] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def _gaussian(net: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)`` from ``net(h)``'s two halves: loc, and softplus(r) + MIN_SCALE."""
    loc, raw = net(h).chunk(2, dim=-1)
    return loc, F.softplus(raw) + MIN_SCALE


class HVAE(nn.Module):
    """A VAE with ``len(z_dims)`` stochastic layers over examples of shape ``x_shape``.

    :param x_shape: per-example shape, e.g. ``(1, 28, 28)``; the pixels are Bernoulli.
    :param z_dims: the size of each stochastic layer, bottom (z1, next to x) first.
    :param hidden_dims: for each stochastic layer, the widths of the deterministic layers below it
        in the guide (x or z_{l-1} -> ... -> z_l); the model mirrors them (z_l -> ... -> below).

    The sample sites are ``"z1"``, ..., ``"zL"`` and ``"x"``, inside ``pyro.plate("data")`` (dim
    -1); the networks take extra leading dimensions, so Pyro may vectorize particles at dim -2.
    Both programs register every parameter with ``pyro.module("hvae", self)``.
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dims: Sequence[int] = (100, 50),
        hidden_dims: Sequence[Sequence[int]] = ((200, 200), (100, 100)),
    ):
        super().__init__()
        self.x_shape = validation.sizes("x_shape", x_shape)
        self.z_dims = validation.sizes("z_dims", z_dims)
        if isinstance(hidden_dims, str | bytes) or not isinstance(hidden_dims, Sequence):
            raise ConfigError(
                f"must be a list of lists of sizes, got {hidden_dims!r}", "hidden_dims"
            )
        self.hidden_dims = tuple(validation.sizes("hidden_dims", h) for h in hidden_dims)
        if len(self.z_dims) != len(self.hidden_dims):
            raise ConfigError(
                "{z_dims} and {hidden_dims} need one entry per stochastic layer each, got "
                f"{len(self.z_dims)} and {len(self.hidden_dims)}"
            )
        below = (math.prod(self.x_shape), *self.z_dims[:-1])  # what each layer's guide reads
        # encoders[i]: q(z_{i+1} | below[i]); decoders[0]: x's logits, decoders[i]: p(z_i | z_{i+1})
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        for i, (n, h, d) in enumerate(zip(below, self.hidden_dims, self.z_dims, strict=True)):
            self.encoders.append(_mlp((n, *h, 2 * d)))
            self.decoders.append(_mlp((d, *h[::-1], n if i == 0 else 2 * n)))

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments as JSON-able lists: ``HVAE(**config)`` rebuilds it."""
        return {
            "x_shape": list(self.x_shape),
            "z_dims": list(self.z_dims),
            "hidden_dims": [list(h) for h in self.hidden_dims],
        }

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``(B, D)`` in the parameters' dtype."""
        return x.reshape(x.shape[0], -1).to(self.decoders[0][0].weight.dtype)

    def model(self, x: torch.Tensor) -> None:
        """p(x, z) = p(z_L) prod_l p(z_l | z_{l+1}) p(x | z_1) for a batch ``x``.

        :param x: the examples, ``(B, *x_shape)``, floats in [0, 1] (0 or 1 for the Bernoulli).
        """
        pyro.module("hvae", self)
        x = self._flat(x)
        top = len(self.z_dims)
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(x.shape[0], self.z_dims[-1])
            z = pyro.sample(f"z{top}", dist.Normal(zeros, 1.0 + zeros).to_event(1))
            for layer in range(top - 1, 0, -1):
                loc, scale = _gaussian(self.decoders[layer], z)
                z = pyro.sample(f"z{layer}", dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoders[0](z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) = q(z_1 | x) prod_{l>1} q(z_l | z_{l-1}), amortized and reparameterized.

        :param x: the examples, ``(B, *x_shape)``, floats in [0, 1].
        """
        pyro.module("hvae", self)
        h = self._flat(x)
        with pyro.plate("data", h.shape[0]):
            for layer, encoder in enumerate(self.encoders, start=1):
                loc, scale = _gaussian(encoder, h)
                h = pyro.sample(f"z{layer}", dist.Normal(loc, scale).to_event(1))

    def _log_terms(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x | z_1) and sum_l log p(z_l | z_{l+1}) - log q(z_l | z_{l-1}), each ``(k, B)``,
        at k draws of the guide per example, drawn as Pyro's vectorized particles are."""
        x = self._flat(x)
        h, zs, log_q = x, [], 0.0
        for encoder in self.encoders:  # z1 first; each eps (k, B, d) from torch's global stream
            loc, scale = _gaussian(encoder, h)
            eps = torch.empty((k, x.shape[0], loc.shape[-1]), dtype=loc.dtype, device=loc.device)
            h = loc + eps.normal_() * scale
            log_q = log_q + torch.distributions.Normal(loc, scale).log_prob(h).sum(-1)
            zs.append(h)
        top = zs[-1]
        log_p = torch.distributions.Normal(torch.zeros_like(top), 1.0).log_prob(top).sum(-1)
        for layer in range(len(zs) - 1, 0, -1):  # p(z_layer | z_{layer+1}), zs 0-indexed
            loc, scale = _gaussian(self.decoders[layer], zs[layer])
            log_p = log_p + torch.distributions.Normal(loc, scale).log_prob(zs[layer - 1]).sum(-1)
        logits = self.decoders[0](zs[0])
        log_px = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        return log_px, log_p - log_q

    def manual_elbo(
        self, x: torch.Tensor, num_particles: int = 1, kl_weight: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        r"""The ELBO of the batch, summed over examples and averaged over particles, by hand:

        ``(1/K) sum_k sum_b [log p(x_b | z_1^k) + w (sum_l log p(z_l^k | z_{l+1}^k)
        - sum_l log q(z_l^k | z_{l-1}^k))]``, with z_0 = x_b, p(z_L | z_{L+1}) = N(0, I), and each
        z_l^k = m_l + s_l * eps drawn from q as Pyro's ``Trace_ELBO(num_particles=K,
        vectorize_particles=True, max_plate_nesting=1)`` draws it (z1 first, eps ``(K, B, d)``),
        so that under one seed ``-manual_elbo`` equals its ``differentiable_loss``; w = 1 is the
        ELBO, another w the objective ``E_q[log p(x|z)] - w KL(q(z|x) || p(z))``.

        :param x: the examples, ``(B, *x_shape)``, floats in [0, 1].
        :param num_particles: K, the draws per example.
        :param kl_weight: w, the weight of the latent terms: a number or 0-dim tensor.
        """
        log_px, log_ratio = self._log_terms(x, validation.count("num_particles", num_particles))
        return (log_px + kl_weight * log_ratio).sum() / num_particles

    def manual_iwae(self, x: torch.Tensor, num_particles: int) -> torch.Tensor:
        r"""The IWAE bound of each example, ``(B,)``, by hand, at the draws of :meth:`manual_elbo`:

        ``log (1/K) sum_k p(x, z^k) / q(z^k | x)``, a bound on log p(x) that tightens as K grows
        (Burda et al. 2015); ``-manual_iwae(x, K).sum()`` equals Pyro's ``RenyiELBO(alpha=0,
        num_particles=K, vectorize_particles=True, max_plate_nesting=1)`` loss under one seed.

        :param x: the examples, ``(B, *x_shape)``, floats in [0, 1].
        :param num_particles: K, the importance samples per example.
        """
        log_px, log_ratio = self._log_terms(x, validation.count("num_particles", num_particles))
        return torch.logsumexp(log_px + log_ratio, dim=0) - math.log(num_particles)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` images ``(n, *x_shape)`` from the model, drawn top-down: z_L ~ N(0, I), each
        z_l ~ p(z_l | z_{l+1}), then E[x | z_1] = sigmoid(logits) or a draw x ~ p(x | z_1).

        :param n: the number of images.
        :param mean: ``True``: each image is E[x | z_1]; ``False``: a Bernoulli draw.
        """
        weight = self.decoders[0][0].weight
        z = torch.randn(n, self.z_dims[-1], dtype=weight.dtype, device=weight.device)
        for layer in range(len(self.z_dims) - 1, 0, -1):
            loc, scale = _gaussian(self.decoders[layer], z)
            z = loc + scale * torch.randn_like(loc)
        probs = torch.sigmoid(self.decoders[0](z))
        return (probs if mean else torch.bernoulli(probs)).reshape(n, *self.x_shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z_1] at z_1 = the loc of q(z_1 | x): each input's reconstruction, shaped like x.

        :param x: the examples, ``(B, *x_shape)``, floats in [0, 1].
        """
        return torch.sigmoid(self.decoders[0](self.encode(x)[0])).reshape(x.shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z_1 | x), each ``(B, z_dims[0])``: the first layer's code.

        :param x: the examples, ``(B, *x_shape)``, floats in [0, 1].
        """
        return _gaussian(self.encoders[0], self._flat(x))


class HVAEProgram(UserProgram):
    """:class:`HVAE` as the kind ``hvae`` of :data:`~pyro_vae.models.MODELS`: the program as any
    user's (:class:`~pyro_vae.models.user.UserProgram`), built from ``program_options``
    (``pyro-vae train --model hvae --program-options '{"z_dims": [50], "hidden_dims": [[200,
    200]]}'`` for one stochastic layer).

    :param program: the :class:`HVAE`.
    :param x_shape: the shape of one example.
    """

    name = "hvae"
    description = "two stochastic layers, Burda et al. (2015): your own program's tooling"
    model_settings = ("program_options",)

    def __init__(self, program: HVAE, x_shape: Sequence[int]):
        super().__init__(program, x_shape, name=self.name)

    @classmethod
    def build(
        cls, x_shape: Sequence[int], num_classes: int, program_options: dict[str, Any] | None = None
    ) -> UserProgram:
        """The HVAE of ``program_options`` (:class:`HVAE`'s keyword arguments) for examples of
        shape ``x_shape``.

        :param x_shape: the shape of one example.
        :param num_classes: unused: it takes no labels.
        :param program_options: :class:`HVAE`'s ``z_dims`` and ``hidden_dims``.
        """
        options = dict(program_options or {})
        return make_program(ProgramSource(HVAE, None), options, x_shape, kind=cls)

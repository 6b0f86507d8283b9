"""The VAE as a Pyro program: a generative model p(x|z) p(z) and an amortized guide q(z|x).

The generative story, for each of the B examples in a batch::

    z ~ p(z)                      # the prior, e.g. N(0, I)
    x ~ p(x | decoder(z))         # the likelihood, e.g. independent Bernoulli pixels

and the guide, which proposes a code for each observed x::

    z ~ q(z | encoder(x))         # e.g. N(mu(x), diag sigma(x)^2), reparameterized

Training maximizes the evidence lower bound
``ELBO(x) = E_q[log p(x|z) + log p(z) - log q(z|x)] <= log p(x)``, which ``pyro.infer.Trace_ELBO``
estimates by running the guide, replaying its z in the model, and differencing the log densities.

Both take a ``kl_weight`` w, the beta of Higgins et al. (2017) or a warm-up's weight (Bowman et al.
2016): the site z is scaled by w in model and guide (``pyro.poutine.scale``), so the objective
becomes ``E_q[log p(x|z)] - w * KL(q(z|x) || p(z))``; w = 1 is the ELBO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_vae import validation
from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import (
    OBJECTIVES,
    closed_form_kl,
    iwae_chunk,
    iwae_chunk_size,
    vae_elbo_terms,
)
from pyro_vae.infer.elbo_check import ElboCheck, check_elbo
from pyro_vae.models.program import Program
from pyro_vae.models.user import user_objectives
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.networks import activation_numbers, make_nets
from pyro_vae.parts.priors import PRIORS
from pyro_vae.parts.registry import build, name_of

#: the methods a subclass that rewrites the programs takes from the protocol's defaults
TRACED = ("elbo_terms", "iwae_chunk", "iwae_chunk_size", "latent_dists", "check_closed_form_kl",
          "check_elbo")  # fmt: skip


class VAE(Program):
    """A variational autoencoder over examples of shape ``x_shape``.

    :param x_shape: per-example shape, ``(C, H, W)`` for images or ``(D,)`` for flat vectors.
    :param z_dim: size of the latent code z.
    :param hidden_dims: layer widths (``mlp``) or channel counts (``conv``, ``resnet``), encoder
        order; the decoder mirrors them.
    :param encoder: ``"mlp"``, ``"conv"`` or ``"resnet"`` (:data:`pyro_vae.parts.networks.NETS`):
        the family of both networks.
    :param prior: a name from :data:`pyro_vae.parts.priors.PRIORS` or a prior object.
    :param likelihood: a name from :data:`pyro_vae.parts.likelihoods.LIKELIHOODS` or an object.
    :param guide: a name from :data:`pyro_vae.parts.guides.GUIDES` or a guide-family object.
    :param prior_options: keyword options of a prior given by name, e.g. ``{"components": 10}``.
    :param likelihood_options: keyword options of a likelihood given by name, e.g.
        ``{"scale": 0.1}``.
    :param guide_options: keyword options of a guide given by name, e.g. ``{"flow_steps": 4}``.

    The model and guide use the sample sites ``"z"`` and ``"x"`` inside ``pyro.plate("data")``.
    The guide registers every parameter of the VAE, the model's included, with
    ``pyro.module("vae", self)``, which is all Pyro's ``SVI`` needs to find them: the textbook
    ``SVI(vae.model, vae.guide, pyro.optim.Adam(...), Trace_ELBO())`` loop trains it (call
    ``pyro.clear_param_store()`` before each new VAE there).
    :func:`pyro_vae.train` instead optimizes ``vae.parameters()`` directly
    and never reads the param store, so any number of VAEs can be trained in one process.
    """

    name = "vae"
    description = "p(x|z) p(z) and q(z|x): the VAE (default)"
    objectives = OBJECTIVES
    model_settings = ("z_dim", "hidden_dims", "encoder", "prior", "likelihood", "guide",
                      "prior_options", "likelihood_options", "guide_options")  # fmt: skip
    num_classes = 0  # the label dimensions its networks take besides x or z: none
    #: whether the hand-written maths (the twins, the IWAE chunks, the ELBO's terms, q and p of
    #: z) compute this class's programs: false for a subclass that rewrites ``model`` or
    #: ``guide``, whose numbers then come from its traces, as any program's
    hand_written: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        rewritten = "model" in cls.__dict__ or "guide" in cls.__dict__
        if rewritten and "hand_written" not in cls.__dict__:
            cls.hand_written = False
            cls.objectives = user_objectives(elbo_twin=False, iwae_twin=False)
            for method in TRACED:
                if method not in cls.__dict__:  # the protocol's default, from the traces
                    setattr(cls, method, getattr(Program, method))

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dim: int = 16,
        hidden_dims: Sequence[int] = (400,),
        encoder: str = "mlp",
        prior: Any = "standard-normal",
        likelihood: Any = "bernoulli",
        guide: Any = "diagonal",
        prior_options: dict[str, Any] | None = None,
        likelihood_options: dict[str, Any] | None = None,
        guide_options: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.x_shape = validation.sizes("x_shape", x_shape)
        self.z_dim = validation.size("z_dim", z_dim)
        self.hidden_dims = validation.sizes("hidden_dims", hidden_dims)
        self.encoder_kind = encoder
        self.options = {
            "prior_options": dict(prior_options or {}),
            "likelihood_options": dict(likelihood_options or {}),
            "guide_options": dict(guide_options or {}),
        }
        context = {"z_dim": self.z_dim, "x_shape": self.x_shape}
        self.prior = build(PRIORS, prior, "prior", context, prior_options)
        self.likelihood = build(LIKELIHOODS, likelihood, "likelihood", context, likelihood_options)
        self.posterior = build(GUIDES, guide, "guide", context, guide_options)
        self.encoder, self.decoder = make_nets(
            encoder,
            self.x_shape,
            self.z_dim,
            self.hidden_dims,
            self.posterior.encoder_outputs,
            self.likelihood.params_per_pixel,
            self.num_classes,
        )
        self._attach_prior()

    def _attach_prior(self) -> None:
        # A prior built from the guide itself (the VampPrior) is handed this VAE once.
        if hasattr(self.prior, "attach"):
            self.prior.attach(self)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments, with parts by name: enough to rebuild this VAE."""
        return {
            "x_shape": list(self.x_shape),
            "z_dim": self.z_dim,
            "hidden_dims": list(self.hidden_dims),
            "encoder": self.encoder_kind,
            "prior": name_of(self.prior),
            "likelihood": name_of(self.likelihood),
            "guide": name_of(self.posterior),
            **self.options,
        }

    def model(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> None:
        """p(x, z) = p(z) p(x|z) for a batch ``x`` of shape ``(B, *x_shape)``; log p(z) weighted
        by ``kl_weight`` (a positive number or 0-dim tensor).

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        :param kl_weight: w, the weight of the KL term: a positive number or a 0-dim tensor; 1 for
            the ELBO.
        """
        x = self.inputs(x)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood_dist(z), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float | torch.Tensor = 1.0) -> None:
        """q(z|x), amortized: one encoder pass gives the posterior of every example; log q(z|x)
        weighted by ``kl_weight``, as log p(z) is in the model.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        :param kl_weight: w, the weight of the KL term: a positive number or a 0-dim tensor; 1 for
            the ELBO.
        """
        pyro.module("vae", self)  # every parameter, the model's too: what SVI optimizes
        x = self.inputs(x)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_weight):
            pyro.sample("z", self.posterior_dist(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The guide's parameters for ``x``: ``(loc, scale)`` of q(z|x), each ``(B, z_dim)``, for
        the diagonal family (other families: see their ``params``).

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        """
        return self.posterior.params(self.encoder(self.inputs(x)))

    def posterior_dist(self, x: torch.Tensor) -> dist.Distribution:
        """q(z|x) for a batch ``x``: batch shape ``(B,)``, event shape ``(z_dim,)``.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        """
        return self.posterior(self.encoder(self.inputs(x)))

    def prior_dist(self, batch_size: int) -> dist.Distribution:
        """p(z) for ``batch_size`` examples, on this VAE's device.

        :param batch_size: the number of examples, the batch shape of p(z).
        """
        return self.prior(batch_size, self.anchor())

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """p(x|z) for codes ``z`` of shape ``(..., z_dim)``; event shape ``x_shape``.

        :param z: codes, ``(..., z_dim)``.
        """
        return self.likelihood(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = posterior code of q(z|x)] (its mean for Gaussian guides): each input's
        reconstruction, shaped like ``x``.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        """
        code = self.encode(x)[0]  # every guide family puts its representative code first
        return self.likelihood.mean(self.decoder(code))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, label: int | None = None) -> torch.Tensor:
        """``n`` images from the model: z ~ p(z), then E[x|z] (``mean=True``) or x ~ p(x|z).
        ``label`` is for the models that know labels (:mod:`pyro_vae.models.cvae`,
        :mod:`pyro_vae.models.m2`); this one has none.

        :param n: the number of images.
        :param mean: ``True``: each image is E[x|z]; ``False``: a draw x ~ p(x|z).
        :param label: the label to draw for, in the label models; must be ``None`` here.
        """
        if label is not None:
            raise ConfigError(
                f"{{label}} is for the models that know labels (cvae, m2), not {self.name!r}"
            )
        z = self.prior_dist(n).sample()
        return self.likelihood.mean(self.decoder(z)) if mean else self.likelihood_dist(z).sample()

    def elbo_terms(
        self, x: torch.Tensor, cond: Sequence[torch.Tensor], analytic: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's summed log p(x|z) and KL at one hand-written draw of z per example
        (:func:`~pyro_vae.infer.elbo.vae_elbo_terms`), the draws of the test ELBO.

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param cond: what the networks take after ``x``.
        :param analytic: the KL in closed form rather than at the draw.
        """
        return vae_elbo_terms(self, x, tuple(cond), analytic)

    def iwae_chunk(self, x: torch.Tensor, particles: int, *cond: torch.Tensor) -> torch.Tensor:
        """One chunk of the IWAE bound, hand-written (:func:`~pyro_vae.infer.elbo.iwae_chunk`).

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param particles: the draws per example.
        :param cond: what the networks take after ``x``.
        """
        return iwae_chunk(self, x, particles, *cond)

    def iwae_chunk_size(self, x: torch.Tensor, k: int, *cond: torch.Tensor) -> int:
        """The particles drawn at once, so that a chunk's decoder outputs fit
        (:func:`~pyro_vae.infer.elbo.iwae_chunk_size`).

        :param x: a batch of examples.
        :param k: the particles of the whole bound.
        :param cond: what the networks take after ``x``.
        """
        return iwae_chunk_size(self, x, k, *cond)

    def latent_dists(
        self, x: torch.Tensor, *cond: torch.Tensor
    ) -> dict[str, tuple[dist.Distribution, dist.Distribution]]:
        """q(z|x) and p(z) for the batch ``x``: the site ``"z"``'s.

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param cond: what the guide's networks take after ``x`` (the labels' one-hot codes).
        """
        return {"z": (self.posterior_dist(x, *cond), self.prior(len(x), x))}

    def check_closed_form_kl(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Refuse, in one line naming guide and prior, the KL in closed form where it has none.

        :param x: a batch of examples.
        :param labels: their integer labels, for the label models' guide.
        """
        with torch.no_grad():
            ((q, p),) = self.latent_dists(x, *self.encoder_condition(labels, x)).values()
            closed_form_kl(self, q, p)

    def check_elbo(
        self, x: torch.Tensor, labels: torch.Tensor | None, *, seed: int = 0, **settings: Any
    ) -> ElboCheck:
        """Pyro's objectives against the hand-written ones on the batch ``x``
        (:func:`~pyro_vae.infer.elbo_check.check_elbo`: the two ELBOs, the IWAE bound and its
        doubly reparameterized gradient).

        :param x: a batch of examples, floats as the likelihood scores them.
        :param labels: unused: the VAE takes none.
        :param seed: seeds each computation alike.
        :param settings: :func:`~pyro_vae.infer.elbo_check.check_elbo`'s ``num_particles``,
            ``kl_weight`` and ``iwae_particles``.
        """
        return check_elbo(self, x, seed=seed, **settings)

    def activation_numbers(self) -> int:
        """The decoder's activations and the likelihood's numbers for one particle of one
        example: what the backward pass keeps."""
        z = torch.zeros(1, self.z_dim, device=self.anchor().device)
        return activation_numbers(self.decoder, z) + 4 * math.prod(self.x_shape)

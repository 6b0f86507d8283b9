r"""The conditional VAE (Sohn, Lee & Yan 2015): a :class:`~pyro_vae.models.vae.VAE` whose
encoder and decoder also see the example's one-hot label y
(:class:`~pyro_vae.parts.networks.ConditionalEncoder`, ``ConditionalDecoder``), built from the same
prior, likelihood and guide registries. For each example and its observed label y::

    z ~ p(z)
    x ~ p(x | decoder(z, y))                     guide:  z ~ q(z | encoder(x, y))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import validation
from pyro_vae.data.sources import Dataset, check_labels, num_classes
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.elbo import MEANFIELD, TRACE, LossFn, Objective, manual_elbo
from pyro_vae.infer.elbo_check import ElboCheck, check_label_model
from pyro_vae.models.labels import one_hot
from pyro_vae.models.program import TrainingData
from pyro_vae.models.vae import VAE
from pyro_vae.parts.networks import activation_numbers
from pyro_vae.parts.registry import name_of


def _manual_cvae_loss(cvae: VAE, num_particles: int) -> LossFn:
    """The hand-written ELBO given y: :func:`~pyro_vae.infer.elbo.manual_elbo`, ``cond=(y,)``."""

    def loss(x: torch.Tensor, y: torch.Tensor, kl_weight: float | torch.Tensor = 1.0):
        return -manual_elbo(cvae, x, num_particles, kl_weight=kl_weight, cond=(y,))

    return loss


MANUAL = Objective(_manual_cvae_loss, True, "manual")


def _manual_given_y(
    model: VAE, analytic: bool, x: torch.Tensor, y: torch.Tensor, kl_weight: float
) -> torch.Tensor:
    return -manual_elbo(model, x, 1, analytic, kl_weight, cond=(y,))


class CVAE(VAE):
    """The class-conditional VAE: p(x | y, z) p(z) with y observed, and q(z | x, y).

    :param x_shape: per-example shape, as for :class:`~pyro_vae.models.vae.VAE`.
    :param num_classes: K, the number of labels (0 .. K-1).
    :param options: :class:`~pyro_vae.models.vae.VAE`'s other keyword arguments (``z_dim``,
        ``hidden_dims``, ``prior``, ...).

    The programs take y one-hot (:func:`one_hot`): ``cvae.model(x, y)``, ``cvae.guide(x, y)``,
    so Pyro's ``Trace_ELBO`` and :func:`pyro_vae.train` work on it unchanged.
    """

    name = "cvae"
    hand_written = True  # its twins are written for its own model and guide
    description = "p(x|y,z) p(z) and q(z|x,y), the label y observed: draws images of a class"
    objectives = {"trace": TRACE, "meanfield": MEANFIELD, "manual": MANUAL}

    def __init__(self, x_shape: Sequence[int], num_classes: int = 10, **options: Any):
        self.num_classes = validation.whole("num_classes", num_classes, low=2)
        super().__init__(x_shape, **options)

    def _attach_prior(self) -> None:
        if hasattr(self.prior, "attach"):
            raise ConfigError(
                f"the {name_of(self.prior)!r} {{param}} scores its pseudo-inputs with q(z|x), and "
                f"model {self.name!r} has only q(z|x,y): choose another prior",
                "prior",
            )

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments: enough to rebuild this model."""
        return {**super().config, "num_classes": self.num_classes}

    def model(
        self, x: torch.Tensor, y: torch.Tensor, kl_weight: float | torch.Tensor = 1.0
    ) -> None:
        """p(x, z | y) = p(z) p(x | y, z) for a batch ``x`` and its one-hot labels ``y``.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        :param y: their one-hot labels, ``(B, K)``.
        :param kl_weight: w, the weight of the KL term: a positive number or a 0-dim tensor; 1 for
            the ELBO.
        """
        x = self.inputs(x)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood_dist(z, y), obs=x)

    def guide(
        self, x: torch.Tensor, y: torch.Tensor, kl_weight: float | torch.Tensor = 1.0
    ) -> None:
        """q(z | x, y), amortized over the batch.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        :param y: their one-hot labels, ``(B, K)``.
        :param kl_weight: w, the weight of the KL term: a positive number or a 0-dim tensor; 1 for
            the ELBO.
        """
        pyro.module("vae", self)
        x = self.inputs(x)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=kl_weight):
            pyro.sample("z", self.posterior_dist(x, y))

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The guide's parameters for ``x`` with labels ``y`` (one-hot).

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        :param y: their one-hot labels, ``(B, K)``.
        """
        return self.posterior.params(self.encoder(self.inputs(x), y))

    def posterior_dist(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """q(z | x, y); ``y`` one-hot, broadcasting against the batch (``(K, 1, K)`` sums over
        every label at once).

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        :param y: one-hot labels: ``(B, K)``, or
            :func:`~pyro_vae.models.labels.every_label`'s ``(K, 1, K)``.
        """
        return self.posterior(self.encoder(self.inputs(x), y))

    def likelihood_dist(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """p(x | y, z) for codes ``z`` of shape ``(..., z_dim)`` and one-hot ``y``.

        :param z: codes, ``(..., z_dim)``.
        :param y: one-hot labels that broadcast against ``z``'s batch, ``(..., K)``.
        """
        return self.likelihood(self.decoder(z, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | y, z = the posterior code of q(z | x, y)]: each input's reconstruction.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        :param y: their one-hot labels, ``(B, K)``.
        """
        return self.likelihood.mean(self.decoder(self.encode(x, y)[0], y))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, label: int | None = None) -> torch.Tensor:
        """``n`` images of class ``label``, or (``None``) of the classes 0, 1, ..., K-1 in turn:
        z ~ p(z), then E[x | y, z] (``mean=True``) or x ~ p(x | y, z).

        :param n: the number of images.
        :param mean: ``True``: each image is E[x|y,z]; ``False``: a draw x ~ p(x|y,z).
        :param label: the class to draw, 0 .. K-1; ``None``: the classes in turn.
        """
        anchor = self.anchor()
        if label is None:
            labels = torch.arange(n, device=anchor.device) % self.num_classes
        else:
            label = validation.whole("label", label, low=0, high=self.num_classes - 1)
            labels = torch.full((n,), label, device=anchor.device)
        y, z = one_hot(labels, self.num_classes, anchor), self.prior_dist(n).sample()
        return (
            self.likelihood.mean(self.decoder(z, y))
            if mean
            else self.likelihood_dist(z, y).sample()
        )

    @classmethod
    def build(cls, x_shape: Sequence[int], num_classes: int, **options: Any) -> CVAE:
        """The model over examples of shape ``x_shape`` and ``num_classes`` labels.

        :param x_shape: the shape of one example.
        :param num_classes: K, the number of labels.
        :param options: the class's other keyword arguments.
        """
        return cls(x_shape, num_classes, **options)

    @classmethod
    def label_classes(cls, data: Dataset) -> int:
        """K, the classes of ``data``'s labels 0 .. K-1, which must have them.

        :param data: the data set.
        """
        return num_classes(data, f"model {cls.name!r}")

    def check_data(self, data: Dataset) -> None:
        """Refuse a data set without labels, or with more classes than the model's.

        :param data: the data set.
        """
        check_labels(data, self.num_classes)

    def _labels_in(self, data: Dataset) -> torch.Tensor:
        """The training labels one-hot, on the CPU in the model's dtype, once checked."""
        self.check_data(data)
        return one_hot(data.y_train, self.num_classes, torch.empty(0, dtype=self.anchor().dtype))

    def training_data(self, data: Dataset, labeled: int | None, seed: int) -> TrainingData:
        """Every training example with its one-hot label, which each step takes after x.

        :param data: the data set, with labels.
        :param labeled: unused: the conditional VAE sees every label.
        :param seed: unused.
        """
        return TrainingData(data.x_train, given=(self._labels_in(data),))

    def condition(
        self, labels: torch.Tensor | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The one-hot ``labels``: the programs score log p(x | y).

        :param labels: the examples' integer labels, ``(N,)``; required.
        :param like: a tensor whose dtype and device the one-hot rows take.
        """
        return (self._one_hot(labels, like, "scores log p(x | y)"),)

    def encoder_condition(
        self, labels: torch.Tensor | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The one-hot ``labels``: the guide is q(z | x, y).

        :param labels: the examples' integer labels, ``(N,)``; required.
        :param like: a tensor whose dtype and device the one-hot rows take.
        """
        return (self._one_hot(labels, like, "encodes q(z|x,y)"),)

    def _one_hot(self, labels: torch.Tensor | None, like: torch.Tensor, what: str) -> torch.Tensor:
        if labels is None:
            raise DataError(f"model {self.name!r} {what} and needs the examples' labels")
        return one_hot(labels, self.num_classes, like)

    def twin_rows(
        self, x: torch.Tensor, y: torch.Tensor, weights: Sequence[float]
    ) -> list[tuple[str, Callable, Callable, tuple]]:
        """``check-elbo``'s rows (:func:`~pyro_vae.infer.elbo_check.check_label_model`): for each
        KL weight, Pyro's ``Trace_ELBO`` and ``TraceMeanField_ELBO`` against the hand-written ELBO
        given y, ``(name, pyro_loss, manual_loss, args)``.

        :param x: a batch of examples, floats as the likelihood scores them.
        :param y: their one-hot labels, ``(B, K)``.
        :param weights: the KL weights to compare at.
        """
        rows = []
        for w in weights:
            weight = f", KL weight {w:g}" if w != 1 else ""
            for name, elbo, analytic in (
                ("Trace_ELBO", Trace_ELBO(max_plate_nesting=1), False),
                ("TraceMeanField", TraceMeanField_ELBO(), True),
            ):
                pyro_fn = partial(elbo.differentiable_loss, self.model, self.guide)
                manual = partial(_manual_given_y, self, analytic)
                label = f"CVAE {name} vs manual (given y{weight})"
                rows.append((label, pyro_fn, manual, (x, y, w)))
        return rows

    def check_elbo(
        self, x: torch.Tensor, labels: torch.Tensor | None, *, seed: int = 0, **settings: Any
    ) -> ElboCheck:
        """Pyro's objectives against the hand-written ones on ``x`` with its integer ``labels``
        (:meth:`twin_rows`).

        :param x: a batch of examples, floats as the likelihood scores them.
        :param labels: their integer labels; required.
        :param seed: seeds each computation alike.
        :param settings: ``kl_weight``, the KL weight of the weighed rows; others are unused.
        """
        (y,) = self.encoder_condition(labels, x)
        return check_label_model(self, x, y, seed=seed, kl_weight=settings.get("kl_weight", 0.5))

    @property
    def drawable_labels(self) -> range:
        """The classes 0 .. K-1, which ``sample(n, label=...)`` draws."""
        return range(self.num_classes)

    def activation_numbers(self) -> int:
        """The decoder's activations given a label, and the likelihood's numbers, for one
        particle of one example."""
        where = self.anchor().device
        z = torch.zeros(1, self.z_dim, device=where)
        y = torch.zeros(1, self.num_classes, device=where)
        return activation_numbers(self.decoder, z, y) + 4 * math.prod(self.x_shape)

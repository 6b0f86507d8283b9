r"""Pyro's other two VAEs, whose programs know the examples' labels: the conditional VAE and the
semi-supervised M2. Both are :class:`~pyro_vae.models.vae.VAE`\ s whose encoder and decoder also
see a one-hot label y (:class:`~pyro_vae.parts.networks.ConditionalEncoder`,
``ConditionalDecoder``),
built from the
same prior, likelihood and guide registries.

The conditional VAE (Sohn, Lee & Yan 2015), for each example and its observed label y::

    z ~ p(z)
    x ~ p(x | decoder(z, y))                     guide:  z ~ q(z | encoder(x, y))

M2 (Kingma, Rezende, Mohamed & Welling 2014, "Semi-Supervised Learning with Deep Generative
Models"; Pyro's ss-vae tutorial) makes y a random variable of the model, observed for the labelled
examples and latent for the others::

    y ~ Cat(1/K, ..., 1/K)                       guide:  y ~ q(y | x) = Cat(classifier(x))
    z ~ p(z)                                             (only where y is not observed)
    x ~ p(x | decoder(z, y))                             z ~ q(z | encoder(x, y))

The guide marks its y site for parallel enumeration, so ``TraceEnum_ELBO`` sums over the K labels
exactly instead of sampling one: for an unlabelled x,

    ELBO(x) = sum_y q(y|x) [ log p(y) + log p(x|y,z_y) + log p(z_y) - log q(z_y|x,y) ] + H(q(y|x)),

with z_y ~ q(z|x,y) reparameterized, and for a labelled (x, y) the ordinary ELBO at that y plus
log p(y). The classifier learns from unlabelled data only through that sum, so the labelled
examples also teach it directly: ``aux_weight * log q(y|x)``, Kingma et al.'s alpha term and the
tutorial's auxiliary loss, is the program :meth:`M2.classify_model`, an observed site scaled by
``aux_weight`` with ``poutine.scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine

from pyro_vae import validation
from pyro_vae.errors import ConfigError
from pyro_vae.models.vae import VAE
from pyro_vae.parts.networks import make_classifier
from pyro_vae.parts.registry import name_of

PREDICT_BATCH_SIZE = 1000  # examples classified at once
# M2's alpha: near the 46 of Pyro's ss-vae tutorial, whose steps also weigh each example once
DEFAULT_AUX_WEIGHT = 50.0


def one_hot(labels: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """Integer ``labels`` of shape ``(B,)`` as one-hot rows ``(B, num_classes)`` in ``like``'s
    dtype and device: the y the programs take.

    :param labels: integer labels 0 .. K-1, ``(B,)``, on any device.
    :param num_classes: K, the number of classes.
    :param like: a tensor whose dtype and device the rows take.
    """
    return F.one_hot(labels.to(like.device), num_classes).to(like.dtype)


def every_label(num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """All ``num_classes`` one-hot labels at once, ``(K, 1, K)``: the shape Pyro's parallel
    enumeration gives M2's y, broadcasting against a batch of B examples to ``(K, B, ...)``.

    :param num_classes: K, the number of classes.
    :param like: a tensor whose dtype and device the labels take.
    """
    return torch.eye(num_classes, dtype=like.dtype, device=like.device).unsqueeze(1)


class CVAE(VAE):
    """The class-conditional VAE: p(x | y, z) p(z) with y observed, and q(z | x, y).

    :param x_shape: per-example shape, as for :class:`~pyro_vae.models.vae.VAE`.
    :param num_classes: K, the number of labels (0 .. K-1).
    :param options: :class:`~pyro_vae.models.vae.VAE`'s other keyword arguments (``z_dim``,
        ``hidden_dims``, ``prior``, ...).

    The programs take y one-hot (:func:`one_hot`): ``cvae.model(x, y)``, ``cvae.guide(x, y)``,
    so Pyro's ``Trace_ELBO`` and :func:`pyro_vae.train` work on it unchanged.
    """

    kind = "cvae"
    description = "p(x|y,z) p(z) and q(z|x,y), the label y observed: draws images of a class"
    labels = "all"

    def __init__(self, x_shape: Sequence[int], num_classes: int = 10, **options: Any):
        self.num_classes = validation.whole("num_classes", num_classes, low=2)
        super().__init__(x_shape, **options)

    def _attach_prior(self) -> None:
        if hasattr(self.prior, "attach"):
            raise ConfigError(
                f"the {name_of(self.prior)!r} {{param}} scores its pseudo-inputs with q(z|x), and "
                f"model {self.kind!r} has only q(z|x,y): choose another prior",
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
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
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
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
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
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
        :param y: their one-hot labels, ``(B, K)``.
        """
        return self.posterior.params(self.encoder(self.inputs(x), y))

    def posterior_dist(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """q(z | x, y); ``y`` one-hot, broadcasting against the batch (``(K, 1, K)`` sums over
        every label at once).

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
        :param y: one-hot labels: ``(B, K)``, or :func:`every_label`'s ``(K, 1, K)``.
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
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
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
        anchor = self._anchor()
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


class M2(CVAE):
    """The semi-supervised M2 model: y ~ Cat(uniform), z ~ p(z), x ~ p(x | y, z); the guide
    q(y|x) q(z|x,y), with y enumerated where it is not observed (see the module doc).

    :param x_shape: per-example shape, as for :class:`~pyro_vae.models.vae.VAE`.
    :param num_classes: K, the number of labels.
    :param aux_weight: alpha, the weight of ``log q(y|x)`` on labelled examples
        (:meth:`classify_model`); 0 leaves the classifier to learn through the ELBO alone.
    :param options: :class:`~pyro_vae.models.vae.VAE`'s other keyword arguments (``z_dim``,
        ``hidden_dims``, ``prior``, ...).

    ``m2.model(x)`` and ``m2.guide(x)`` are the unlabelled program, ``m2.model(x, y)`` and
    ``m2.guide(x, y)`` the labelled one; ``TraceEnum_ELBO(max_plate_nesting=1)`` scores both.
    """

    kind = "m2"
    description = "semi-supervised: y observed for --labeled examples, summed out for the rest"
    labels = "some"

    def __init__(
        self,
        x_shape: Sequence[int],
        num_classes: int = 10,
        aux_weight: float = DEFAULT_AUX_WEIGHT,
        **options: Any,
    ):
        super().__init__(x_shape, num_classes, **options)
        self.aux_weight = validation.non_negative("aux_weight", aux_weight)
        self.classifier = make_classifier(
            self.encoder_kind, self.x_shape, self.hidden_dims, self.num_classes
        )

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments: enough to rebuild this model."""
        return {**super().config, "aux_weight": self.aux_weight}

    def label_prior(self, x: torch.Tensor) -> dist.Distribution:
        """p(y): uniform over the K classes.

        :param x: the batch: gives p(y) its dtype and device, its values unused.
        """
        return dist.OneHotCategorical(logits=x.new_zeros(self.num_classes))

    def label_posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(y | x): the classifier's categorical distribution, batch ``(B,)``.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
        """
        return dist.OneHotCategorical(logits=self.classifier(self.inputs(x)))

    def model(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        kl_weight: float | torch.Tensor = 1.0,
    ) -> None:
        """p(x, y, z) = p(y) p(z) p(x | y, z); ``y`` (one-hot) observed when given.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
        :param y: their one-hot labels, ``(B, K)``, observed; ``None`` for unlabelled examples.
        :param kl_weight: w, the weight of the KL term: a positive number or a 0-dim tensor; 1 for
            the ELBO.
        """
        x = self.inputs(x)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", self.label_prior(x), obs=y)
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood_dist(z, y), obs=x)

    def guide(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        kl_weight: float | torch.Tensor = 1.0,
    ) -> None:
        """q(y | x) q(z | x, y); y is enumerated (all K values at once) when not given.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
        :param y: their one-hot labels, ``(B, K)``; ``None``: y is enumerated.
        :param kl_weight: w, the weight of the KL term: a positive number or a 0-dim tensor; 1 for
            the ELBO.
        """
        pyro.module("vae", self)
        x = self.inputs(x)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", self.label_posterior(x), infer={"enumerate": "parallel"})
            with poutine.scale(scale=kl_weight):
                pyro.sample("z", self.posterior_dist(x, y))

    def classify_model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``aux_weight * log q(y | x)`` for labelled examples, as an observed site: the
        auxiliary term that trains the classifier on the labels directly.

        :param x: a batch of labelled examples, ``(B, *x_shape)``.
        :param y: their one-hot labels, ``(B, K)``.
        """
        pyro.module("vae", self)
        x = self.inputs(x)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.aux_weight):
            pyro.sample("y_aux", self.label_posterior(x), obs=y)

    def classify_guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The auxiliary program has no latent site: an empty guide.

        :param x: as in :meth:`classify_model`, unused.
        :param y: as in :meth:`classify_model`, unused.
        """

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | y, z = the posterior code of q(z | x, y)], with y the given one-hot labels or
        (``None``) the classifier's most probable ones.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
        :param y: their one-hot labels, ``(B, K)``; ``None``: the classifier's.
        """
        x = self.inputs(x)
        if y is None:
            y = one_hot(self.classifier(x).argmax(-1), self.num_classes, x)
        return super().reconstruct(x, y)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x) for each example: ``(B, K)`` class probabilities.

        :param x: the examples, ``(B, *x_shape)``, as a data set stores them
            (:meth:`~pyro_vae.models.vae.VAE.inputs`).
        """
        return torch.softmax(self.classifier(self.inputs(x)), dim=-1)


@torch.no_grad()
def predict(model: M2, x: torch.Tensor) -> torch.Tensor:
    """The most probable class under ``model``'s classifier q(y|x) for each example, ``(B,)``.

    :param model: a trained :class:`M2`.
    :param x: the examples, ``(N, *x_shape)``, on the model's device; classified a thousand at a
        time.
    """
    return torch.cat([model.classify(batch).argmax(-1) for batch in x.split(PREDICT_BATCH_SIZE)])


def accuracy(model: M2, x: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``x`` whose most probable class under q(y|x) is its label.

    :param model: a trained :class:`M2`.
    :param x: the examples, ``(N, *x_shape)``, on the model's device.
    :param labels: their integer labels, ``(N,)``, on any device.
    """
    return float((predict(model, x) == labels.to(x.device)).double().mean())

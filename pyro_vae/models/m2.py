r"""M2, the semi-supervised VAE (Kingma, Rezende, Mohamed & Welling 2014, "Semi-Supervised
Learning with Deep Generative Models"; Pyro's ss-vae tutorial): a
:class:`~pyro_vae.models.cvae.CVAE` that makes y a random variable of the model, observed for the
labelled examples and latent for the others::

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

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_vae import validation
from pyro_vae.data.sources import Dataset, labeled_split
from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import (
    LossFn,
    Objective,
    iwae_chunk,
    iwae_chunk_size,
    log_weight_terms,
    make_loss,
)
from pyro_vae.infer.elbo_check import negated
from pyro_vae.infer.sync_free import SyncFreeTrace_ELBO, SyncFreeTraceEnum_ELBO
from pyro_vae.models.cvae import CVAE
from pyro_vae.models.labels import every_label, one_hot
from pyro_vae.models.program import TrainingData
from pyro_vae.parts.networks import make_classifier

PREDICT_BATCH_SIZE = 1000  # examples classified at once
# M2's alpha: near the 46 of Pyro's ss-vae tutorial, whose steps also weigh each example once
DEFAULT_AUX_WEIGHT = 50.0


def m2_elbo(
    m2: M2,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    kl_weight: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """M2's ELBO of the batch ``x``, summed over examples, written out with no ``pyro.infer``.
    Unlabelled (``y`` None), y is summed out under q(y|x):

        sum_y q(y|x) [ log p(y) + log p(x|y,z_y) + w log p(z_y) - w log q(z_y|x,y) ] + H(q(y|x)),

    z_y = loc(x, y) + scale(x, y) * eps, drawn for all K labels at once; labelled (``y``
    one-hot), the ELBO at the observed y plus log p(y). w is ``kl_weight``. Its negative equals
    ``TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m2.model, m2.guide, x, y, w)`` in
    value and gradients under the same seed.

    :param m2: the :class:`M2` model.
    :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
    :param y: their one-hot labels, ``(B, K)``; ``None``: unlabelled, y summed out.
    :param kl_weight: w, the weight of the KL term: a number or a 0-dim tensor; 1 for the ELBO.
    """
    log_p_y = -math.log(m2.num_classes)
    if y is not None:
        log_p_x, log_p_z, log_q_z, _, _ = log_weight_terms(m2, x, 1, (y,))
        return (log_p_y + log_p_x + kl_weight * (log_p_z - log_q_z)).sum()
    log_q_y = torch.log_softmax(m2.classifier(x), dim=-1).T  # (K, B)
    labels = every_label(m2.num_classes, x)
    log_p_x, log_p_z, log_q_z, _, _ = log_weight_terms(m2, x, 1, (labels,))  # (1, K, B)
    per_label = log_p_y + log_p_x[0] + kl_weight * (log_p_z[0] - log_q_z[0])
    return (log_q_y.exp() * (per_label - log_q_y)).sum()


def m2_aux_term(m2: M2, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``aux_weight * sum log q(y|x)`` over the labelled batch: the twin of the program
    :meth:`~pyro_vae.models.m2.M2.classify_model` (an observed site, no latent one).

    :param m2: the :class:`M2` model.
    :param x: a batch of labelled examples, ``(B, *x_shape)``.
    :param y: their one-hot labels, ``(B, K)``.
    """
    log_q = (torch.log_softmax(m2.classifier(x), dim=-1) * y).sum(-1)
    return m2.aux_weight * log_q.sum()


def m2_objective(
    m2: M2,
    x: torch.Tensor,
    x_labeled: torch.Tensor | None = None,
    y_labeled: torch.Tensor | None = None,
    kl_weight: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """What one M2 training step maximizes, by hand: the unlabelled batch's ELBO, the labelled
    batch's ELBO and its auxiliary term (:func:`m2_elbo`, :func:`m2_aux_term`), in the order
    Pyro's objective draws them. Without a labelled batch, the ELBO of log p(x).

    :param m2: the :class:`M2` model.
    :param x: the step's unlabelled batch, ``(B, *x_shape)``.
    :param x_labeled: the step's labelled examples; ``None`` for none.
    :param y_labeled: their one-hot labels, ``(B_l, K)``.
    :param kl_weight: w, the weight of the KL term: a number or a 0-dim tensor; 1 for the ELBO.
    """
    objective = m2_elbo(m2, x, kl_weight=kl_weight)
    if x_labeled is None:
        return objective
    objective = objective + m2_elbo(m2, x_labeled, y_labeled, kl_weight)
    return objective + m2_aux_term(m2, x_labeled, y_labeled)


def _m2_loss(m2: M2, num_particles: int) -> LossFn:
    """``(x, x_labeled=None, y_labeled=None, kl_weight=1)``: Pyro's M2 objective. The unlabelled
    program under ``TraceEnum_ELBO`` (y enumerated), the labelled one and the auxiliary term
    under ``Trace_ELBO`` (no site to enumerate: the same value, without TraceEnum's warning)."""
    enum = SyncFreeTraceEnum_ELBO(max_plate_nesting=1)
    trace = SyncFreeTrace_ELBO(max_plate_nesting=1)

    def loss(x, x_labeled=None, y_labeled=None, kl_weight=1.0):
        value = enum.differentiable_loss(m2.model, m2.guide, x, None, kl_weight)
        if x_labeled is None:
            return value
        value = value + trace.differentiable_loss(
            m2.model, m2.guide, x_labeled, y_labeled, kl_weight
        )
        return value + trace.differentiable_loss(
            m2.classify_model, m2.classify_guide, x_labeled, y_labeled
        )

    return loss


def _manual_m2_loss(m2: M2, num_particles: int) -> LossFn:
    return lambda *batch: -m2_objective(m2, *batch)


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

    name = "m2"
    hand_written = True  # its twins are written for its own model and guide
    model_settings = (*CVAE.model_settings, "aux_weight")
    description = "semi-supervised: y observed for --labeled examples, summed out for the rest"
    objectives = {
        "trace": Objective(_m2_loss, True, "trace", max_particles=1, twin="manual"),
        "manual": Objective(_manual_m2_loss, True, "manual", max_particles=1),
    }

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
            (:meth:`~pyro_vae.models.program.Program.inputs`).
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
            (:meth:`~pyro_vae.models.program.Program.inputs`).
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
            (:meth:`~pyro_vae.models.program.Program.inputs`).
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
            (:meth:`~pyro_vae.models.program.Program.inputs`).
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
            (:meth:`~pyro_vae.models.program.Program.inputs`).
        """
        return torch.softmax(self.classifier(self.inputs(x)), dim=-1)

    @classmethod
    def check_labeled(cls, labeled: int | None) -> int | None:
        """``labeled``, which M2 needs: the number of training examples whose labels it sees.

        :param labeled: the number of labelled training examples.
        """
        if labeled is None:
            raise ConfigError(
                f"is needed by {{model}} {cls.name!r}: the number of training examples whose "
                "labels it sees",
                "labeled",
            )
        return validation.count("labeled", labeled)

    def training_data(self, data: Dataset, labeled: int | None, seed: int) -> TrainingData:
        """The unlabelled examples, which an epoch passes over, and the pool of ``labeled``
        examples with their one-hot labels, chosen with ``seed`` and balanced over the classes
        (:func:`~pyro_vae.data.sources.labeled_split`), which every step also draws from.

        :param data: the data set, with labels.
        :param labeled: the number of labelled examples.
        :param seed: seeds the choice of labelled examples.
        """
        y = self._labels_in(data)
        index, rest = labeled_split(data.y_train, labeled, self.num_classes, seed)
        return TrainingData(data.x_train[rest], labeled=(data.x_train[index], y[index]))

    def condition(
        self, labels: torch.Tensor | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Nothing: M2 scores log p(x), its labels summed out.

        :param labels: unused.
        :param like: unused.
        """
        return ()

    def test_metrics(self, x: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        """``test_accuracy``: the share of ``x`` whose most probable class under q(y|x) is its
        label.

        :param x: the test set as the model scores it, on its device.
        :param labels: its integer labels.
        """
        return {"test_accuracy": accuracy(self, x, labels)}

    def elbo_terms(
        self, x: torch.Tensor, cond: Sequence[torch.Tensor], analytic: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ELBO's terms with the label summed out under q(y|x), as in :func:`m2_elbo` (drawn
        in its order): the KL is that of q(y, z|x) against p(y) p(z).

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param cond: unused: nothing is given.
        :param analytic: unused: M2's KL is sampled.
        """
        log_q_y = torch.log_softmax(self.classifier(x), dim=-1).T  # (K, B)
        labels = every_label(self.num_classes, x)
        log_p_x, log_p_z, log_q_z, _, _ = log_weight_terms(self, x, 1, (labels,))  # (1, K, B)
        q_y = log_q_y.exp()
        kl = log_q_z[0] - log_p_z[0] + log_q_y + math.log(self.num_classes)  # log p(y) = -log K
        return (q_y * log_p_x[0]).sum(), (q_y * kl).sum()

    def iwae_chunk(self, x: torch.Tensor, particles: int, *cond: torch.Tensor) -> torch.Tensor:
        """One chunk of the IWAE bound on each log p(x | y), every label at once: ``(K, B)``.

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param particles: the draws per example and label.
        :param cond: unused: every label is taken.
        """
        return iwae_chunk(self, x, particles, every_label(self.num_classes, self.anchor()))

    def iwae_chunk_size(self, x: torch.Tensor, k: int, *cond: torch.Tensor) -> int:
        """The particles drawn at once, every label at once multiplying the decoder's outputs.

        :param x: a batch of examples.
        :param k: the particles of the whole bound.
        :param cond: unused: every label is taken.
        """
        return iwae_chunk_size(self, x, k, every_label(self.num_classes, self.anchor()))

    def iwae_bound(
        self, x: torch.Tensor, k: int, full_chunk: Any = None, cond: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        """M2's bound on log p(x) = log sum_y p(y) p(x | y), per example: the labels summed out
        exactly over the IWAE bounds on each log p(x | y), with ``k`` particles each. It is the
        log of an unbiased estimate of p(x), so it is a lower bound in expectation, like IWAE's.

        :param x: a batch of examples, ``(B, *x_shape)``, floats as the likelihood scores them.
        :param k: the particles per example and label.
        :param full_chunk: ``(x) -> chunk`` for the chunks of full size, every label at once
            (the evaluation's, compiled or eager), or ``None``: :meth:`iwae_chunk`.
        :param cond: unused: every label is taken.
        """
        per_label = super().iwae_bound(x, k, full_chunk, cond)  # (K, B)
        return torch.logsumexp(per_label, dim=0) - math.log(self.num_classes)

    def twin_rows(
        self, x: torch.Tensor, y: torch.Tensor, weights: Sequence[float]
    ) -> list[tuple[str, Callable, Callable, tuple]]:
        """``check-elbo``'s rows (:func:`~pyro_vae.infer.elbo_check.check_label_model`),
        ``(name, pyro_loss, manual_loss, args)``: for each KL weight, Pyro's own
        ``TraceEnum_ELBO`` on the unlabelled program against :func:`m2_elbo` (y summed out),
        ``Trace_ELBO`` on the labelled program against ``m2_elbo`` at y, and the step as trained
        (``x`` unlabelled, then labelled; the sync-free objective) against :func:`m2_objective`;
        then the auxiliary program against :func:`m2_aux_term`.

        :param x: a batch of examples, floats as the likelihood scores them.
        :param y: their one-hot labels, ``(B, K)``.
        :param weights: the KL weights to compare at.
        """
        trace, enum = Trace_ELBO(max_plate_nesting=1), TraceEnum_ELBO(max_plate_nesting=1)
        unlabeled = partial(enum.differentiable_loss, self.model, self.guide)
        labeled = partial(trace.differentiable_loss, self.model, self.guide)
        manual, rows = partial(negated(m2_elbo), self), []
        manual_step = partial(negated(m2_objective), self)
        for w in weights:
            weight, step = f", KL weight {w:g}" if w != 1 else "", make_loss(self, "trace")
            rows += [
                (f"M2 TraceEnum_ELBO vs manual (y summed out{weight})", unlabeled, manual,
                 (x, None, w)),
                (f"M2 Trace_ELBO vs manual (y observed{weight})", labeled, manual, (x, y, w)),
                (f"M2 step, as trained, vs manual{weight}", step, manual_step, (x, x, y, w)),
            ]  # fmt: skip
        aux = partial(trace.differentiable_loss, self.classify_model, self.classify_guide)
        manual_aux = partial(negated(m2_aux_term), self)
        rows.append(("M2 auxiliary term vs manual", aux, manual_aux, (x, y)))
        return rows

    def activation_numbers(self) -> int:
        """The conditional VAE's, once for every label the unlabelled examples sum over."""
        return super().activation_numbers() * self.num_classes


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

r"""The model protocol: what pyro-vae asks of a model, and what it assumes where a model is silent.

A model is an ``nn.Module`` whose Pyro programs ``model(x, *given, kl_weight)`` and
``guide(x, *given, kl_weight)`` share its parameters, as Pyro's tutorials write them. Training,
evaluation, the run folder, the pictures and the command line ask the model, through the methods
below, for everything that differs between kinds of model; none of them asks which kind it is.
:class:`Program` is the protocol with a default for each method, so a new kind overrides only
what it does differently (the defaults in brackets):

- what a training step takes: :meth:`~Program.training_data`, the examples, per-example tensors
  the programs take after x and a labelled pool (default: x alone); :meth:`~Program.check_labeled`,
  how many labelled examples it must be told (none);
- the objectives it trains with, :attr:`~Program.objectives`, each naming its hand-written twin,
  and :meth:`~Program.check_elbo`, which holds them together (Pyro's ``Trace_ELBO``,
  ``TraceMeanField_ELBO`` and IWAE, no twins);
- how evaluation conditions: :meth:`~Program.condition` (the programs' labels) and
  :meth:`~Program.encoder_condition` (q(z|x, ...)'s) (nothing);
- its test metrics, :meth:`~Program.test_metrics` (none); the ELBO's two terms,
  :meth:`~Program.elbo_terms`, and the IWAE bound, :meth:`~Program.iwae_chunk` and
  :meth:`~Program.iwae_bound` (from Pyro's traces, the particles vectorized);
- what it can draw, :attr:`~Program.drawable_labels` (no labels); the memory a particle keeps,
  :meth:`~Program.activation_numbers` (four numbers per input number);
- how it is built for a data set: :meth:`~Program.build`, :meth:`~Program.label_classes` and
  :meth:`~Program.check_data` (from the examples' shape alone).

A kind is registered by name in :data:`pyro_vae.models.MODELS`; ``pyro-vae train --model NAME``
builds it with :func:`pyro_vae.models.build_model`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import Distribution, kl_divergence

from pyro_vae.data.sources import Dataset, as_floats
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.elbo import IWAE_CHUNK_ELEMENTS, PYRO_OBJECTIVES, Objective, iwae_bound
from pyro_vae.infer.elbo_check import ElboCheck, check_twins


class TrainingData(NamedTuple):
    """What the training steps of a model draw from, as :meth:`Program.training_data` gives it.

    :param x: the examples an epoch passes over, ``(N, *x_shape)``, as the data set stores them.
    :param given: tensors with a row per example of ``x`` that each step takes after its batch of
        x, in order (the conditional VAE's one-hot labels); ``()`` for none.
    :param labeled: a pool the steps also draw from, an endless stream of seeded permutations of
        it, the same number of rows each step (M2's labelled examples and their one-hot labels);
        ``()`` for none.
    """

    x: torch.Tensor
    given: tuple[torch.Tensor, ...] = ()
    labeled: tuple[torch.Tensor, ...] = ()


class Program(nn.Module):
    """A Pyro model and guide over batches of examples of shape ``x_shape``: the protocol that
    pyro-vae's training, evaluation, run folders and command line use, with defaults.

    A subclass defines the Pyro programs ``model(x, *given, kl_weight=1.0)`` and
    ``guide(x, *given, kl_weight=1.0)``: the observed site ``"x"`` inside
    ``pyro.plate("data", len(x))``, the latent sites scaled by ``kl_weight``
    (``pyro.poutine.scale``), and ``pyro.module`` in the guide. Its instances set ``x_shape``. The
    methods here say what the rest of the library needs to know; each default holds for a model
    of x alone, trained by Pyro's objectives.

    The methods that take a batch ``x`` take it as a data set stores it (``uint8`` images or
    floats); :meth:`inputs` makes it what the programs score.
    """

    #: the kind's name in :data:`pyro_vae.models.MODELS`, as ``--model`` takes it
    name: ClassVar[str] = "program"
    #: one line on the kind, for ``pyro-vae list``
    description: ClassVar[str] = "a Pyro model and guide"
    #: the objectives it trains with, by the name ``objective`` takes; an objective's ``twin``
    #: names its hand-written counterpart, which ``check-elbo`` compares it with
    objectives: ClassVar[dict[str, Objective]] = PYRO_OBJECTIVES
    #: the settings of :class:`~pyro_vae.config.ModelConfig` that :meth:`build` takes; the others
    #: must keep their defaults
    model_settings: ClassVar[tuple[str, ...]] = ()
    #: the most plates a site of the programs is in (Pyro's ``max_plate_nesting``); particles are
    #: vectorized in a plate left of them
    max_plate_nesting: int = 1
    #: the data plate's ``dim``: the batch dimension of the sites' log densities
    data_dim: int = -1
    x_shape: tuple[int, ...]

    @classmethod
    def build(cls, x_shape: Sequence[int], num_classes: int, **options: Any) -> Program:
        """The model over examples of shape ``x_shape`` with ``num_classes`` labels, as
        :func:`~pyro_vae.models.build_model` makes it: by default ``cls(x_shape, **options)``,
        labels unused.

        :param x_shape: the shape of one example.
        :param num_classes: K, the classes of the data set's labels (0 for none).
        :param options: the class's other keyword arguments.
        """
        return cls(x_shape, **options)

    def recorded_settings(self) -> dict[str, Any]:
        """Settings of :class:`~pyro_vae.config.ModelConfig` that a new run records once the
        model is built: none by default."""
        return {}

    @classmethod
    def label_classes(cls, data: Dataset) -> int:
        """K, the classes of ``data``'s labels that the kind is built with (:meth:`build`): 0 for
        a model that takes no labels.

        :param data: the data set.
        """
        return 0

    def check_data(self, data: Dataset) -> None:
        """Refuse, in one line, a data set the model cannot train on or score beyond the shape of
        its examples: by default any.

        :param data: the data set.
        """

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch ``x`` as the programs take it, on this model's device: ``uint8`` images become
        ``k / 255``, floats stay as they are.

        :param x: a batch of examples, ``(B, *x_shape)``: ``uint8`` or floats, on any device.
        """
        return as_floats(x.to(self.anchor().device))

    def anchor(self) -> torch.Tensor:
        """A parameter of the model: the device and dtype its new tensors are made with."""
        return next(self.parameters())

    @classmethod
    def check_labeled(cls, labeled: int | None) -> int | None:
        """``labeled``, the number of training examples whose labels the model sees, checked:
        ``None`` for a model that takes all labels or none.

        :param labeled: the number of labelled training examples, or ``None``.
        """
        if labeled is not None:
            raise ConfigError(f"is for {{model}} 'm2', not {cls.name!r}", "labeled")
        return None

    def training_data(self, data: Dataset, labeled: int | None, seed: int) -> TrainingData:
        """What the training steps draw from: by default every training example, alone.

        :param data: the data set.
        :param labeled: the labelled examples to keep, for a semi-supervised model; else ``None``.
        :param seed: the run's seed, for a seeded choice of labelled examples.
        """
        return TrainingData(data.x_train)

    def condition(
        self, labels: torch.Tensor | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """What the programs take after ``x`` to score log p(x) (or log p(x | y)) of examples
        with the integer ``labels``: ``()`` for a model of x alone.

        :param labels: the examples' integer labels, ``(N,)``, or ``None`` when unknown.
        :param like: a tensor whose dtype and device the result takes.
        """
        return ()

    def encoder_condition(
        self, labels: torch.Tensor | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """What ``posterior_dist`` takes after ``x``, for the codes of examples with the integer
        ``labels``: ``()`` for a guide of x alone.

        :param labels: the examples' integer labels, ``(N,)``, or ``None`` when unknown.
        :param like: a tensor whose dtype and device the result takes.
        """
        return ()

    def test_metrics(self, x: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        """Figures beyond the ELBO recorded after every epoch, by their column in
        ``metrics.csv``: none by default.

        :param x: the test set as the model scores it, on its device.
        :param labels: its integer labels, or ``None``.
        """
        return {}

    def latent_dists(
        self, x: torch.Tensor, *cond: torch.Tensor
    ) -> dict[str, tuple[Distribution, Distribution]]:
        """For each latent site, in the guide's order, the guide's q and the model's p over the
        batch ``x``, each at one draw of the sites before it: by default from one run of the
        guide and the model replayed on it (the sites' ``fn``).

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param cond: what the guide takes after ``x`` (:meth:`encoder_condition`).
        """
        guide, model = replayed_traces(self.model, self.guide, x, *cond)
        return {  # in the guide's order: its first site is the code of x
            name: (site["fn"], model.nodes[name]["fn"])
            for name, site in sample_sites(guide).items()
            if not site["is_observed"]
        }

    def check_closed_form_kl(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Refuse, in one line, training with a KL in closed form (``meanfield``) where a latent
        site has none: Pyro would quietly fall back to the sampled KL.

        :param x: a batch of examples.
        :param labels: their integer labels, for what :meth:`encoder_condition` makes of them.
        """
        with torch.no_grad():
            for site, (q, p) in self.latent_dists(x, *self.encoder_condition(labels, x)).items():
                try:
                    kl_divergence(q, p)
                except NotImplementedError:
                    raise ConfigError(
                        f"no closed-form KL at site {site!r} of model {self.name!r} "
                        f"({type(q).__name__} against {type(p).__name__}), so objective "
                        "'meanfield' (analytic KL) cannot be used; use objective 'trace'"
                    ) from None

    def check_elbo(
        self, x: torch.Tensor, labels: torch.Tensor | None, *, seed: int = 0, **settings: Any
    ) -> ElboCheck:
        """What ``check-elbo`` prints: by default each of :attr:`objectives` that names a ``twin``
        against it on the batch ``x`` (:func:`~pyro_vae.infer.elbo_check.check_twins`).

        :param x: a batch of examples, floats as the likelihood scores them.
        :param labels: their integer labels, for what :meth:`condition` makes of them.
        :param seed: seeds each computation alike.
        :param settings: ``num_particles`` and ``kl_weight``; others are unused.
        """
        options = {k: v for k, v in settings.items() if k in ("num_particles", "kl_weight")}
        return check_twins(self, (x, *self.condition(labels, x)), seed=seed, **options)

    @property
    def drawable_labels(self) -> range:
        """The labels ``sample(n, label=...)`` draws for: none by default."""
        return range(0)

    def activation_numbers(self) -> int:
        """The numbers one particle of one example keeps for the backward pass, a bound for the
        memory check before training: by default four per number of the input."""
        return 4 * math.prod(self.x_shape)

    def elbo_terms(
        self, x: torch.Tensor, cond: Sequence[torch.Tensor], analytic: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's summed log p(x|z) (the observed sites) and log q(z|x) - log p(z) (the
        latent ones) at one draw from the guide, from Pyro's traces.

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param cond: what the programs take after ``x`` (:meth:`condition`).
        :param analytic: the KL in closed form; not available from traces, so refused.
        """
        if analytic:
            raise ConfigError(f"model {self.name!r} has no closed-form KL term to split")
        observed, latent = _log_weights(self, x, cond, particles=None)
        return observed.sum(), -latent.sum()

    def iwae_chunk(self, x: torch.Tensor, particles: int, *cond: torch.Tensor) -> torch.Tensor:
        """log sum_i p(x, z_i) / q(z_i|x) over ``particles`` draws z_i from the guide, per
        example, ``(B,)``: one chunk of the IWAE bound. By default from Pyro's traces, the
        particles vectorized in a plate left of the data plate.

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param particles: the draws per example.
        :param cond: what the programs take after ``x`` (:meth:`condition`).
        """
        observed, latent = _log_weights(self, x, cond, particles=particles)
        return torch.logsumexp(observed + latent, dim=0)

    def iwae_chunk_size(self, x: torch.Tensor, k: int, *cond: torch.Tensor) -> int:
        """The particles drawn at once for the batch ``x``: by default as many as keep about
        :data:`~pyro_vae.infer.elbo.IWAE_CHUNK_ELEMENTS` numbers of the size of x at once.

        :param x: a batch of examples.
        :param k: the particles of the whole bound.
        :param cond: what the programs take after ``x``.
        """
        return max(1, min(k, IWAE_CHUNK_ELEMENTS // x.numel()))

    def iwae_bound(
        self, x: torch.Tensor, k: int, full_chunk: Any = None, cond: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        """The IWAE bound on log p(x) (or log p(x | y)) with ``k`` particles per example,
        ``(B,)``: by default :meth:`iwae_chunk`'s chunks combined by
        :func:`~pyro_vae.infer.elbo.iwae_bound`.

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param k: the particles per example.
        :param full_chunk: ``(x, *cond) -> chunk`` for the chunks of full size (the
            evaluation's: a compiled :meth:`iwae_chunk`, or the eager one, timed); ``None``:
            :meth:`iwae_chunk` computes each.
        :param cond: what the programs take after ``x`` (:meth:`condition`).
        """
        return iwae_bound(self, x, k, full_chunk, tuple(cond))


def replayed_traces(model: Callable, guide: Callable, *args: Any) -> tuple[Trace, Trace]:
    """``(guide trace, model trace)``: one run of ``guide`` on ``args`` and of ``model`` replayed
    on its draws, what every figure read from a program's traces starts from.

    :param model: the model program.
    :param guide: the guide program.
    :param args: what both take.
    """
    guide_trace = poutine.trace(guide).get_trace(*args)
    return guide_trace, poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)


def sample_sites(trace: Trace) -> dict[str, dict[str, Any]]:
    """The sample sites of ``trace`` by name, in order, without the plates' (a plate records its
    subsample as a sample site, never scored).

    :param trace: a Pyro trace.
    """
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    }


def _log_weights(
    program: Program, x: torch.Tensor, cond: Sequence[torch.Tensor], particles: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example (and particle, in a plate at dim -2 when ``particles`` is given), the model's
    observed log densities and its latent ones minus the guide's, from one run of the guide and
    the model replayed on it."""
    args = (x, *cond)

    def run(fn: Any) -> Any:
        if particles is None:
            return fn
        return pyro.plate("particles", particles, dim=-1 - program.max_plate_nesting)(fn)

    guide, model = replayed_traces(run(program.model), run(program.guide), *args)
    observed, latent = 0.0, 0.0
    for name, site in sample_sites(model).items():
        log_p = _per_example(site, program.data_dim)
        if site["is_observed"]:
            observed = observed + log_p
        elif name in guide.nodes:
            latent = latent + log_p - _per_example(guide.nodes[name], program.data_dim)
        else:
            raise DataError(f"the guide of model {program.name!r} has no site {name!r}")
    return observed, latent


def _per_example(site: dict[str, Any], data_dim: int) -> torch.Tensor:
    """A site's log density per example (and particle): summed over the plates right of the data
    plate's ``data_dim``."""
    log_p = site["fn"].log_prob(site["value"]) * site["scale"]
    inner = tuple(range(data_dim + 1, 0))
    if inner and log_p.dim() >= -data_dim:
        log_p = log_p.sum(inner)
    return log_p

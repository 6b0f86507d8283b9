r"""Your own Pyro program, with the whole library: any ``nn.Module`` whose ``model(x)`` and
``guide(x)`` are Pyro programs, as Pyro's tutorials write them, trains, compiles, evaluates and
resumes like the built-in VAEs.

:func:`as_program` wraps such a module in a :class:`UserProgram`, which answers the protocol of
:class:`~pyro_vae.models.program.Program` from the program's own traces: which sites are observed
(with ``obs``), which are latent (sampled in the guide), and which plate is the data's (the batch
dimension) are read from one run of guide and model on a batch. The library's objectives then
apply to it unchanged: Pyro's ``Trace_ELBO``, ``TraceMeanField_ELBO`` and the IWAE bound with
vectorized particles; a KL weight (beta, a warm-up) scales the latent sites (:class:`LatentScale`),

    E_q[log p(x|z)] + w E_q[log p(z) - log q(z|x)],   every latent site of model and guide,

and the IWAE estimate of log p(x) is log (1/k) sum_i p(x, z_i) / q(z_i|x) over the joint draws of
all latent sites. A program may also carry its hand-written twin, ``manual_elbo(x,
num_particles, kl_weight)`` (the ELBO of the batch) and ``manual_iwae(x, num_particles)`` (the
bound per example), which ``check-elbo`` holds against Pyro's, and the methods the pictures, codes
and walks use (``sample``, ``reconstruct``, ``encode``).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.messenger import Message
from pyro.poutine.scale_messenger import ScaleMessenger
from torch import nn

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.elbo import IWAE, MEANFIELD, TRACE, Objective
from pyro_vae.models.importing import ProgramSource, find_program, one_line
from pyro_vae.models.program import Program, replayed_traces, sample_sites

#: the examples in the batch a program's sites are read from, when no data are at hand
PROBE_BATCH = 3


class LatentScale(ScaleMessenger):
    """``poutine.scale`` for the latent sites alone: the weight w of ``E_q[log p(x|z)] - w KL``,
    beta or a warm-up's weight, applied to any program without its knowing. Observed sites keep
    their scale; every other sample site's log density (the model's prior terms and the guide's)
    is multiplied by ``scale``.

    :param scale: w, a positive number or 0-dim tensor.
    """

    def __init__(self, scale: float | torch.Tensor):
        super().__init__(scale)

    def _process_message(self, msg: Message) -> None:
        # Messenger's hook, how Pyro's handlers are written (test_latent_scale_... watches it)
        if not msg["is_observed"]:
            super()._process_message(msg)


class MissingMethod(ConfigError):
    """A program lacks a method that a picture, the codes or a walk needs."""


@contextmanager
def skipped_without_method(what: str) -> Iterator[None]:
    """Make ``what`` (a picture, say) in the block, or skip it with one line on stderr naming the
    method it needs when the program lacks it (:class:`MissingMethod`).

    :param what: what the block makes, for the line.
    """
    try:
        yield
    except MissingMethod as missing:
        print(f"pyro-vae: no {what}: {missing.problem}", file=sys.stderr)


class Sites(NamedTuple):
    """A program's sites, as its trace on one batch shows them.

    :param observed: the model's sites with ``obs``.
    :param latent: the model's other sample sites, each also sampled in the guide.
    :param data_dim: the batch dimension, the data plate's ``dim`` (negative).
    :param nesting: the most plates any site is in: Pyro's ``max_plate_nesting``.
    :param support: the observed site's support, which decides the binarization.
    """

    observed: tuple[str, ...]
    latent: tuple[str, ...]
    data_dim: int
    nesting: int
    support: Any


def read_sites(model: Callable, guide: Callable, x: torch.Tensor, name: str) -> Sites:
    """The sites of ``model`` and ``guide`` run on the batch ``x``, the guide's draws replayed in
    the model; a program pyro-vae cannot take is refused in one line.

    :param model: the model, ``model(x)``.
    :param guide: the guide, ``guide(x)``.
    :param x: a batch of at least two examples, as the programs take it.
    :param name: the program's name, for the messages.
    """
    with torch.no_grad(), poutine.block():
        try:
            guide_trace, model_trace = replayed_traces(model, guide, x)
        except Exception as error:  # the user's code: its own error, said in one line
            raise ConfigError(
                f"program {name!r} failed on a batch of shape {tuple(x.shape)}: {one_line(error)}"
            ) from None
    model_sites = sample_sites(model_trace)
    guide_sites = sample_sites(guide_trace)
    observed = tuple(s for s, site in model_sites.items() if site["is_observed"])
    latent = tuple(s for s, site in model_sites.items() if not site["is_observed"])
    if not observed:
        raise ConfigError(f"the model of program {name!r} observes nothing (no site with obs=)")
    for s in latent:
        if s not in guide_sites:
            raise ConfigError(
                f"the guide of program {name!r} has no site {s!r}, a latent site of its model"
            )
    for s in guide_sites:
        if s not in model_sites:
            raise ConfigError(
                f"the guide of program {name!r} samples {s!r}, which its model does not"
            )
    data_dim = _data_dim(model_sites[observed[0]], len(x), name, observed[0])
    for s in (*observed, *latent):
        if _data_dim(model_sites[s], len(x), name, s) != data_dim:
            raise ConfigError(
                f"site {s!r} of program {name!r} is not in the data plate of {observed[0]!r}"
            )
    nesting = max(len(site["cond_indep_stack"]) for site in model_sites.values())
    return Sites(observed, latent, data_dim, nesting, model_sites[observed[0]]["fn"].support)


def _data_dim(site: dict[str, Any], batch: int, name: str, site_name: str) -> int:
    """The dim of the plate over the batch that ``site`` is in (the outermost of that size)."""
    for frame in reversed(site["cond_indep_stack"]):
        if frame.vectorized and frame.size == batch:
            return frame.dim
    raise ConfigError(
        f"site {site_name!r} of program {name!r} is not in a data plate: put the batch's sites "
        f"inside pyro.plate(..., {batch}) over the examples, as Pyro's VAE tutorial does"
    )


class ObservedSupport:
    """What the binarization asks of a program's observations (the
    :class:`~pyro_vae.data.sources.Scores` protocol): whether its observed site's support is
    binary, and whether data lie in it.

    :param support: the observed site's support.
    :param site: the site's name, for the message.
    """

    def __init__(self, support: Any, site: str):
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        self.support = support  # per value: the data are checked value by value
        #: binary observations: grey data are binarized (``binarization='dynamic'``)
        self.binary = support is constraints.boolean
        self.name = f"the support of site {site!r}"

    def check_data(self, x: torch.Tensor) -> None:
        """Refuse data outside the site's support, in one line.

        :param x: float values in [0, 1], or the distinct ones.
        """
        if not bool(self.support.check(x).all()):
            raise DataError(
                f"the data are not all in {self.name} ({self.support}); binarize them "
                "({binarization} dynamic) or observe them with a fitting distribution"
            )


def user_objectives(elbo_twin: bool, iwae_twin: bool) -> dict[str, Objective]:
    """The objectives of a program: Pyro's ``trace``, ``meanfield`` and ``iwae``, and the
    hand-written twins it has, ``manual`` (its ``manual_elbo``) and ``manual-iwae`` (its
    ``manual_iwae``), which ``check-elbo`` holds Pyro's against.

    :param elbo_twin: whether the program has ``manual_elbo``.
    :param iwae_twin: whether it has ``manual_iwae``.
    """
    objectives = {"trace": replace(TRACE, twin="manual" if elbo_twin else None),
                  "meanfield": MEANFIELD,
                  "iwae": replace(IWAE, twin="manual-iwae" if iwae_twin else None)}  # fmt: skip
    if elbo_twin:
        objectives["manual"] = Objective(_manual_elbo_loss, True, "manual")
    if iwae_twin:
        objectives["manual-iwae"] = Objective(_manual_iwae_loss, False, "manual")
    return objectives


def _manual_elbo_loss(model: UserProgram, num_particles: int) -> Callable[..., torch.Tensor]:
    def loss(x: torch.Tensor, kl_weight: Any = 1.0) -> torch.Tensor:
        return -model.program.manual_elbo(
            model.inputs(x), num_particles=num_particles, kl_weight=kl_weight
        )

    return loss


def _manual_iwae_loss(model: UserProgram, num_particles: int) -> Callable[..., torch.Tensor]:
    def loss(x: torch.Tensor, kl_weight: Any = 1.0) -> torch.Tensor:
        return -model.program.manual_iwae(model.inputs(x), num_particles).sum()

    return loss


#: what a program may train with: Pyro's objectives and the twins a program may have
USER_OBJECTIVES = user_objectives(elbo_twin=True, iwae_twin=True)


class UserProgram(Program):
    """A Pyro program of your own, with pyro-vae's training, evaluation and run folders: the
    protocol of :class:`~pyro_vae.models.program.Program` for a module whose ``model(x)`` and
    ``guide(x)`` take a batch of examples as floats ``(B, *x_shape)`` (``uint8`` images as
    ``k / 255``, binarized when its observed site is binary).

    Its sites are read from its trace on ``example`` (:func:`read_sites`); a program that has no
    data plate, or whose guide lacks a latent site of its model, is refused in one line. The
    program is a submodule: training updates its parameters in place.

    :param program: the module with ``model`` and ``guide`` methods.
    :param x_shape: the shape of one example.
    :param example: a batch of examples to read its sites from, as a data set stores them;
        ``None``: zeros.
    :param name: the program's name in messages; ``None``: its class's.
    """

    name = "program"
    description = "your own Pyro program: pyro-vae train --program FILE.py:Class"
    model_settings = ("program", "program_options", "program_sha256")
    objectives = USER_OBJECTIVES  # those a program may have; each instance has its own

    def __init__(
        self,
        program: nn.Module,
        x_shape: Sequence[int],
        example: torch.Tensor | None = None,
        name: str | None = None,
    ):
        super().__init__()
        self.name = name or type(program).__name__
        for method in ("model", "guide"):
            if not callable(getattr(program, method, None)):
                raise ConfigError(
                    f"program {self.name!r} has no method {method!r}: a program "
                    "defines model(x) and guide(x)"
                )
        if not isinstance(program, nn.Module) or not any(True for _ in program.parameters()):
            raise ConfigError(f"program {self.name!r} is not an nn.Module with parameters to train")
        self.program, self.x_shape = program, tuple(x_shape)
        if example is None:
            example = torch.zeros(PROBE_BATCH, *self.x_shape)
        self.sites = read_sites(self.model, self.guide, example[:PROBE_BATCH], self.name)
        self.max_plate_nesting, self.data_dim = self.sites.nesting, self.sites.data_dim
        self.likelihood = ObservedSupport(self.sites.support, self.sites.observed[0])
        self.objectives = user_objectives(
            elbo_twin=callable(getattr(program, "manual_elbo", None)),
            iwae_twin=callable(getattr(program, "manual_iwae", None)),
        )
        self.sha256: str | None = None  # of the file it came from (make_program)

    @classmethod
    def build(
        cls,
        x_shape: Sequence[int],
        num_classes: int,
        program: str | None = None,
        program_options: dict[str, Any] | None = None,
        program_sha256: str | None = None,
    ) -> UserProgram:
        """The program of class ``program`` (``FILE.py:Class`` or ``package.module:Class``), made
        with ``program_options`` (:func:`make_program`); refused in one line when its file is not
        the one of ``program_sha256``.

        :param x_shape: the shape of one example.
        :param num_classes: unused: a program takes no labels.
        :param program: where the class is.
        :param program_options: its constructor's keyword arguments.
        :param program_sha256: the hash its file must have, as the run recorded it.
        """
        if program is None:
            raise ConfigError("names no program class: FILE.py:Class", "program")
        source = find_program(program, program_sha256)
        return make_program(source, dict(program_options or {}), x_shape)

    def recorded_settings(self) -> dict[str, Any]:
        """The settings a new run records with it: the SHA-256 of the program's file."""
        return {} if self.sha256 is None else {"program_sha256": self.sha256}

    def adopt(self, module: nn.Module) -> UserProgram:
        """``module`` in place of this program, which the run's settings built: refused in one
        line unless it has the very parameters (names and shapes), so that the run folder can
        build it again.

        :param module: your own program, of this program's class.
        """
        shapes = {k: v.shape for k, v in self.program.state_dict().items()}
        if {k: v.shape for k, v in module.state_dict().items()} != shapes:
            raise ConfigError(
                f"does not build program {self.name!r} as given (its parameters differ): pass its "
                "constructor's keyword arguments",
                "program_options",
            )
        adopted = UserProgram(module, self.x_shape, name=self.name)
        adopted.sha256 = self.sha256
        return adopted

    @property
    def config(self) -> dict[str, Any]:
        """What the checkpoint records of the model: the example shape."""
        return {"x_shape": list(self.x_shape)}

    def model(self, x: torch.Tensor, kl_weight: Any = 1.0) -> Any:
        """The program's model on ``x`` as floats, its latent sites weighed by ``kl_weight``.

        :param x: a batch of examples, as a data set stores them.
        :param kl_weight: w, the latent sites' weight (:class:`LatentScale`); 1 for the ELBO.
        """
        with _weighed(kl_weight):
            return self.program.model(self.inputs(x))

    def guide(self, x: torch.Tensor, kl_weight: Any = 1.0) -> Any:
        """The program's guide on ``x`` as floats, its sites weighed by ``kl_weight``.

        :param x: a batch of examples, as a data set stores them.
        :param kl_weight: w, the sites' weight (:class:`LatentScale`); 1 for the ELBO.
        """
        with _weighed(kl_weight):
            return self.program.guide(self.inputs(x))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, label: int | None = None) -> torch.Tensor:
        """``n`` examples from the program's ``sample(n)`` (``sample(n, mean=False)`` for draws
        rather than means), shaped ``(n, *x_shape)``.

        :param n: the number of examples.
        :param mean: means of p(x|z) rather than draws.
        :param label: must be ``None``: a program draws no labels.
        """
        if label is not None:
            raise ConfigError(f"{{label}} is for the models that know labels, not {self.name!r}")
        sample = self._method("sample", "the samples")
        return (sample(n) if mean else sample(n, mean=False)).reshape(n, *self.x_shape)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The program's ``reconstruct(x)``, shaped like ``x``.

        :param x: a batch of examples, as a data set stores them.
        """
        return self._method("reconstruct", "the reconstructions")(self.inputs(x)).reshape(x.shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The program's ``encode(x)``: its code of each example first.

        :param x: a batch of examples, as a data set stores them.
        """
        return self._method("encode", "the walks")(self.inputs(x))

    def _method(self, method: str, needed_by: str) -> Callable[..., Any]:
        found = getattr(self.program, method, None)
        if not callable(found):
            raise MissingMethod(
                f"{needed_by} need the method {method!r}, which program {self.name!r} does not have"
            )
        return found


def _weighed(kl_weight: Any) -> Any:
    # weight 1 changes nothing: the program runs exactly as it would under plain SVI
    one = isinstance(kl_weight, int | float) and kl_weight == 1
    return nullcontext() if one else LatentScale(kl_weight)


def as_program(
    module: nn.Module, x_shape: Sequence[int], example: torch.Tensor | None = None
) -> Program:
    """``module`` as the library takes a model: a :class:`~pyro_vae.models.program.Program` as it
    is, any other module with ``model`` and ``guide`` methods wrapped in a :class:`UserProgram`.

    :param module: a built-in model, or your own Pyro program.
    :param x_shape: the shape of one example.
    :param example: a batch of examples to read its sites from, as a data set stores them.
    """
    if isinstance(module, Program):  # the entrance: anything else is wrapped once, here
        return module
    return UserProgram(module, x_shape, example)


def make_program(
    source: ProgramSource,
    options: dict[str, Any],
    x_shape: Sequence[int],
    example: torch.Tensor | None = None,
    kind: type[UserProgram] | None = None,
) -> UserProgram:
    """``source.cls(**options)`` wrapped for the library (:class:`UserProgram`); ``x_shape`` is
    also given to a constructor that takes a parameter of that name.

    :param source: the program's class.
    :param options: its constructor's keyword arguments.
    :param x_shape: the shape of one example.
    :param example: a batch of examples to read its sites from.
    :param kind: the wrapper, a registered kind of program (``hvae``); ``None``: a
        :class:`UserProgram` named after the class.
    """
    cls = source.cls
    if "x_shape" in inspect.signature(cls).parameters and "x_shape" not in options:
        options = {"x_shape": tuple(x_shape), **options}
    try:
        module = cls(**options)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"{options} does not fit program {cls.__name__!r}: {error}", "program_options"
        ) from None
    program = UserProgram(module, x_shape, example) if kind is None else kind(module, x_shape)
    program.sha256 = source.sha256
    return program

"""The run configuration: every setting of a training run, typed, in sections.

:class:`RunConfig` holds a run's settings in four sections, frozen dataclasses that check their
own fields: :class:`DataConfig` (the data set), :class:`ModelConfig` (the model and its parts),
:class:`ObjectiveConfig` (what training maximizes) and :class:`TrainingConfig` (how it runs), and
``tensorboard``. The rules across sections (an objective against the model, the guide and the
epochs; M2's labelled examples) are :class:`RunConfig`'s.

It is the single source of truth for a run: ``pyro-vae train``'s flags are made from its fields
(each field's :class:`Setting`, in its metadata, has the help text, the choices and how to read
a value from text), ``config.json`` in a run folder is it serialized, ``--config FILE`` reads it
back (JSON, or TOML), ``--resume`` compares it setting by setting. Every setting's name is unique
across the sections, so a Python user may write the settings flat::

    config = RunConfig(dataset="digits", z_dim=8, epochs=50, lr=3e-3)
    config.training.epochs                  # 50: read through its section
    config = config.replace(epochs=80)      # a copy, checked again
    run = pyro_vae.Run.create("runs/digits", config)

Every field is checked when the object is made (:mod:`pyro_vae.validation`), so a bad value in a
file is one error naming the setting, before any data is read or any file is written. A new
setting is one field, with its :func:`setting`, and the code that uses it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pyro_vae import validation
from pyro_vae.data.sources import BINARIZATION, DATASETS, Dataset, load_dataset
from pyro_vae.errors import ConfigError, mention
from pyro_vae.infer.compiling import COMPILE
from pyro_vae.infer.elbo import OBJECTIVES, Objective
from pyro_vae.models import MODELS
from pyro_vae.models.m2 import DEFAULT_AUX_WEIGHT
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.networks import NETS
from pyro_vae.parts.priors import PRIORS
from pyro_vae.parts.registry import option_names

try:  # Python 3.11 reads TOML; on 3.10 a .toml config is refused with one line
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    tomllib = None

#: the parts' registries by kind, whose options a model's settings may hold
PARTS: dict[str, dict[str, type]] = {"prior": PRIORS, "likelihood": LIKELIHOODS, "guide": GUIDES}
SETTING = "setting"  # the key of a field's Setting in its metadata


# ----------------------------------------------------------------------------------------------
# A value from text: a flag's, e.g.


def whole_number(text: str) -> int:
    """A whole number written out, ``"12"``.

    :param text: the text to read.
    """
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"expected a whole number, got {text[:40]!r}") from None


def number(text: str) -> float:
    """A number written out, ``"0.001"`` or ``"1e-3"``.

    :param text: the text to read.
    """
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"expected a number, got {text[:40]!r}") from None


def json_object(text: str) -> dict[str, Any]:
    """A JSON object written out, ``'{"z_dim": 8}'``.

    :param text: the text to read.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"expected a JSON object, got {text[:40]!r} ({e.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"expected a JSON object {{...}}, got {text[:40]!r}")
    return value


def sizes(text: str) -> tuple[int, ...]:
    """Comma-separated sizes, ``"400"`` or ``"512,256"``.

    :param text: the text to read.
    """
    try:
        return validation.sizes("size", [whole_number(t) for t in text.split(",")])
    except ConfigError as e:
        raise ConfigError(
            f"expected comma-separated positive sizes such as 400 or 512,256 ({e.problem})"
        ) from None


# ----------------------------------------------------------------------------------------------
# What a setting says of itself.


@dataclass(frozen=True)
class Setting:
    """What a field of the configuration says of itself, in its metadata: how a value is checked
    and read from text, and the help text the command line shows for it.

    :param help: what the setting does, in a phrase; other settings it names written in braces,
        ``{data_dir}`` (:func:`pyro_vae.errors.mention` spells them).
    :param check: ``check(name, value)``: the value checked and normalized, or a
        :class:`~pyro_vae.errors.ConfigError`; ``None``: any value (or one of ``choices``).
    :param parse: reads a value from text (a flag's): :func:`whole_number`, :func:`number`,
        :func:`sizes` or ``str``; ``bool`` for a switch, on or off; ``None`` for a setting with no
        flag of its own (the parts' options, set by :data:`PART_OPTIONS`).
    :param choices: the names allowed, e.g. a registry, read when asked (parts registered later
        count); ``None``: any value ``check`` accepts.
    :param resumable: whether a resumed run may change it (:meth:`pyro_vae.runs.folder.Run.resume`).
    :param flag: the flag's name where it is not the setting's (``binarize`` for ``binarization``).
    """

    help: str
    check: Callable[[str, Any], Any] | None = None
    parse: Callable[[str], Any] | None = str
    choices: Iterable[str] | None = None
    resumable: bool = False
    flag: str | None = None

    def checked(self, name: str, value: Any) -> Any:
        """``value`` checked (and normalized: a list of sizes becomes a tuple) as setting ``name``.

        :param name: the setting's name, for the error message.
        :param value: the value to check.
        """
        if self.choices is not None:
            return validation.choice(name, value, list(self.choices))
        return value if self.check is None else self.check(name, value)


@dataclass(frozen=True)
class PartOption(Setting):
    """A setting that goes into the options of every chosen part that takes it
    (:meth:`RunConfig.replace`): ``flow_steps`` into the flow prior's and the iaf guide's.

    :param help: what the option does, in a phrase.
    :param check: ``check(name, value)``: the value checked.
    :param parse: reads a value from text (a flag's).
    :param choices: unused: an option takes any value ``check`` accepts.
    :param resumable: unused: a resumed run keeps its parts.
    :param flag: the flag's name where it is not the setting's.
    :param kinds: the kinds of part it may reach, of :data:`PARTS`.
    :param option: the option's name in those parts.
    """

    kinds: tuple[str, ...] = ()
    option: str = ""


#: the parts' options that may be set by name (:meth:`RunConfig.replace`), each reaching every
#: chosen part that takes it, and an error if none does
PART_OPTIONS: dict[str, PartOption] = {
    "prior_components": PartOption("mixture components of mog/vamp", validation.count,
                                   whole_number, kinds=("prior",), option="components"),
    "prior_df": PartOption("degrees of freedom of student-t", validation.positive, number,
                           kinds=("prior",), option="df"),
    "likelihood_scale": PartOption("scale of the gaussian", validation.positive, number,
                                   kinds=("likelihood",), option="scale"),
    "likelihood_min_scale": PartOption(
        "floor of the learned scale of gaussian-learned and laplace", validation.positive,
        number, kinds=("likelihood",), option="min_scale"),
    "likelihood_bins": PartOption(
        "grey levels of discretized-logistic (256 for 8-bit, 17 for digits)", validation.bins,
        whole_number, kinds=("likelihood",), option="bins"),
    "flow_steps": PartOption("flow steps of the flow prior and the iaf guide", validation.count,
                             whole_number, kinds=("prior", "guide"), option="flow_steps"),
}  # fmt: skip


def setting(default: Any, help: str, **about: Any) -> Any:
    """A configuration field: its default, and its :class:`Setting` in its metadata.

    :param default: the default value; an empty dict is made afresh for each config.
    :param help: what the setting does, in a phrase (:class:`Setting`).
    :param about: the :class:`Setting`'s other fields: ``check``, ``parse``, ``choices``, ...
    """
    metadata = {SETTING: Setting(help, **about)}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


def setting_of(name: str) -> Setting:
    """The :class:`Setting` of a setting by name: a section's field, ``tensorboard``, or a part's
    option of :data:`PART_OPTIONS`.

    :param name: the setting's name, e.g. ``"z_dim"``.
    """
    return PART_OPTIONS[name] if name in PART_OPTIONS else FIELDS[name].metadata[SETTING]


def _documented(cls: type) -> type:
    """``cls`` with a ``:param:`` line for each field in its docstring, the field's help."""
    lines = [
        f":param {f.name}: {mention(f.metadata[SETTING].help, lambda name: f'``{name}``')}."
        for f in dataclasses.fields(cls)
    ]
    cls.__doc__ = inspect.cleandoc(cls.__doc__ or "") + "\n\n" + "\n".join(lines)
    return cls


# ----------------------------------------------------------------------------------------------
# The sections.


class Section:
    """What the sections of a :class:`RunConfig` share: each field checked by its
    :class:`Setting` when the section is made."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = f.metadata[SETTING].checked(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)  # normalized: a list of sizes becomes a tuple

    def values(self) -> dict[str, Any]:
        """The fields by name, as they are (not copied)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _program_spec(name: str, spec: Any) -> str | None:
    if spec is None:
        return None
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"must be FILE.py:Class or package.module:Class, got {spec!r}", name)
    where, _, cls = spec.rpartition(":")
    if where.endswith(".py") or Path(where).exists():  # a file: found from any folder later
        where = str(Path(where).resolve())
    return f"{where}:{cls}"


def _part_options(name: str, options: Any) -> dict[str, Any]:
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"must map option names to values, got {options!r}", name)
    return dict(options)


@_documented
@dataclass(frozen=True)
class DataConfig(Section):
    """The data set (:func:`pyro_vae.data.sources.load_dataset`)."""

    dataset: str = setting(
        "digits",
        "data set: digits (8x8 grey) and photos (32x32 colour patches of two photographs) are "
        "embedded and work offline; the MNIST family, cifar10, cifar100, svhn and celeba are "
        "read from {data_dir} (downloaded there when online); folder: your own pictures in "
        "{data_dir}; npz: arrays in {data_path}; prepared: a copy that pyro-vae prepare made in "
        "{data_dir}, memory-mapped (it may be larger than memory)",
        choices=DATASETS,
    )
    data_dir: str | None = setting(
        None,
        "folder with the data set's files: the MNIST family's IDX files (DIR/MNIST/raw/... or "
        "directly), torchvision's CIFAR, SVHN or CelebA files, or for {dataset} folder your "
        "pictures (PNG/JPEG), one sub-folder per class or all in one, for {dataset} prepared the "
        "prepared copy; default: data",
        check=validation.path,
    )
    data_path: str | None = setting(
        None,
        "an .npz file with arrays x_train, x_test (floats in [0,1] or uint8 8-bit images) and "
        "optional y_train, y_test, for {dataset} npz",
        check=validation.path,
    )
    image_size: int | None = setting(
        None,
        "pictures (folder, cifar, svhn, celeba): resize the shorter side to S and crop the "
        "centre SxS (default: as the files are; 64 for celeba)",
        check=partial(validation.optional, validation.size),
        parse=whole_number,
    )
    channels: int | None = setting(
        None,
        "pictures: 1 makes them grey, 3 colour (default: as the files are)",
        check=partial(validation.optional, validation.channels),
        parse=whole_number,
    )

    def options(self) -> dict[str, Any]:
        """The keyword arguments :func:`~pyro_vae.data.sources.load_dataset` takes besides the
        data set's name."""
        return {name: value for name, value in self.values().items() if name != "dataset"}

    def load(self) -> Dataset:
        """The data set these settings name (:func:`~pyro_vae.data.sources.load_dataset`)."""
        return load_dataset(self.dataset, **self.options())


@_documented
@dataclass(frozen=True)
class ModelConfig(Section):
    """The model and its parts: :class:`pyro_vae.VAE`'s keyword arguments, or by name one of
    :data:`~pyro_vae.models.MODELS`. ``aux_weight`` other than its default is for M2 only."""

    model: str = setting(
        "vae",
        "vae: p(x|z) p(z); cvae: conditional on the label, p(x|y,z) p(z) with y observed; m2: "
        "semi-supervised (Kingma et al. 2014), y observed for {labeled} examples and summed out "
        "(enumerated) for the rest",
        choices=MODELS,
    )
    z_dim: int = setting(16, "size of the latent code z", check=validation.size,
                         parse=whole_number)  # fmt: skip
    hidden_dims: tuple[int, ...] = setting(
        (400,),
        "comma-separated hidden sizes, encoder order: layer widths for mlp, channel counts for "
        "conv and resnet (e.g. 400 or 512,256; 32,64 for resnet)",
        check=validation.sizes,
        parse=sizes,
    )
    encoder: str = setting("mlp", "network family of encoder and decoder", choices=NETS)
    prior: str = setting("standard-normal", "prior p(z)", choices=PRIORS)
    likelihood: str = setting("bernoulli", "likelihood p(x|z)", choices=LIKELIHOODS)
    guide: str = setting("diagonal", "guide family q(z|x)", choices=GUIDES)
    prior_options: dict[str, Any] = setting(
        {}, "the prior's options by name, e.g. {'components': 10}", check=_part_options, parse=None
    )
    likelihood_options: dict[str, Any] = setting(
        {}, "the likelihood's options by name, e.g. {'bins': 17}", check=_part_options, parse=None
    )
    guide_options: dict[str, Any] = setting(
        {}, "the guide's options by name, e.g. {'flow_steps': 4}", check=_part_options, parse=None
    )
    aux_weight: float = setting(
        DEFAULT_AUX_WEIGHT,
        "m2: alpha, the weight of the classifier's log q(y|x) on labelled examples (0: none)",
        check=validation.non_negative,
        parse=number,
    )
    program: str | None = setting(
        None,
        "your own Pyro program, FILE.py:Class or package.module:Class: a module with model(x) "
        "and guide(x) methods, trained in place of a built-in {model}; opening the run imports "
        "the file again, which runs its code",
        check=_program_spec,
    )
    program_options: dict[str, Any] = setting(
        {},
        "the keyword arguments of the program's class (of {program}, or of {model} hvae), as a "
        "JSON object, e.g. '{\"z_dim\": 8}'",
        check=_part_options,
        parse=json_object,
    )
    program_sha256: str | None = setting(
        None, "the SHA-256 of the program's file, recorded when the run is made", parse=None
    )

    def __post_init__(self) -> None:
        if (self.program is not None or self.program_options) and self.model == "vae":
            object.__setattr__(self, "model", "program")  # a program's settings name the kind
        super().__post_init__()
        takes = MODELS[self.model].model_settings
        for f in dataclasses.fields(self):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if f.name != "model" and f.name not in takes and getattr(self, f.name) != default:
                takers = [
                    repr(name) for name, kind in MODELS.items() if f.name in kind.model_settings
                ]
                takers = (
                    ", ".join(takers[:-1]) + " or " + takers[-1] if len(takers) > 1 else takers[0]
                )
                raise ConfigError(f"is for {{model}} {takers}, not {self.model!r}", f.name)

    def options(self) -> dict[str, Any]:
        """The keyword arguments of the model's class besides ``x_shape`` and ``num_classes``
        (:func:`~pyro_vae.models.build_model`): the settings its kind takes (its
        ``model_settings``), :class:`pyro_vae.VAE`'s for the VAE."""
        takes = MODELS[self.model].model_settings
        return {name: value for name, value in self.values().items() if name in takes}


@_documented
@dataclass(frozen=True)
class ObjectiveConfig(Section):
    """What training maximizes (:func:`pyro_vae.train`'s ``objective`` and its settings)."""

    objective: str = setting(
        "trace",
        "trace: Trace_ELBO; meanfield: TraceMeanField_ELBO (analytic KL); iwae: the "
        "importance-weighted bound, RenyiELBO(alpha=0), per example over {num_particles}; "
        "iwae-dreg: the same bound with the doubly reparameterized guide gradient (diagonal "
        "guide); manual, manual-iwae: the hand-written ELBO and IWAE bound in plain PyTorch",
        choices=OBJECTIVES,
    )
    num_particles: int = setting(
        1,
        "K vectorized particles per example: the ELBO averages over them, iwae log-mean-exps",
        check=partial(validation.whole, high=validation.MAX_PARTICLES),
        parse=whole_number,
    )
    beta: float = setting(
        1.0,
        "weight of the KL term: E[log p(x|z)] - beta KL(q(z|x) || p(z)); 1 is the ELBO",
        check=validation.positive,
        parse=number,
    )
    kl_warmup: int = setting(
        0,
        "N epochs over which the KL weight rises linearly, beta/N, 2 beta/N, ..., beta; "
        "0: none. The test ELBO is always the ELBO, weight 1",
        check=partial(validation.whole, low=0),
        parse=whole_number,
    )


@_documented
@dataclass(frozen=True)
class TrainingConfig(Section):
    """How training runs (:func:`pyro_vae.train`)."""

    epochs: int = setting(20, "passes over the training set", check=validation.count,
                          parse=whole_number, resumable=True)  # fmt: skip
    batch_size: int = setting(128, "examples per SVI step", check=validation.count,
                              parse=whole_number)  # fmt: skip
    lr: float = setting(1e-3, "Adam learning rate", check=validation.positive, parse=number,
                        resumable=True)  # fmt: skip
    seed: int = setting(0, "seeds weights, batch order and noise", check=validation.seed,
                        parse=whole_number)  # fmt: skip
    labeled: int | None = setting(
        None,
        "m2: the number of training examples whose labels it sees, picked with {seed}, "
        "balanced over the classes; the rest are used without labels",
        check=partial(validation.optional, validation.count),
        parse=whole_number,
    )
    binarization: str = setting(
        "dynamic",
        "dynamic: for a binary likelihood, binarize grey training data afresh in each batch and "
        "the test set once with a fixed seed; none: use data as is",
        choices=BINARIZATION,
        flag="binarize",
    )
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", check=validation.text,
                          resumable=True)  # fmt: skip
    compile: str = setting(
        "auto",
        "on: after the first step, capture the Pyro program's step as one graph and compile it; "
        "auto: compile when the steps ahead repay the compile time; off: every step eager",
        choices=COMPILE,
        resumable=True,
    )
    stream: bool = setting(
        False,
        "keep the training set in host memory and stream batches to the device through a "
        "DataLoader, as is done anyway for a set larger than half the device's memory; the "
        "same steps and metrics as in memory",
        check=validation.flag,
        parse=bool,
        resumable=True,
    )
    workers: int = setting(
        2,
        "DataLoader worker processes when streaming (0: in the main process)",
        check=partial(validation.whole, low=0),
        parse=whole_number,
        resumable=True,
    )
    clip_norm: float | None = setting(
        None,
        "clip the gradients' global norm to this value after the all-reduce; off by default",
        check=partial(validation.optional, validation.positive),
        parse=number,
    )


#: the sections of a :class:`RunConfig`, by the name of its field that holds each
SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "objective": ObjectiveConfig,
    "training": TrainingConfig,
}


# ----------------------------------------------------------------------------------------------
# The run's configuration, and the rules across its sections.


@dataclass(frozen=True, init=False)
class RunConfig:
    """Every setting of a run, in sections: the data, the model, the objective and the training;
    and ``tensorboard``. ``pyro-vae train --help`` has a flag for each setting; the defaults are
    the fields'.

    Settings given by name go to their sections: ``RunConfig(dataset="digits", z_dim=8,
    epochs=50)`` is ``RunConfig(data=DataConfig(dataset="digits"), model=ModelConfig(z_dim=8),
    training=TrainingConfig(epochs=50))``. ``model`` and ``objective`` name both a section and a
    setting in it: a string is the model's or the objective's name, ``RunConfig(model="m2",
    labeled=100)``. Read the settings through the sections, ``config.model.z_dim``, or all of
    them by name with :meth:`settings`.

    :param data: the data set's settings; ``None``: the defaults.
    :param model: the model's settings, or the model's name (``"vae"``, ``"cvae"``, ``"m2"``);
        ``None``: the defaults.
    :param objective: the objective's settings, or its name (``"trace"``, ``"iwae"``, ...);
        ``None``: the defaults.
    :param training: how training runs; ``None``: the defaults.
    :param tensorboard: write TensorBoard event files after every epoch
        (:mod:`pyro_vae.runs.board`).
    :param settings: settings by name, each onto its section's: ``z_dim=8``, ``epochs=50``.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tensorboard: bool = setting(
        False,
        "after every epoch, write TensorBoard event files into RUN_DIR/tensorboard: each "
        "step's loss, the train and test ELBO, the test ELBO's reconstruction and KL terms, "
        "active units, reconstructions and samples; watch with tensorboard --logdir runs "
        "(needs pip install pyro-vae[tensorboard])",
        check=validation.flag,
        parse=bool,
        resumable=True,
    )

    def __init__(
        self,
        data: DataConfig | None = None,
        model: ModelConfig | str | None = None,
        objective: ObjectiveConfig | str | None = None,
        training: TrainingConfig | None = None,
        tensorboard: bool = False,
        **settings: Any,
    ):
        given = {"data": data, "model": model, "objective": objective, "training": training}
        for name in ("model", "objective"):  # RunConfig(model="m2"): the name, not the section
            if given[name] is not None and not isinstance(given[name], SECTIONS[name]):
                settings[name], given[name] = given[name], None
        unknown = [name for name in settings if name not in SECTION_OF]
        if unknown:
            raise TypeError(
                f"RunConfig has no setting(s) {', '.join(unknown)}; the settings are: "
                f"{', '.join(FIELDS)}"
            )
        for name in SECTIONS:
            object.__setattr__(self, name, _section(name, given[name], settings))
        tensorboard = setting_of("tensorboard").checked("tensorboard", tensorboard)
        object.__setattr__(self, "tensorboard", tensorboard)
        _check_across(self)

    def settings(self) -> dict[str, Any]:
        """Every setting by name, the sections' and ``tensorboard``: what :meth:`changes`
        compares, and what the ``config.json`` of runs written before the sections held."""
        flat = {}
        for name in SECTIONS:
            flat.update(getattr(self, name).values())
        return flat | {"tensorboard": self.tensorboard}

    def to_dict(self) -> dict[str, Any]:
        """The sections as plain JSON data, a table each: what ``config.json`` holds."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the config") -> RunConfig:
        """The config with these settings (the others at their defaults): in tables by section,
        as :meth:`to_dict` writes them, or by name, as the ``config.json`` of runs written before
        the sections holds them, or both. An unknown key is an error that lists the known ones.

        :param values: settings by name, or tables of them by section
            (``{"model": {"z_dim": 8}}``).
        :param source: where they come from, for the error messages.
        """
        if not isinstance(values, dict):
            raise ConfigError(
                f"{source} must hold a table of settings, not {type(values).__name__}"
            )
        tables = {k: v for k, v in values.items() if k in SECTIONS and isinstance(v, dict)}
        flat = {k: v for k, v in values.items() if k not in tables}
        unknown = sorted(set(flat) - set(FIELDS))
        if unknown:
            raise ConfigError(
                f"{source} has unknown setting(s) {', '.join(unknown)}; the settings are: "
                f"{', '.join(FIELDS)}"
            )
        for name, table in tables.items():
            own = [f.name for f in dataclasses.fields(SECTIONS[name])]
            if unknown := sorted(set(table) - set(own)):
                raise ConfigError(
                    f"{source} has unknown setting(s) {', '.join(unknown)} in its {name} table; "
                    f"its settings are: {', '.join(own)}"
                )
            if twice := sorted(set(table) & set(flat)):
                raise ConfigError(f"{source} sets {', '.join(twice)} in its {name} table and out")
            flat |= table
        return cls(**flat)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """A config file: JSON (``config.json`` of a run folder, say) or TOML (``.toml``).

        :param path: the file; ``.toml`` is read as TOML, any other as JSON.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file at {path}")
        try:
            if path.suffix.lower() == ".toml":
                if tomllib is None:
                    raise ConfigError(f"{path}: reading TOML needs Python 3.11; use JSON")
                values = tomllib.loads(path.read_text())
            else:
                values = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:  # JSON's and TOML's decode errors
            kind = path.suffix[1:].upper() or "JSON"
            raise ConfigError(f"{path} is not valid {kind} ({e})") from None
        return cls.from_dict(values, source=str(path))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes``, checked like any new config: settings by name
        (``epochs=50``), whole sections (``training=TrainingConfig(...)``), and the parts'
        options of :data:`PART_OPTIONS` (``flow_steps=4``), which go into the options of every
        chosen part that takes them, after the other changes.

        :param changes: the settings to change, by name: ``config.replace(epochs=50)``.
        """
        flat, routed = self.settings(), {}
        for name, value in changes.items():
            if name in PART_OPTIONS:
                routed[name] = value
            elif name in SECTIONS and isinstance(value, SECTIONS[name]):
                flat.update(value.values())
            else:
                flat[name] = value
        config = RunConfig(**flat)
        return config._with_part_options(routed) if routed else config

    def _with_part_options(self, routed: dict[str, Any]) -> RunConfig:
        """A copy with the parts' options of :data:`PART_OPTIONS` in every chosen part that takes
        them; an option that no chosen part takes is an error."""
        model = self.model
        options = {kind: dict(getattr(model, f"{kind}_options")) for kind in PARTS}
        for name, value in routed.items():
            about = PART_OPTIONS[name]
            chosen = {kind: getattr(model, kind) for kind in about.kinds}
            takers = [k for k, n in chosen.items() if about.option in option_names(PARTS[k][n])]
            if not takers:
                names = " and ".join(f"the {kind} {part!r}" for kind, part in chosen.items())
                raise ConfigError(f"does not apply to {names}; see pyro-vae list", name)
            for kind in takers:
                param = f'{kind}_options["{about.option}"]'
                options[kind][about.option] = about.checked(param, value)
        return self.replace(**{f"{kind}_options": values for kind, values in options.items()})

    def changes(self, other: RunConfig) -> list[tuple[str, Any, Any]]:
        """``(name, ours, theirs)`` for every setting in which ``other`` differs.

        :param other: the config to compare with.
        """
        theirs = other.settings()
        return [(k, v, theirs[k]) for k, v in self.settings().items() if v != theirs[k]]


def _check_across(config: RunConfig) -> None:
    """The rules across sections: the objective against the model, its guide and the epochs;
    M2's labelled examples against the model."""
    model, objective = config.model, config.objective
    check_objective(
        objective.objective,
        objective.num_particles,
        objective.beta,
        objective.kl_warmup,
        config.training.epochs,
        model.guide,
        model.model,
    )
    check_labeled(model.model, config.training.labeled)


def _section(name: str, base: Any, settings: dict[str, Any]) -> Section:
    """Section ``name`` of a new config: ``base`` (one of that section's class, or ``None`` for
    the defaults) with those of ``settings``, settings by name, that belong to it."""
    cls = SECTIONS[name]
    changes = {key: value for key, value in settings.items() if SECTION_OF[key] == name}
    if base is None:
        return cls(**changes)
    if not isinstance(base, cls):
        raise ConfigError(f"must be a {cls.__name__}, got {type(base).__name__}", name)
    return dataclasses.replace(base, **changes) if changes else base


#: every setting's field by name: the sections' fields, and ``tensorboard``
FIELDS: dict[str, dataclasses.Field] = {
    f.name: f for cls in SECTIONS.values() for f in dataclasses.fields(cls)
} | {"tensorboard": next(f for f in dataclasses.fields(RunConfig) if f.name == "tensorboard")}
#: the section of each section's setting
SECTION_OF: dict[str, str] = {
    f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)
}
#: what a resumed run may change; any other difference from the saved run is an error
RESUMABLE: tuple[str, ...] = tuple(name for name in FIELDS if setting_of(name).resumable)


def check_objective(
    objective: str,
    num_particles: int = 1,
    beta: float = 1.0,
    kl_warmup: int = 0,
    epochs: int | None = None,
    guide: str | None = None,
    model: str = "vae",
    objectives: Mapping[str, Objective] | None = None,
) -> tuple[int, float, int]:
    """``(num_particles, beta, kl_warmup)``, checked against each other, the objective, the
    ``epochs``, the ``guide`` family and the ``model``: each mismatch a :class:`ConfigError`.

    :param objective: the objective's name, as :func:`pyro_vae.train` takes it.
    :param num_particles: K, the particles per example.
    :param beta: the weight of the KL term.
    :param kl_warmup: the warm-up's length in epochs; 0 for none.
    :param epochs: the epochs of training, which the warm-up must not outlast; ``None``: unchecked.
    :param guide: the guide family's name; ``None``: not checked.
    :param model: the model's name in :data:`~pyro_vae.models.MODELS`, whose objectives are allowed.
    :param objectives: the model's objectives, for a model that is not in ``MODELS``; ``None``:
        those of ``MODELS[model]``.
    """
    if objectives is None:
        objectives = MODELS[validation.choice("model", model, list(MODELS))].objectives
    if objective not in objectives:
        raise ConfigError(
            f"{objective!r} is not one of: {', '.join(objectives)} (the objectives of {{model}} "
            f"{model!r})",
            "objective",
        )
    families = objectives[objective].guides
    if guide is not None and families and guide not in families:
        raise ConfigError(
            f"objective {objective!r} needs the guide {' or '.join(map(repr, families))}, not "
            f"{{guide}} {guide!r}: it scores z with the guide's parameters held fixed",
        )
    most = objectives[objective].max_particles
    if most == 1 and num_particles != 1:
        raise ConfigError(
            f"must be 1 for {{model}} {model!r}, which sums over the labels exactly and draws "
            "one z per label",
            "num_particles",
        )
    num_particles = validation.whole("num_particles", num_particles, high=most)
    beta = validation.positive("beta", beta)
    kl_warmup = validation.whole("kl_warmup", kl_warmup, low=0)
    if epochs is not None and kl_warmup > epochs:
        raise ConfigError(
            f"({kl_warmup} epochs) is longer than the training ({{epochs}} {epochs})",
            "kl_warmup",
        )
    if not objectives[objective].weighs_kl:
        for name, value, default in (("beta", beta, 1.0), ("kl_warmup", kl_warmup, 0)):
            if value != default:
                raise ConfigError(
                    f"weighs the KL term of the ELBO, and objective {objective!r}, the IWAE "
                    "bound, has none: use it with objective 'trace' or 'meanfield'",
                    name,
                )
    return num_particles, beta, kl_warmup


def check_labeled(model: str, labeled: int | None) -> int | None:
    """``labeled``, the labelled examples of a semi-supervised ``model`` (M2), checked by the
    model's kind (:meth:`~pyro_vae.models.program.Program.check_labeled`): M2 needs it and the
    other models take none.

    :param model: the model's name in :data:`~pyro_vae.models.MODELS`.
    :param labeled: the number of labelled examples, or ``None``.
    """
    return MODELS[validation.choice("model", model, list(MODELS))].check_labeled(labeled)


def training_sections(
    training: TrainingConfig | None,
    objective: ObjectiveConfig | str | None,
    settings: dict[str, Any],
) -> tuple[TrainingConfig, ObjectiveConfig]:
    """The sections :func:`pyro_vae.train` takes, ``settings`` (flat names, ``epochs=50``)
    routed into them over ``training`` and ``objective`` (the defaults where ``None``; an
    objective given by name is the setting ``objective``), checked together.

    :param training: how training runs, or ``None``.
    :param objective: what it maximizes, its name, or ``None``.
    :param settings: settings of either section by name.
    """
    settings = dict(settings)
    if isinstance(objective, str):
        settings["objective"], objective = objective, None
    if "device" in settings and not isinstance(settings["device"], str):
        settings["device"] = str(settings["device"])  # a torch.device
    if isinstance(settings.get("compile"), bool):  # train(compile=True) as before
        settings["compile"] = "on" if settings["compile"] else "off"
    known = {name for name, section in SECTION_OF.items() if section in ("training", "objective")}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"train() has no setting(s) {', '.join(unknown)}; its settings are: "
            f"{', '.join(sorted(known))}"
        )
    return _section("training", training, settings), _section("objective", objective, settings)

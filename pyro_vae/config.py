"""The run configuration: every setting of a training run, typed, in one object.

:class:`RunConfig` is the single source of truth for a run: ``pyro-vae train``'s flags set its
fields, ``config.json`` in a run folder is it serialized, ``--config FILE`` reads it back (JSON,
or TOML), ``--resume`` compares it field by field, and a Python user builds it directly::

    config = RunConfig(dataset="digits", z_dim=8, epochs=50, lr=3e-3)
    run = pyro_vae.Run.create("runs/digits", config)

Every field is checked when the object is made (:mod:`pyro_vae.validation`), so a bad value in a
file is one error naming the setting, before any data is read or any file is written.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_vae import validation
from pyro_vae.data.sources import BINARIZATION, DATASETS
from pyro_vae.errors import ConfigError
from pyro_vae.infer.compiling import COMPILE
from pyro_vae.models import MODELS
from pyro_vae.models.m2 import DEFAULT_AUX_WEIGHT
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.networks import NETS
from pyro_vae.parts.priors import PRIORS
from pyro_vae.training.trainer import check_labeled, check_objective

try:  # Python 3.11 reads TOML; on 3.10 a .toml config is refused with one line
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    tomllib = None

# What a resumed run may change; any other difference from the saved run is an error.
RESUMABLE = ("epochs", "lr", "device", "compile", "stream", "workers", "tensorboard")
PART_OPTIONS = ("prior_options", "likelihood_options", "guide_options")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run: the data, the model, the training. ``pyro-vae train --help`` has
    a flag for each one; the defaults are the command line's.

    :param dataset: the data set's name, one of :data:`~pyro_vae.data.sources.DATASETS`.
    :param data_dir: the folder its files are in; ``None``:
    :data:`~pyro_vae.data.sources.DEFAULT_DATA_DIR`.
    :param data_path: the ``.npz`` file, for ``dataset="npz"`` only.
    :param image_size: pictures only: resized and centre-cropped to this many pixels a side;
        ``None``: as the files are.
    :param channels: pictures only: 1 (grey) or 3 (colour); ``None``: as the files are.
    :param model: ``"vae"``, ``"cvae"`` or ``"m2"`` (:data:`~pyro_vae.models.MODELS`).
    :param z_dim: the size of the latent code z.
    :param hidden_dims: the encoder's layer widths (``mlp``) or channel counts (``conv``,
        ``resnet``); the decoder mirrors them.
    :param encoder: the family of both networks: ``"mlp"``, ``"conv"`` or ``"resnet"``.
    :param prior: the prior's name in :data:`~pyro_vae.parts.priors.PRIORS`.
    :param likelihood: the likelihood's name in :data:`~pyro_vae.parts.likelihoods.LIKELIHOODS`.
    :param guide: the guide family's name in :data:`~pyro_vae.parts.guides.GUIDES`.
    :param prior_options: the prior's keyword options, e.g. ``{"components": 10}``.
    :param likelihood_options: the likelihood's keyword options, e.g. ``{"bins": 17}``.
    :param guide_options: the guide family's keyword options, e.g. ``{"flow_steps": 4}``.
    :param aux_weight: M2's alpha, the weight of log q(y|x) on labelled examples; for
        ``model="m2"`` only.
    :param epochs: the passes over the training set.
    :param batch_size: the examples of a training step.
    :param lr: Adam's learning rate.
    :param seed: seeds the initial weights, the batch order, the binarization and the guide's
        noise.
    :param objective: the training objective, as :func:`pyro_vae.train` takes it (``"trace"``,
        ``"meanfield"``, ``"iwae"``, ...).
    :param num_particles: K, the vectorized particles of each example's objective.
    :param beta: the weight of the KL term; 1 is the ELBO.
    :param kl_warmup: the epochs over which the KL weight rises linearly to ``beta``; 0 for none.
    :param labeled: M2's number of labelled training examples; ``None`` for the other models.
    :param binarization: ``"dynamic"`` (grey data binarized for a binary likelihood) or
        ``"none"``.
    :param device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    :param compile: compile the training step: ``"auto"`` (when it pays), ``"on"`` or ``"off"``.
    :param stream: bring the batches to the device by a ``DataLoader``
    (:mod:`pyro_vae.data.streaming`)
        even when the training set fits there.
    :param workers: the ``DataLoader``'s worker processes, when streamed; 0: none.
    :param tensorboard: write TensorBoard event files after every epoch
    (:mod:`pyro_vae.runs.board`).
    """

    # the data (pyro_vae.data.sources.load_dataset)
    dataset: str = "digits"
    data_dir: str | None = None
    data_path: str | None = None
    image_size: int | None = None  # pictures: resized and centre-cropped to this size
    channels: int | None = None  # pictures: 1 grey, 3 colour; None: as the files are
    # the model (pyro_vae.VAE, or by name from pyro_vae.models.MODELS)
    model: str = "vae"
    z_dim: int = 16
    hidden_dims: tuple[int, ...] = (400,)
    encoder: str = "mlp"
    prior: str = "standard-normal"
    likelihood: str = "bernoulli"
    guide: str = "diagonal"
    prior_options: dict[str, Any] = field(default_factory=dict)
    likelihood_options: dict[str, Any] = field(default_factory=dict)
    guide_options: dict[str, Any] = field(default_factory=dict)
    aux_weight: float = DEFAULT_AUX_WEIGHT  # M2's alpha (pyro_vae.models.m2.M2)
    # the training (pyro_vae.train)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    objective: str = "trace"
    num_particles: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    labeled: int | None = None  # M2's labelled examples
    binarization: str = "dynamic"
    device: str = "auto"
    compile: str = "auto"
    stream: bool = False  # batches through a DataLoader (pyro_vae.data.streaming)
    workers: int = 2  # its worker processes
    # the run folder (pyro_vae.runs.folder)
    tensorboard: bool = False  # TensorBoard event files after every epoch (pyro_vae.runs.board)

    def __post_init__(self) -> None:
        checked = {
            "dataset": validation.choice("dataset", self.dataset, DATASETS),
            "model": validation.choice("model", self.model, list(MODELS)),
            "data_dir": validation.path("data_dir", self.data_dir),
            "data_path": validation.path("data_path", self.data_path),
            "image_size": validation.optional(validation.size, "image_size", self.image_size),
            "channels": validation.optional(validation.channels, "channels", self.channels),
            "z_dim": validation.size("z_dim", self.z_dim),
            "hidden_dims": validation.sizes("hidden_dims", self.hidden_dims),
            "encoder": validation.choice("encoder", self.encoder, list(NETS)),
            "prior": validation.choice("prior", self.prior, list(PRIORS)),
            "likelihood": validation.choice("likelihood", self.likelihood, list(LIKELIHOODS)),
            "guide": validation.choice("guide", self.guide, list(GUIDES)),
            "epochs": validation.count("epochs", self.epochs),
            "batch_size": validation.count("batch_size", self.batch_size),
            "lr": validation.positive("lr", self.lr),
            "seed": validation.seed("seed", self.seed),
            "binarization": validation.choice("binarization", self.binarization, BINARIZATION),
            "device": validation.text("device", self.device),
            "compile": validation.choice("compile", self.compile, COMPILE),
            "stream": validation.flag("stream", self.stream),
            "workers": validation.whole("workers", self.workers, low=0),
            "tensorboard": validation.flag("tensorboard", self.tensorboard),
        }
        # the objective's settings are checked together, against the epochs too
        weighing = check_objective(
            self.objective,
            self.num_particles,
            self.beta,
            self.kl_warmup,
            checked["epochs"],
            checked["guide"],
            checked["model"],
        )
        checked["labeled"] = check_labeled(checked["model"], self.labeled)
        checked["aux_weight"] = validation.non_negative("aux_weight", self.aux_weight)
        if checked["aux_weight"] != DEFAULT_AUX_WEIGHT and checked["model"] != "m2":
            raise ConfigError(f"is for {{model}} 'm2', not {checked['model']!r}", "aux_weight")
        checked.update(zip(("num_particles", "beta", "kl_warmup"), weighing, strict=True))
        for name in PART_OPTIONS:
            options = getattr(self, name)
            if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
                raise ConfigError(f"must map option names to values, got {options!r}", name)
            checked[name] = dict(options)
        for name, value in checked.items():  # normalized: a list of sizes becomes a tuple
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON data: what ``config.json`` holds."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the config") -> RunConfig:
        """The config with these fields (the others at their defaults); an unknown key is an
        error that lists the known ones.

        :param values: settings by field name, as ``config.json`` holds them.
        :param source: where they come from, for the error messages.
        """
        if not isinstance(values, dict):
            raise ConfigError(
                f"{source} must hold a table of settings, not {type(values).__name__}"
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"{source} has unknown setting(s) {', '.join(unknown)}; the settings are: "
                f"{', '.join(known)}"
            )
        return cls(**values)

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
        """A copy with ``changes``, checked like any new config.

        :param changes: the fields to change, by name: ``config.replace(epochs=50)``.
        """
        return dataclasses.replace(self, **changes)

    def changes(self, other: RunConfig) -> list[tuple[str, Any, Any]]:
        """``(name, ours, theirs)`` for every field in which ``other`` differs.

        :param other: the config to compare with.
        """
        return [
            (f.name, getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    def data_options(self) -> dict[str, Any]:
        """The settings :func:`pyro_vae.data.sources.load_dataset` takes besides the name."""
        names = ("data_dir", "data_path", "image_size", "channels")
        return {name: getattr(self, name) for name in names}

    def vae_options(self) -> dict[str, Any]:
        """The keyword arguments of the model's class besides ``x_shape`` and ``num_classes``:
        :class:`pyro_vae.VAE`'s, and ``aux_weight`` for M2."""
        names = ("z_dim", "hidden_dims", "encoder", "prior", "likelihood", "guide")
        options = {name: getattr(self, name) for name in (*names, *PART_OPTIONS)}
        return options | ({"aux_weight": self.aux_weight} if self.model == "m2" else {})

    def train_options(self) -> dict[str, Any]:
        """The settings :func:`pyro_vae.train` takes."""
        names = ("epochs", "batch_size", "lr", "device", "seed", "objective", "binarization")
        names += ("compile", "num_particles", "beta", "kl_warmup", "labeled", "stream", "workers")
        return {name: getattr(self, name) for name in names}

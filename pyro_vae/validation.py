"""Validation: the rules a setting's value must meet, in one place.

Every check takes the parameter's name as the library spells it (``z_dim``,
``likelihood_options["scale"]``) and raises a :class:`~pyro_vae.errors.ConfigError` carrying that
name, so the command line can say the same with its flag. The run configuration, the VAE, the
parts, the trainer and the command line's argument parsing all call these functions; none keeps
rules of its own.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pyro_vae.errors import ConfigError

MAX_INT = 2**63 - 1  # counts past a signed 64-bit integer overflow inside torch
MAX_FLOAT = 1e30  # larger numbers overflow float32 (Adam's first step divides lr by 1 - 0.9)
MAX_SEED = 2**32 - 1  #: pyro.set_rng_seed seeds numpy too, which takes 0 to 2**32 - 1
MAX_SIZE = 2**24  #: a layer this wide already needs terabytes of weights
MAX_IMAGES = 100_000  # pyro-vae sample -n: all of them go into one picture
MAX_PARTICLES = 1000  # check-elbo's particles: memory grows with them


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"a number of {len(text)} digits"


def whole(param: str, value: Any, low: int = 1, high: int = MAX_INT) -> int:
    """``value`` as an int in [low, high]; a bool or a float such as 2.0 is refused.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    :param low: the smallest value allowed.
    :param high: the largest value allowed.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"must be a whole number, got {value!r}", param)
    if value < low:
        raise ConfigError(f"must be at least {low}, got {value}", param)
    if value > high:
        raise ConfigError(f"must be at most {high}, got {_shown(value)}", param)
    return int(value)


def count(param: str, value: Any) -> int:
    """A positive count: epochs, a batch size, mixture components, flow steps.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    """
    return whole(param, value, 1)


def bins(param: str, value: Any) -> int:
    """A number of grey levels, at least 2.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    """
    return whole(param, value, 2)


def size(param: str, value: Any) -> int:
    """A layer or latent size, 1 to :data:`MAX_SIZE`.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    """
    return whole(param, value, 1, MAX_SIZE)


def sizes(param: str, values: Any) -> tuple[int, ...]:
    """One or more sizes, each 1 to :data:`MAX_SIZE`: layer widths, or an example's shape.

    :param param: the setting's name as the library spells it, for the error message.
    :param values: the sizes to check, any iterable of whole numbers (not a string).
    """
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ConfigError(f"must be a list of sizes such as [400], got {values!r}", param)
    values = tuple(values)
    if not values:
        raise ConfigError("must be one size or more, got none", param)
    return tuple(size(param, v) for v in values)


def seed(param: str, value: Any) -> int:
    """A random seed, 0 to :data:`MAX_SEED`.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    """
    return whole(param, value, 0, MAX_SEED)


def positive(param: str, value: Any, high: float = MAX_FLOAT) -> float:
    """A positive finite real number, at most ``high``.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    :param high: the largest value allowed.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"must be a positive number, got {value!r}", param)
    if not 0 < value < math.inf:
        raise ConfigError(f"must be a positive finite number, got {value:g}", param)
    if value > high:
        raise ConfigError(f"must be at most {high:g}, got {value:g}", param)
    return float(value)


def non_negative(param: str, value: Any) -> float:
    """A finite real number, 0 or more: a weight that may switch its term off.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"must be a number, got {value!r}", param)
    if not 0 <= value < math.inf:
        raise ConfigError(f"must be a finite number, 0 or more, got {value:g}", param)
    return positive(param, value) if value else 0.0


def index(param: str, value: Any, size: int, of: str = "the test set") -> int:
    """An example's index in a set of ``size`` examples, ``of``: 0 to size - 1.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    :param size: the number of examples in the set.
    :param of: the set, named for the error message.
    """
    value = whole(param, value, low=0)
    if value >= size:
        raise ConfigError(f"must be 0 to {size - 1}: {of} has {size} examples; got {value}", param)
    return value


def choice(param: str, value: Any, choices: Sequence[str]) -> str:
    """One of ``choices`` (the names of a registry, say).

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    :param choices: the names allowed.
    """
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{value!r} is not one of: {', '.join(choices)}", param)
    return value


def text(param: str, value: Any) -> str:
    """A non-empty string, e.g. a device name.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"must be a non-empty string, got {value!r}", param)
    return value


def path(param: str, value: Any) -> str | None:
    """A file or folder path as a string, or ``None`` for none.

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the path to check: a string, a :class:`~pathlib.Path` or ``None``.
    """
    return None if value is None else text(param, str(value) if isinstance(value, Path) else value)


def flag(param: str, value: Any) -> bool:
    """A switch: ``True`` or ``False`` (not 0, 1 or a string).

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", param)
    return value


def channels(param: str, value: Any) -> int:
    """The colour channels of a picture: 1 (grey) or 3 (colour).

    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value not in (1, 3):
        raise ConfigError(f"must be 1 (grey) or 3 (colour), got {value!r}", param)
    return int(value)


def optional(check: Any, param: str, value: Any) -> Any:
    """``check(param, value)``, or ``None`` for ``None``: a setting that may be left out.

    :param check: the check to apply to a value that is given, e.g. :func:`count`.
    :param param: the setting's name as the library spells it, for the error message.
    :param value: the value to check, or ``None``.
    """
    return None if value is None else check(param, value)


def installed(param: str, module: str, extra: str) -> None:
    """That ``module``, an optional dependency that ``param`` needs, can be imported; else one
    line naming the extra that installs it. Asked of the import system (``find_spec``), without
    importing the module.

    :param param: the setting that needs ``module``, as the library spells it, for the message.
    :param module: the importable name of the package, e.g. ``"tensorboard"``.
    :param extra: the pip extra of pyro-vae that installs it (``pip install pyro-vae[extra]``).
    """
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"needs the {module} package, which is not installed: pip install pyro-vae[{extra}]",
            param,
        )

"""Look-up by name for the swappable parts: priors, likelihoods and guide families.

Each part module keeps a plain ``dict`` from name to class; adding a part is one class and one line
in that dict. Wherever a part is asked for, the caller may pass a name or a ready object.

A part's constructor takes what the VAE knows (``z_dim``, ``x_shape``: each part asks only for
what it needs) and its own options as keyword arguments with defaults (e.g. ``components=10``).
"""

from __future__ import annotations

import inspect
from typing import Any

from pyro_vae import validation
from pyro_vae.errors import ConfigError, PyroVAEError


def build(
    registry: dict[str, type],
    spec: Any,
    what: str,
    context: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> Any:
    """``registry[spec](**context, **options)`` for a name, ``spec`` itself for an object.

    ``context`` entries are passed only to constructors that ask for them; every entry of
    ``options`` must be a parameter of the constructor, else a :class:`ConfigError` names the
    options the part takes.

    :param registry: a dict from name to part class, e.g. :data:`~pyro_vae.parts.priors.PRIORS`.
    :param spec: a name of ``registry``, or a ready part object, used as it is.
    :param what: the kind of part (``"prior"``, ``"likelihood"``, ``"guide"``), for messages.
    :param context: what the VAE knows, ``{"z_dim": ..., "x_shape": ...}``.
    :param options: the part's keyword options, for a part given by name.
    """
    options = dict(options or {})
    if not isinstance(spec, str):
        if options:
            raise ConfigError(f"are for a {what} given by name, not {spec!r}", f"{what}_options")
        return spec
    cls = registry[validation.choice(what, spec, list(registry))]
    parameters = inspect.signature(cls).parameters
    takes = [name for name in parameters if name not in context]
    for name in options:
        if name not in takes:
            offer = f"it takes: {', '.join(takes)}" if takes else "it takes none"
            raise ConfigError(f"the {spec!r} {what} has no option {name!r}; {offer}")
    wanted = {name: value for name, value in context.items() if name in parameters}
    try:
        return cls(**wanted, **options)
    except PyroVAEError as e:  # an option's value: name it as the caller passed it
        if e.param not in options:
            raise
        raise type(e)(e.problem, f'{what}_options["{e.param}"]') from None


def name_of(part: Any) -> str:
    """The registry name of a part, or its class name for a user-defined one.

    :param part: a part object: a prior, likelihood or guide family.
    """
    return getattr(part, "name", type(part).__name__)


def option_names(cls: type) -> list[str]:
    """The user options of a part class: its constructor parameters that have defaults.

    :param cls: a part class.
    """
    return [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.default is not inspect.Parameter.empty
    ]


def option_defaults(registry: dict[str, type], option: str) -> dict[str, Any]:
    """The default of ``option`` in each registered part that takes it, by the part's name.

    :param registry: a dict from name to part class, e.g. :data:`~pyro_vae.parts.priors.PRIORS`.
    :param option: the option's name, e.g. ``"components"``.
    """
    defaults = {}
    for name, cls in registry.items():
        parameter = inspect.signature(cls).parameters.get(option)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            defaults[name] = parameter.default
    return defaults


def describe(registry: dict[str, type]) -> list[tuple[str, str, str]]:
    """``(name, options, description)`` of every registered part, for ``pyro-vae list``.

    :param registry: a dict from name to part class, e.g. :data:`~pyro_vae.parts.priors.PRIORS`.
    """
    rows = []
    for name, cls in registry.items():
        options = [
            f"{p.name}={p.default}"
            for p in inspect.signature(cls).parameters.values()
            if p.default is not inspect.Parameter.empty
        ]
        rows.append((name, ", ".join(options), cls.description))
    return rows

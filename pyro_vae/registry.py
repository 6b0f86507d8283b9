"""Look-up by name for the swappable parts: priors, likelihoods and guide families.

Each part module keeps a plain ``dict`` from name to class; adding a part is one class and one line
in that dict. Wherever a part is asked for, the caller may pass a name or a ready object.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError


def build(registry: dict[str, type], spec: Any, what: str, **kwargs: Any) -> Any:
    """``registry[spec](**kwargs)`` for a name, ``spec`` itself for an object."""
    if not isinstance(spec, str):
        return spec
    if spec not in registry:
        raise ConfigError(f"unknown {what} {spec!r}; choose one of: {', '.join(registry)}")
    return registry[spec](**kwargs)


def name_of(part: Any) -> str:
    """The registry name of a part, or its class name for a user-defined one."""
    return getattr(part, "name", type(part).__name__)

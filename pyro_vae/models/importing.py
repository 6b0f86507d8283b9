"""Programs named by where their class is, ``FILE.py:Class`` or ``package.module:Class``, as the
command line and the run folders name them: the class found, its file imported (which runs its
code, as ``python FILE.py`` would) and its SHA-256, which a run records so that its weights are
never loaded into code that has changed since.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from pyro_vae.errors import ConfigError


class ProgramUnavailable(ConfigError):
    """A program's file is missing, or no longer the one a run's weights were trained with."""


def one_line(error: Exception) -> str:
    """The user's code's error in one line: its type and its message's first line.

    :param error: what the user's code raised.
    """
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class ProgramSource(NamedTuple):
    """A program class found from its name (:func:`find_program`).

    :param cls: the class.
    :param sha256: the SHA-256 of the file that defines it, hex; ``None`` for a built-in module.
    """

    cls: type
    sha256: str | None


def find_program(spec: str, sha256: str | None = None) -> ProgramSource:
    """The class ``spec`` names, ``FILE.py:Class`` or ``package.module:Class``, importing its file
    (which runs its code, as ``python FILE.py`` would); with ``sha256``, refused in one line
    unless the file is still the one of that hash.

    :param spec: where the class is.
    :param sha256: the hash the file must have, as a run folder recorded it; ``None``: any.
    """
    where, _, class_name = spec.rpartition(":")
    if not where or not class_name:
        raise ConfigError(f"must be FILE.py:Class or package.module:Class, got {spec!r}", "program")
    path = Path(where)
    if where.endswith(".py") or path.exists():
        if not path.is_file():
            raise ProgramUnavailable(f"program file {where!r} does not exist")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if sha256 is not None and digest != sha256:
            raise ProgramUnavailable(
                f"program file {where!r} has changed since the run was made "
                "(its SHA-256 differs): its weights are for the old code"
            )
        module = _import_file(path, digest)
    else:
        module = _import_module(where)
        digest = None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{where!r} has no class {class_name!r}")
    return ProgramSource(cls, digest)


def program_spec(module: nn.Module) -> str:
    """``FILE.py:Class``, where ``module``'s class is defined: what a run folder records to build
    the program again; refused in one line for a class with no file of its own (defined in a
    notebook, or inside a function).

    :param module: your own program.
    """
    cls = type(module)
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:  # defined in no file: a notebook's cell, the interpreter
        source = None
    if source is None or not Path(source).is_file() or "<locals>" in cls.__qualname__:
        raise ConfigError(
            f"program {cls.__name__!r} is not defined at the top of a file, so a run folder "
            "could not build it again: put its class in a .py file and import it from there"
        )
    return f"{Path(source).resolve()}:{cls.__qualname__}"


def _import_file(path: Path, digest: str) -> Any:
    name = f"pyro_vae_program_{digest[:16]}"  # one module per version of the file
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up here
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's code
        del sys.modules[name]
        raise ConfigError(
            f"program file {str(path)!r} failed to import: {one_line(error)}"
        ) from None
    return module


def _import_module(where: str) -> Any:
    try:
        return importlib.import_module(where)
    except ImportError as error:
        raise ConfigError(f"cannot import program module {where!r}: {error}") from None

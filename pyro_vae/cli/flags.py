"""Flags made from the configuration: one for each setting of :mod:`pyro_vae.config`, its name,
help text, choices and parsing read from the setting's :class:`~pyro_vae.config.Setting`; and
the way back, from the library's parameter names to the flags (``z_dim`` is ``--z-dim``).

A new field of a config section is a new flag of ``pyro-vae train`` without an edit here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from pyro_vae.config import (
    FIELDS,
    PART_OPTIONS,
    PARTS,
    RunConfig,
    number,
    setting_of,
    whole_number,
)
from pyro_vae.errors import ConfigError, mention
from pyro_vae.parts.registry import option_defaults


def typed(
    parse: Callable[[str], Any], check: Callable[[str, Any], Any] | None, name: str
) -> Callable[[str], Any]:
    """An argparse type: the text read by ``parse``, then checked by ``check`` as parameter
    ``name``; a mistake is argparse's one-line error."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
            return value if check is None else check(name, value)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(e.problem) from None

    return convert


def whole(check: Callable[[str, Any], int], name: str) -> Callable[[str], int]:
    """An argparse type: a whole number that ``check`` accepts for ``name``."""
    return typed(whole_number, check, name)


def real(check: Callable[[str, Any], float], name: str) -> Callable[[str], float]:
    """An argparse type: a number that ``check`` accepts for ``name``."""
    return typed(number, check, name)


def has_flag(name: str) -> bool:
    """Whether setting ``name`` has a flag of its own (the parts' option tables have none)."""
    return (name in FIELDS or name in PART_OPTIONS) and setting_of(name).parse is not None


def flag_for(name: str) -> str:
    """The flag of a setting: its name with hyphens (``--z-dim``), or the setting's own flag
    (``--binarize`` for ``binarization``)."""
    return "--" + (setting_of(name).flag or name).replace("_", "-")


def add_settings(
    parser: argparse.ArgumentParser, names: Iterable[str], shown: bool = True, group: Any = None
) -> None:
    """A flag for each setting of ``names`` that has one, in ``group`` (default: ``parser``),
    whose value, when given, overrides the setting (default ``None``: not given); their help
    shows the setting's default if ``shown``. :func:`given` reads them back."""
    defaults = RunConfig().settings() if shown else {}
    added = [name for name in names if has_flag(name)]
    for name in added:
        about, flag = setting_of(name), flag_for(name)
        help = mention(about.help, lambda n: flag_for(n) if has_flag(n) else n)
        if name in PART_OPTIONS:
            help += f" (default: {_option_defaults(name)})" if shown else ""
        elif defaults.get(name) is not None:
            help += f" (default: {_shown(defaults[name])})"
        target = group or parser
        if about.parse is bool:  # a switch, --X on and --no-X off (on a resume too)
            target.add_argument(flag, dest=name, help=help, action=argparse.BooleanOptionalAction)
        elif about.choices is not None:
            target.add_argument(flag, dest=name, help=help, choices=list(about.choices))
        else:
            parse = typed(about.parse, about.checked, name)
            target.add_argument(flag, dest=name, help=help, type=parse)
    parser.set_defaults(settings=added)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (those :func:`add_settings` made), by name: what
    :meth:`RunConfig.replace <pyro_vae.config.RunConfig.replace>` takes."""
    return {name: value for name in args.settings if (value := getattr(args, name)) is not None}


def speller(parser: Any) -> Callable[[str], str]:
    """How the library's parameter names read on the command line: a setting's flag, a part's
    option's (``likelihood_options["scale"]`` is ``--likelihood-scale``), or else the flag that
    sets that parameter in any command of ``parser`` (``from_index`` is ``--from``)."""
    flags = parser.flags()
    for name, about in PART_OPTIONS.items():
        flags |= {f'{kind}_options["{about.option}"]': flag_for(name) for kind in about.kinds}

    def spell(name: str) -> str:
        return flag_for(name) if has_flag(name) else flags.get(name, name)

    return spell


def _option_defaults(name: str) -> str:
    """The default of a part's option in every part that takes it: ``mog 10, vamp 50``."""
    about = PART_OPTIONS[name]
    return ", ".join(
        f"{part} {default}"
        for kind in about.kinds
        for part, default in option_defaults(PARTS[kind], about.option).items()
    )


def _shown(default: Any) -> str:
    """A setting's default as its flag would take it: a switch ``on`` or ``off``, sizes as
    ``512,256``."""
    if isinstance(default, bool):  # not a dict lookup: 1 == True and 0 == False there
        return "on" if default else "off"
    return ",".join(map(str, default)) if isinstance(default, list | tuple) else str(default)

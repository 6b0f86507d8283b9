"""The command line's argparse classes: one-line errors, and each default said once."""

from __future__ import annotations

import argparse
import difflib
from typing import Any, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with each mistake reported in one line, no abbreviated flags (``--epoch`` is
    not ``--epochs``), the nearest flag suggested for a misspelt one, and :meth:`flags`, which
    says which flag sets each parameter: how the library's errors get their flags."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        unknown = [arg.split("=")[0] for arg in extras if arg.startswith("-")]
        if unknown:  # a command's own parser knows its flags: the top-level parser does not
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._nearest(unknown[0])}")
        return parsed, extras

    def _nearest(self, flag: str) -> str:
        """"; did you mean --z-dim?" for ``--zdim`` or ``--z_dim``, or nothing."""
        known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        near = difflib.get_close_matches(flag.replace("_", "-"), known, n=1, cutoff=0.75)
        return f"; did you mean {near[0]}?" if near else ""

    def flags(self) -> dict[str, str]:
        """The flag of each parameter (an action's ``dest``) in this parser and its commands,
        the first command that has one first: ``--out``, not ``-o``; ``--stream``, not
        ``--no-stream``."""
        found: dict[str, str] = {}
        for action in self._actions:
            long = [flag for flag in action.option_strings if flag.startswith("--")]
            if long:
                found.setdefault(action.dest, long[0])
            if isinstance(action.choices, dict):  # the commands' parsers
                for command in action.choices.values():
                    found = command.flags() | found
        return found

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default said once: appended where the help does not already say it and there
    is one to say (not ``None``: "not given", whose meaning the help gives); descriptions and
    the examples after the flags keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        silent = any(action.default is value for value in (None, False, argparse.SUPPRESS))
        if silent or not action.option_strings or "default" in text:
            return text
        return f"{text} (default: {action.default})"

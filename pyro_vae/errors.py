"""The one exception type users see: a message meant to be read, not a traceback."""

from __future__ import annotations

import re
from collections.abc import Callable

# A parameter named in a message: {z_dim}, {likelihood_options["bins"]}, or {param}.
_MENTION = re.compile(r'\{([a-z_]+(?:\["[a-z_]+"\])?)\}')


def mention(text: str, spell: Callable[[str], str]) -> str:
    """``text`` with every parameter it names in braces (``{z_dim}``) spelled as ``spell(name)``:
    how a message or a setting's help text reads in the library and on the command line.

    :param text: the text, parameters written in braces.
    :param spell: turns a parameter's library name into the name to show, e.g. a flag.
    """
    return _MENTION.sub(lambda m: spell(m[1]), text)


class PyroVAEError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The command line prints ``pyro-vae: error: <message>`` and exits with status 2;
    from Python it is an ordinary exception.

    Where one setting is at fault, ``param`` names it as the library spells it (``z_dim``,
    ``likelihood_options["scale"]``): the message starts with it, or says ``{param}`` where it
    goes. Other settings the message mentions are written in braces, ``{binarization}``.
    ``ConfigError("must be at least 1, got 0", "epochs")`` reads ``epochs must be at least 1,
    got 0``; :meth:`worded` spells the names otherwise, as the command line's flags (``--epochs``).

    :param message: what is wrong, in one line; other settings it mentions written in braces.
    :param param: the setting at fault, as the library spells it; ``None`` when none is.
    """

    def __init__(self, message: str, param: str | None = None):
        self.problem = message
        self.param = param
        super().__init__(self.worded(lambda name: name))

    def worded(self, spell: Callable[[str], str]) -> str:
        """The message with every parameter it names spelled as ``spell(name)``.

        :param spell: turns a parameter's library name into the name to show, e.g. a flag.
        """
        template = self.problem
        if self.param is not None and "{param}" not in template:
            template = "{param} " + template
        name = {"param": self.param}
        return mention(template, lambda m: spell(name.get(m) or m))


class DataError(PyroVAEError):
    """A data set that is missing, malformed or out of range."""


class ConfigError(PyroVAEError):
    """A setting that cannot work: an unknown name, an impossible number, a missing device."""


class StaleDataWarning(UserWarning):
    """Data that may not be what the user thinks: a prepared copy older than its source. The
    command line prints it as one line, ``pyro-vae: warning: <message>``."""

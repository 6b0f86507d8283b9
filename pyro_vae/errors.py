"""The one exception type users see: a message meant to be read, not a traceback."""


class PyroVAEError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The command line prints ``pyro-vae: error: <message>`` and exits with status 2;
    from Python it is an ordinary exception.
    """


class DataError(PyroVAEError):
    """A data set that is missing, malformed or out of range."""


class ConfigError(PyroVAEError):
    """A setting that cannot work: an unknown name, an impossible number, a missing device."""

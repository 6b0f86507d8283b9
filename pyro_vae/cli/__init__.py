"""The command line, ``pyro-vae``: it parses and calls the library."""

from pyro_vae.cli.commands import build_parser, main  # noqa: F401

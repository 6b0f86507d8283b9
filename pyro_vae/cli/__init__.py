"""The command line, ``pyro-vae``: it parses and calls the library. :func:`main` runs it;
``pyro_vae.cli.program`` builds the parser from the commands' modules, and
``pyro_vae.cli.flags`` makes the flags of the settings from :mod:`pyro_vae.config`'s fields."""

from pyro_vae.cli.program import build_parser, main  # noqa: F401

"""The command line, ``pyro-vae`` (and ``python -m pyro_vae``): train, evaluate, check-elbo,
sample, reconstruct, encode, score, interpolate, classify and list
(:mod:`pyro_vae.cli.commands`). It parses flags onto a :class:`~pyro_vae.config.RunConfig`,
calls the library and prints its errors as one line each.

The last step of the flow data -> parts and models -> infer -> training -> runs -> analysis ->
cli: it may import every other subpackage, and none imports it. ``main`` and
``build_parser`` are those of :mod:`pyro_vae.cli.commands`, documented there."""

from pyro_vae.cli.commands import build_parser, main  # noqa: F401

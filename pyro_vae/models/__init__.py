"""The models: one protocol (:class:`~pyro_vae.models.program.Program`) and the kinds that
implement it, by name: ``vae`` (:class:`~pyro_vae.models.vae.VAE`), ``cvae``
(:class:`~pyro_vae.models.cvae.CVAE`), ``m2`` (:class:`~pyro_vae.models.m2.M2`), ``hvae``
(:class:`~pyro_vae.models.hvae.HVAE`, two stochastic layers, written as a user's program) and
``program`` (your own, :class:`~pyro_vae.models.user.UserProgram`), each a Pyro program pairing a
generative model with an amortized guide. The rest of the library asks a model
through the protocol and never which kind it is, so adding a kind is one file and one line in
:data:`MODELS`.

A model is assembled from the parts of :mod:`pyro_vae.parts`, reads the data's tensors
(:mod:`pyro_vae.data`), and names its objectives among those of :mod:`pyro_vae.infer` (written
over the protocol, for any program), with its own hand-written twins; training, analysis, run
folders and the command line take it. Nothing here imports them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyro_vae import validation
from pyro_vae.models.cvae import CVAE
from pyro_vae.models.hvae import HVAEProgram
from pyro_vae.models.m2 import M2
from pyro_vae.models.program import Program
from pyro_vae.models.user import UserProgram
from pyro_vae.models.vae import VAE

#: the models by name, as :func:`~pyro_vae.models.build_model` and ``--model`` take them
MODELS: dict[str, type[Program]] = {
    "vae": VAE,
    "cvae": CVAE,
    "m2": M2,
    "hvae": HVAEProgram,
    "program": UserProgram,
}


def build_model(name: str, x_shape: Sequence[int], num_classes: int = 0, **options: Any) -> Program:
    """The model ``name`` over examples of shape ``x_shape`` (its class's
    :meth:`~pyro_vae.models.program.Program.build`).

    :param name: a name of :data:`MODELS`: ``"vae"``, ``"cvae"``, ``"m2"``, ``"hvae"`` or
        ``"program"``.
    :param x_shape: the shape of one example.
    :param num_classes: K, for a model that learns from labels; the others ignore it.
    :param options: the settings the kind takes (its ``model_settings``):
        :class:`~pyro_vae.models.vae.VAE`'s, ``aux_weight`` for M2, ``program_options`` for
        ``hvae`` and ``program``, with ``program`` and ``program_sha256``.
    """
    return MODELS[validation.choice("model", name, list(MODELS))].build(
        x_shape, num_classes, **options
    )

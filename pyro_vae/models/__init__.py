"""The models, Pyro programs that pair a generative model p(x|z) p(z) with an amortized guide:
the VAE (:class:`~pyro_vae.models.vae.VAE`), the conditional VAE and the semi-supervised M2
(:mod:`pyro_vae.models.conditional`), and here the models by name, ``vae``, ``cvae`` and ``m2``
(:data:`MODELS`, :func:`build_model`). Adding one is one class and one line in :data:`MODELS`.

In the flow data -> parts and models -> infer (the objectives) -> training -> runs -> analysis ->
cli, a model is assembled from the parts of :mod:`pyro_vae.parts` and reads the data's tensors
(:mod:`pyro_vae.data`); it imports nothing further along, and every later step takes it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyro_vae import validation
from pyro_vae.models.conditional import CVAE, M2
from pyro_vae.models.vae import VAE

#: the models by name, as :func:`~pyro_vae.models.build_model` and ``--model`` take them
MODELS: dict[str, type[VAE]] = {"vae": VAE, "cvae": CVAE, "m2": M2}


def build_model(name: str, x_shape: Sequence[int], num_classes: int = 0, **options: Any) -> VAE:
    """The model ``name`` over examples of shape ``x_shape``.

    :param name: a name of :data:`MODELS`: ``"vae"``, ``"cvae"`` or ``"m2"``.
    :param x_shape: the shape of one example.
    :param num_classes: K, for a model that learns from labels; the others ignore it.
    :param options: the model class's other keyword arguments (:class:`~pyro_vae.models.vae.VAE`'s,
        and ``aux_weight`` for M2).
    """
    cls = MODELS[validation.choice("model", name, list(MODELS))]
    if cls.labels == "none":
        return cls(x_shape, **options)
    return cls(x_shape, num_classes, **options)

"""The data, where the flow of the work begins: data sets as tensors of images and the
binarization policy (:mod:`pyro_vae.data.sources`: :func:`~pyro_vae.data.sources.load_dataset`,
:class:`~pyro_vae.data.sources.Dataset`), pictures from folders and archives
(:mod:`pyro_vae.data.images`), and where a training set lives while it trains, on the device or
streamed to it (:mod:`pyro_vae.data.streaming`), and prepared copies: any source decoded once
into arrays on disk (:mod:`pyro_vae.data.prepare`) and trained from memory-mapped
(:mod:`pyro_vae.data.mapped`).

The flow is data -> parts and models -> infer (the objectives) -> training -> runs (the run
folder) -> analysis -> cli. This subpackage imports only the package's base modules
(:mod:`pyro_vae.errors`, :mod:`pyro_vae.validation`, :mod:`pyro_vae.device`,
:mod:`pyro_vae.files`, ``pyro_vae.version``); every other subpackage may import it. The
names imported here are those of :mod:`pyro_vae.data.sources`, documented there."""

from pyro_vae.data.sources import (  # noqa: F401
    BINARIZATION,
    DATASETS,
    DEFAULT_DATA_DIR,
    PICTURE_SOURCES,
    SPLIT_SEED,
    TEST_BINARIZATION_SEED,
    TEST_FRACTION,
    Dataset,
    Scores,
    as_floats,
    binarize,
    binarize_afresh,
    byte_values,
    check_labels,
    check_shape,
    eval_inputs,
    is_binary,
    labeled_split,
    load_dataset,
    needs_binarization,
    num_classes,
)

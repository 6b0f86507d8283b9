"""The data: the sources (:mod:`pyro_vae.data.sources`), pictures from folders and
archives (:mod:`pyro_vae.data.images`) and streaming to the device
(:mod:`pyro_vae.data.streaming`)."""

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

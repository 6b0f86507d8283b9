"""A run folder's layout: the names of the files training and the commands on a run write
(the table in :mod:`pyro_vae.runs.folder`)."""

from __future__ import annotations

import time
from pathlib import Path

from pyro_vae.config import RunConfig

CONFIG, CHECKPOINT, METRICS, SUMMARY = "config.json", "checkpoint.pt", "metrics.csv", "summary.json"
PREVIOUS = "checkpoint.prev.pt"  # the checkpoint before the last, kept for when that one is damaged
PICTURES = ("reconstructions.png", "samples.png", "elbo.png")
RUN_FILES = (CONFIG, METRICS, SUMMARY, CHECKPOINT, *PICTURES)
EVALUATION = "evaluation.json"
SPLITS = ("train", "test")
CLASS_PICTURE = "classes.png"  # the label models' samples, a column per class
BOARD = "tensorboard"  # the folder of TensorBoard's event files, for runs that write them
RECONSTRUCTED = 32  # the test images pictured over their reconstructions
# what the commands on a trained run write by default (pyro_vae.cli)
CODES, SCORES, TYPICAL, CONFUSION = "codes.npz", "scores.csv", "typical.png", "confusion.png"


def sample_picture(seed: int, num: int, label: int | None = None) -> str:
    """The name of a picture of ``num`` samples drawn with ``seed``, of class ``label`` if one is
    given: ``sample-seedS-nN.png`` or ``sample-classK-seedS-nN.png`` (training's are
    ``samples.png``, kept).

    :param seed: the seed of the draws.
    :param num: the number of samples.
    :param label: the class of every sample, or ``None`` for the classes in turn.
    """
    of_class = "" if label is None else f"-class{label}"
    return f"sample{of_class}-seed{seed}-n{num}.png"


def reconstruct_picture(num: int) -> str:
    """The name of a picture of ``num`` test images over their reconstructions,
    ``reconstruct-nN.png`` (training's are ``reconstructions.png``, kept).

    :param num: the number of test images.
    """
    return f"reconstruct-n{num}.png"


def interpolation_picture(start: int, end: int) -> str:
    """The name of a picture of a walk from test example ``start`` to ``end``,
    ``interpolation-I-J.png``.

    :param start: the test example it starts from.
    :param end: the test example it ends at.
    """
    return f"interpolation-{start}-{end}.png"


def default_path(config: RunConfig) -> Path:
    """Where a new run of ``config`` goes when no folder is named: ``runs/DATASET-DATE-TIME``.

    :param config: the run's settings.
    """
    return Path("runs") / f"{config.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"

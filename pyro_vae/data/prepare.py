"""Making a prepared copy: any data set decoded once into the arrays of
:mod:`pyro_vae.data.mapped`, which training then memory-maps.

Pictures (a ``folder``, ``celeba``) are decoded in parallel, a chunk at a time, straight into the
arrays on disk (:func:`pyro_vae.data.images.decode_chunks`): the data set is never whole in
memory, and a chunk, once written and flushed, is recorded as done, so an interrupted
preparation goes on where it stopped when run again with the same settings. Every other source
is read as :func:`~pyro_vae.data.sources.load_dataset` reads it, then written.

Nothing unfinished looks like a copy: the arrays are written into a hidden folder beside the
copy (:func:`~pyro_vae.data.mapped.partial_folder`), the description last, and the folder is
renamed to its name in one step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_vae import validation
from pyro_vae.data import images
from pyro_vae.data.mapped import DESCRIPTION, FORMAT, partial_folder
from pyro_vae.data.sources import (
    DATASETS,
    DEFAULT_DATA_DIR,
    SPLIT_SEED,
    byte_values,
    load_dataset,
    source_paths,
)
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.files import write_json
from pyro_vae.version import __version__

JOB = "job.json"  #: in the unfinished folder: the settings it is being made with, and progress
_WRITE_ROWS_BYTES = 64 * 2**20  # the rows written at a time from a data set in memory


def prepare_dataset(
    name: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    workers: int = images.DECODE_WORKERS,
    progress: bool = True,
    **options: Any,
) -> Path:
    """Decode the data set ``name`` once into a prepared copy in ``out``, which
    ``load_dataset("prepared", data_dir=out)`` memory-maps; returns ``out``.

    :param name: the source, one of :data:`~pyro_vae.data.sources.DATASETS` but ``"prepared"``.
    :param out: the folder to write; it must not exist unless ``overwrite``.
    :param overwrite: replace a copy (or anything else) already at ``out``, once the new one is
        finished.
    :param workers: processes decoding pictures (0: this one).
    :param progress: show progress bars on stderr.
    :param options: the source's settings, as :func:`~pyro_vae.data.sources.load_dataset`
        takes them (``data_dir``, ``data_path``, ``image_size``, ``channels``).
    :raises ConfigError: if ``out`` exists without ``overwrite``, or the settings cannot work.
    :raises DataError: if the source is missing or malformed.
    """
    validation.choice("dataset", name, tuple(d for d in DATASETS if d != "prepared"))
    workers = validation.whole("workers", workers, low=0)
    out = Path(out).expanduser().absolute()
    if out.exists() and not overwrite:
        raise ConfigError(
            f"{out} already exists; pass {{overwrite}} to replace it, or another folder", "out"
        )
    work = partial_folder(out)
    job = {"dataset": name, "options": _plain(options), "format": FORMAT}
    progress_state = _resume_or_start(work, job)
    if name in ("folder", "celeba"):
        description = _decode_pictures(name, work, progress_state, workers, progress, options)
    else:
        description = _write_in_memory(name, work, progress, options)
    description |= {
        "format": FORMAT,
        "source": {**job, "paths": list(source_paths(name, options.get("data_dir"),
                                                     options.get("data_path")))},
        "prepared_at": progress_state["started"],
        "pyro_vae": __version__,
    }  # fmt: skip
    write_json(work / DESCRIPTION, description)
    (work / JOB).unlink()
    _put_in_place(work, out)
    return out


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """The source's settings as JSON values, paths made absolute: a job is the same job from
    any working directory."""
    plain = {}
    for key, value in sorted(options.items()):
        if key in ("data_dir", "data_path") and value is not None:
            value = str(Path(value).expanduser().absolute())
        plain[key] = value
    return plain


def _resume_or_start(work: Path, job: dict[str, Any]) -> dict[str, Any]:
    """The job's progress in ``work``: what an interrupted run of the same job left, or a fresh
    start in an emptied folder."""
    try:
        state = json.loads((work / JOB).read_text())
        if state["job"] == job:
            return state
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no job there, or one that cannot be trusted: start over
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    state = {"job": job, "started": time.time(), "done": [], "counts": [0] * 256}
    write_json(work / JOB, state)
    return state


def _put_in_place(work: Path, out: Path) -> None:
    """Rename the finished ``work`` to ``out``, what was at ``out`` first set aside and then
    deleted: ``out`` is only ever the old thing, nothing (between two renames), or the new copy
    whole, never part of one."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(work, out)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def _decode_pictures(
    name: str,
    work: Path,
    state: dict[str, Any],
    workers: int,
    progress: bool,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Decode the pictures chunk by chunk into ``work``'s arrays, recording each chunk done."""
    _only(name, options, ("data_dir", "image_size", "channels"))
    data_dir = Path(options.get("data_dir") or DEFAULT_DATA_DIR).expanduser()
    plan = images.picture_plan(name, data_dir, options.get("image_size"), options.get("channels"))
    fresh = not state["done"]
    split = {"x_train": plan.train, "x_test": plan.test}
    arrays = {
        key: _open_array(work / f"{key}.npy", (len(rows), *plan.shape), np.uint8, fresh)
        for key, rows in split.items()
    }
    if plan.labels is not None and fresh:
        for key, rows in (("y_train", plan.train), ("y_test", plan.test)):
            np.save(work / f"{key}.npy", plan.labels[rows])
    # where each picture goes: its split, and its row there
    in_test = np.zeros(len(plan.paths), dtype=bool)
    in_test[plan.test] = True
    row = np.empty(len(plan.paths), dtype=np.int64)
    row[plan.train], row[plan.test] = np.arange(len(plan.train)), np.arange(len(plan.test))
    counts = np.array(state["counts"], dtype=np.int64)
    todo = [k for k in range(images.chunk_count(plan)) if k not in set(state["done"])]
    for k, pixels in images.decode_chunks(plan, workers=workers, chunks=todo, progress=progress):
        at = np.arange(k * images.CHUNK, k * images.CHUNK + len(pixels))
        test = in_test[at]
        arrays["x_train"][row[at[~test]]] = pixels[~test]
        arrays["x_test"][row[at[test]]] = pixels[test]
        counts += np.bincount(pixels[~test].reshape(-1), minlength=256)
        for array in arrays.values():
            array.flush()  # on disk before the chunk is recorded as done
        state["done"].append(k)
        state["counts"] = counts.tolist()
        write_json(work / JOB, state)
    return _describe(work, plan.classes, _split_of(name, plan), np.nonzero(counts)[0].tolist())


def _split_of(name: str, plan: images.PicturePlan) -> str:
    if name == "celeba":
        return "CelebA's own partition: 0 for training, 2 for testing"
    if len(plan.train) and int(plan.train.max()) < int(plan.test.min()):
        return "the folder's train/ and test/ sub-folders"
    return f"the pictures sorted by path, split by a permutation seeded with {SPLIT_SEED}"


def _open_array(path: Path, shape: tuple[int, ...], dtype: type, fresh: bool) -> np.memmap:
    if fresh or not path.is_file():
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    return np.lib.format.open_memmap(path, mode="r+")


def _only(name: str, options: dict[str, Any], known: tuple[str, ...]) -> None:
    for key, value in options.items():
        if value is not None and key not in known:
            raise ConfigError(f"is not used with dataset {name!r}", key)


def _write_in_memory(
    name: str, work: Path, progress: bool, options: dict[str, Any]
) -> dict[str, Any]:
    """Read the source as training would, then write its arrays."""
    data = load_dataset(name, **options)
    tensors = {"x_train": data.x_train, "x_test": data.x_test}
    tensors |= {"y_train": data.y_train, "y_test": data.y_test}
    for key, tensor in tensors.items():
        if tensor is not None:
            _write_rows(work / f"{key}.npy", tensor, progress)
    values = byte_values(data.x_train).tolist() if data.eight_bit else None
    split = "the source's own" if name != "digits" else f"a permutation seeded with {SPLIT_SEED}"
    return _describe(work, (), split, values)


def _write_rows(path: Path, tensor: torch.Tensor, progress: bool) -> None:
    """``tensor`` into the ``.npy`` file ``path``, a slice of rows at a time, with a bar."""
    array = tensor.numpy()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    step = max(1, _WRITE_ROWS_BYTES // max(1, array[:1].nbytes))
    starts = range(0, len(array), step)
    bar = tqdm(starts, desc=f"writing {path.name}", unit="slice", leave=False,
               disable=not progress or len(starts) < 2)  # fmt: skip
    for start in bar:
        out[start : start + step] = array[start : start + step]
    out.flush()
    del out


def _describe(work: Path, classes: tuple[str, ...], split: str, values: list | None) -> dict:
    """The description's ``arrays``, ``classes``, ``split`` and ``values``, from the files."""
    arrays: dict[str, dict[str, Any]] = {}
    for key in ("x_train", "x_test", "y_train", "y_test"):
        path = work / f"{key}.npy"
        if path.is_file():
            array = np.load(path, mmap_mode="r")
            arrays[key] = {"shape": list(array.shape), "dtype": str(array.dtype)}
            _fsync(path)
    if not arrays["x_train"]["shape"][0] or not arrays["x_test"]["shape"][0]:
        raise DataError("the source has no training or no test examples")
    return {"arrays": arrays, "classes": list(classes), "split": split, "values": values}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Prepared copies: a data set decoded once into arrays on disk, and read back memory-mapped.

A prepared copy is a folder (written by :func:`pyro_vae.data.prepare.prepare_dataset`, the
``prepare`` command) holding ``x_train.npy`` and ``x_test.npy`` (8-bit images as ``uint8``, other
data as ``float32``), the labels ``y_train.npy`` and ``y_test.npy`` (``int64``) when the source
has them, and :data:`DESCRIPTION`, a small JSON file saying what the arrays are, what they were
made from and when, and the distinct values of the training images (so that choosing the
binarization never reads the whole training set).

:func:`load_prepared` maps the image arrays into memory rather than reading them, so a data
set larger than the machine's memory trains too: a training batch reads its rows alone, a
``pread`` each (:meth:`MappedArrays.reader`), which leaves nothing in the process's resident
memory. Pages read through the mapping (a pass over the whole set, :func:`row_slices`) stay in
it until the process lets go of them, :meth:`MappedArrays.release` (they stay in the page
cache). The labels, a few bytes an example, are read into memory.
"""

from __future__ import annotations

import json
import mmap
import os
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from pyro_vae.errors import DataError, StaleDataWarning

DESCRIPTION = "prepared.json"  #: the file that says what a prepared copy's arrays are
FORMAT = 1  #: the version of the layout :func:`load_prepared` reads
IMAGES = ("x_train", "x_test")  #: the arrays that are memory-mapped
LABELS = ("y_train", "y_test")  #: the arrays read into memory, when present
SLICE_BYTES = 64 * 2**20  #: the rows :func:`row_slices` gives at a time


def row_slices(
    x: torch.Tensor, release: Callable[[], None] | None = None
) -> Iterator[torch.Tensor]:
    """``x`` a slice of rows at a time, about :data:`SLICE_BYTES` each, for a pass over a data
    set that may be memory-mapped and larger than memory: after each slice, ``release`` lets go
    of the pages read.

    :param x: a data set's examples, ``(N, ...)``: in memory or memory-mapped.
    :param release: lets go of the pages of the mapping ``x`` reads from; ``None``: in memory.
    """
    step = max(1, SLICE_BYTES // max(1, x[:1].numel() * x.element_size()))
    for start in range(0, len(x), step):
        yield x[start : start + step]
        if release is not None:
            release()


def partial_folder(folder: Path) -> Path:
    """Where a prepared copy of ``folder`` is written until it is finished: a hidden sibling,
    renamed to ``folder`` in one step, so that nothing unfinished ever looks like a copy.

    :param folder: the prepared copy's folder.
    """
    return folder.with_name(f".{folder.name}.partial")


class MappedArrays:
    """The image arrays of a prepared copy, memory-mapped read-only (copy-on-write, so that
    torch may wrap them; nothing writes to them), and read a batch's rows at a time.

    A batch's rows are read with one ``pread`` each (:meth:`reader`), not through the mapping: a
    fault on a mapped page makes Linux map the cached pages around it too (64 KiB), work that
    scattered rows never use, and which made the gather of 256 rows 3.7 times slower than the
    reads (``benchmarks/results/stream-cpu-2026-12-07.md``).

    :param files: each array's ``.npy`` file, with the shape and dtype the description gives.
    """

    def __init__(self, files: dict[str, tuple[Path, tuple[int, ...], np.dtype]]):
        self._maps: list[mmap.mmap] = []
        self._files: dict[str, tuple[Any, int]] = {}  # each array's open file and data offset
        self.tensors: dict[str, torch.Tensor] = {}
        for name, (path, shape, dtype) in files.items():
            offset = _data_offset(path, shape, dtype)
            file = open(path, "rb")  # kept open for the reads; closed with self
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead either
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
            mapped.madvise(mmap.MADV_RANDOM)  # rows are read scattered: no read-ahead
            count, like = int(np.prod(shape)), torch.from_numpy(np.empty(0, dtype))
            tensor = torch.frombuffer(mapped, dtype=like.dtype, count=count, offset=offset)
            self.tensors[name] = tensor.view(shape)
            self._maps.append(mapped)
            self._files[name] = (file, offset)

    def __del__(self) -> None:
        for file, _ in getattr(self, "_files", {}).values():  # the mappings outlive the files
            file.close()

    def release(self) -> None:
        """Let go of the pages this process has read from the arrays: its resident memory falls
        back; the pages stay in the page cache (no data are lost: nothing was written)."""
        for mapped in self._maps:
            mapped.madvise(mmap.MADV_DONTNEED)

    def reader(self, tensor: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What reads the rows of ``tensor`` at an index from its file, when ``tensor`` is one
        of the mapped arrays (not a copy or a part of one); else ``None``.

        :param tensor: a tensor, such as the training set a model's steps draw from.
        """
        for name, mapped in self.tensors.items():
            if tensor is mapped:
                return partial(self._read_rows, name)
        return None

    def _read_rows(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """The rows of array ``name`` at ``index``, read from its file, one ``pread`` a row."""
        (file, offset), like = self._files[name], self.tensors[name]
        row_bytes = like[0].numel() * like.element_size()
        out = np.empty((len(index), row_bytes), dtype=np.uint8)
        fd = file.fileno()
        for i, k in enumerate(index.tolist()):
            if os.preadv(fd, [out[i]], offset + k * row_bytes) != row_bytes:
                raise DataError(f"{file.name} ended before row {k}: was it truncated?")
        return torch.from_numpy(out).view(like.dtype).view(len(index), *like.shape[1:])


class Prepared(NamedTuple):
    """A prepared copy as :func:`load_prepared` opens it.

    :param x_train: the training examples, memory-mapped.
    :param x_test: the test examples, memory-mapped.
    :param y_train: the training labels, in memory, or ``None``.
    :param y_test: the test labels, in memory, or ``None``.
    :param mapped: the mapping of ``x_train`` and ``x_test``.
    :param description: the contents of :data:`DESCRIPTION`.
    """

    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None
    y_test: torch.Tensor | None
    mapped: MappedArrays
    description: dict[str, Any]


def load_prepared(folder: str | Path) -> Prepared:
    """Open the prepared copy in ``folder``: the images memory-mapped, the labels read. Warns
    (:class:`~pyro_vae.errors.StaleDataWarning`) when a file of its source is newer than the
    copy.

    :param folder: a folder written by :func:`pyro_vae.data.prepare.prepare_dataset`.
    :raises DataError: if the folder is no finished prepared copy, or an array is missing,
        truncated or not what the description says.
    """
    folder = Path(folder).expanduser()
    description = read_description(folder)
    files = {}
    for name in (*IMAGES, *LABELS):
        entry = description["arrays"].get(name)
        if entry is None:
            if name in IMAGES:
                raise DataError(f"{folder / DESCRIPTION} lists no {name}; prepare the copy again")
            continue
        files[name] = (folder / f"{name}.npy", tuple(entry["shape"]), np.dtype(entry["dtype"]))
    labels = {name: _read_labels(*files.pop(name)) for name in LABELS if name in files}
    mapped = MappedArrays(files)
    _warn_if_stale(folder, description)
    x_train, x_test = (mapped.tensors[name] for name in IMAGES)
    return Prepared(x_train, x_test, labels.get("y_train"), labels.get("y_test"), mapped,
                    description)  # fmt: skip


def read_description(folder: Path) -> dict[str, Any]:
    """The contents of ``folder``'s :data:`DESCRIPTION`, or a one-line :class:`DataError` saying
    why there is no finished prepared copy there.

    :param folder: the prepared copy's folder.
    """
    path = folder / DESCRIPTION
    if not path.is_file():
        unfinished = partial_folder(folder)
        hint = (
            f"; an unfinished one is in {unfinished}: run prepare again to finish it"
            if unfinished.is_dir()
            else "; make one with pyro-vae prepare"
        )
        what = "no folder" if not folder.exists() else f"no {DESCRIPTION}"
        raise DataError(f"no prepared copy at {folder} ({what}){hint}")
    try:
        description = json.loads(path.read_text())
        arrays = description["arrays"]
        for entry in arrays.values():
            tuple(entry["shape"]), np.dtype(entry["dtype"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a readable description ({type(e).__name__})") from None
    if description.get("format") != FORMAT:
        raise DataError(f"{path} is of format {description.get('format')!r}, not {FORMAT}")
    return description


def _data_offset(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Where the data begin in the ``.npy`` file ``path``, having checked that its header and
    size are those of an array of ``shape`` and ``dtype``."""
    if not path.is_file():
        raise DataError(f"{path} is missing: the prepared copy is incomplete; prepare it again")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0
            )
            header = read(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a .npy array ({e}); prepare the copy again") from None
    found_shape, fortran, found_dtype = header
    if tuple(found_shape) != shape or found_dtype != dtype or fortran:
        raise DataError(
            f"{path} holds a {found_dtype} array of shape {tuple(found_shape)}, but the "
            f"description says {dtype} of shape {shape}; prepare the copy again"
        )
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        state = "truncated" if size < expected else "longer than its array"
        raise DataError(
            f"{path} is {state}: {size:,} bytes where its {shape} {dtype} array needs "
            f"{expected:,}; prepare the copy again"
        )
    return offset


def _read_labels(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
    offset = _data_offset(path, shape, dtype)
    labels = np.fromfile(path, dtype=dtype, offset=offset)
    return torch.from_numpy(labels.astype(np.int64))


def newest_file(paths: tuple[str, ...]) -> tuple[float, str]:
    """``(mtime, path)`` of the most recently modified file among ``paths`` (a folder stands for
    every file under it); ``(0.0, "")`` when none exists (a copy may outlive its source).

    :param paths: files and folders.
    """
    newest = (0.0, "")
    for top in paths:
        if os.path.isfile(top):
            newest = max(newest, (os.path.getmtime(top), top))
        for root, _, names in os.walk(top):
            for name in names:
                path = os.path.join(root, name)
                newest = max(newest, (os.path.getmtime(path), path))
    return newest


def _warn_if_stale(folder: Path, description: dict[str, Any]) -> None:
    modified, path = newest_file(tuple(description.get("source", {}).get("paths", ())))
    if modified > description.get("prepared_at", float("inf")):
        warnings.warn(
            f"the prepared copy in {folder} is older than its source: {path} changed after it "
            "was made; prepare it again (overwrite) to train on the source as it is now",
            StaleDataWarning,
            stacklevel=2,
        )

"""Data sets as tensors of images, channels-first, on the CPU, and the binarization policy.

8-bit sources (the MNIST family, pictures, the torchvision catalogue, ``.npz`` of ``uint8``) stay
``uint8`` (0-255, four times less memory than float32) until a batch is used: :func:`as_floats`
makes the values ``k / 255`` in [0, 1] then, on the device. Other sources are float32 in [0, 1].

Every loader returns a :class:`Dataset`; every problem with the user's files is a
:class:`DataError` whose message is one line saying what to do about it.

**Binarization.** A binary likelihood (Bernoulli) is never given grey values. With
``binarization="dynamic"`` grey training data are binarized afresh in every batch,
x ~ Bernoulli(pixel) (:func:`binarize_afresh`), and the test set once with the fixed seed
:data:`TEST_BINARIZATION_SEED` (:func:`eval_inputs`), so every run and every evaluation scores
the same binary images; ``"none"`` uses the data as they are, and the likelihood checks them.
"""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pyro_vae import validation
from pyro_vae.data import images
from pyro_vae.data.mapped import MappedArrays, load_prepared
from pyro_vae.errors import ConfigError, DataError

#: the data sets :func:`load_dataset` knows by name
DATASETS: tuple[str, ...] = (
    "digits",
    "photos",
    "mnist",
    "fashion-mnist",
    "kmnist",
    *images.CATALOGUE,
    "folder",
    "npz",
    "prepared",
)
# the sources of pictures, which {image_size} and {channels} apply to
PICTURE_SOURCES: tuple[str, ...] = (*images.CATALOGUE, "folder")
DEFAULT_DATA_DIR = Path("data")  #: relative to the working directory, like torchvision tutorials
SPLIT_SEED = 0  #: the digits split must not move when the training seed does
TEST_FRACTION = 0.2

# torchvision keeps each IDX data set in DIR/<Folder>/raw/; the file names are shared by all three
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049

BINARIZATION: tuple[str, ...] = ("dynamic", "none")
#: The test set of grey data is binarized once, with this seed, so every run and every
#: evaluation of a binary likelihood scores the same binary images.
TEST_BINARIZATION_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """A train/test pair of examples, optionally labelled.

    :param str name: the data set's name, one of :data:`DATASETS`.
    :param torch.Tensor x_train: ``(N, *x_shape)``, float32 with values in [0, 1] or uint8
        (8-bit images, the value ``k`` meaning ``k / 255``).
    :param torch.Tensor x_test: ``(M, *x_shape)``, of ``x_train``'s dtype.
    :param y_train: int64 ``(N,)`` labels, or ``None``.
    :param y_test: int64 ``(M,)`` labels, or ``None``.
    :param mapped: for a prepared copy (:mod:`pyro_vae.data.mapped`), the memory mapping
        ``x_train`` and ``x_test`` read from; ``None`` for data in memory.
    :param values: the distinct values of ``x_train``, when known without reading it (a
        prepared copy records them).
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    mapped: MappedArrays | None = None
    values: torch.Tensor | None = None

    @property
    def x_shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. ``(1, 8, 8)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def eight_bit(self) -> bool:
        """Whether the examples are 8-bit images, kept as ``uint8``."""
        return self.x_train.dtype == torch.uint8

    @property
    def bytes_per_example(self) -> int:
        """The memory one example takes as stored (1 byte a value for 8-bit images)."""
        return self.x_train[0].numel() * self.x_train.element_size()

    def describe(self) -> str:
        """One line: the examples, their shape and type, and the memory of each split."""
        each = f"{self.bytes_per_example:,} bytes ({self.x_train.dtype})".replace("torch.", "")
        mapped = ", memory-mapped" if self.mapped is not None else ""
        return (
            f"{self.name}: {len(self.x_train):,} training and {len(self.x_test):,} test examples "
            f"of shape {self.x_shape}, {each} each, {_mib(self.x_train)} + {_mib(self.x_test)} "
            f"MiB{mapped}"
        )

    def release_pages(self) -> None:
        """Let go of the pages of a memory-mapped data set this process has read
        (:meth:`MappedArrays.release <pyro_vae.data.mapped.MappedArrays.release>`); nothing for
        data in memory."""
        if self.mapped is not None:
            self.mapped.release()

    def train_values(self) -> torch.Tensor:
        """What the binarization policy checks of ``x_train``: its distinct values when known
        (a prepared copy records them: a data set larger than memory is not read for them),
        else ``x_train`` itself.
        """
        return self.x_train if self.values is None else self.values


def _mib(x: torch.Tensor) -> str:
    return f"{x.numel() * x.element_size() / 2**20:,.1f}"


def byte_values(x: torch.Tensor) -> torch.Tensor:
    """The distinct values of a ``uint8`` tensor, sorted, as ``uint8``: counted in place, where
    ``torch.unique`` would sort a copy 16 times the size of ``x``.

    :param x: a ``uint8`` tensor of any shape.
    """
    counts = torch.bincount(x.flatten(), minlength=256)
    return counts.nonzero().flatten().to(torch.uint8)


def as_floats(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 values in [0, 1]: 8-bit ``uint8`` images as ``k / 255``, on ``x``'s
    device; float data as they are.

    :param x: data of any shape: 8-bit ``uint8`` images, or floats in [0, 1].
    """
    return x.to(torch.float32).div_(255) if x.dtype == torch.uint8 else x


def load_dataset(
    name: str = "digits",
    *,
    data_dir: str | Path | None = None,
    data_path: str | Path | None = None,
    download: bool = True,
    image_size: int | None = None,
    channels: int | None = None,
) -> Dataset:
    """Load a data set by name.

    ``digits`` is scikit-learn's bundled 8x8 digits (no files needed), split once and for all
    into 1438 train / 359 test examples (of 1797) by a permutation seeded with :data:`SPLIT_SEED`.
    ``mnist``, ``fashion-mnist`` and ``kmnist`` are read from the four IDX files (plain or
    ``.gz``) in ``data_dir/<Folder>/raw/`` (torchvision's layout) or directly in ``data_dir``.
    ``npz`` reads ``x_train``, ``x_test`` and optional ``y_train``, ``y_test`` from ``data_path``:
    floats in [0, 1], or ``uint8`` 8-bit images (0-255; arrays of 0 and 1 alone are binary
    images, as floats). ``photos`` is an offline colour set, 32x32
    patches of scikit-learn's two sample photographs (:func:`pyro_vae.data.images.load_photos`);
    ``folder`` a folder of pictures in ``data_dir`` and ``cifar10``, ``cifar100``, ``svhn``,
    ``celeba`` torchvision's files there (:mod:`pyro_vae.data.images`). ``prepared`` is a copy of
    any of these that :func:`pyro_vae.data.prepare.prepare_dataset` decoded once into
    ``data_dir``, its images memory-mapped, not read (:mod:`pyro_vae.data.mapped`): a batch reads
    its rows alone, so it may be larger than memory.

    :param str name: one of :data:`DATASETS`.
    :param data_dir: where the files live; defaults to :data:`DEFAULT_DATA_DIR`.
    :param data_path: the ``.npz`` file, for ``name="npz"`` only.
    :param bool download: whether to try torchvision's downloader when files are missing.
    :param image_size: pictures only: resized and centre-cropped to this many pixels a side.
    :param channels: pictures only: 1 (grey) or 3 (colour); by default the pictures' own.
    :raises DataError: if the data set is unknown, missing or malformed.
    """
    validation.choice("dataset", name, DATASETS)
    if data_path is not None and name != "npz":
        raise ConfigError(f"is only used with dataset 'npz', not {name!r}", "data_path")
    for param, value in (("image_size", image_size), ("channels", channels)):
        if value is not None and name not in PICTURE_SOURCES:
            sources = ", ".join(PICTURE_SOURCES)
            raise ConfigError(f"is only used with the datasets {sources}, not {name!r}", param)
    if name == "digits":
        return _load_digits()
    if name == "npz":
        return _load_npz(data_path)
    if name == "photos":
        return Dataset(name, *images.load_photos()[:4])
    data_dir = Path(DEFAULT_DATA_DIR if data_dir is None else data_dir).expanduser()
    if name == "prepared":
        return _load_prepared(data_dir)
    if name == "folder":
        return Dataset(name, *images.load_folder(data_dir, image_size, channels)[:4])
    if name in images.CATALOGUE:
        split = images.load_catalogue(name, data_dir, download, image_size, channels)
        return Dataset(name, *split[:4])
    return _load_idx_dataset(name, data_dir, download)


def source_paths(
    name: str, data_dir: str | Path | None = None, data_path: str | Path | None = None
) -> tuple[str, ...]:
    """The files and folders (a folder standing for every file under it) the data set ``name``
    is read from, as absolute paths: what a prepared copy of it goes stale with. None for the
    embedded sets, or for files not there.

    :param name: one of :data:`DATASETS`.
    :param data_dir: as :func:`load_dataset` takes it.
    :param data_path: as :func:`load_dataset` takes it.
    """
    data_dir = Path(DEFAULT_DATA_DIR if data_dir is None else data_dir).expanduser()
    if name == "npz" and data_path is not None:
        found = [Path(data_path).expanduser()]
    elif name in _IDX_FOLDERS:
        found = list(
            (_find_idx_files([data_dir / _IDX_FOLDERS[name] / "raw", data_dir]) or {}).values()
        )
    elif name in images.CATALOGUE:
        found = [images.find_source(name, data_dir)]
    elif name in ("folder", "prepared"):
        found = [data_dir]
    else:
        found = []
    return tuple(str(p.resolve()) for p in found if p is not None and p.exists())


class Scores(Protocol):
    """What the binarization policy asks of a likelihood (see :mod:`pyro_vae.parts.likelihoods`)."""

    binary: bool

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a :class:`DataError` for values of ``x`` the likelihood cannot
        score.

        :param x: float values in [0, 1]: a data set's, or (for 8-bit images) the distinct ones.
        """


def check_shape(x_shape: tuple[int, ...], data: Dataset, where: str = "") -> None:
    """Raise :class:`DataError` unless ``data``'s examples have the shape ``x_shape``.

    :param x_shape: the shape of one example the model takes, e.g. ``(1, 28, 28)``.
    :param data: the data set to check.
    :param where: what the data are, for the message, e.g. ``"the data set of run X"``.
    """
    if tuple(data.x_shape) != tuple(x_shape):
        raise DataError(
            f"{where or 'the data'} has examples of shape {tuple(data.x_shape)} but the model "
            f"expects {tuple(x_shape)}"
        )


def num_classes(data: Dataset, what: str = "this model") -> int:
    """K, the number of classes of ``data``'s labels 0 .. K-1 (the largest label, plus one), or
    a :class:`DataError` for data without labels or with negative ones.

    :param data: the data set.
    :param what: what needs the labels, for the message, e.g. ``"model 'cvae'"``.
    """
    if data.y_train is None or data.y_test is None:
        raise DataError(
            f"{what} needs labelled data, and data set {data.name!r} has no labels; use one with "
            "labels (digits, the MNIST family, or an npz with y_train and y_test)"
        )
    low = int(min(data.y_train.min(), data.y_test.min()))
    if low < 0:
        raise DataError(f"the labels of data set {data.name!r} must be 0 or more, found {low}")
    return int(max(data.y_train.max(), data.y_test.max())) + 1


def check_labels(data: Dataset, classes: int) -> None:
    """Raise :class:`DataError` unless every label of ``data`` is one of 0 .. ``classes``-1.

    :param data: the data set to check.
    :param classes: K, the number of classes of the model.
    """
    found = num_classes(data)
    if found > classes:
        raise DataError(
            f"data set {data.name!r} has label {found - 1}, out of range for a model of {classes} "
            f"classes (0 to {classes - 1})"
        )


def labeled_split(
    y: torch.Tensor, labeled: int, classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labeled_index, unlabeled_index)``: ``labeled`` examples of the labels ``y`` chosen at
    random with ``seed``, balanced over the ``classes`` (``labeled // classes`` of each, and one
    more of ``labeled % classes`` classes drawn at random), and the rest, each sorted.

    :param y: the training set's int64 labels, ``(N,)``.
    :param labeled: how many examples to label: at least ``classes``, below ``len(y)``.
    :param classes: K, the number of classes (the labels 0 .. K-1).
    :param seed: seeds the draw, on a generator of its own (the global one is untouched).
    :raises ConfigError: if ``labeled`` is below ``classes`` or above ``len(y)`` - 1 (at least one
        example must stay unlabelled), or a class has too few examples.
    """
    labeled = validation.whole("labeled", labeled)
    if labeled < classes:
        raise ConfigError(
            f"({labeled}) is smaller than the number of classes ({classes}): at least one "
            "labelled example of each is needed",
            "labeled",
        )
    if labeled >= len(y):
        raise ConfigError(
            f"({labeled}) must be smaller than the training set ({len(y)} examples): the rest "
            "are the unlabelled examples",
            "labeled",
        )
    generator = torch.Generator().manual_seed(seed)
    extra = torch.randperm(classes, generator=generator)[: labeled % classes]
    chosen = []
    for k in range(classes):
        members = (y == k).nonzero().flatten()
        wanted = labeled // classes + int((extra == k).any())
        if len(members) < wanted:
            raise ConfigError(
                f"asks for {wanted} labelled examples of class {k}, which has {len(members)}",
                "labeled",
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:wanted]])
    index = torch.cat(chosen).sort().values
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[index] = False
    return index, rest.nonzero().flatten()


def needs_binarization(likelihood: Scores, x: torch.Tensor, binarization: str) -> bool:
    """Whether ``x`` must be binarized for ``likelihood``; checks ``x`` fits it otherwise.

    :param likelihood: what will score ``x``: its ``binary`` flag and ``check_data``
        (:class:`Scores`).
    :param x: the data: floats in [0, 1], or 8-bit ``uint8`` images.
    :param binarization: ``"dynamic"`` (binarize grey data for a binary likelihood) or ``"none"``.
    """
    validation.choice("binarization", binarization, BINARIZATION)
    if x.dtype == torch.uint8:  # at most 256 values: checking those checks them all
        x = as_floats(byte_values(x))
    if binarization == "dynamic" and likelihood.binary and not is_binary(x):
        return True
    likelihood.check_data(x)
    return False


def eval_inputs(
    likelihood: Scores, x_test: torch.Tensor, binarization: str = "dynamic"
) -> torch.Tensor:
    """The test set as ``likelihood`` scores it, float values in [0, 1]: a fixed binarization of
    grey data if needed.

    :param likelihood: what will score the test set (:class:`Scores`).
    :param x_test: the test set: floats in [0, 1], or 8-bit ``uint8`` images.
    :param binarization: ``"dynamic"``: grey data are binarized for a binary likelihood, with
        :data:`TEST_BINARIZATION_SEED`; ``"none"``: used as they are.
    """
    x_test = as_floats(x_test)
    if needs_binarization(likelihood, x_test, binarization):
        return binarize(x_test, TEST_BINARIZATION_SEED)
    return x_test


def binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed binarization ``x_b ~ Bernoulli(x)``.

    The noise comes from its own ``torch.Generator(seed)`` on the CPU, so the result depends only
    on ``seed`` and the global RNG is never disturbed.

    :param torch.Tensor x: probabilities in [0, 1], or 8-bit images (:func:`as_floats`).
    :param int seed: the seed of the binarization.
    :returns: float32 zeros and ones shaped like ``x``, on ``x``'s device.
    """
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(x.shape, generator=g)
    return (u < as_floats(x.detach().cpu()).float()).float().to(x.device)


def binarize_afresh(x: torch.Tensor) -> torch.Tensor:
    """A new binarization ``x_b ~ Bernoulli(x)`` from the global RNG, on ``x``'s device.

    Drawn as ``u < x`` with ``u ~ U[0, 1)``, which is Bernoulli(x) exactly. On the CPU these
    are the very values ``torch.bernoulli(x)`` draws (the same uniforms from the same generator),
    in a quarter of its time (``benchmarks/results/candidates-cpu-2026-11-21.md``). 8-bit images
    are made floats first (:func:`as_floats`).

    :param x: probabilities in [0, 1], or 8-bit images.
    """
    x = as_floats(x)
    return torch.rand_like(x).lt_(x)


def is_binary(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is exactly 0 or 1 (0 or 255 for 8-bit images).

    :param x: floats in [0, 1], or 8-bit ``uint8`` images.
    """
    x = as_floats(x)
    return bool(((x == 0) | (x == 1)).all())


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(len(x) * TEST_FRACTION)
    test, train = perm[:n_test], perm[n_test:]
    return Dataset("digits", x[train], x[test], y[train], y[test])


def _load_prepared(folder: Path) -> Dataset:
    prepared = load_prepared(folder)
    values = prepared.description.get("values")
    values = None if values is None else torch.tensor(values, dtype=prepared.x_train.dtype)
    name = prepared.description["source"]["dataset"]
    return Dataset(name, *prepared[:4], mapped=prepared.mapped, values=values)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes: images (N, H, W) or labels (N,)."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a cut-off .gz raises EOFError, a bad one OSError
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated: {len(raw)} bytes, not even a header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "images" if magic == _IMAGES_MAGIC else "labels"
        raise DataError(f"{path} is not an IDX {kind} file: magic number {found}, expected {magic}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(
            f"IDX file {path} is truncated or corrupt: header says {dims} "
            f"({int(np.prod(dims))} bytes) but {len(raw) - header} bytes follow"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx_files(dirs: list[Path]) -> dict[str, Path] | None:
    for d in dirs:
        found = {}
        for stem in _IDX_FILES:
            for candidate in (d / stem, d / f"{stem}.gz"):
                if candidate.is_file():
                    found[stem] = candidate
                    break
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _load_idx_dataset(name: str, data_dir: Path, download: bool) -> Dataset:
    folder = _IDX_FOLDERS[name]
    dirs = [data_dir / folder / "raw", data_dir]
    files = _find_idx_files(dirs)
    failure = ""
    if files is None and download:
        splits = ({"train": True}, {"train": False})
        failure = images.download_with_torchvision(data_dir, folder, splits)
        files = _find_idx_files(dirs)
    if files is None:
        raise DataError(
            f"{name} not found: looked for {', '.join(_IDX_FILES)} (plain or .gz) in "
            f"{' and '.join(str(d) for d in dirs)}{failure}; pass {{data_dir}} DIR pointing at a "
            "folder with these files (e.g. /usr/share/datasets/fashion-mnist from Debian's "
            "dataset-fashion-mnist)"
        )
    x_train, y_train = _read_idx_pair(files, "train")
    x_test, y_test = _read_idx_pair(files, "t10k")
    return Dataset(name, x_train, x_test, y_train, y_test)


def _read_idx_pair(files: dict[str, Path], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path = files[f"{prefix}-images-idx3-ubyte"]
    labels_path = files[f"{prefix}-labels-idx1-ubyte"]
    pixels = _read_idx(images_path, _IMAGES_MAGIC)
    labels = _read_idx(labels_path, _LABELS_MAGIC)
    if len(pixels) != len(labels):
        raise DataError(
            f"{images_path} has {len(pixels)} images but {labels_path} has {len(labels)} labels"
        )
    x = torch.from_numpy(pixels.copy()).unsqueeze(1)  # the bytes as they are: 8-bit images
    return x, torch.from_numpy(labels.astype(np.int64))


def _load_npz(data_path: str | Path | None) -> Dataset:
    if data_path is None:
        raise ConfigError("dataset 'npz' needs {data_path} file.npz with arrays x_train and x_test")
    path = Path(data_path).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a folder; {{data_path}} names an .npz file")
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    bad = (OSError, ValueError, EOFError, zipfile.BadZipFile)
    try:
        archive = np.load(path, allow_pickle=False)
    except bad:  # numpy takes anything that is neither .npy nor zip for a pickle, never loaded
        raise DataError(
            f"{path} is not an .npz archive; write one with numpy.savez(path, x_train=..., "
            "x_test=...)"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single .npy array, not an .npz archive (numpy.savez)")
    try:
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except bad as e:  # object arrays land here: allow_pickle=False refuses them
        raise DataError(f"cannot read the arrays in {path} ({e}); save numeric arrays") from None
    missing = [key for key in ("x_train", "x_test") if key not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "none"
        raise DataError(f"{path} lacks required array(s) {', '.join(missing)}; found: {found}")
    x = {key: _check_x(path, key, arrays[key]) for key in ("x_train", "x_test")}
    if x["x_train"].dtype != x["x_test"].dtype:
        raise DataError(
            f"{path}: x_train is {x['x_train'].dtype} but x_test is {x['x_test'].dtype}; both "
            "must be uint8 (8-bit images) or both floats in [0, 1]".replace("torch.", "")
        )
    if x["x_train"].shape[1:] != x["x_test"].shape[1:]:
        raise DataError(
            f"{path}: x_train has per-example shape {tuple(x['x_train'].shape[1:])} but x_test "
            f"has {tuple(x['x_test'].shape[1:])}; they must match"
        )
    y = {}
    for key, x_key in (("y_train", "x_train"), ("y_test", "x_test")):
        y[key] = _check_y(path, key, arrays[key], len(x[x_key])) if key in arrays else None
    return Dataset("npz", x["x_train"], x["x_test"], y["y_train"], y["y_test"])


def _check_x(path: Path, key: str, a: np.ndarray) -> torch.Tensor:
    if a.dtype.kind not in "biuf":
        raise DataError(f"{key} in {path} has dtype {a.dtype}; it must be a float or integer array")
    if a.ndim not in (2, 3, 4):
        raise DataError(
            f"{key} in {path} has shape {a.shape}; accepted shapes are (N, D), (N, H, W) "
            "or channels-first (N, C, H, W)"
        )
    if a.size == 0:
        raise DataError(f"{key} in {path} is empty (shape {a.shape}); it needs one example or more")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        raise DataError(
            f"{key} in {path} has {n_nan} NaN and {n_inf} infinite values; all must be finite"
        )
    if a.dtype == np.uint8 and a.max() > 1:  # 8-bit images, kept as bytes (0/1: binary ones)
        x = torch.from_numpy(np.ascontiguousarray(a))
        return x.unsqueeze(1) if a.ndim == 3 else x
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        hint = " (or save 8-bit images as uint8)" if hi > 1 else ""
        raise DataError(
            f"{key} in {path} has values in [{lo:g}, {hi:g}]; values must be in [0, 1]{hint}"
        )
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return x.unsqueeze(1) if a.ndim == 3 else x


def _check_y(path: Path, key: str, a: np.ndarray, n: int) -> torch.Tensor:
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataError(
            f"{key} in {path} has dtype {a.dtype} and shape {a.shape}; labels must be a 1-D "
            "integer array"
        )
    if len(a) != n:
        raise DataError(f"{key} in {path} has length {len(a)} but there are {n} examples")
    return torch.from_numpy(a.astype(np.int64))

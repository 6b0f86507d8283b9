"""Pictures from files as uint8 tensors, for the data layer.

Every loader returns a :class:`Split`: ``x_train`` and ``x_test`` are contiguous uint8 tensors
``(N, C, H, W)``, channels first, with C = 1 (grey) or 3 (colour) and values 0-255; labels are
int64 ``(N,)`` tensors or ``None``. Every problem with the user's files is a
:class:`~pyro_vae.errors.DataError` whose one-line message names the file or folder at fault.

**A folder of pictures** (:func:`load_folder`): files ending in one of :data:`IMAGE_EXTENSIONS`
(any case), read with PIL. Either each sub-folder is a class (torchvision's ``ImageFolder``
layout: classes sorted by name, label = index, pictures found at any depth inside a class), or
the pictures lie directly in the folder and have no labels; never both at once. Names starting
with a dot are skipped (``.DS_Store``, macOS's ``._photo.jpg``), as are other extensions and
sub-folders holding no pictures. If the folder has ``train/`` and ``test/`` sub-folders, those
are the split, each in either layout with the same class names, and nothing else is read.
Otherwise the files, sorted by path, are split once by a permutation seeded with
:data:`SPLIT_SEED`: ``int(n * 0.2)`` test pictures, at least one, the rest for training.

**The catalogue** (:func:`load_catalogue`): cifar10, cifar100, svhn and celeba read from the
files their publishers distribute, in torchvision's layout under ``data_dir``; torchvision
only downloads them when they are missing. CelebA's own partition is kept (train = 0,
test = 2; the validation part is dropped) and its pictures are resized to 64x64 by default.

**Decoding in parallel** (:func:`picture_plan`, :func:`decode_chunks`): a folder and CelebA
are decoded in chunks of :data:`CHUNK` pictures by :data:`DECODE_WORKERS` processes (by this
one below 500 pictures), to the same bytes one process gives. The plan lists the files, draws
the split and decodes only the first picture; any chunk can then be decoded on its own and is
held to that first picture's size and kind, which lets ``pyro-vae prepare`` write a data set to
disk a chunk at a time, never whole in memory, and resume an interrupted copy.

**Photographs** (:func:`load_photos`): 32x32 colour patches of the two photographs that
scikit-learn ships, for a real colour data set that needs no files and no network.

**Pixels.** Grey modes ("1", "L", "LA", "I", "I;16", "F") give one channel and every other mode
(RGB, RGBA, P, CMYK, YCbCr, ...) three, unless ``channels`` asks for 1 or 3, which converts
each picture with PIL's ``convert("L")`` (L = R * 299/1000 + G * 587/1000 + B * 114/1000) or
``convert("RGB")``. Alpha is dropped, not composited; an animated GIF gives its first frame.
16-bit grey ("I;16") is scaled to 8 bits (v * 255 / 65535, rounded) and then converted; 32-bit
integer ("I") and float ("F") pictures go through ``convert("L")`` as they are, which clips
their values to 0-255. ``image_size`` S resizes each picture so its shorter side is S
(bilinear, antialiased) and crops the centre SxS, as torchvision's ``Resize(S)`` and
``CenterCrop(S)`` do on PIL images; the catalogue's arrays go through the same steps.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from pyro_vae import validation
from pyro_vae.errors import DataError

#: the data sets torchvision publishes that :func:`load_catalogue` reads
CATALOGUE: tuple[str, ...] = ("cifar10", "cifar100", "svhn", "celeba")
#: the endings of the picture files :func:`load_folder` reads
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLIT_SEED = 0  #: the split of a folder must not move when the training seed does
TEST_FRACTION = 0.2
CELEBA_IMAGE_SIZE = 64  # CelebA's 178x218 pictures are too big for a small VAE
PATCH = 32  # the side of a CIFAR or SVHN picture, and of a photograph's patch
PHOTOS: tuple[str, ...] = ("china", "flower")  # load_photos's classes, by label
_PROGRESS_FROM = 500  # below this many files a progress bar is just noise
CHUNK = 256  #: the pictures :func:`decode_chunks` decodes, and yields, at a time
#: the processes :func:`load_folder` and CelebA decode pictures with: the cores, at most 8
DECODE_WORKERS = min(8, os.cpu_count() or 1)
_POOL_FROM = 500  # below this many pictures, starting processes costs more than it saves
# fork starts a worker at once, where spawn imports torch again in each (seconds); but fork
# is unsafe on macOS and missing on Windows
_START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})  # and every 16-bit "I;16..." mode


class Split(NamedTuple):
    """Pictures split into training and test sets.

    :param torch.Tensor x_train: uint8 ``(N, C, H, W)``, C = 1 or 3, contiguous.
    :param torch.Tensor x_test: uint8 ``(M, C, H, W)``.
    :param y_train: int64 ``(N,)`` labels, or ``None``.
    :param y_test: int64 ``(M,)`` labels, or ``None``.
    :param classes: the name of each label, empty when unlabelled.
    """

    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    classes: tuple[str, ...] = ()


# ----- a folder of pictures -----


def load_folder(
    data_dir: str | Path, image_size: int | None = None, channels: int | None = None
) -> Split:
    """Read a folder of pictures, labelled by class sub-folder or unlabelled (see the module).

    The pictures are decoded by :data:`DECODE_WORKERS` processes (see :func:`decode_chunks`).

    :param data_dir: the folder.
    :param image_size: S to resize and centre-crop every picture to SxS; without it all
        pictures must have the same size.
    :param channels: 1 or 3 to convert every picture to grey or colour; without it all
        pictures must be grey, or all colour.
    :raises DataError: for a missing or empty folder, a mixed layout, unreadable pictures, or
        pictures that differ in size or kind without ``image_size`` or ``channels``.
    :raises ConfigError: for an ``image_size`` or ``channels`` that cannot work.
    """
    return _load(picture_plan("folder", Path(data_dir), image_size, channels))


class PicturePlan(NamedTuple):
    """What decoding a folder of pictures or CelebA gives, known before any picture but the
    first is decoded: the files in their order, where each goes, and the shape of each.

    :func:`picture_plan` makes it and :func:`decode_chunks` follows it; a copy written chunk by
    chunk knows the shape of its arrays before it starts, and one resumed finds the same plan.

    :param paths: the picture files, in the order they are decoded.
    :param train: int64 positions into ``paths`` of the training pictures, in their order in
        ``x_train``.
    :param test: int64 positions into ``paths`` of the test pictures, in their order in
        ``x_test``.
    :param labels: the int64 label of each of ``paths``, or ``None`` when unlabelled.
    :param classes: the name of each label, empty when unlabelled.
    :param shape: ``(C, H, W)`` of every decoded picture: the first picture's, after
        ``image_size`` and ``channels``.
    :param root: the folder whose files are the source: the folder of pictures, or CelebA's
        folder holding ``img_align_celeba/`` and ``list_eval_partition.txt``.
    :param image_size: S to resize and centre-crop every picture to SxS, or ``None``: every
        picture must then have the first one's size.
    :param channels: 1 or 3 to convert every picture to grey or colour, or ``None``: every
        picture must then be of the first one's kind.
    """

    paths: list[Path]
    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray | None
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    root: Path
    image_size: int | None
    channels: int | None


def picture_plan(
    name: str, data_dir: str | Path, image_size: int | None, channels: int | None
) -> PicturePlan:
    """The :class:`PicturePlan` of a folder of pictures (:func:`load_folder`) or of CelebA
    (:func:`load_catalogue`): the files found and listed, the split drawn as those loaders draw
    it, and only the first picture decoded. Every problem those loaders find before decoding
    is raised here, with the same message.

    :param name: ``"folder"`` or ``"celeba"``.
    :param data_dir: the folder of pictures; for celeba, the folder holding ``celeba/`` (or
        CelebA's files themselves), which must be there: nothing is downloaded.
    :param image_size: S to resize and centre-crop every picture to SxS; for celeba, 64 by
        default, as :func:`load_catalogue` reads it.
    :param channels: 1 or 3 to convert every picture to grey or colour.
    :raises DataError: for a missing or empty folder, a mixed layout, too few pictures, a
        broken first picture, or CelebA's partition file missing, malformed or naming missing
        pictures.
    :raises ConfigError: for an unknown ``name``, or an ``image_size`` or ``channels`` that
        cannot work.
    """
    validation.choice("dataset", name, ("folder", "celeba"))
    image_size, channels = _check_settings(image_size, channels)
    data_dir = Path(data_dir).expanduser()
    if name == "celeba":
        folder = _locate(name, data_dir, download=False)
        return _celeba_plan(folder, image_size or CELEBA_IMAGE_SIZE, channels)
    return _folder_plan(data_dir, image_size, channels)


def _folder_plan(folder: Path, image_size: int | None, channels: int | None) -> PicturePlan:
    _check_folder(folder)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return _train_test_plan(folder, image_size, channels)
    paths, labels, classes = _scan(folder)
    if len(paths) < 2:
        raise DataError(
            f"{folder} holds 1 picture; it needs at least 2, one for training and one for "
            "testing: add pictures, or pass {data_dir} a folder with more"
        )
    perm = torch.randperm(len(paths), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(int(len(paths) * TEST_FRACTION), 1)  # n >= 2, so one is left for training
    train, test = perm[n_test:].numpy(), perm[:n_test].numpy()
    return _plan(paths, train, test, labels, classes, folder, image_size, channels)


def _train_test_plan(folder: Path, image_size: int | None, channels: int | None) -> PicturePlan:
    train_paths, train_labels, classes = _scan(folder / "train")
    test_paths, test_labels, test_classes = _scan(folder / "test")
    if classes != test_classes:
        raise DataError(
            f"{folder / 'train'} has classes ({_names(classes)}) but {folder / 'test'} has "
            f"({_names(test_classes)}); give both the same class sub-folders"
        )
    # decoded as one list, so both parts are held to one size and one kind of picture
    n, m = len(train_paths), len(test_paths)
    labels = None if train_labels is None or test_labels is None else train_labels + test_labels
    train, test = np.arange(n), np.arange(n, n + m)
    return _plan(
        train_paths + test_paths, train, test, labels, classes, folder, image_size, channels
    )


def _plan(
    paths: list[Path],
    train: np.ndarray,
    test: np.ndarray,
    labels: Sequence[int] | None,
    classes: tuple[str, ...],
    root: Path,
    image_size: int | None,
    channels: int | None,
) -> PicturePlan:
    """The plan of ``paths``, its shape read from the first picture, which must open."""
    image = _open(paths[0])
    c = channels or _kind(image.mode)
    # _prepare keeps the size, or makes it SxS
    h, w = (image_size, image_size) if image_size is not None else (image.height, image.width)
    y = None if labels is None else np.asarray(labels, dtype=np.int64)
    as_positions = (np.asarray(rows, dtype=np.int64) for rows in (train, test))
    return PicturePlan(
        list(paths), *as_positions, y, classes, (c, h, w), root, image_size, channels
    )


def _load(plan: PicturePlan) -> Split:
    """The pictures of ``plan`` in memory, decoded by :data:`DECODE_WORKERS` processes; each
    chunk goes straight to its rows of ``x_train`` and ``x_test``, never all in one array."""
    x_train = torch.empty((len(plan.train), *plan.shape), dtype=torch.uint8)
    x_test = torch.empty((len(plan.test), *plan.shape), dtype=torch.uint8)
    in_test = np.zeros(len(plan.paths), dtype=bool)
    in_test[plan.test] = True
    row = np.zeros(len(plan.paths), dtype=np.int64)
    row[plan.train], row[plan.test] = np.arange(len(plan.train)), np.arange(len(plan.test))
    train_rows, test_rows = x_train.numpy(), x_test.numpy()  # views: writes land in the tensors
    for k, pixels in decode_chunks(plan, workers=DECODE_WORKERS):
        at = slice(k * CHUNK, k * CHUNK + len(pixels))
        test, rows = in_test[at], row[at]
        train_rows[rows[~test]] = pixels[~test]
        test_rows[rows[test]] = pixels[test]
    if plan.labels is None:
        return Split(x_train, x_test)
    y_train, y_test = (torch.tensor(plan.labels[rows]) for rows in (plan.train, plan.test))
    return Split(x_train, x_test, y_train, y_test, plan.classes)


def _names(classes: tuple[str, ...]) -> str:
    return ", ".join(classes) if classes else "none: pictures directly in the folder"


def _check_settings(image_size: int | None, channels: int | None) -> tuple[int | None, int | None]:
    return (
        validation.optional(validation.size, "image_size", image_size),
        validation.optional(validation.channels, "channels", channels),
    )


def _check_folder(folder: Path) -> None:
    if folder.is_file():
        raise DataError(f"{folder} is a file; pass {{data_dir}} a folder of pictures")
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}; pass {{data_dir}} a folder of pictures")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _is_picture(path: Path) -> bool:
    return _visible(path) and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _pictures_under(folder: Path) -> list[Path]:
    """The pictures at any depth in ``folder``, outside hidden folders, sorted by path."""
    found = [
        p
        for p in folder.rglob("*")
        if _is_picture(p) and all(_visible(Path(part)) for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: str(p.relative_to(folder)))


def _scan(folder: Path) -> tuple[list[Path], list[int] | None, tuple[str, ...]]:
    """``(paths, labels, classes)`` of ``folder``: labels ``None`` and no classes when flat."""
    _check_folder(folder)
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    top = [p for p in entries if _is_picture(p)]
    members = {d.name: _pictures_under(d) for d in entries if d.is_dir() and _visible(d)}
    members = {name: paths for name, paths in members.items() if paths}
    if top and members:
        raise DataError(
            f"{folder} has both pictures ({top[0].name}, ...) and class sub-folders "
            f"({next(iter(members))}/, ...); move every picture into a class sub-folder, or "
            "take the sub-folders out"
        )
    if not top and not members:
        raise DataError(
            f"no pictures in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)} files in it and "
            "in its class sub-folders); pass {data_dir} a folder of pictures"
        )
    if top:
        return top, None, ()
    classes = tuple(members)
    labels = [k for k, name in enumerate(classes) for _ in members[name]]
    return [p for name in classes for p in members[name]], labels, classes


# ----- reading pictures -----


def chunk_count(plan: PicturePlan) -> int:
    """How many chunks of :data:`CHUNK` pictures :func:`decode_chunks` splits ``plan`` into.

    :param plan: the plan, from :func:`picture_plan`.
    """
    return -(-len(plan.paths) // CHUNK)


def decode_chunks(
    plan: PicturePlan,
    *,
    workers: int,
    chunks: Sequence[int] | None = None,
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """The pictures of ``plan`` decoded, a chunk at a time: ``(k, pixels)`` for each chunk
    ``k`` asked for, in the order asked, ``pixels`` the uint8 ``(n, C, H, W)`` array of
    ``plan.paths[k * CHUNK:(k + 1) * CHUNK]``, the same whatever the workers.

    Each picture is checked against the plan's first picture, so a chunk decoded alone, or in
    a resumed run, is held to the same size and kind as all the others. At most twice
    ``workers`` chunks are decoded ahead of the one yielded, so a slow consumer does not fill
    the memory; the processes are stopped when the iteration ends, early or on Ctrl-C.

    :param plan: the plan, from :func:`picture_plan`.
    :param workers: processes decoding chunks; 0 or 1 decodes in this process, as do jobs of
        fewer than 500 pictures, for which starting processes costs more than it saves.
    :param chunks: the chunks to decode, each 0 to ``chunk_count(plan) - 1``; all by default.
    :param progress: show a progress bar of the pictures on stderr (from 500 pictures).
    :raises DataError: for a picture that cannot be read, or that differs in size or kind
        from the first without ``image_size`` or ``channels``; raised when its chunk is due.
    :raises ValueError: for a chunk out of range or a negative ``workers``.
    """
    count = chunk_count(plan)
    order = list(range(count)) if chunks is None else [int(k) for k in chunks]
    outside = [k for k in order if not 0 <= k < count]
    if outside:
        raise ValueError(f"chunk {outside[0]} is not one of the plan's chunks, 0 to {count - 1}")
    if workers < 0:
        raise ValueError(f"workers must be at least 0, got {workers}")
    return _decoded(plan, order, workers, progress)  # a generator: nothing decoded until asked


class _Checks(NamedTuple):
    """What a worker needs of the plan to decode and check its chunk: not the plan, whose list
    of every path would be copied to a worker with each chunk."""

    first: Path  # the plan's first picture, named when another differs from it
    shape: tuple[int, int, int]
    image_size: int | None
    channels: int | None


class _Failure(NamedTuple):
    """A worker's DataError, returned rather than raised: raised again here, it reads as if
    raised here, without the worker's traceback chained to it as its cause."""

    problem: str
    param: str | None


def _decoded(
    plan: PicturePlan, order: list[int], workers: int, progress: bool
) -> Iterator[tuple[int, np.ndarray]]:
    checks = _Checks(plan.paths[0], plan.shape, plan.image_size, plan.channels)
    jobs = [(k, plan.paths[k * CHUNK : (k + 1) * CHUNK]) for k in order]
    total = sum(len(paths) for _, paths in jobs)
    quiet = not progress or total < _PROGRESS_FROM
    bar = tqdm(
        total=total, desc="reading pictures", unit="picture", leave=False, file=sys.stderr,
        disable=quiet,
    )  # fmt: skip
    try:
        if workers <= 1 or total < _POOL_FROM or len(jobs) < 2:
            for k, paths in jobs:
                yield k, _decode(checks, paths, bar.update)
        else:
            yield from _pooled(checks, jobs, min(workers, len(jobs)), bar)
    finally:
        bar.close()


def _pooled(
    checks: _Checks, jobs: list[tuple[int, list[Path]]], workers: int, bar: tqdm
) -> Iterator[tuple[int, np.ndarray]]:
    """``jobs`` decoded by ``workers`` processes, yielded in order, at most ``2 * workers``
    ahead; the pool shut down however the iteration ends."""
    context = multiprocessing.get_context(_START_METHOD)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_interrupts)
    ahead: deque[tuple[int, list[Path], Future]] = deque()
    uncounted: dict[Future, int] = {}  # chunks not yet on the bar, and their sizes
    waiting = iter(jobs)
    try:
        while True:
            while len(ahead) < 2 * workers and (job := next(waiting, None)) is not None:
                future = pool.submit(_decode_in_worker, checks, job[1])
                ahead.append((*job, future))
                uncounted[future] = len(job[1])
            if not ahead:
                return
            k, paths, future = ahead.popleft()
            _await(future, uncounted, bar)
            yield k, _outcome(future, paths)
    finally:
        # chunks not started are dropped; those running end within a chunk's time
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_interrupts() -> None:
    """A worker leaves Ctrl-C to the parent, which shuts the pool down; else each worker
    would print its own traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _await(future: Future, uncounted: dict[Future, int], bar: tqdm) -> None:
    """Wait for ``future``, counting on ``bar`` every chunk that ends meanwhile, in any order."""
    while True:
        for done in [f for f in uncounted if f.done()]:
            bar.update(uncounted.pop(done))
        if future.done():
            return
        wait(uncounted, return_when=FIRST_COMPLETED)


def _outcome(future: Future, paths: list[Path]) -> np.ndarray:
    """A worker's pixels, or its DataError raised here as the same one-line DataError."""
    try:
        result = future.result()
    except BrokenProcessPool as e:  # a worker killed: out of memory, or a decoder crashed
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise DataError(
            f"a process decoding the pictures {paths[0]} to {paths[-1]} ended abruptly "
            f"({reason}); with too little memory, decode with fewer workers; with one process "
            "(0 workers) a picture that crashes its decoder shows itself"
        ) from None
    if isinstance(result, _Failure):
        raise DataError(result.problem, result.param) from None
    return result


def _decode_in_worker(checks: _Checks, paths: list[Path]) -> np.ndarray | _Failure:
    try:
        return _decode(checks, paths)
    except DataError as e:
        return _Failure(e.problem, e.param)


def _decode(
    checks: _Checks, paths: Sequence[Path], done: Callable[[int], object] | None = None
) -> np.ndarray:
    """``paths`` as one uint8 ``(N, C, H, W)`` array, each picture held to the kind and size of
    the first unless ``channels`` and ``image_size`` convert them; ``done(1)`` after each."""
    c, h, w = checks.shape
    out = np.empty((len(paths), c, h, w), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = _open(path)
        kind = _kind(image.mode)
        if checks.channels is None and kind != c:
            grey, colour = (path, checks.first) if kind == 1 else (checks.first, path)
            raise DataError(
                f"the pictures mix grey ({grey}) and colour ({colour}); pass "
                "{channels} 1 or 3 to convert them all to grey or to colour"
            )
        if checks.image_size is None and image.size != (w, h):
            raise DataError(
                f"{path} is {_wxh(image.size)} pixels but {checks.first} is {_wxh((w, h))}; "
                "pass {image_size} S to resize and crop every picture to SxS"
            )
        pixels = _prepare(image, checks.channels or kind, checks.image_size)
        out[i] = pixels if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if done is not None:
            done(1)
    return out


def _progress(items: Sequence, what: str) -> tqdm:
    quiet = len(items) < _PROGRESS_FROM
    return tqdm(items, desc=what, unit="picture", leave=False, file=sys.stderr, disable=quiet)


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as e:  # a broken file can make any of PIL's decoders raise anything
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise DataError(
            f"cannot read picture {path} ({reason}); replace or delete it, or rename it to an "
            f"extension other than {', '.join(IMAGE_EXTENSIONS)} to skip it"
        ) from None
    return image


def _kind(mode: str) -> int:
    """The channels a picture of PIL ``mode`` has: 1 for grey, 3 for colour."""
    return 1 if mode in _GREY_MODES or mode.startswith("I;16") else 3


def _prepare(image: Image.Image, channels: int, image_size: int | None) -> np.ndarray:
    """``image`` converted to ``channels`` and resized: ``(H, W)`` or ``(H, W, 3)`` uint8."""
    if image.mode.startswith("I;16"):  # PIL's convert would clip 16-bit values at 255
        wide = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    if image_size is not None:
        image = _resize_crop(image, image_size)
    return np.asarray(image)


def _resize_crop(image: Image.Image, size: int) -> Image.Image:
    """The shorter side resized to ``size``, then the centre ``size`` x ``size``.

    The same sizes and rounding as torchvision's ``Resize(size)`` then ``CenterCrop(size)``.
    """
    w, h = image.size
    if (w, h) != (size, size):
        short, long = min(w, h), max(w, h)
        new_long = int(size * long / short)
        new = (size, new_long) if w <= h else (new_long, size)
        if new != (w, h):
            image = image.resize(new, Image.Resampling.BILINEAR)
        w, h = image.size
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return image


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, 3)`` uint8 pixels as a ``(C, H, W)`` tensor."""
    t = torch.from_numpy(np.array(pixels, dtype=np.uint8))
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def _adjust(x: np.ndarray, image_size: int | None, channels: int | None) -> torch.Tensor:
    """Colour ``(N, 3, H, W)`` uint8 arrays, converted and resized as pictures read from files."""
    n, _, h, w = x.shape
    if (image_size is None or (h, w) == (image_size, image_size)) and channels in (None, 3):
        return torch.from_numpy(np.ascontiguousarray(x))
    size = image_size or h
    out = torch.empty((n, channels or 3, size, size), dtype=torch.uint8)
    bar = _progress(range(n), "converting pictures")
    for i in bar:
        image = Image.fromarray(np.ascontiguousarray(x[i].transpose(1, 2, 0)))
        out[i] = _to_tensor(_prepare(image, channels or 3, image_size))
    bar.close()
    return out


# ----- the catalogue -----


class _Source(NamedTuple):
    folder: str  # where torchvision puts the files, under data_dir ("" for data_dir itself)
    files: tuple[str, ...]  # those that must all be there


_SOURCES = {
    "cifar10": _Source(
        "cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
    ),
    "cifar100": _Source("cifar-100-python", ("train", "test")),
    "svhn": _Source("", ("train_32x32.mat", "test_32x32.mat")),
    "celeba": _Source("celeba", ("img_align_celeba", "list_eval_partition.txt")),
}


def load_catalogue(
    name: str,
    data_dir: str | Path,
    download: bool,
    image_size: int | None = None,
    channels: int | None = None,
) -> Split:
    """Read one of :data:`CATALOGUE` from its published files under ``data_dir``.

    cifar10: ``cifar-10-batches-py/data_batch_1`` .. ``5``, ``test_batch`` (and, for the class
    names, ``batches.meta``); cifar100: ``cifar-100-python/train``, ``test`` (and ``meta``),
    with the 100 fine labels; svhn: ``train_32x32.mat``, ``test_32x32.mat``, with the digit 0
    labelled 0; celeba: ``celeba/img_align_celeba/*.jpg`` and
    ``celeba/list_eval_partition.txt``, unlabelled, 64x64 unless ``image_size`` says otherwise.
    Each folder may also be ``data_dir`` itself.

    :param str name: one of :data:`CATALOGUE`.
    :param data_dir: the folder holding the files (torchvision's ``root``).
    :param bool download: whether torchvision may download missing files.
    :param image_size: S to resize and centre-crop the pictures to SxS.
    :param channels: 1 to convert to grey, or 3.
    :raises DataError: if the files are missing or malformed.
    """
    validation.choice("dataset", name, CATALOGUE)
    image_size, channels = _check_settings(image_size, channels)
    data_dir = Path(data_dir).expanduser()
    found = _locate(name, data_dir, download)
    if name == "celeba":
        return _load(_celeba_plan(found, image_size or CELEBA_IMAGE_SIZE, channels))
    if name == "svhn":
        x_train, y_train = _read_svhn(found / "train_32x32.mat")
        x_test, y_test = _read_svhn(found / "test_32x32.mat")
        classes = tuple(str(k) for k in range(10))
    else:
        x_train, y_train, x_test, y_test, classes = _read_cifar(name, found)
    return Split(
        _adjust(x_train, image_size, channels),
        _adjust(x_test, image_size, channels),
        torch.from_numpy(y_train),
        torch.from_numpy(y_test),
        classes,
    )


def _locate(name: str, data_dir: Path, download: bool) -> Path:
    """The folder holding ``name``'s files, downloaded there first if missing and allowed."""
    found = find_source(name, data_dir)
    failure = ""
    if found is None and download:
        failure = _download(name, data_dir)
        found = find_source(name, data_dir)
    if found is None:
        source = _SOURCES[name]
        where = " and ".join(str(d) for d in _source_dirs(source, data_dir))
        inside = f"{source.folder}/ with " if source.folder else ""
        raise DataError(
            f"{name} not found: looked for {', '.join(source.files)} in {where}{failure}; pass "
            f"{{data_dir}} a folder holding {inside}these files (on a machine without network, "
            "copy them there first)"
        )
    return found


def _source_dirs(source: _Source, data_dir: Path) -> list[Path]:
    return [data_dir / source.folder, data_dir] if source.folder else [data_dir]


def find_source(name: str, data_dir: Path) -> Path | None:
    """The folder under ``data_dir`` holding the files of ``name``, one of :data:`CATALOGUE`,
    or ``None`` when they are not all there.

    :param name: one of :data:`CATALOGUE`.
    :param data_dir: where the files live (torchvision's ``root``).
    """
    source = _SOURCES[name]
    for d in _source_dirs(source, data_dir):
        if all((d / f).exists() for f in source.files):
            return d
    return None


# How torchvision downloads each of the catalogue: its class, and the keyword arguments of each call
_DOWNLOADS: dict[str, tuple[str, tuple[dict[str, Any], ...]]] = {
    "cifar10": ("CIFAR10", ({"train": True},)),  # one archive holds both splits
    "cifar100": ("CIFAR100", ({"train": True},)),
    "svhn": ("SVHN", ({"split": "train"}, {"split": "test"})),
    "celeba": ("CelebA", ({"split": "all", "target_type": []},)),
}


def _download(name: str, data_dir: Path) -> str:
    """Download ``name`` into ``data_dir`` with torchvision; the failure, for the message."""
    return download_with_torchvision(data_dir, *_DOWNLOADS[name])


def download_with_torchvision(root: Path, dataset: str, calls: Sequence[dict[str, Any]]) -> str:
    """``torchvision.datasets.<dataset>(root, download=True, **call)`` for each of ``calls``:
    ``""``, or the failure in a few words, to end a data set's not-found message with.

    torchvision makes its folders before it reaches the network, so it downloads into a scratch
    folder inside ``root`` whose files are moved into ``root`` once every call succeeded; a
    failed attempt leaves nothing behind, not even ``root`` where it did not exist.

    :param root: the folder to download into: the data directory.
    :param dataset: the class's name in ``torchvision.datasets``, e.g. ``"FashionMNIST"``.
    :param calls: the keyword arguments of each call, one call a split (``{"train": False}``).
    """
    import torchvision.datasets

    made = [d for d in (root, *root.parents) if not d.exists()]  # what mkdir will create
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as scratch:
            for call in calls:
                getattr(torchvision.datasets, dataset)(scratch, download=True, **call)
            _move_into(Path(scratch), root)
    except Exception as e:  # no network, a dead mirror, a full disk: all end the same way
        for folder in made:  # the deepest first, each empty once the scratch folder is gone
            with contextlib.suppress(OSError):
                folder.rmdir()
        return f"; download failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    return ""


def _move_into(source: Path, target: Path) -> None:
    """Every file under ``source`` renamed to the same place under ``target``, beside what
    ``target`` holds already."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)


class _Cifar(NamedTuple):
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels: str
    names: str
    classes: int


_CIFARS = {
    "cifar10": _Cifar(
        _SOURCES["cifar10"].files[:5], ("test_batch",), "batches.meta", "labels", "label_names", 10
    ),
    "cifar100": _Cifar(("train",), ("test",), "meta", "fine_labels", "fine_label_names", 100),
}


def _read_cifar(
    name: str, folder: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(x_train, y_train, x_test, y_test, classes)`` of CIFAR-10 or CIFAR-100."""
    spec = _CIFARS[name]
    parts: list[np.ndarray] = []
    for files in (spec.train, spec.test):
        batches = [_read_cifar_batch(folder / f, spec.labels, spec.classes) for f in files]
        parts += [np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])]
    meta = folder / spec.meta
    if meta.is_file():
        names = _unpickle(meta).get(spec.names)
        if not isinstance(names, list) or len(names) != spec.classes:
            raise DataError(f"{meta} has no list of {spec.classes} class names under {spec.names}")
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    else:
        classes = tuple(str(k) for k in range(spec.classes))
    return (*parts, classes)


def _unpickle(path: Path) -> dict:
    """A CIFAR file: a pickled dict, with its keys as ``str``."""
    try:
        # pickle runs code, so it only opens the files named above, in the folder the user chose
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # a file that is not a pickle can fail in many ways
        raise DataError(
            f"cannot read {path} as a CIFAR pickle ({type(e).__name__}); replace it with the "
            "file from the CIFAR archive"
        ) from None
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, not the dict of a CIFAR file")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_cifar_batch(path: Path, key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if "data" not in d or key not in d:
        raise DataError(f"{path} lacks 'data' or {key!r}; it is not a CIFAR file")
    x, y = np.asarray(d["data"]), np.asarray(d[key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * PATCH * PATCH:
        raise DataError(
            f"{path} has data of dtype {x.dtype} and shape {x.shape}; CIFAR data are uint8 "
            "(N, 3072)"
        )
    in_range = y.dtype.kind in "iu" and bool(((y >= 0) & (y < classes)).all())
    if y.shape != (len(x),) or not in_range:
        raise DataError(f"{path} needs {len(x)} labels 0 to {classes - 1} under {key!r}")
    return x.reshape(-1, 3, PATCH, PATCH), y.astype(np.int64)


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several kinds for a file that is not MATLAB's
        reason = " ".join(str(e).split())[:200]
        raise DataError(
            f"cannot read {path} as a .mat file ({type(e).__name__}: {reason})"
        ) from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.dtype != np.uint8 or x.shape[:3] != (PATCH, PATCH, 3):
        raise DataError(f"{path} lacks X, uint8 (32, 32, 3, N) pictures, and y, their labels")
    y = np.asarray(y).reshape(-1)
    if len(y) != x.shape[3] or not np.isin(y, np.arange(11)).all():
        raise DataError(f"{path} needs {x.shape[3]} labels y, each 1 to 10 (10 is the digit 0)")
    y = y.astype(np.int64)
    y[y == 10] = 0
    return x.transpose(3, 2, 0, 1), y


def _celeba_plan(folder: Path, image_size: int, channels: int | None) -> PicturePlan:
    """CelebA's training (0) then test (2) pictures, as its partition file lists them."""
    partition = folder / "list_eval_partition.txt"
    pictures = folder / "img_align_celeba"
    parts: dict[str, list[Path]] = {"0": [], "1": [], "2": []}
    try:
        lines = partition.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"cannot read {partition} ({type(e).__name__}); it lists the split"
        ) from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in parts:
            raise DataError(
                f"line {number} of {partition} reads {line.strip()!r}; expected a file name "
                "and 0, 1 or 2, such as '000001.jpg 0'"
            )
        parts[fields[1]].append(pictures / fields[0])
    train, test = parts["0"], parts["2"]
    missing = next((p for p in train + test if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"{partition} lists {missing.name} but {missing} is missing")
    if not train or not test:
        raise DataError(f"{partition} lists no training (0) or no test (2) pictures")
    n, m = len(train), len(test)
    return _plan(
        train + test, np.arange(n), np.arange(n, n + m), None, (), folder, image_size, channels
    )


# ----- photographs -----


def load_photos() -> Split:
    """32x32 colour patches of scikit-learn's two sample photographs, labelled by photograph.

    From each 427x640 photograph (``china.jpg``, label 0, and ``flower.jpg``, label 1), the
    training patches are those in columns [0, 512) at a stride of 8 pixels in both directions
    (50 x 61 = 3050 a photograph, 6100 in all) and the test patches those in columns
    [512, 640) at a stride of 16 (25 x 7 = 175 a photograph, 350 in all), so no test pixel is
    in a training patch. The same every time, with no files or network needed.
    """
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    names = [Path(f).stem for f in photos.filenames]
    x_train, x_test, y_train, y_test = [], [], [], []
    for label, name in enumerate(PHOTOS):
        image = torch.from_numpy(np.array(photos.images[names.index(name)])).permute(2, 0, 1)
        train = _patches(image[:, :, :512], 8)
        test = _patches(image[:, :, 512:], 16)
        x_train.append(train)
        x_test.append(test)
        y_train.append(torch.full((len(train),), label, dtype=torch.int64))
        y_test.append(torch.full((len(test),), label, dtype=torch.int64))
    return Split(*(torch.cat(part) for part in (x_train, x_test, y_train, y_test)), PHOTOS)


def _patches(image: torch.Tensor, stride: int) -> torch.Tensor:
    """Every ``PATCH`` x ``PATCH`` patch of ``image`` (C, H, W) at ``stride``, row by row."""
    windows = image.unfold(1, PATCH, stride).unfold(2, PATCH, stride)  # (C, rows, cols, P, P)
    return windows.permute(1, 2, 0, 3, 4).reshape(-1, image.shape[0], PATCH, PATCH).contiguous()

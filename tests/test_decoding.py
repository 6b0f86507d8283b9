"""Decoding pictures in chunks, in parallel: picture_plan and decode_chunks, which load_folder,
CelebA and ``pyro-vae prepare`` share. Chunks of 3 pictures, and a pool for any job, so a few
small pictures make several chunks that worker processes really decode."""

import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyro_vae.data import images
from pyro_vae.data.images import (
    PicturePlan,
    chunk_count,
    decode_chunks,
    load_catalogue,
    load_folder,
    picture_plan,
)
from pyro_vae.errors import DataError

N = 14  # pictures in a folder: chunks of 3, 3, 3, 3 and 2


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_folder(root: Path, varied: bool) -> Path:
    """``N`` random 5x6 colour pictures in two classes; ``varied``: some grey, some other sizes."""
    rng = np.random.default_rng(0)
    for k in range(N):
        shape = (5 + k % 3, 6 + k % 2) if varied else (5, 6)
        pixels = rng.integers(0, 256, (*shape, 3), np.uint8)
        save(
            root / ("a" if k < 8 else "b") / f"{k:02d}.png",
            pixels[..., 0] if k % 4 == 1 and varied else pixels,
        )
    return root


@pytest.fixture
def pools(monkeypatch) -> list:
    """Chunks of 3 pictures, a pool for any job, and the pools started, to see that they run."""
    started = []

    class Recorded(images.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(images, "CHUNK", 3)
    monkeypatch.setattr(images, "_POOL_FROM", 0)
    monkeypatch.setattr(images, "ProcessPoolExecutor", Recorded)
    return started


def decoded(plan: PicturePlan, workers: int, chunks=None) -> list[tuple[int, np.ndarray]]:
    return list(decode_chunks(plan, workers=workers, chunks=chunks, progress=False))


@pytest.mark.parametrize("varied, image_size, channels", [(False, None, None), (True, 4, 1)])
def test_workers_decode_what_one_process_does_and_load_folder_keeps(
    tmp_path, pools, monkeypatch, varied, image_size, channels
):
    folder = write_folder(tmp_path, varied)
    plan = picture_plan("folder", folder, image_size, channels)
    assert plan.shape == ((channels or 3), image_size or 5, image_size or 6)
    assert plan.root == folder and plan.classes == ("a", "b") and chunk_count(plan) == 5
    assert sorted(np.concatenate([plan.train, plan.test]).tolist()) == list(range(N))
    alone = decoded(plan, workers=0)
    assert not pools
    parallel = decoded(plan, workers=2)
    assert len(pools) == 1  # the pool ran, and gave the same chunks, in order, to the byte
    assert [k for k, _ in parallel] == [k for k, _ in alone] == [0, 1, 2, 3, 4]
    for (_, a), (_, b) in zip(alone, parallel, strict=True):
        assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape and a.tobytes() == b.tobytes()
    x = np.concatenate([pixels for _, pixels in parallel])
    assert x.shape == (N, *plan.shape)
    monkeypatch.setattr(images, "DECODE_WORKERS", 2)
    split = load_folder(folder, image_size, channels)
    assert len(pools) == 2  # load_folder decodes with the pool as well
    assert np.array_equal(split.x_train.numpy(), x[plan.train]) and split.x_train.is_contiguous()
    assert np.array_equal(split.x_test.numpy(), x[plan.test]) and split.x_test.is_contiguous()
    assert split.y_train.tolist() == plan.labels[plan.train].tolist()
    assert split.y_test.tolist() == plan.labels[plan.test].tolist()
    assert plan.labels.tolist() == [0] * 8 + [1] * 6


def test_train_and_test_folders_and_celeba_are_contiguous_ranges(tmp_path, pools, monkeypatch):
    rng = np.random.default_rng(1)
    for k in range(7):
        save(
            tmp_path / "tt" / ("train" if k < 5 else "test") / f"{k}.png",
            rng.integers(0, 256, (5, 6), np.uint8),
        )
    plan = picture_plan("folder", tmp_path / "tt", None, None)
    assert plan.train.tolist() == [0, 1, 2, 3, 4] and plan.test.tolist() == [5, 6]
    assert (
        plan.labels is None
        and plan.shape == (1, 5, 6)
        and [p.name for p in plan.paths][5:] == ["5.png", "6.png"]
    )
    celeba = tmp_path / "celeba"
    lines = []
    for i, part in enumerate([0, 2, 0, 1, 0, 2, 0]):
        save(
            celeba / "img_align_celeba" / f"{i:06d}.png", rng.integers(0, 256, (11, 9, 3), np.uint8)
        )
        lines.append(f"{i:06d}.png {part}")
    (celeba / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    plan = picture_plan("celeba", tmp_path, 4, None)
    assert [p.name[-5] for p in plan.paths] == list("024615")  # training (0) first, then test (2)
    assert plan.train.tolist() == [0, 1, 2, 3] and plan.test.tolist() == [4, 5]
    assert plan.root == celeba and plan.shape == (3, 4, 4) and plan.labels is None
    x = np.concatenate([pixels for _, pixels in decoded(plan, workers=2)])
    monkeypatch.setattr(images, "DECODE_WORKERS", 2)
    split = load_catalogue("celeba", tmp_path, download=False, image_size=4)
    assert len(pools) == 2
    assert np.array_equal(split.x_train.numpy(), x[:4]) and np.array_equal(
        split.x_test.numpy(), x[4:]
    )


def test_chunks_asked_for_are_the_chunks_given(tmp_path, pools):
    plan = picture_plan("folder", write_folder(tmp_path, varied=False), None, None)
    every = dict(decoded(plan, workers=0))
    some = decoded(plan, workers=2, chunks=[4, 1, 2])
    assert len(pools) == 1 and [k for k, _ in some] == [4, 1, 2]
    assert all(np.array_equal(pixels, every[k]) for k, pixels in some)
    assert len(every[4]) == 2 and decoded(plan, workers=2, chunks=[]) == []
    with pytest.raises(ValueError, match="chunk 5 is not one of the plan's chunks, 0 to 4"):
        decode_chunks(plan, workers=2, chunks=[0, 5])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_broken_picture_in_a_later_chunk_is_named(tmp_path, pools, monkeypatch, workers):
    folder = write_folder(tmp_path, varied=False)
    broken = folder / "b" / "12.png"  # the fifth chunk's first picture
    broken.write_bytes(broken.read_bytes()[:-40])
    plan = picture_plan("folder", folder, None, None)
    done = []
    with pytest.raises(DataError, match="^cannot read picture " + re.escape(str(broken))) as info:
        for k, _ in decode_chunks(plan, workers=workers, progress=False):
            done.append(k)
    assert done == [0, 1, 2, 3] and "\n" not in str(info.value)
    assert info.value.__cause__ is None  # not chained to a worker's traceback
    assert len(pools) == (workers > 1)
    monkeypatch.setattr(images, "DECODE_WORKERS", workers)
    with pytest.raises(DataError, match=re.escape(str(info.value))):
        load_folder(folder)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_later_chunk_is_held_to_the_first_pictures_size_and_kind(tmp_path, pools, workers):
    folder = write_folder(tmp_path, varied=False)
    first = folder / "a" / "00.png"
    odd = save(folder / "b" / "12.png", np.zeros((5, 4, 3), np.uint8))
    plan = picture_plan("folder", folder, None, None)
    # only the last two chunks: the first picture is in neither, and still the measure
    with pytest.raises(DataError) as info:
        decoded(plan, workers, chunks=[3, 4])
    sizes = f"{odd} is 4x5 pixels but {first} is 6x5; pass --image-size S"
    assert (
        info.value.worded(lambda name: "--" + name.replace("_", "-"))
        == sizes + " to resize and crop every picture to SxS"
    )
    save(odd, np.zeros((5, 6), np.uint8))
    with pytest.raises(DataError) as info:
        decoded(plan, workers, chunks=[3, 4])
    mixed = f"the pictures mix grey ({odd}) and colour ({first}); pass --channels 1 or 3"
    assert info.value.worded(lambda name: "--" + name).startswith(mixed)
    assert len(pools) == (2 if workers > 1 else 0)
    assert len(decoded(plan, workers, chunks=[0, 1, 2, 3])) == 4  # the chunks before are fine
    assert len(decoded(picture_plan("folder", folder, 6, 1), workers)) == 5  # and converted


def ignores_ctrl_c(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` ignores SIGINT, from Linux's record of its signals, once its
    initializer has had ``within`` seconds to run (a worker just forked has not yet)."""
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        pytest.skip("needs Linux's /proc")
    deadline = time.monotonic() + within
    while True:
        ignored = re.search(r"^SigIgn:\s*([0-9a-f]+)$", status.read_text(), re.MULTILINE)
        if int(ignored[1], 16) >> (signal.SIGINT - 1) & 1:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def test_stopping_early_or_on_ctrl_c_ends_the_workers(tmp_path, pools, monkeypatch):
    plan = picture_plan("folder", write_folder(tmp_path, varied=False), None, None)
    chunks = decode_chunks(plan, workers=2, progress=False)
    assert next(chunks)[0] == 0
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    for worker in workers:  # a Ctrl-C reaches the workers too: they leave it to this process
        assert ignores_ctrl_c(worker.pid)  # else, killed at the wrong moment, one hangs
        os.kill(worker.pid, signal.SIGINT)
    assert [k for k, _ in chunks] == [1, 2, 3, 4]
    assert not any(worker.is_alive() for worker in workers)
    chunks = decode_chunks(plan, workers=2, progress=False)
    next(chunks)
    workers = multiprocessing.active_children()
    chunks.close()  # a caller that stops early
    assert workers and not any(worker.is_alive() for worker in workers)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "wait", interrupted)  # Ctrl-C while waiting for a chunk
    with pytest.raises(KeyboardInterrupt):
        decoded(plan, workers=2)
    assert not multiprocessing.active_children()

"""Prepared copies: a data set decoded once into arrays on disk, trained from memory-mapped."""

import importlib
import os
import time
import warnings

import numpy as np
import pyro
import pytest
import torch
from test_bad_input import one_error_line

from pyro_vae import VAE, load_dataset, train
from pyro_vae.cli import main
from pyro_vae.config import training_sections
from pyro_vae.data import images
from pyro_vae.data.mapped import DESCRIPTION, partial_folder
from pyro_vae.data.prepare import prepare_dataset
from pyro_vae.data.sources import byte_values
from pyro_vae.errors import ConfigError, DataError, StaleDataWarning
from pyro_vae.files import drop_from_page_cache
from pyro_vae.training.trainer import Trainer

streaming = importlib.import_module("pyro_vae.data.streaming")
trainer_module = importlib.import_module("pyro_vae.training.trainer")
OPTIONS = dict(epochs=2, batch_size=100, lr=3e-3, device="cpu", seed=5, progress=False)


@pytest.fixture(scope="module")
def eight_bit_npz(tmp_path_factory, digits):
    """The digits as 8-bit images with labels, in an .npz: grey level k of 16 is the byte 15 k."""
    path = tmp_path_factory.mktemp("source") / "digits8.npz"
    np.savez(
        path,
        x_train=((digits.x_train * 16).round().to(torch.uint8) * 15).numpy(),
        x_test=((digits.x_test * 16).round().to(torch.uint8) * 15).numpy(),
        y_train=digits.y_train.numpy(),
        y_test=digits.y_test.numpy(),
    )
    return path


@pytest.fixture(scope="module")
def prepared(eight_bit_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "digits8"
    return prepare_dataset("npz", out, data_path=eight_bit_npz, progress=False)


def trained(data, **options):
    pyro.set_rng_seed(0)
    vae = VAE(data.x_shape, z_dim=4, hidden_dims=(32,))
    history = train(vae, data, **{**OPTIONS, **options})
    return vae, history


@pytest.mark.parametrize("options", [dict(compile="off"), dict(stream=True, workers=1)])
def test_a_prepared_copy_trains_bit_for_bit_like_its_source_in_memory(
    eight_bit_npz, prepared, options
):
    source = load_dataset("npz", data_path=eight_bit_npz)
    copy = load_dataset("prepared", data_dir=prepared)
    assert copy.mapped is not None and "memory-mapped" in copy.describe()
    assert copy.x_train.dtype == torch.uint8 and torch.equal(copy.x_train, source.x_train)
    assert torch.equal(copy.y_test, source.y_test)
    in_memory_vae, in_memory = trained(source, compile="off")
    mapped_vae, mapped = trained(copy, **options)
    assert mapped.step_loss == in_memory.step_loss and mapped.test_elbo == in_memory.test_elbo
    for name, value in in_memory_vae.state_dict().items():
        assert torch.equal(value, mapped_vae.state_dict()[name]), name
    # the binarization was chosen from the values the copy records, as from the data themselves
    assert copy.values.tolist() == [15 * k for k in range(17)]


def test_the_cli_prepares_and_trains_from_a_prepared_copy(eight_bit_npz, tmp_path, capsys):
    out = tmp_path / "copy"
    argv = ["prepare", "--dataset", "npz", "--data-path", str(eight_bit_npz), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "1,438 training and 359 test examples" in said and "memory-mapped" in said
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [DESCRIPTION, "x_train.npy", "x_test.npy", "y_train.npy", "y_test.npy"]
    )
    assert not partial_folder(out).exists()
    run = tmp_path / "run"
    flags = ["--z-dim", "4", "--hidden-dims", "32", "--epochs", "1", "--quiet"]
    assert (
        main(["train", "--dataset", "prepared", "--data-dir", str(out), *flags, "--out", str(run)])
        == 0
    )
    assert "memory-mapped" in (run / "summary.json").read_text()
    # an existing folder is refused, in one line, and left as it was
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    line = one_error_line(capsys, [*argv, "--quiet"])
    expected = f"--out {out} already exists; pass --overwrite to replace it, or another folder"
    assert line == f"pyro-vae: error: {expected}"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main([*argv, "--quiet", "--overwrite"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} != before


def damaged_copy(prepared, tmp_path, damage):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in prepared.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    damage(copy)
    return copy


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda c: (c / "y_test.npy").unlink(),
            "y_test.npy is missing: the prepared copy is incomplete",
        ),
        (
            lambda c: os.truncate(c / "x_train.npy", (c / "x_train.npy").stat().st_size - 64),
            "x_train.npy is truncated: 92,096 bytes where its (1438, 1, 8, 8) uint8 array "
            "needs 92,160",
        ),
        (lambda c: (c / DESCRIPTION).unlink(), "no prepared copy at"),
        (lambda c: (c / DESCRIPTION).write_text("{"), "is not a readable description"),
    ],
    ids=["missing", "truncated", "no-description", "bad-description"],
)
def test_a_damaged_prepared_copy_is_named_in_one_line(prepared, tmp_path, capsys, damage, expected):
    copy = damaged_copy(prepared, tmp_path, damage)
    argv = ["train", "--dataset", "prepared", "--data-dir", str(copy), "--epochs", "1"]
    line = one_error_line(capsys, [*argv, "--quiet", "--out", str(tmp_path / "run")])
    assert line.startswith("pyro-vae: error: ") and expected in line, line
    assert not (tmp_path / "run").exists()


def test_a_prepared_copy_older_than_its_source_is_warned_in_one_line(
    eight_bit_npz, tmp_path, capsys
):
    out = prepare_dataset("npz", tmp_path / "copy", data_path=eight_bit_npz, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("prepared", data_dir=out)  # as new as its source: no warning
    later = time.time() + 60
    os.utime(eight_bit_npz, (later, later))
    try:
        with pytest.warns(StaleDataWarning, match="older than its source: .*digits8.npz changed"):
            load_dataset("prepared", data_dir=out)
        assert main(["prepare", "--dataset", "prepared", "--data-dir", str(out), "--out",
                     str(tmp_path / "again"), "--quiet"]) == 2  # fmt: skip
        capsys.readouterr()
        flags = ["--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--quiet"]
        assert main(["train", "--dataset", "prepared", "--data-dir", str(out), *flags,
                     "--out", str(tmp_path / "run")]) == 0  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert [line for line in err if "older than its source" in line] == [
            f"pyro-vae: warning: the prepared copy in {out} is older than its source: "
            f"{eight_bit_npz} changed after it was made; prepare it again (overwrite) to train "
            "on the source as it is now"
        ]
    finally:
        os.utime(eight_bit_npz)


def test_preparing_a_prepared_copy_or_into_an_existing_folder_is_refused(prepared, tmp_path):
    with pytest.raises(ConfigError, match="dataset .prepared. is not one of: digits"):
        prepare_dataset("prepared", tmp_path / "x", data_dir=prepared)
    with pytest.raises(ConfigError, match="out .* already exists"):
        prepare_dataset("digits", prepared)
    with pytest.raises(DataError, match="an unfinished one is in"):
        partial_folder(tmp_path / "half").mkdir()
        load_dataset("prepared", data_dir=tmp_path / "half")


def mapped_resident_bytes(name):
    """The bytes of ``name``'s memory mappings in this process's resident memory (smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().endswith(name)
            elif inside and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc")
def test_reading_a_mapped_training_set_keeps_resident_memory_flat(tmp_path):
    # 48 MiB of 28x28 bytes: an epoch's batches read their rows from the file, so nothing of it
    # stays in this process's resident memory
    n = 48 * 2**20 // 784
    x = np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "big.npz", x_train=x, x_test=x[:100])
    out = prepare_dataset("npz", tmp_path / "big", data_path=tmp_path / "big.npz", progress=False)
    data = load_dataset("prepared", data_dir=out)
    settings = dict(batch_size=512, device="cpu", seed=0, binarization="none", compile="off")
    pyro.set_rng_seed(0)
    vae = VAE(data.x_shape, z_dim=2, hidden_dims=(8,), likelihood="gaussian")
    source = Trainer(vae, data, *training_sections(None, None, settings)).source
    resident, seen = [], []
    for i, (batch, *_) in source.epoch(1, 0):
        seen.append(batch)
        if i % 8 == 0:
            resident.append(mapped_resident_bytes("x_train.npy"))
    assert max(resident) < 2**20
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat(seen), torch.from_numpy(x)[order])  # the rows asked for
    # gathered through the mapping instead, the pages read would stay, until let go of
    for index in order[: n // 2].split(512):
        data.x_train[index]
    assert mapped_resident_bytes("x_train.npy") > 20 * 2**20
    data.release_pages()
    assert mapped_resident_bytes("x_train.npy") < 2**20


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """300 small grey pictures in three class folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cat", "dog", "owl")):
        (root / name).mkdir()
        for i in range(100):
            pixels = rng.integers(0, 256, (12, 10), dtype=np.uint8) // (k + 1)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def test_an_interrupted_prepare_leaves_no_copy_and_goes_on_where_it_stopped(
    pictures, tmp_path, monkeypatch
):
    monkeypatch.setattr(images, "CHUNK", 32)  # 10 chunks
    decode, asked = images.decode_chunks, []

    def interrupted_after(chunks_done):
        def decode_chunks(plan, *, workers, chunks=None, progress=True):
            asked.append(list(chunks))
            for n, chunk in enumerate(decode(plan, workers=workers, chunks=chunks, progress=False)):
                if n == chunks_done:
                    raise KeyboardInterrupt
                yield chunk

        return decode_chunks

    out = tmp_path / "copy"
    monkeypatch.setattr(images, "decode_chunks", interrupted_after(4))
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("folder", out, data_dir=pictures, image_size=8, workers=2, progress=False)
    assert not out.exists()  # nothing that looks finished
    with pytest.raises(DataError, match="an unfinished one is in .*run prepare again"):
        load_dataset("prepared", data_dir=out)
    monkeypatch.setattr(images, "decode_chunks", interrupted_after(None))
    prepare_dataset("folder", out, data_dir=pictures, image_size=8, workers=2, progress=False)
    assert asked == [list(range(10)), list(range(4, 10))]  # the rest, not all again
    monkeypatch.setattr(images, "decode_chunks", decode)
    copy = load_dataset("prepared", data_dir=out)
    source = load_dataset("folder", data_dir=pictures, image_size=8)
    for name in ("x_train", "x_test", "y_train", "y_test"):
        assert torch.equal(getattr(copy, name), getattr(source, name)), name
    assert copy.values.tolist() == byte_values(source.x_train).tolist()
    assert not partial_folder(out).exists() and copy.name == "folder"


def storage_reads():
    """The bytes this process has had read from storage (``/proc/self/io``)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("read_bytes")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc")
@pytest.mark.parametrize("streamed", [False, True], ids=["mapped", "streamed"])
def test_each_rank_reads_only_its_shard_of_a_prepared_copy_from_disk(
    tmp_path, monkeypatch, streamed
):
    # 1,200 colour 64x64 pictures, 12 KiB each: three pages a row, so a shard is half the pages
    x = np.random.default_rng(0).integers(0, 256, (1200, 3, 64, 64), dtype=np.uint8)
    np.savez(tmp_path / "source.npz", x_train=x, x_test=x[:10])
    out = prepare_dataset("npz", tmp_path / "copy", data_path=tmp_path / "source.npz")
    monkeypatch.setattr(trainer_module.distributed, "broadcast_parameters", lambda vae: None)
    settings = dict(batch_size=100, device="cpu", seed=0, binarization="none", compile="off",
                    stream=streamed, workers=0)  # fmt: skip
    read = {}
    for rank, world in ((0, 2), (1, 2), (0, 1)):
        ours = (rank, world)
        monkeypatch.setattr(trainer_module.distributed, "rank_and_world", lambda ours=ours: ours)
        data = load_dataset("prepared", data_dir=out)
        vae = VAE(data.x_shape, z_dim=2, hidden_dims=(8,), likelihood="gaussian")
        source = Trainer(vae, data, *training_sections(None, None, settings)).source
        data.mapped.release()  # a page mapped into a process stays in the page cache
        drop_from_page_cache(out / "x_train.npy")
        before = storage_reads()
        for _ in source.epoch(1, 0):
            pass
        read[ours] = (storage_reads() - before) / (out / "x_train.npy").stat().st_size
        data.mapped.release()
    if read[0, 1] < 0.9:
        pytest.skip(f"this file system reports {read[0, 1]:.0%} of a whole pass as read")
    # each rank reads its half of the rows, and the pages its rows share with the other half's
    assert 0.45 < read[0, 2] < 0.65 and 0.45 < read[1, 2] < 0.65, read

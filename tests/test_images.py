import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae.data.images import (
    CATALOGUE,
    IMAGE_EXTENSIONS,
    Split,
    load_catalogue,
    load_folder,
    load_photos,
)
from pyro_vae.errors import ConfigError, DataError

H, W = 5, 6  # small pictures: 6 pixels wide, 5 high


def grey(k: int) -> np.ndarray:
    """A grey picture whose first pixel is ``k``, every pixel known."""
    return ((np.arange(H * W).reshape(H, W) * 7 + k) % 256).astype(np.uint8)


def colour(k: int) -> np.ndarray:
    """A colour picture whose red channel starts at ``k``; the three channels all differ."""
    return np.stack([grey(k), 255 - grey(k), np.full((H, W), 40 + k)], axis=-1).astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def as_pixels(x: torch.Tensor) -> np.ndarray:
    """One picture ``(C, H, W)`` as PIL's array: ``(H, W)`` or ``(H, W, 3)``."""
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def check_one_line(info: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(info.value)


# ----- a folder of pictures -----


@pytest.mark.parametrize("make, c", [(grey, 1), (colour, 3)])
def test_class_layout_round_trips_pixels_labels_and_split(tmp_path, make, c):
    # written out of order: labels follow the sorted class names, the split the sorted paths
    files = {"dog/b.png": 6, "dog/a.png": 7, "cat/x.png": 1, "dog/c/deep.png": 8}
    files |= {f"cat/{k}.png": k for k in (2, 3, 4, 5, 0)}
    files["cat/nested/9.PNG"] = 9
    for name, k in files.items():
        save(tmp_path / name, make(k))
    (tmp_path / "cat" / "notes.txt").write_text("not a picture")
    (tmp_path / "dog" / "._a.png").write_bytes(b"macOS metadata, not a picture")
    (tmp_path / "empty").mkdir()  # a sub-folder without pictures is no class

    torch.manual_seed(1)
    split = load_folder(tmp_path)
    torch.manual_seed(2)  # the split must not follow the global seed
    again = load_folder(str(tmp_path))
    assert isinstance(split, Split) and split.classes == ("cat", "dog")
    for a, b in zip(split, again, strict=True):
        assert a == b if isinstance(a, tuple) else torch.equal(a, b)
    assert split.x_train.shape == (8, c, H, W) and split.x_test.shape == (2, c, H, W)
    assert split.x_train.dtype == torch.uint8 and split.x_train.is_contiguous()
    assert split.y_train.dtype == torch.int64 and split.y_test.shape == (2,)
    # sorted paths: cat/0..5, cat/nested/9, cat/x (= 1), dog/a, dog/b, dog/c/deep
    order = [0, 2, 3, 4, 5, 9, 1, 7, 6, 8]
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    x = torch.cat([split.x_test, split.x_train])
    y = torch.cat([split.y_test, split.y_train])
    assert [order[i] for i in perm] == x[:, 0, 0, 0].tolist()
    for picture, label in zip(x, y, strict=True):
        k = int(picture[0, 0, 0])
        assert np.array_equal(as_pixels(picture), make(k))
        assert label == (1 if k in (6, 7, 8) else 0)


def test_flat_layout_has_no_labels(tmp_path):
    for k in range(5):
        save(tmp_path / f"{k}.png", colour(k))
    (tmp_path / "README.md").write_text("ignored")
    split = load_folder(tmp_path)
    assert split.y_train is None and split.y_test is None and split.classes == ()
    assert split.x_train.shape == (4, 3, H, W) and split.x_test.shape == (1, 3, H, W)
    found = sorted(torch.cat([split.x_train, split.x_test])[:, 0, 0, 0].tolist())
    assert found == [0, 1, 2, 3, 4]


def test_two_pictures_make_one_for_each_side(tmp_path):
    save(tmp_path / "a.png", grey(1))
    save(tmp_path / "b.png", grey(2))
    split = load_folder(tmp_path)
    assert len(split.x_train) == 1 and len(split.x_test) == 1
    assert {int(split.x_train[0, 0, 0, 0]), int(split.x_test[0, 0, 0, 0])} == {1, 2}


def test_extensions_are_any_case(tmp_path):
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
    for k, ext in enumerate((".PNG", ".bmp", ".Gif", ".WEBP")):
        Image.fromarray(grey(k)).save(tmp_path / f"{k}{ext}", lossless=True)
    split = load_folder(tmp_path, channels=1)
    x = torch.cat([split.x_train, split.x_test])
    assert sorted(x[:, 0, 0, 0].tolist()) == [0, 1, 2, 3]  # all four lossless formats exact


def test_train_and_test_folders_are_the_split(tmp_path):
    for part, ks in (("train", {"b": [1, 2], "a": [3, 4, 5]}), ("test", {"a": [6], "b": [7]})):
        for cls, values in ks.items():
            for k in values:
                save(tmp_path / part / cls / f"{k}.png", grey(k))
    save(tmp_path / "stray.png", grey(99))  # beside train/ and test/, not read
    split = load_folder(tmp_path)
    assert split.classes == ("a", "b")
    assert split.x_train[:, 0, 0, 0].tolist() == [3, 4, 5, 1, 2]
    assert split.y_train.tolist() == [0, 0, 0, 1, 1] and split.y_train.dtype == torch.int64
    assert split.x_test[:, 0, 0, 0].tolist() == [6, 7] and split.y_test.tolist() == [0, 1]
    assert split.x_train.is_contiguous() and split.x_test.is_contiguous()


def test_flat_train_and_test_folders(tmp_path):
    for part, n in (("train", 3), ("test", 2)):
        for k in range(n):
            save(tmp_path / part / f"{k}.png", colour(10 * n + k))
    split = load_folder(tmp_path)
    assert split.y_train is None and split.classes == ()
    assert split.x_train[:, 0, 0, 0].tolist() == [30, 31, 32]
    assert split.x_test[:, 0, 0, 0].tolist() == [20, 21]


def test_image_size_resizes_and_crops(tmp_path):
    save(tmp_path / "wide.png", np.full((6, 10, 3), (200, 30, 90), np.uint8))
    save(tmp_path / "tall.png", np.full((12, 7, 3), (200, 30, 90), np.uint8))
    stripes = np.repeat(np.arange(8, dtype=np.uint8)[:, None] * 30, 4, axis=1)  # 4 wide, 8 high
    save(tmp_path / "z.png", np.stack([stripes] * 3, axis=-1))
    split = load_folder(tmp_path, image_size=4)
    assert split.x_train.shape == (2, 3, 4, 4) and split.x_test.shape == (1, 3, 4, 4)
    x = torch.cat([split.x_train, split.x_test])
    striped = x[:, 1, 0, 0] != 30
    # a constant colour stays that colour; the 4x8 picture keeps its centre rows 2 to 5
    assert (x[~striped] == torch.tensor([200, 30, 90]).view(1, 3, 1, 1)).all()
    assert np.array_equal(x[striped][0, 0].numpy(), stripes[2:6])
    assert load_folder(tmp_path, image_size=9).x_train.shape == (2, 3, 9, 9)  # up as well


def test_channels_converts_grey_and_colour(tmp_path):
    save(tmp_path / "a_grey.png", grey(3))
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 255
    save(tmp_path / "b_red.png", rgb)
    with pytest.raises(DataError) as info:
        load_folder(tmp_path)
    mixed = r"mix grey \(.*a_grey.png\) and colour \(.*b_red.png\); pass channels 1 or 3"
    assert re.search(mixed, str(info.value))
    assert "pass --channels" in info.value.worded(lambda name: "--" + name)
    check_one_line(info)
    x1 = torch.cat(load_folder(tmp_path, channels=1)[:2])
    assert x1.shape == (2, 1, H, W)
    assert sorted(x1[:, 0, 0, 0].tolist()) == [3, 76]  # PIL's L: 255 * 299 / 1000, rounded
    x3 = torch.cat(load_folder(tmp_path, channels=3)[:2])
    grey3 = x3[x3[:, 0, 0, 0] == 3][0]
    assert x3.shape == (2, 3, H, W) and (grey3 == torch.from_numpy(grey(3))).all()


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    for k in range(2):
        deep = grey(k).astype(np.uint16) * 257 + (0, 128)[k]  # 128 rounds down, not up
        Image.fromarray(deep).save(tmp_path / f"{k}.png")
        assert Image.open(tmp_path / f"{k}.png").mode == "I;16"
    x = torch.cat(load_folder(tmp_path)[:2])
    assert x.shape == (2, 1, H, W)
    for picture in x:
        assert np.array_equal(picture[0].numpy(), grey(int(picture[0, 0, 0])))


@pytest.mark.parametrize("channels", [0, 2, 4, True, 1.0, "3"])
def test_bad_channels(tmp_path, channels):
    with pytest.raises(ConfigError, match="^channels must be 1 .grey. or 3 .colour.") as info:
        load_folder(tmp_path, channels=channels)
    assert info.value.param == "channels"


def test_bad_image_size(tmp_path):
    with pytest.raises(ConfigError, match="^image_size must be at least 1, got 0"):
        load_folder(tmp_path, image_size=0)


def _bad_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A folder for ``case`` and the message expected, which names the culprit."""
    d = tmp_path / "pics"
    if case == "unreadable":
        save(d / "a.png", grey(0))
        (d / "b.png").write_text("not a picture")
        return d, re.escape(str(d / "b.png")) + ".*; replace or delete it"
    if case == "truncated":
        save(d / "a.png", grey(0))
        save(d / "b.png", np.random.default_rng(0).integers(0, 256, (H, W, 3), np.uint8))
        (d / "b.png").write_bytes((d / "b.png").read_bytes()[:-40])
        return d, "cannot read picture " + re.escape(str(d / "b.png"))
    if case == "empty":
        (d / "sub").mkdir(parents=True)
        (d / "notes.txt").write_text("no pictures")
        return d, "no pictures in " + re.escape(str(d)) + r" .*pass data_dir a folder"
    if case == "missing":
        return d, "folder not found: " + re.escape(str(d)) + "; pass data_dir"
    if case == "file":
        d = save(tmp_path / "one.png", grey(0))
        return d, re.escape(str(d)) + " is a file; pass data_dir a folder"
    if case == "one":
        save(d / "cls" / "a.png", grey(0))
        return d, re.escape(str(d)) + " holds 1 picture; it needs at least 2"
    if case == "sizes":
        save(d / "a.png", grey(0))
        save(d / "b.png", grey(1))
        save(d / "c.png", grey(2)[:, :4])
        path, first = re.escape(str(d / "c.png")), re.escape(str(d / "a.png"))
        return d, f"{path} is 4x5 pixels but {first} is 6x5; pass image_size S"
    if case == "both":
        save(d / "top.png", grey(0))
        save(d / "cats" / "a.png", grey(1))
        return d, re.escape(str(d)) + r" has both pictures \(top.png, ...\) and class sub-folders"
    if case == "classes":
        save(d / "train" / "a" / "1.png", grey(0))
        save(d / "train" / "b" / "1.png", grey(0))
        save(d / "test" / "a" / "1.png", grey(0))
        return d, r"train has classes \(a, b\) but .*test has \(a\); give both the same"
    if case == "empty_test":
        save(d / "train" / "a.png", grey(0))
        (d / "test").mkdir()
        return d, "no pictures in " + re.escape(str(d / "test"))
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    "unreadable truncated empty missing file one sizes both classes empty_test".split(),
)
def test_bad_folders(tmp_path, case):
    folder, match = _bad_folder(tmp_path, case)
    with pytest.raises(DataError, match=match) as info:
        load_folder(folder)
    check_one_line(info)


# ----- the catalogue -----


def cifar_pictures(n: int, offset: int) -> np.ndarray:
    """``n`` CIFAR rows (N, 3072) of known values; picture 0 of offset 0 is pure red."""
    data = ((np.arange(n * 3072) + offset) % 251).reshape(n, 3072).astype(np.uint8)
    if offset == 0:
        data[0] = 0
        data[0, :1024] = 255  # the red plane comes first
    return data


def write_pickle(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return path


def write_cifar(root: Path, name: str, meta: bool) -> tuple[np.ndarray, ...]:
    """Fake CIFAR files: 2 pictures a training batch, 3 test ones; the arrays written."""
    ten = name == "cifar10"
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    key, k = (b"labels", 10) if ten else (b"fine_labels", 100)
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"]
    x_train = cifar_pictures(2 * len(train_files), 0)
    y_train = (np.arange(len(x_train)) * 7) % k
    for i, f in enumerate(train_files):
        part = slice(2 * i, 2 * i + 2) if ten else slice(None)
        write_pickle(folder / f, {b"data": x_train[part], key: y_train[part].tolist()})
    x_test, y_test = cifar_pictures(3, 5), np.array([k - 1, 0, 1])
    write_pickle(folder / ("test_batch" if ten else "test"), {b"data": x_test, key: y_test})
    if meta:
        names = [f"class{i}".encode() for i in range(k)]
        names_key = b"label_names" if ten else b"fine_label_names"
        write_pickle(folder / ("batches.meta" if ten else "meta"), {names_key: names})
    return x_train, y_train, x_test, y_test


@pytest.mark.parametrize("meta", [True, False])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_its_pickles(tmp_path, name, meta):
    x_train, y_train, x_test, y_test = write_cifar(tmp_path, name, meta)
    split = load_catalogue(name, tmp_path, download=False)
    n = len(x_train)
    assert split.x_train.shape == (n, 3, 32, 32) and split.x_train.dtype == torch.uint8
    assert split.x_train.is_contiguous() and split.x_test.shape == (3, 3, 32, 32)
    assert (split.x_train[0, 0] == 255).all() and (split.x_train[0, 1:] == 0).all()  # red
    assert np.array_equal(split.x_train.reshape(n, -1).numpy(), x_train)
    assert np.array_equal(split.x_test.reshape(3, -1).numpy(), x_test)
    assert split.y_train.tolist() == y_train.tolist() and split.y_train.dtype == torch.int64
    assert split.y_test.tolist() == y_test.tolist()
    k = 10 if name == "cifar10" else 100
    assert len(split.classes) == k
    assert split.classes[:2] == (("class0", "class1") if meta else ("0", "1"))


def test_cifar_resized_and_grey(tmp_path):
    write_cifar(tmp_path, "cifar10", meta=False)
    split = load_catalogue("cifar10", tmp_path / "cifar-10-batches-py", False, 16, channels=1)
    assert split.x_train.shape == (10, 1, 16, 16) and split.x_test.shape == (3, 1, 16, 16)
    assert (split.x_train[0] == 76).all()  # pure red in PIL's L: 255 * 299 / 1000, rounded


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not a pickle", "cannot read .*data_batch_3 as a CIFAR pickle"),
        ([1, 2], "data_batch_3 holds a list, not the dict"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(2, 100\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels 0 to 9"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "data_batch_3 lacks 'data' or 'labels'"),
    ],
)
def test_bad_cifar_file(tmp_path, content, match):
    write_cifar(tmp_path, "cifar10", meta=False)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(content) if isinstance(content, bytes) else write_pickle(path, content)
    with pytest.raises(DataError, match=match) as info:
        load_catalogue("cifar10", tmp_path, download=False)
    assert str(path) in str(info.value)
    check_one_line(info)


def test_svhn_from_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    pictures = {}
    for part, labels in (("train", [10, 1, 9, 10]), ("test", [3, 10])):
        x = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
        savemat(tmp_path / f"{part}_32x32.mat", {"X": x, "y": np.array(labels)[:, None]})
        pictures[part] = x
    split = load_catalogue("svhn", str(tmp_path), download=False)
    assert split.y_train.tolist() == [0, 1, 9, 0] and split.y_test.tolist() == [3, 0]
    assert split.x_train.shape == (4, 3, 32, 32) and split.x_train.is_contiguous()
    assert torch.equal(split.x_test[1], torch.from_numpy(pictures["test"][..., 1]).permute(2, 0, 1))
    assert split.classes == tuple("0123456789")
    (tmp_path / "test_32x32.mat").write_text("not MATLAB")
    with pytest.raises(DataError, match="cannot read .*test_32x32.mat as a .mat file"):
        load_catalogue("svhn", tmp_path, download=False)


def write_celeba(root: Path) -> Path:
    folder = root / "celeba"
    lines = []
    for i, part in enumerate([0, 2, 0, 1, 0]):
        name = f"{i + 1:06d}.jpg"
        save(folder / "img_align_celeba" / name, np.full((22, 18, 3), 40 * i, np.uint8))
        lines.append(f"{name} {part}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_celeba_keeps_its_partition(tmp_path):
    write_celeba(tmp_path)
    split = load_catalogue("celeba", tmp_path, download=False)
    assert split.x_train.shape == (3, 3, 64, 64) and split.x_test.shape == (1, 3, 64, 64)
    assert split.y_train is None and split.classes == ()
    # 1, 3, 5 train; 2 test; 4 (validation) dropped: constant pictures, so plain values
    assert (split.x_train[:, 0].float().mean((1, 2)) - torch.tensor([0, 80, 160])).abs().max() < 3
    assert abs(float(split.x_test[0].float().mean()) - 40) < 3
    small = load_catalogue("celeba", tmp_path, download=False, image_size=8, channels=1)
    assert small.x_train.shape == (3, 1, 8, 8)


@pytest.mark.parametrize("case", ["missing", "bad_line"])
def test_celeba_bad_partition(tmp_path, case):
    folder = write_celeba(tmp_path)
    partition = folder / "list_eval_partition.txt"
    if case == "missing":
        (folder / "img_align_celeba" / "000003.jpg").unlink()
        match = "lists 000003.jpg but .*000003.jpg is missing"
    else:
        partition.write_text(partition.read_text() + "000006.jpg train\n")
        match = "line 6 of .*list_eval_partition.txt reads '000006.jpg train'; expected"
    with pytest.raises(DataError, match=match) as info:
        load_catalogue("celeba", tmp_path, download=False)
    check_one_line(info)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "train_32x32.mat"),
        ("celeba", "list_eval_partition.txt"),
    ],
)
def test_catalogue_missing_without_download(tmp_path, name, expected):
    assert name in CATALOGUE
    with pytest.raises(DataError) as info:
        load_catalogue(name, tmp_path, download=False)
    msg = str(info.value)
    assert msg.startswith(f"{name} not found: looked for ") and expected in msg
    assert str(tmp_path) in msg and "pass data_dir a folder holding" in msg
    assert "without network" in msg and "download failed" not in msg
    assert "pass --data-dir" in info.value.worded(lambda n: "--" + n.replace("_", "-"))
    check_one_line(info)


def test_catalogue_download_then_read_or_report(tmp_path, monkeypatch):
    import torchvision.datasets

    def fake_download(root, train, download):
        write_cifar(Path(root), "cifar10", meta=True)

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading:\n<urlopen error no network>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    assert load_catalogue("cifar10", tmp_path, download=True).classes[9] == "class9"
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataError, match="download failed .*no network.*; pass data_dir") as info:
        load_catalogue("cifar100", tmp_path, download=True)
    check_one_line(info)


def test_catalogue_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="^dataset 'mnist' is not one of: cifar10, cifar100"):
        load_catalogue("mnist", tmp_path, download=False)


# ----- photographs -----


def test_photos():
    from sklearn.datasets import load_sample_images

    split = load_photos()
    assert split.x_train.shape == (6100, 3, 32, 32) and split.x_test.shape == (350, 3, 32, 32)
    assert split.x_train.dtype == torch.uint8 and split.x_train.is_contiguous()
    assert split.classes == ("china", "flower")
    assert split.y_train.bincount().tolist() == [3050, 3050]
    assert split.y_test.bincount().tolist() == [175, 175]
    train = {bytes(p.numpy()) for p in split.x_train}
    assert not any(bytes(p.numpy()) in train for p in split.x_test)
    again = load_photos()
    assert all(torch.equal(a, b) for a, b in zip(split[:4], again[:4], strict=True))
    # the patches are the photographs' pixels, where the docstring says
    china, flower = load_sample_images().images
    assert np.array_equal(as_pixels(split.x_train[1]), china[0:32, 8:40])
    assert np.array_equal(as_pixels(split.x_train[3050 + 61]), flower[8:40, 0:32])
    assert np.array_equal(as_pixels(split.x_test[-1]), flower[384:416, 608:640])


# ----- end to end: a folder of colour pictures through the command line -----


def test_a_folder_of_colour_pictures_trains_and_scores_in_bits(tmp_path, capsys):
    import json

    from pyro_vae.cli import main

    rng = np.random.default_rng(0)
    for k in range(24):  # two classes of 9x7 RGB pictures: reddish and bluish
        pixels = rng.integers(0, 120, (7, 9, 3), np.uint8)
        pixels[..., 0 if k % 2 else 2] += 120
        save(tmp_path / "pictures" / ("red" if k % 2 else "blue") / f"{k}.png", pixels)
    run = tmp_path / "run"
    flags = ["--dataset", "folder", "--data-dir", str(tmp_path / "pictures"), "--image-size", "6"]
    flags += ["--likelihood", "discretized-logistic", "--encoder", "resnet", "--hidden-dims", "4"]
    flags += ["--z-dim", "2", "--epochs", "1", "--compile", "off", "--quiet", "--out", str(run)]
    assert main(["train", *flags]) == 0
    shown = capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"].startswith(
        "folder: 20 training and 4 test examples of shape (3, 6, 6), 108 bytes (uint8) each"
    )
    line = re.search(
        r"test bits per dimension: ([\d.]+) \(independent-pixel baseline: ([\d.]+)\)", shown.out
    )
    assert float(line[1]) == pytest.approx(summary["test_bits_per_dim"], abs=5e-4)
    assert float(line[2]) == pytest.approx(summary["baseline_bits_per_dim"], abs=5e-4)
    assert 0 < summary["baseline_bits_per_dim"] < 8 < summary["test_bits_per_dim"]  # untrained
    # the pictures are drawn in colour: red and blue differ somewhere
    with Image.open(run / "reconstructions.png") as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).max() > 60

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.data.sources import (
    DATASETS,
    DEFAULT_DATA_DIR,
    Dataset,
    binarize,
    binarize_afresh,
    is_binary,
    load_dataset,
)
from pyro_vae.errors import ConfigError, DataError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
TRAIN_LABELS, TEST_LABELS = [3, 1, 4, 1, 5], [9, 2, 6]


def idx_bytes(a: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes, as LeCun's MNIST files are laid out."""
    magic = (2051 if a.ndim == 3 else 2049) if magic is None else magic
    header = np.array([magic, *a.shape], dtype=">i4").tobytes()
    return header + a.astype(np.uint8).tobytes()


def write_idx(path: Path, a: np.ndarray, gz: bool = False, magic: int | None = None) -> Path:
    data = idx_bytes(a, magic)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def fake_images(n: int, offset: int) -> np.ndarray:
    # distinct, known pixel values covering 0..255
    return ((np.arange(n * 28 * 28) + offset) % 256).reshape(n, 28, 28).astype(np.uint8)


def write_idx_set(d: Path, gz: bool = False) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": fake_images(5, 0),
        "train-labels-idx1-ubyte": np.array(TRAIN_LABELS),
        "t10k-images-idx3-ubyte": fake_images(3, 7),
        "t10k-labels-idx1-ubyte": np.array(TEST_LABELS),
    }
    return {name: write_idx(d / name, a, gz) for name, a in arrays.items()}


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


# ----- digits -----


def test_digits_shapes_and_values():
    ds = load_dataset()
    assert isinstance(ds, Dataset) and ds.name == "digits"
    assert ds.x_shape == (1, 8, 8)
    assert ds.x_train.shape == (1438, 1, 8, 8) and ds.x_test.shape == (359, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.x_train.device.type == "cpu"
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1
    assert ds.y_train.dtype == torch.int64 and ds.y_train.shape == (1438,)
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    # values are k/16 for integer k
    assert torch.equal(ds.x_train * 16, (ds.x_train * 16).round())


def test_digits_split_fixed_complete_and_disjoint():
    from sklearn.datasets import load_digits

    torch.manual_seed(1)
    a = load_dataset("digits")
    torch.manual_seed(2)  # the split must not follow the global seed
    b = load_dataset("digits")
    for name in ("x_train", "x_test", "y_train", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))

    def rows(x, y):
        return sorted(map(tuple, np.column_stack([x.reshape(len(x), -1), y]).tolist()))

    digits = load_digits()
    x = torch.cat([a.x_train, a.x_test]).numpy()
    y = torch.cat([a.y_train, a.y_test]).numpy()
    assert len(x) == 1797
    # train + test is exactly the full data set, each example once
    assert rows(x * 16, y) == rows(digits.images, digits.target)


# ----- binarize / is_binary -----


def test_binarize_deterministic_and_seeded():
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    b1, b2, b3 = binarize(x, 0), binarize(x, 0), binarize(x, 1)
    assert torch.equal(b1, b2)
    assert not torch.equal(b1, b3)
    assert b1.dtype == torch.float32 and b1.shape == x.shape
    assert is_binary(b1) and is_binary(b3)


def test_binarize_mean_and_extremes():
    b = binarize(torch.full((100_000,), 0.3), seed=3)
    assert abs(b.mean().item() - 0.3) < 0.01
    edges = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    assert binarize(edges, 0).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_binarize_afresh_is_bernoulli_of_the_pixel_values():
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(40_000, 1)
    torch.manual_seed(0)
    b = binarize_afresh(p)
    assert b.dtype == torch.float32 and is_binary(b)
    assert b[:, 0].sum() == 0 and b[:, -1].sum() == len(p)  # 0 and 1 stay put
    # each column's mean within 4 standard errors of its probability
    se = (p[0] * (1 - p[0]) / len(p)).sqrt()
    assert ((b.mean(0) - p[0]).abs() <= 4 * se + 1e-7).all()
    assert not torch.equal(b, binarize_afresh(p))  # fresh draws each call
    # on the CPU, the very draws of torch.bernoulli: seeded runs keep their numbers
    torch.manual_seed(1)
    expected = torch.bernoulli(p)
    torch.manual_seed(1)
    assert torch.equal(binarize_afresh(p), expected)


def test_binarize_leaves_global_rng_alone():
    x = torch.full((1000,), 0.5)
    before = torch.get_rng_state()
    binarize(x, 7)
    assert torch.equal(before, torch.get_rng_state())


def test_is_binary():
    assert is_binary(torch.tensor([0.0, 1.0, 1.0]))
    assert not is_binary(torch.tensor([0.0, 0.5, 1.0]))
    assert not is_binary(torch.tensor([0.0, 2.0]))
    assert not is_binary(load_dataset().x_test)


# ----- IDX data sets -----


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "kmnist"])
@pytest.mark.parametrize("layout", ["torchvision", "flat"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_layouts(tmp_path, name, layout, gz):
    d = tmp_path / FOLDERS[name] / "raw" if layout == "torchvision" else tmp_path
    write_idx_set(d, gz)
    ds = load_dataset(name, data_dir=str(tmp_path), download=False)
    assert ds.name == name and ds.x_shape == (1, 28, 28)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    # 8-bit images stay bytes, exactly as in the files
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train, torch.from_numpy(fake_images(5, 0)).unsqueeze(1))
    assert torch.equal(ds.x_test[:, 0], torch.from_numpy(fake_images(3, 7)))
    assert ds.y_train.tolist() == TRAIN_LABELS and ds.y_test.tolist() == TEST_LABELS


def test_idx_folder_belongs_to_its_data_set(tmp_path):
    write_idx_set(tmp_path / "FashionMNIST" / "raw")
    with pytest.raises(DataError, match="mnist not found"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_idx_missing_without_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert all(f in msg for f in IDX_FILES)
    assert "pass data_dir DIR" in msg and str(tmp_path) in msg and "FashionMNIST" in msg
    assert "download failed" not in msg and "\n" not in msg
    # data_dir is marked as a parameter, so the command line names its flag there
    assert "pass <data_dir> DIR" in info.value.worded(lambda name: f"<{name}>")


def test_idx_default_dir_is_relative_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_DATA_DIR == Path("data")
    write_idx_set(tmp_path / "data" / "KMNIST" / "raw")
    assert load_dataset("kmnist", download=False).x_train.shape == (5, 1, 28, 28)


def test_idx_download_failure_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading:\n<urlopen error no network>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match="download failed .*no network.*pass data_dir DIR") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_idx_download_then_read(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_download(root, train, download):
        calls.append(train)
        write_idx_set(Path(root) / "KMNIST" / "raw", gz=True)

    monkeypatch.setattr(torchvision.datasets, "KMNIST", fake_download)
    ds = load_dataset("kmnist", data_dir=tmp_path)
    assert calls == [True, False]
    assert ds.y_test.tolist() == TEST_LABELS
    assert [p.name for p in tmp_path.iterdir()] == ["KMNIST"]  # and no scratch folder
    assert load_dataset("kmnist", data_dir=tmp_path, download=False).y_test.tolist() == TEST_LABELS


def test_a_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    # issue 25: torchvision makes DIR/FashionMNIST/raw before it reaches the network
    import torchvision.datasets

    def offline(root, train, download):
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b half a download")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for data_dir in (tmp_path / "new" / "deeper", kept):
        with pytest.raises(DataError, match="download failed"):
            load_dataset("fashion-mnist", data_dir=data_dir)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "kept",
        "kept/notes.txt",
    ]
    monkeypatch.chdir(kept)  # the command line's ./data, and its --out
    assert main(["train", "--dataset", "fashion-mnist", "--out", "runs/fm", "--quiet"]) == 2
    assert "download failed" in capsys.readouterr().err
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_idx_bad_magic(tmp_path):
    write_idx_set(tmp_path)
    bad = write_idx(tmp_path / "train-images-idx3-ubyte", fake_images(5, 0), magic=2049)
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*magic number 2049"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_idx_truncated(tmp_path):
    files = write_idx_set(tmp_path)
    path = files["t10k-images-idx3-ubyte"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=re.escape(str(path)) + " is truncated"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=re.escape(str(path)) + " is truncated"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_idx_truncated_gz(tmp_path):
    files = write_idx_set(tmp_path, gz=True)
    path = files["train-labels-idx1-ubyte"]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_idx_count_mismatch(tmp_path):
    write_idx_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2, 3]))
    with pytest.raises(DataError, match="5 images but .*train-labels-idx1-ubyte has 3 labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


# ----- npz -----


@pytest.mark.parametrize("labels", [False, True])
@pytest.mark.parametrize(
    "shape, x_shape", [((6, 10), (10,)), ((6, 5, 4), (1, 5, 4)), ((6, 3, 5, 4), (3, 5, 4))]
)
def test_npz_round_trip(tmp_path, shape, x_shape, labels):
    rng = np.random.default_rng(0)
    x_train, x_test = rng.random(shape), rng.random((2, *shape[1:])).astype(np.float32)
    extra = {"y_train": np.arange(6), "y_test": np.array([1, 0], np.uint8)} if labels else {}
    path = save_npz(tmp_path / "d.npz", x_train=x_train, x_test=x_test, **extra)
    ds = load_dataset("npz", data_path=path)
    assert ds.name == "npz" and ds.x_shape == x_shape
    assert ds.x_train.shape == (6, *x_shape) and ds.x_test.shape == (2, *x_shape)
    assert ds.x_train.dtype == torch.float32
    assert np.allclose(ds.x_train.reshape(shape).numpy(), x_train)
    assert np.array_equal(ds.x_test.reshape(2, *shape[1:]).numpy(), x_test)
    if labels:
        assert ds.y_train.dtype == torch.int64 and ds.y_train.tolist() == list(range(6))
        assert ds.y_test.tolist() == [1, 0]
    else:
        assert ds.y_train is None and ds.y_test is None


def test_npz_keeps_8_bit_images_as_bytes(tmp_path):
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).astype(np.uint8) * 2
    ds = load_dataset("npz", data_path=save_npz(tmp_path / "c.npz", x_train=x, x_test=x[:1]))
    assert ds.eight_bit and ds.x_shape == (3, 4, 5) and np.array_equal(ds.x_train.numpy(), x)
    assert ds.bytes_per_example == 60 and "60 bytes (uint8) each" in ds.describe()


def test_npz_accepts_binary_integers(tmp_path):
    x = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    ds = load_dataset("npz", data_path=save_npz(tmp_path / "b.npz", x_train=x, x_test=x))
    assert is_binary(ds.x_train) and ds.x_train.dtype == torch.float32


def _npz_case(tmp_path: Path, case: str) -> Path:
    x = np.full((4, 3), 0.5)
    good = {"x_train": x, "x_test": x}
    p = tmp_path / "d.npz"
    if case == "not_npz":
        p.write_text("hello")
    elif case == "broken_zip":
        save_npz(p, **good)
        p.write_bytes(p.read_bytes()[:200])
    elif case == "npy":
        np.save(tmp_path / "d.npy", x)
        p = tmp_path / "d.npy"
    elif case == "missing_key":
        save_npz(p, x_train=x, images=x)
    elif case == "nan":
        x_nan = x.copy()
        x_nan[0, :2] = np.nan
        save_npz(p, x_train=x_nan, x_test=x)
    elif case == "inf":
        save_npz(p, x_train=x, x_test=np.full((2, 3), np.inf))
    elif case == "int_255":
        save_npz(p, x_train=np.full((4, 3), 255, np.int64), x_test=np.zeros((2, 3), np.int64))
    elif case == "mixed_dtypes":
        save_npz(p, x_train=np.full((4, 3), 255, np.uint8), x_test=x)
    elif case == "negative":
        save_npz(p, x_train=x - 1, x_test=x)
    elif case == "rank1":
        save_npz(p, x_train=np.full(4, 0.5), x_test=np.full(4, 0.5))
    elif case == "rank5":
        save_npz(p, x_train=np.zeros((2, 1, 1, 2, 2)), x_test=np.zeros((2, 1, 1, 2, 2)))
    elif case == "shape_mismatch":
        save_npz(p, x_train=x, x_test=np.zeros((2, 4)))
    elif case == "empty":
        save_npz(p, x_train=x, x_test=np.zeros((0, 3)))
    elif case == "labels_float":
        save_npz(p, **good, y_train=np.zeros(4))
    elif case == "labels_2d":
        save_npz(p, **good, y_test=np.zeros((4, 1), np.int64))
    elif case == "labels_length":
        save_npz(p, **good, y_train=np.zeros(3, np.int64))
    elif case == "strings":
        save_npz(p, x_train=np.array([["a", "b"]]), x_test=x)
    elif case == "objects":
        save_npz(p, x_train=np.array([{"a": 1}], dtype=object), x_test=x)
    return p


@pytest.mark.parametrize(
    "case, match",
    [
        ("not_npz", r"d.npz is not an .npz archive; write one with numpy.savez"),
        ("broken_zip", r"d.npz is not an .npz archive"),
        ("npy", "single .npy array, not an .npz archive"),
        ("missing_key", "lacks required array.* x_test; found: images, x_train"),
        ("nan", "x_train .* has 2 NaN and 0 infinite values"),
        ("inf", "x_test .* has 0 NaN and 6 infinite values"),
        (
            "int_255",
            r"x_train .*values in \[255, 255\]; values must be in \[0, 1\] "
            r"\(or save 8-bit images as uint8\)",
        ),
        ("mixed_dtypes", r"x_train is uint8 but x_test is float32; both must be uint8"),
        ("negative", r"x_train .*values in \[-0.5, -0.5\]; values must be in \[0, 1\]$"),
        ("rank1", r"x_train .*shape \(4,\); accepted shapes are \(N, D\), \(N, H, W\)"),
        ("rank5", r"accepted shapes are .*\(N, C, H, W\)"),
        ("shape_mismatch", r"per-example shape \(3,\) but x_test has \(4,\)"),
        ("empty", "x_test .* is empty"),
        ("labels_float", "y_train .*float64.*1-D integer array"),
        ("labels_2d", r"y_test .*shape \(4, 1\).*1-D integer array"),
        ("labels_length", "y_train .*has length 3 but there are 4 examples"),
        ("strings", "x_train .*dtype <U1; it must be a float or integer array"),
        ("objects", "cannot read the arrays in .*Object arrays.*save numeric arrays"),
    ],
)
def test_npz_bad_inputs(tmp_path, case, match):
    path = _npz_case(tmp_path, case)
    with pytest.raises(DataError, match=match) as info:
        load_dataset("npz", data_path=path)
    assert "\n" not in str(info.value)


def test_npz_needs_a_path(tmp_path):
    with pytest.raises(ConfigError, match="dataset 'npz' needs data_path file.npz") as info:
        load_dataset("npz")
    assert "needs <data_path> file.npz" in info.value.worded(lambda name: f"<{name}>")
    with pytest.raises(DataError, match="npz file not found: .*nope.npz"):
        load_dataset("npz", data_path=tmp_path / "nope.npz")


def test_data_path_only_for_npz(tmp_path):
    with pytest.raises(ConfigError, match="^data_path is only used with dataset 'npz'") as info:
        load_dataset("digits", data_path=tmp_path / "d.npz")
    assert info.value.param == "data_path"


def test_unknown_dataset_lists_names():
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet")
    assert str(info.value) == f"dataset 'imagenet' is not one of: {', '.join(DATASETS)}"
    assert info.value.param == "dataset"

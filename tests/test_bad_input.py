"""Bad input on the command line: every mistake ends with a non-zero status and one line on stderr,
``pyro-vae: error: ...`` or argparse's ``pyro-vae CMD: error: ... (see pyro-vae CMD --help)``, and
never a traceback. Cases already in test_cli.py (e.g. --epochs 0, --lr -1, NaN in x_train, evaluate
of a missing folder) and the library-level ones of test_data.py / test_checkpoint.py are not
repeated here; --resume has its own tests."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import SECTION_OF
from pyro_vae.runs.folder import Run
from pyro_vae.runs.layout import CHECKPOINT, CONFIG

FAST = ["--z-dim", "4", "--hidden-dims", "32", "--epochs", "1", "--quiet"]
DIGITS = ["--dataset", "digits", *FAST]


def one_error_line(capsys, argv):
    """Run the CLI expecting a user error: its status must be 2 and stderr one line."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert status == 2, (argv, status, err)
    assert len(lines) == 1, (argv, err)
    return lines[0]


def images(n, side=8, seed=0):
    return np.random.default_rng(seed).random((n, 1, side, side), dtype=np.float32)


def npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", *DIGITS, "--out", str(out)]) == 0
    return out


def damage_pickle(path):
    """The checkpoint's zip archive intact, the pickle inside it garbage."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            garbage = np.random.default_rng(2).bytes(len(data))
            archive.writestr(name, garbage if name.endswith("data.pkl") else data)


CORRUPTIONS = {
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(1).bytes(5000)),
    "garbage pickle": damage_pickle,
    "first 1000 bytes": lambda p: p.write_bytes(p.read_bytes()[:1000]),
    "empty file": lambda p: p.write_bytes(b""),
    "text": lambda p: p.write_text("hello world"),
    "missing": lambda p: p.unlink(),
}


@pytest.fixture(scope="module")
def broken_runs(run_dir, tmp_path_factory):
    """Copies of the run with a broken checkpoint.pt, by kind of damage."""
    root = tmp_path_factory.mktemp("broken")
    runs = {}
    for name, damage in CORRUPTIONS.items():
        runs[name] = root / name.replace(" ", "-")
        shutil.copytree(run_dir, runs[name])
        damage(runs[name] / CHECKPOINT)
    # a checkpoint of another configuration: z_dim 5 in the config, weights of z_dim 4
    runs["other config"] = root / "other-config"
    shutil.copytree(run_dir, runs["other config"])
    config = json.loads((run_dir / CONFIG).read_text())
    config["model"]["z_dim"] = 5
    (runs["other config"] / CONFIG).write_text(json.dumps(config))
    return runs


EXPECTED = {
    "random bytes": "is not a readable checkpoint (truncated or corrupt)",
    "garbage pickle": "is not a readable checkpoint (corrupt: UnpicklingError: ",
    "first 1000 bytes": "is not a readable checkpoint (truncated or corrupt)",
    "empty file": "is not a readable checkpoint (truncated or corrupt)",
    "text": "is not a readable checkpoint (truncated or corrupt)",
    "missing": "no checkpoint at ",
    "other config": "do not fit the model of its config (Error(s) in loading state_dict",
}


@pytest.mark.parametrize("command", ["evaluate", "sample", "reconstruct", "check-elbo"])
@pytest.mark.parametrize("damage", list(EXPECTED))
def test_a_broken_checkpoint_is_one_line(broken_runs, capsys, damage, command):
    run = broken_runs[damage]
    line = one_error_line(capsys, [command, str(run)])
    assert line.startswith("pyro-vae: error: ") and EXPECTED[damage] in line, line
    assert str(run / CHECKPOINT) in line
    assert len(line) < 500


@pytest.mark.parametrize("command", ["sample", "reconstruct", "check-elbo"])
def test_a_missing_run_folder_is_one_line(tmp_path, capsys, command):
    line = one_error_line(capsys, [command, str(tmp_path / "nope")])
    assert line == f"pyro-vae: error: no run folder at {tmp_path / 'nope'}"


@pytest.mark.parametrize("command", ["evaluate", "reconstruct", "check-elbo"])
def test_a_checkpoint_without_a_run_config_is_one_line(run_dir, tmp_path, capsys, command):
    shutil.copy(run_dir / CHECKPOINT, tmp_path / CHECKPOINT)
    line = one_error_line(capsys, [command, str(tmp_path)])
    expected = f"{tmp_path} has no config.json; was it written by pyro-vae train?"
    assert line == f"pyro-vae: error: {expected}"


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"zdim": 4}, "has unknown setting(s) zdim; the settings are: dataset, data_dir"),
        ({"z_dim": 0}, "--z-dim must be at least 1, got 0"),
        ({"prior": "gamma"}, "--prior 'gamma' is not one of: standard-normal, normal, mog"),
        ({"lr": "fast"}, "--lr must be a positive number, got 'fast'"),
        ({"hidden_dims": 400}, "--hidden-dims must be a list of sizes such as [400], got 400"),
        ({"likelihood_options": {"scale": -1}}, "--likelihood-scale must be a positive finite"),
        ({"kl_warmup": 50}, "--kl-warmup (50 epochs) is longer than the training (--epochs 1)"),
        ({"num_particles": 0}, "--num-particles must be at least 1, got 0"),
    ],
)
def test_a_bad_config_file_is_one_line(run_dir, tmp_path, capsys, change, expected):
    if "likelihood_options" in change:
        change = {**change, "likelihood": "gaussian"}
    config = json.loads((run_dir / CONFIG).read_text())
    for name, value in change.items():  # into its section's table; an unknown name at the top
        config.get(SECTION_OF.get(name), config)[name] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    line = one_error_line(capsys, ["train", "--config", str(path), "--out", str(tmp_path / "r")])
    assert expected in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "argv, valid",
    [
        (["train", "--likelihood", "poisson"], "discretized-logistic"),
        (["train", "--guide", "flowy"], "full-rank"),
        (["train", "--encoder", "vit"], "resnet"),
        (["train", "--dataset", "imagenet"], "cifar10"),
        (["train", "--objective", "renyi"], "meanfield"),
        (["train", "--binarize", "static"], "dynamic"),
        (["check-elbo", "--prior", "gamma"], "standard-normal"),
    ],
)
def test_an_unknown_name_lists_the_valid_ones(capsys, argv, valid):
    line = one_error_line(capsys, argv)
    assert "invalid choice" in line and repr(valid) in line, line


BAD_NUMBERS = [
    (["train", "--epochs", "-1"], "argument --epochs: must be at least 1, got -1"),
    (["train", "--epochs", "ten"], "argument --epochs: expected a whole number, got 'ten'"),
    (["train", "--epochs", "1.5"], "argument --epochs: expected a whole number, got '1.5'"),
    (["train", "--epochs", str(10**20)], "--epochs: must be at most 9223372036854775807, got 1"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["train", "--z-dim", "0"], "argument --z-dim: must be at least 1, got 0"),
    (["train", "--lr", "0"], "argument --lr: must be a positive finite number, got 0"),
    (["train", "--lr", "nan"], "argument --lr: must be a positive finite number, got nan"),
    (["train", "--lr", "inf"], "argument --lr: must be a positive finite number, got inf"),
    (["train", "--lr", "1e300"], "argument --lr: must be at most 1e+30, got 1e+300"),
    (["train", "--lr", " inf\n"], "argument --lr: must be a positive finite number, got inf"),
    (["train", "--z-dim", "9" * 60 + "\n"], "--z-dim: must be at most 16777216, got a number of "),
    (["train", "--hidden-dims", "0"], "argument --hidden-dims: expected comma-separated positive"),
    (["train", "--beta", "0"], "argument --beta: must be a positive finite number, got 0"),
    (["train", "--beta", "-1"], "argument --beta: must be a positive finite number, got -1"),
    (["train", "--beta", "inf"], "argument --beta: must be a positive finite number, got inf"),
    (["train", "--beta", "nan"], "argument --beta: must be a positive finite number, got nan"),
    (["train", "--kl-warmup", "-1"], "argument --kl-warmup: must be at least 0, got -1"),
    (["train", "--kl-warmup", "2.5"], "argument --kl-warmup: expected a whole number, got '2.5'"),
    (["train", "--num-particles", "0"], "argument --num-particles: must be at least 1, got 0"),
    (["train", "--num-particles", "5000"], "argument --num-particles: must be at most 1000"),
    (["train", "--hidden-dims", "4,,5"], "expected a whole number, got ''"),
    (["train", "--likelihood-scale", "-0.1"], "must be a positive finite number, got -0.1"),
    (["train", "--channels", "2"], "argument --channels: must be 1 (grey) or 3 (colour), got 2"),
    (["train", "--image-size", "0"], "argument --image-size: must be at least 1, got 0"),
    (["train", "--workers", "-1"], "argument --workers: must be at least 0, got -1"),
    (["evaluate", "RUN", "--iwae-k", "-1"], "argument --iwae-k: must be at least 0, got -1"),
    (["evaluate", "RUN", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["evaluate", "RUN", "--seed", str(2**32)], "argument --seed: must be at most 4294967295"),
    (["sample", "RUN", "-n", "0"], "argument -n/--num: must be at least 1, got 0"),
    (["sample", "RUN", "-n", str(10**13)], "argument -n/--num: must be at most 100000"),
    (["sample", "RUN", "--seed", str(10**23)], "argument --seed: must be at most 4294967295"),
    (["reconstruct", "RUN", "-n", "-3"], "argument -n/--num: must be at least 1, got -3"),
    (["check-elbo", "RUN", "--num-particles", "0"], "--num-particles: must be at least 1, got 0"),
    (["check-elbo", "RUN", "--num-particles", str(10**9)], "--num-particles: must be at most 1000"),
    (["check-elbo", "RUN", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["check-elbo", "RUN", "--seed", "-5"], "argument --seed: must be at least 0, got -5"),
    (["score", "RUN", "--iwae-k", "0"], "argument --iwae-k: must be at least 1, got 0"),
    (["interpolate", "RUN", "--from", "-1", "--to", "2"], "argument --from: must be at least 0"),
    (["interpolate", "RUN", "--from", "0", "--to", "1", "--steps", "1"], "--steps: must be at le"),
]


@pytest.mark.parametrize("argv, expected", BAD_NUMBERS)
def test_an_out_of_range_number_is_one_argparse_line(run_dir, tmp_path, capsys, argv, expected):
    command, *rest = argv
    rest = [str(run_dir) if a == "RUN" else a for a in rest]
    if command == "train":
        rest = [*DIGITS, "--out", str(tmp_path / "new"), *rest]
    line = one_error_line(capsys, [command, *rest])
    assert line.startswith(f"pyro-vae {command}: error: ") and expected in line, line
    assert line.endswith(f"(see pyro-vae {command} --help)")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--z-dim", str(10**12)], "must be at most 16777216, got 1000000000000"),
        (["--z-dim", str(2**62)], "must be at most 16777216, got 4611686018427387904"),
        (
            ["--hidden-dims", f"{2**24},{2**24}"],
            "hidden_dims [16777216, 16777216] need 2,097,161.0 GiB",
        ),
        (["--seed", "-1"], "argument --seed: must be at least 0"),
    ],
)
def test_a_model_that_cannot_be_built_is_one_line(tmp_path, capsys, argv, expected):
    line = one_error_line(capsys, ["train", *DIGITS, "--out", str(tmp_path / "new"), *argv])
    assert expected in line, line
    assert not (tmp_path / "new" / CHECKPOINT).exists()


OBJECTIVE_CLASHES = [
    (["--kl-warmup", "5"], "--kl-warmup (5 epochs) is longer than the training (--epochs 1)"),
    (
        ["--objective", "iwae", "--beta", "2"],
        "--beta weighs the KL term of the ELBO, and objective 'iwae', the IWAE bound, has none: "
        "use it with objective 'trace' or 'meanfield'",
    ),
    (["--objective", "iwae", "--kl-warmup", "1"], "--kl-warmup weighs the KL term of the ELBO"),
    (
        ["--objective", "iwae-dreg", "--guide", "iaf"],
        "objective 'iwae-dreg' needs the guide 'diagonal', not --guide 'iaf'",
    ),
    (
        ["--image-size", "8"],
        "--image-size is only used with the datasets cifar10, cifar100, svhn, celeba, folder, "
        "not 'digits'",
    ),
    (["--dataset", "folder", "--data-dir", "/no/such/folder"], "folder not found: /no/such"),
    (
        ["--num-particles", "1000", "--hidden-dims", "20000", "--batch-size", "2000"],
        "--num-particles = 1000: the activations of 1000 particles of 1438 examples need 43",
    ),
]


@pytest.mark.parametrize("argv, expected", OBJECTIVE_CLASHES)
def test_objective_settings_that_cannot_work_are_one_line(tmp_path, capsys, argv, expected):
    line = one_error_line(capsys, ["train", *DIGITS, "--out", str(tmp_path / "new"), *argv])
    assert line.startswith("pyro-vae: error: ") and expected in line, line
    assert not (tmp_path / "new" / CHECKPOINT).exists()


def bad_npz(tmp_path, case):
    x, x_test = images(40), images(10, seed=1)
    path = tmp_path / "d.npz"
    if case == "nan in x_test":
        x_test[3, 0, 2, 2] = np.nan
    elif case == "inf in x_train":
        x[0, 0, 0, 0] = np.inf
    elif case == "-inf in x_train":
        x[5, 0, 1, 1] = -np.inf
    elif case == "negative":
        x[1, 0, 0, 0] = -0.25
    elif case == "missing x_test":
        return npz(path, x_train=x, y_train=np.zeros(40, np.int64))
    elif case == "shapes differ":
        x_test = images(10, side=6)
    elif case == "strings":
        return npz(path, x_train=np.array([["0.5"] * 4] * 4), x_test=x_test)
    elif case == "not npz":
        path.write_text("x_train,x_test\n0.5,0.5\n")
        return str(path)
    elif case == "folder":
        return str(tmp_path)
    return npz(path, x_train=x, x_test=x_test)


NPZ_ERRORS = {
    "nan in x_test": "x_test in {path} has 1 NaN and 0 infinite values; all must be finite",
    "inf in x_train": "x_train in {path} has 0 NaN and 1 infinite values; all must be finite",
    "-inf in x_train": "x_train in {path} has 0 NaN and 1 infinite values; all must be finite",
    "negative": "x_train in {path} has values in [-0.25, ",
    "missing x_test": "{path} lacks required array(s) x_test; found: x_train, y_train",
    "shapes differ": "{path}: x_train has per-example shape (1, 8, 8) but x_test has (1, 6, 6)",
    "strings": "x_train in {path} has dtype <U3; it must be a float or integer array",
    "not npz": "{path} is not an .npz archive; write one with numpy.savez",
    "folder": "{path} is a folder; --data-path names an .npz file",
}


@pytest.mark.parametrize("case", list(NPZ_ERRORS))
def test_bad_npz_data_is_one_line(tmp_path, capsys, case):
    path = bad_npz(tmp_path, case)
    argv = ["train", "--dataset", "npz", "--data-path", path, *FAST, "--out", str(tmp_path / "r")]
    line = one_error_line(capsys, argv)
    assert line.startswith("pyro-vae: error: " + NPZ_ERRORS[case].format(path=path)), line
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def run_on_replaced_data(tmp_path_factory):
    """A run trained on 8x8 images whose npz file then got 6x6 images."""
    root = tmp_path_factory.mktemp("replaced")
    path = npz(root / "d.npz", x_train=images(40), x_test=images(10, seed=1))
    out = root / "run"
    argv = ["train", "--dataset", "npz", "--data-path", path, *FAST, "--out", str(out)]
    assert main(argv) == 0
    npz(path, x_train=images(40, side=6), x_test=images(10, side=6, seed=1))
    return out, path


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "--iwae-k", "10", "--quiet"],
        ["reconstruct"],
        ["check-elbo"],
        ["encode", "--quiet"],
        ["score", "--iwae-k", "2", "--quiet"],
        ["interpolate", "--from", "0", "--to", "1"],
    ],
)
def test_data_of_another_shape_than_the_model_is_one_line(run_on_replaced_data, capsys, command):
    run, path = run_on_replaced_data
    line = one_error_line(capsys, [command[0], str(run), *command[1:]])
    assert line == (
        f"pyro-vae: error: the data set of {run}, npz ({path}), has examples of shape "
        "(1, 6, 6) but the model expects (1, 8, 8)"
    )


def test_an_example_index_out_of_range_is_one_line(run_dir, capsys):
    size = len(Run.open(run_dir).data.x_test)
    line = one_error_line(capsys, ["interpolate", str(run_dir), "--from", "0", "--to", "9999"])
    assert line == (
        f"pyro-vae: error: --to must be 0 to {size - 1}: the test set has {size} examples; got 9999"
    )


@pytest.mark.parametrize("command", ["encode", "score"])
def test_other_data_of_another_shape_is_one_line(run_dir, tmp_path, capsys, command):
    path = npz(tmp_path / "big.npz", x_train=images(4, side=28), x_test=images(2, side=28))
    argv = [command, str(run_dir), "--dataset", "npz", "--data-path", path, "--quiet"]
    line = one_error_line(capsys, argv)
    assert line == (
        "pyro-vae: error: data set 'npz' has examples of shape (1, 28, 28) but the model "
        "expects (1, 8, 8)"
    )


MISSING = "the folder {tmp}/nowhere does not exist"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["encode", "--out", "{tmp}/nowhere/c.npz"], "--out {tmp}/nowhere/c.npz: " + MISSING),
        (["encode", "--out", "{tmp}/c.txt"], "--out {tmp}/c.txt: a NumPy archive needs the end"),
        (["score", "--out", "{tmp}/nowhere/s.csv"], "--out {tmp}/nowhere/s.csv: " + MISSING),
        (["score", "--picture", "{tmp}/nowhere/t.png"], "--picture {tmp}/nowhere/t.png: the fo"),
        (["interpolate", "--from", "0", "--to", "1", "--out", "{tmp}/nowhere/i.png"], MISSING),
    ],
)  # fmt: skip
def test_an_output_file_in_a_missing_folder_is_one_line(run_dir, tmp_path, capsys, argv, expected):
    argv = [a.format(tmp=tmp_path) for a in argv]
    line = one_error_line(capsys, [argv[0], str(run_dir), *argv[1:]])
    assert line.startswith("pyro-vae: error: ") and expected.format(tmp=tmp_path) in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["sample", "reconstruct"])
@pytest.mark.parametrize(
    "out, expected",
    [
        ("nowhere/pic.png", "--out {tmp}/nowhere/pic.png: the folder {tmp}/nowhere does not exist"),
        ("pic.txt", "--out {tmp}/pic.txt: a picture file needs one of the endings "),
        ("pic", "--out {tmp}/pic: a picture file needs one of the endings "),
        (".", "--out {tmp} is a folder; name a file such as {tmp}/"),
    ],
)
def test_a_picture_that_cannot_be_written_is_one_line(
    run_dir, tmp_path, capsys, command, out, expected
):
    line = one_error_line(capsys, [command, str(run_dir), "--out", str(tmp_path / out)])
    assert line.startswith("pyro-vae: error: " + expected.format(tmp=tmp_path)), line
    assert list(tmp_path.iterdir()) == []


def test_a_gpu_out_of_memory_is_one_line(run_dir, tmp_path, capsys, monkeypatch):
    # CI has no GPU: raise what torch raises when a CUDA allocation fails
    import pyro_vae.runs.reports
    from pyro_vae.training.step import SVIStep

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(SVIStep, "__call__", out_of_memory)
    line = one_error_line(capsys, ["train", *DIGITS, "--out", str(tmp_path / "new")])
    assert line == (
        "pyro-vae: error: training ran out of the memory of cpu; try a smaller --batch-size or "
        "smaller --hidden-dims (the last checkpoint is kept)"
    )
    monkeypatch.setattr(pyro_vae.runs.reports, "evaluate", out_of_memory)
    line = one_error_line(capsys, ["evaluate", str(run_dir), "--quiet"])
    assert line == "pyro-vae: error: the GPU ran out of memory; try --device cpu"


LABEL_MODEL_CLASHES = [
    (["--labeled", "10"], "pyro-vae: error: --labeled is for --model 'm2', not 'vae'"),
    (["--model", "m2"], "pyro-vae: error: --labeled is needed by --model 'm2'"),
    (
        ["--model", "m2", "--labeled", "5"],
        "pyro-vae: error: --labeled (5) is smaller than the number of classes (10)",
    ),
    (
        ["--model", "m2", "--labeled", "1438"],
        "--labeled (1438) must be smaller than the training set (1438 examples)",
    ),
    (
        ["--model", "m2", "--labeled", "50", "--objective", "iwae"],
        "--objective 'iwae' is not one of: trace, manual (the objectives of --model 'm2')",
    ),
    (["--model", "m2", "--labeled", "50", "--num-particles", "2"], "--num-particles must be 1"),
    (["--aux-weight", "2"], "pyro-vae: error: --aux-weight is for --model 'm2', not 'vae'"),
    (["--model", "m2", "--labeled", "50", "--aux-weight", "-1"], "0 or more, got -1"),
    (["--model", "cvae", "--prior", "vamp"], "the 'vamp' --prior scores its pseudo-inputs"),
]


@pytest.mark.parametrize("argv, expected", LABEL_MODEL_CLASHES)
def test_label_model_settings_that_cannot_work_are_one_line(tmp_path, capsys, argv, expected):
    line = one_error_line(capsys, ["train", *DIGITS, "--out", str(tmp_path / "new"), *argv])
    assert expected in line, line
    assert not (tmp_path / "new").exists()  # refused before the run folder is written


@pytest.mark.parametrize(
    "labels, expected",
    [
        (None, "model 'cvae' needs labelled data, and data set 'npz' has no labels"),
        (-1, "the labels of data set 'npz' must be 0 or more, found -1"),
    ],
)
def test_data_without_usable_labels_is_one_line(tmp_path, capsys, labels, expected):
    arrays = {"x_train": images(40), "x_test": images(10, seed=1)}
    if labels is not None:
        arrays |= {"y_train": np.full(40, labels), "y_test": np.zeros(10, np.int64)}
    path = npz(tmp_path / "d.npz", **arrays)
    argv = ["train", "--dataset", "npz", "--data-path", path, *FAST, "--model", "cvae"]
    line = one_error_line(capsys, [*argv, "--out", str(tmp_path / "r")])
    assert line.startswith(f"pyro-vae: error: {expected}"), line


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cvae")
    data = {"x_train": images(40), "x_test": images(10, seed=1)}
    data |= {"y_train": np.arange(40) % 10, "y_test": np.arange(10)}
    path = npz(folder / "d.npz", **data)
    argv = ["train", "--dataset", "npz", "--data-path", path, *FAST, "--model", "cvae"]
    assert main([*argv, "--out", str(folder / "run")]) == 0
    return folder / "run", folder / "d.npz", data


def test_labels_out_of_the_runs_range_are_one_line(cvae_run, capsys):
    run, path, data = cvae_run
    np.savez(path, **(data | {"y_test": np.full(10, 12)}))
    try:
        line = one_error_line(capsys, ["evaluate", str(run), "--iwae-k", "2", "--quiet"])
    finally:
        np.savez(path, **data)
    assert line.endswith("has label 12, out of range for a model of 10 classes (0 to 9)"), line


@pytest.mark.parametrize(
    "run, argv, expected",
    [
        ("vae", ["sample", "--label", "3"], "--label is for the models that know labels"),
        ("cvae", ["sample", "--label", "12"], "--label must be at most 9, got 12"),
        ("vae", ["classify"], "which has no classifier; train one with --model m2"),
        ("cvae", ["classify"], "holds model 'cvae', which has no classifier"),
        ("cvae", ["interpolate", "--from", "0", "--to", "1"], "model 'cvae' decodes p(x | y, z)"),
    ],
)
def test_labels_asked_of_a_model_without_them_are_one_line(
    run_dir, cvae_run, tmp_path, capsys, run, argv, expected
):
    folder = run_dir if run == "vae" else cvae_run[0]
    line = one_error_line(
        capsys, [argv[0], str(folder), *argv[1:], "--out", str(tmp_path / "a.png")]
    )
    assert expected in line, line

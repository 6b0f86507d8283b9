import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torchvision.datasets
from helpers import metrics

from pyro_vae.cli.flags import given
from pyro_vae.cli.program import EXAMPLES, build_parser, main
from pyro_vae.config import RunConfig
from pyro_vae.runs.layout import PREVIOUS, RUN_FILES

FAST = ["--hidden-dims", "64", "--z-dim", "4", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "two-epochs"
    assert main(["train", "--dataset", "digits", "--epochs", "2", "--out", str(out), *FAST]) == 0
    return out


def test_train_writes_every_file_of_the_run_folder(run_dir):
    # two epochs: the first one's checkpoint kept as the previous
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([*RUN_FILES, PREVIOUS])
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_elbo", "test_elbo", "seconds", "kl_weight"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["device"] == "cpu"
    assert summary["test_elbo"] == float(rows[-1]["test_elbo"])
    assert summary["baseline_log_likelihood"] == pytest.approx(-26.98, abs=0.01)
    config = json.loads((run_dir / "config.json").read_text())  # a table for each section
    assert list(config) == ["data", "model", "objective", "training", "tensorboard"]
    assert config["model"]["z_dim"] == 4 and config["model"]["hidden_dims"] == [64]
    training = config["training"]
    assert {k: training[k] for k in ("epochs", "batch_size", "lr", "seed")} == {
        "epochs": 2,
        "batch_size": 128,
        "lr": 0.001,
        "seed": 0,
    }
    assert config["objective"]["objective"] == "trace" and training["clip_norm"] is None
    assert training["binarization"] == "dynamic" and training["device"] == "auto"
    assert set(summary["versions"]) == {"pyro_vae", "pyro", "torch", "python"}
    for picture in ("reconstructions.png", "samples.png", "elbo.png"):
        image = matplotlib.image.imread(run_dir / picture)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.05


def test_train_prints_where_the_results_are(run_dir, tmp_path, capsys):
    out = tmp_path / "printed"
    main(["train", "--epochs", "1", "--out", str(out), *FAST])
    printed = capsys.readouterr().out
    assert f"run folder: {out}" in printed
    assert "test ELBO: -" in printed and "nats per example" in printed


def test_evaluate_reproduces_the_summary(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert main(["evaluate", str(run_dir)]) == 0
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["test_elbo"] == summary["test_elbo"]
    assert evaluation["seed"] == 0 and evaluation["epoch"] == 2
    assert "test_elbo: " in capsys.readouterr().out
    main(["evaluate", str(run_dir), "--seed", "1"])
    other = json.loads((run_dir / "evaluation.json").read_text())
    assert other["test_elbo"] != summary["test_elbo"]
    assert other["test_elbo"] == pytest.approx(summary["test_elbo"], abs=0.5)


def test_sample_and_reconstruct_write_pictures(run_dir, tmp_path):
    assert main(["sample", str(run_dir), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(run_dir), "--out", str(tmp_path / "r.png")]) == 0
    for name in ("s.png", "r.png"):
        assert matplotlib.image.imread(tmp_path / name).std() > 0.05


def test_sample_and_reconstruct_keep_the_pictures_training_drew(run_dir, tmp_path, capsys):
    # issue 25: pyro-vae sample RUN overwrote training's samples.png with another draw
    run_dir = Path(shutil.copytree(run_dir, tmp_path / "run"))  # the shared run keeps its files
    drawn = {name: (run_dir / name).read_bytes() for name in ("samples.png", "reconstructions.png")}
    for argv, name in (
        (["sample", str(run_dir)], "sample-seed0-n64.png"),
        (["sample", str(run_dir), "--seed", "3", "-n", "16"], "sample-seed3-n16.png"),
        (["reconstruct", str(run_dir)], "reconstruct-n32.png"),
    ):
        assert main(argv) == 0
        assert capsys.readouterr().out.strip().endswith(f"to {run_dir / name}")
        assert matplotlib.image.imread(run_dir / name).ndim == 3
    assert {name: (run_dir / name).read_bytes() for name in drawn} == drawn


def test_train_with_no_flags_trains_on_digits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--quiet", "--epochs", "1"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("digits-")
    assert json.loads((run / "config.json").read_text())["data"]["dataset"] == "digits"


def test_a_runs_config_file_reproduces_it(run_dir, tmp_path):
    again = tmp_path / "again"
    argv = ["train", "--config", str(run_dir / "config.json"), "--out", str(again), "--quiet"]
    assert main(argv) == 0
    assert metrics(again) == metrics(run_dir)  # the same numbers, to the last digit
    assert (again / "config.json").read_text() == (run_dir / "config.json").read_text()


def test_flags_override_a_toml_config_file(tmp_path):
    config_file = tmp_path / "small.toml"
    config_file.write_text(
        'z_dim = 3\nhidden_dims = [16]\nepochs = 5\nprior = "mog"\n\n'
        "[prior_options]\ncomponents = 2\n"
    )
    out = tmp_path / "run"
    argv = ["train", "--config", str(config_file), "--epochs", "1", "--lr", "0.01"]
    assert main([*argv, "--prior-components", "4", "--out", str(out), "--quiet"]) == 0
    config = RunConfig.load(out / "config.json").settings()
    assert (config["z_dim"], config["hidden_dims"], config["prior"]) == (3, (16,), "mog")
    assert (config["epochs"], config["lr"], config["prior_options"]) == (1, 0.01, {"components": 4})
    assert len(metrics(out)) == 1


def test_help_documents_every_flag(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    expected = {"train", "evaluate", "check-elbo", "sample", "reconstruct", "classify", "list"}
    expected |= {"encode", "score", "interpolate", "prepare"}
    assert set(commands) == expected
    for name, sub in commands.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        for action in sub._actions:
            assert action.help, f"{name} {action.dest} has no help"
            for flag in action.option_strings:
                assert flag in text


def test_help_says_each_default_once_and_ends_with_examples_that_parse(capsys):
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert "(default: None)" not in text and "(default: False)" not in text, name
        formatter = sub._get_formatter()
        for action in sub._actions:
            shown = formatter._get_help_string(action)
            assert shown.count("default") <= 1, (name, action.dest, shown)
        assert text.rstrip().endswith(EXAMPLES[name][-1]) and "\nexamples:\n" in text, name
        for line in EXAMPLES[name]:
            assert line.startswith(f"pyro-vae {name}")
            parser.parse_args(line.split()[1:])  # argparse exits on a flag that does not exist
    train = parser._subparsers._group_actions[0].choices["train"]
    shown = {a.option_strings[-1]: a.help for a in train._actions if a.option_strings}
    assert shown["--prior-components"].endswith("(default: mog 10, vamp 50)")
    assert shown["--likelihood-bins"].endswith("(default: discretized-logistic 256)")
    assert shown["--flow-steps"].endswith("(default: flow 2, iaf 2)")
    assert shown["--z-dim"].endswith("(default: 16)")


def printed_defaults(parser):
    """Each command's flags whose help prints a default, with that default parsed as the flag
    parses a value, and the value the command really uses when the flag is not given."""
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        required = [["x"] if not a.option_strings else [a.option_strings[0], "0"]
                    for a in sub._actions if a.required]
        args = parser.parse_args([name, *sum(required, [])])
        config = RunConfig().replace(**given(args)).settings() if name == "train" else None
        formatter = sub._get_formatter()
        for action in sub._actions:
            match = re.search(r"\(default: ([^)]*)\)$", formatter._get_help_string(action))
            if not action.option_strings or not match:
                continue
            used = getattr(args, action.dest)
            if used is None and config is not None and action.dest in config:
                used = config[action.dest]
            if used is None:  # "the run's", "as the files are": said in words, decided later
                continue
            text = match.group(1)
            if isinstance(action, argparse.BooleanOptionalAction):
                printed = {"on": True, "off": False}[text]
            else:
                printed = action.type(text) if action.type else text
            yield f"{name} {action.option_strings[0]}", printed, used


def test_every_printed_default_is_the_default_in_use():
    parser = build_parser()
    checked = []
    for flag, printed, used in printed_defaults(parser):
        if isinstance(used, list | tuple):
            printed, used = list(printed), list(used)
        assert type(printed) is type(used) and printed == used, (flag, printed, used)
        checked.append(flag)
    # the three the issue found printed as booleans, and others of each kind
    for flag in ("--seed", "--num-particles", "--beta", "--z-dim", "--hidden-dims", "--stream"):
        assert f"train {flag}" in checked, flag
    assert {"evaluate --iwae-k", "check-elbo --seed", "sample -n"} <= set(checked)


def test_flags_are_never_abbreviated_and_a_misspelt_one_is_named(capsys):
    line = error_line(capsys, ["train", "--epoch", "0"])
    assert line.startswith("pyro-vae train: error: unrecognized arguments: --epoch 0")
    assert "did you mean --epochs?" in line
    for typo in ("--zdim", "--z_dim"):
        assert f"{typo} 8; did you mean --z-dim?" in error_line(capsys, ["train", typo, "8"])
    assert "did you mean --iwae-k?" in error_line(capsys, ["evaluate", "r", "--iwae_k=5"])
    assert "did you mean" not in error_line(capsys, ["train", "--colour"])


def error_line(capsys, argv):
    """Run the CLI expecting a user error; return the one line it printed."""
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_bad_input_is_one_clear_line(run_dir, tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    good = np.random.default_rng(0).random((4, 8, 8))
    cases = {
        "--data-dir DIR": ["--dataset", "mnist", "--data-dir", str(empty)],
        "train-images-idx3-ubyte": ["--dataset", "mnist", "--data-dir", str(empty)],
        "--data-path file.npz": ["--dataset", "npz"],
        "NaN": [
            "--dataset",
            "npz",
            "--data-path",
            save_npz(tmp_path / "nan.npz", x_train=good * np.nan, x_test=good),
        ],
        "[0, 1]": [
            "--dataset",
            "npz",
            "--data-path",
            save_npz(tmp_path / "big.npz", x_train=good * 255, x_test=good),
        ],
        "shape": [
            "--dataset",
            "npz",
            "--data-path",
            save_npz(tmp_path / "rank.npz", x_train=good.ravel(), x_test=good),
        ],
        "already holds a trained run": ["--out", str(run_dir)],
        "must be at least 1": ["--epochs", "0"],
        "must be a positive finite number": ["--lr", "-1"],
        "comma-separated positive sizes": ["--hidden-dims", "a,b"],
        "invalid choice: 'gamma'": ["--prior", "gamma"],
        "--flow-steps does not apply to the prior 'standard-normal' and the guide 'diagonal'": [
            "--flow-steps",
            "4",
        ],
    }
    if not torch.cuda.is_available():
        cases["no CUDA GPU is available"] = ["--device", "cuda"]
    for fragment, argv in cases.items():
        line = error_line(capsys, ["train", "--out", str(tmp_path / "new"), *FAST, *argv])
        assert fragment in line, (argv, line)
    assert "no run folder at" in error_line(capsys, ["evaluate", str(tmp_path / "nope")])
    assert "has no config.json; was it written by pyro-vae train?" in error_line(
        capsys, ["sample", str(empty)]
    )


def test_console_script_and_module_entry_points():
    script = Path(sys.executable).parent / "pyro-vae"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("pyro-vae ")
    bad = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--dataset", "npz"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "pyro-vae: error: dataset 'npz' needs --data-path file.npz with arrays x_train and x_test"
    ]


def test_ctrl_c_ends_with_status_130_and_keeps_the_config(tmp_path, capsys, monkeypatch):
    import pyro_vae.runs.folder

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pyro_vae.runs.folder, "train", interrupted)
    assert main(["train", "--out", str(tmp_path / "run"), *FAST]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.json").exists()

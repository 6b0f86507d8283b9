"""Nothing lost: resume, signals, non-finite losses and checkpoint writes that crash."""

import csv
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae import VAE, PyroVAEError, train
from pyro_vae.cli import main
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint, train_state
from pyro_vae.runs.folder import Run
from pyro_vae.runs.layout import CHECKPOINT, PREVIOUS
from pyro_vae.training.state import TrainingError, TrainingInterrupted

step_module = importlib.import_module("pyro_vae.training.step")
ROOT = Path(__file__).resolve().parents[1]
# compile "off": "auto" decides by timing, and runs compared digit for digit must not decide apart
RUN_FLAGS = ["--dataset", "digits", "--z-dim", "4", "--hidden-dims", "32", "--quiet"]
RUN_FLAGS += ["--compile", "off"]


def fresh_vae(digits):
    pyro.set_rng_seed(0)
    return VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))


def weights(vae):
    return {k: v.clone() for k, v in vae.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def round_trip(state, vae, path):
    """The state as a resumed process sees it: written to disk and read back."""
    save_checkpoint(path, vae, state)
    return train_state(load_checkpoint(path))


@pytest.mark.parametrize(
    "stop_after, objective",
    [
        (36, {}),
        (29, {}),
        (29, {"kl_warmup": 5, "beta": 0.8, "num_particles": 2}),  # the warm-up goes on from 0.48
    ],
    ids=["epoch-boundary", "mid-epoch", "mid-warm-up"],
)
def test_resumed_training_takes_the_very_same_steps(digits, tmp_path, stop_after, objective):
    options = dict(epochs=6, batch_size=128, lr=3e-3, device="cpu", progress=False, seed=3,
        compile="off")
    options.update(objective)
    straight = fresh_vae(digits)
    expected = train(straight, digits, **options)

    vae = fresh_vae(digits)
    saved = []
    steps = iter(range(1, 10**6))
    with pytest.raises(TrainingInterrupted, match="epoch 3"):
        train(
            vae,
            digits,
            checkpoint=lambda s: saved.append(round_trip(s, vae, tmp_path / CHECKPOINT)),
            stop=lambda: next(steps) == stop_after,
            **options,
        )
    state = saved[-1]
    assert (state.epoch, state.step_in_epoch) == divmod(stop_after, 12)
    resumed_vae = fresh_vae(digits)  # other weights, other RNG state: all must come from disk
    resumed_vae.load_state_dict(load_checkpoint(tmp_path / CHECKPOINT)["model"])
    torch.manual_seed(123)
    history = train(resumed_vae, digits, resume=state, **options)

    assert_same_weights(weights(resumed_vae), weights(straight))
    assert history.epoch == expected.epoch == [1, 2, 3, 4, 5, 6]
    assert history.train_elbo == expected.train_elbo
    assert history.test_elbo == expected.test_elbo
    assert history.step_loss == expected.step_loss
    assert history.kl_weight == expected.kl_weight


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [
            {k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)
        ]


def test_cli_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", *RUN_FLAGS, "--epochs", "6", "--out", str(whole)]) == 0
    assert main(["train", *RUN_FLAGS, "--epochs", "3", "--out", str(part)]) == 0
    assert len(read_metrics(part)) == 3
    # resuming needs only the run folder; the run's own flags are kept
    assert main(["train", "--out", str(part), "--resume", "--epochs", "6", "--quiet"]) == 0
    assert read_metrics(part) == read_metrics(whole)
    assert_same_weights(Run.open(part).vae.state_dict(), Run.open(whole).vae.state_dict())
    capsys.readouterr()

    assert main(["train", "--out", str(part), "--resume", "--epochs", "6"]) == 2
    assert "has finished 6 of 6 epochs; ask for more --epochs" in capsys.readouterr().err
    assert main(["train", "--out", str(part), "--resume", "--epochs", "7", "--z-dim", "5"]) == 2
    err = capsys.readouterr().err
    assert (
        "(--z-dim: 4 -> 5); only --epochs, --lr, --device, --compile, --stream, --workers, "
        "--tensorboard may change" in err
    )
    assert err.count("\n") == 1
    assert main(["train", "--out", str(part), "--resume", "--overwrite"]) == 2
    assert "--overwrite does not go with it" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no run folder at" in capsys.readouterr().err
    assert main(["train", *RUN_FLAGS, "--out", str(part)]) == 2
    assert "continue it with --resume" in capsys.readouterr().err


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    """A run trained without a stop: checkpoint.pt of epoch 3, checkpoint.prev.pt of epoch 2."""
    run_dir = tmp_path_factory.mktemp("three") / "run"
    assert main(["train", *RUN_FLAGS, "--epochs", "3", "--out", str(run_dir)]) == 0
    assert load_checkpoint(run_dir / PREVIOUS)["epoch"] == 2
    return run_dir


def cut_short(path):
    """As a full disk or a killed copy leaves a file: its first half."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damaged_copy(run_dir, to):
    shutil.copytree(run_dir, to)
    cut_short(to / CHECKPOINT)
    return to


@pytest.mark.parametrize("via", ["python", "cli"])
def test_a_truncated_checkpoint_resumes_from_the_previous_one(three_epochs, tmp_path, capsys, via):
    run_dir = damaged_copy(three_epochs, tmp_path / "run")
    cut_short(run_dir / "metrics.csv")  # the same disk: it must come back from the checkpoint
    capsys.readouterr()
    if via == "python":
        Run.open(run_dir).train(progress=False)
    else:
        assert main(["train", "--out", str(run_dir), "--resume", "--quiet"]) == 0
    last, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    assert capsys.readouterr().err == (
        f"pyro-vae: {last} is not a readable checkpoint (truncated or corrupt); going back to "
        f"{previous}, written after epoch 2\n"
    )
    # epoch 3 trained again: what the run gave without the damage
    assert read_metrics(run_dir) == read_metrics(three_epochs)
    assert_same_weights(Run.open(run_dir).vae.state_dict(), Run.open(three_epochs).vae.state_dict())
    assert load_checkpoint(previous)["epoch"] == 2  # the damaged file was replaced, not kept


def test_every_command_goes_back_and_two_unreadable_checkpoints_are_one_line(
    three_epochs, tmp_path, capsys
):
    run_dir = damaged_copy(three_epochs, tmp_path / "run")
    last, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    capsys.readouterr()
    assert main(["sample", str(run_dir), "-n", "4", "--out", str(tmp_path / "four.png")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"going back to {previous}, written after epoch 2" in err
    cut_short(previous)
    with pytest.raises(PyroVAEError, match="the previous one is no better"):
        Run.open(run_dir)
    assert main(["sample", str(run_dir), "-n", "4", "--out", str(tmp_path / "four.png")]) == 2
    assert capsys.readouterr().err == (
        f"pyro-vae: error: {last} is not a readable checkpoint (truncated or corrupt); the "
        f"previous one is no better: {previous} is not a readable checkpoint (truncated or "
        "corrupt)\n"
    )


def start_training(run_dir, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "train", *RUN_FLAGS, "--out", str(run_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


SIGNAL_RUN = ["--epochs", "8", "--batch-size", "8"]  # 180 steps an epoch: a signal lands mid-run


@pytest.fixture(scope="module")
def unstopped_run(tmp_path_factory):
    """The run the signal tests stop, trained without a stop: what resuming must give."""
    whole = tmp_path_factory.mktemp("unstopped") / "whole"
    assert main(["train", *RUN_FLAGS, *SIGNAL_RUN, "--out", str(whole)]) == 0
    return whole


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes_exactly(tmp_path, unstopped_run, signum):
    run_dir, flags, whole = tmp_path / "run", SIGNAL_RUN, unstopped_run
    process = start_training(run_dir, *flags)
    wait_for(run_dir / CHECKPOINT, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert f"resume with: pyro-vae train --out {run_dir} --resume" in err
    stopped = load_checkpoint(run_dir / CHECKPOINT)
    assert stopped["epoch"] < 8

    assert main(["train", "--out", str(run_dir), "--resume", "--quiet"]) == 0
    # Two processes may split a matrix product differently among threads: equal to rounding.
    resumed, expected = read_metrics(run_dir), read_metrics(whole)
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in expected] == list(range(1, 9))
    for row, want in zip(resumed, expected, strict=True):
        assert row == pytest.approx(want, rel=1e-6)
    final, want = Run.open(run_dir).vae.state_dict(), Run.open(whole).vae.state_dict()
    for k in want:
        assert torch.allclose(final[k], want[k], rtol=1e-4, atol=1e-6), k


def failing_loss_from(step):
    make_loss = step_module.make_loss

    def make(vae, objective, num_particles=1):
        loss_fn = make_loss(vae, objective, num_particles)
        calls = iter(range(1, 10**6))

        def loss(x, **weight):
            value = loss_fn(x, **weight)
            return value * float("nan") if next(calls) >= step else value

        return loss

    return make


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(step_module, "make_loss", failing_loss_from(12 + 5))
    assert main(["train", *RUN_FLAGS, "--epochs", "4", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "at step 5 of 12 in epoch 2" in err and "lower --lr (now 0.001)" in err
    assert err.count("\n") == 1
    run = Run.open(run_dir)
    assert run.state.epoch == 1 and len(read_metrics(run_dir)) == 1
    assert all(torch.isfinite(p).all() for p in run.vae.parameters())


def test_a_non_finite_loss_raises_before_the_epoch_is_saved(digits, monkeypatch):
    monkeypatch.setattr(step_module, "make_loss", failing_loss_from(3))
    saved = []
    with pytest.raises(TrainingError, match="at step 3 of 12 in epoch 1"):
        train(
            fresh_vae(digits),
            digits,
            epochs=2,
            device="cpu",
            progress=False,
            checkpoint=saved.append, compile="off",
        )
    assert saved == []


def test_non_finite_weights_are_never_written(digits, tmp_path):
    vae = fresh_vae(digits)
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, vae)
    before = path.read_bytes()
    with torch.no_grad():
        next(vae.parameters())[0, 0] = float("inf")
    with pytest.raises(PyroVAEError, match="refusing to write non-finite weights"):
        save_checkpoint(path, vae)
    assert path.read_bytes() == before


SLOW_WRITER = """
import sys, time
from pyro_vae.files import atomic_write

def write(f):
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

atomic_write(sys.argv[1], write)
"""


def test_killing_the_writer_mid_write_leaves_the_previous_checkpoint(digits, tmp_path):
    vae = fresh_vae(digits)
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, vae)
    before = path.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert path.read_bytes() == before
    loaded = VAE(load_checkpoint(path)["x_shape"], z_dim=4, hidden_dims=(32,))
    loaded.load_state_dict(load_checkpoint(path)["model"])
    assert_same_weights(weights(loaded), weights(vae))


def test_files_are_written_only_inside_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = Path("nested") / "run"
    assert main(["train", *RUN_FLAGS, "--epochs", "1", "--out", str(run_dir)]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    expected = ["config.json", "metrics.csv", "summary.json", CHECKPOINT]
    expected += ["reconstructions.png", "samples.png", "elbo.png"]
    assert written == sorted(str(run_dir / name) for name in expected)
    assert main(["sample", str(run_dir), "-n", "4", "--out", "four.png"]) == 0
    assert (tmp_path / "four.png").is_file()  # a path given is used as given

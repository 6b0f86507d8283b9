"""Watching a run: the TensorBoard event files of ``--tensorboard``, read back with TensorBoard's
own reader, against metrics.csv, the history, the evaluation and a run that did not write them."""

import csv
import importlib.util
import json
import shutil

import pytest
from helpers import metrics
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pyro_vae import ConfigError, Run, RunConfig
from pyro_vae.cli import main
from pyro_vae.runs.layout import BOARD, CHECKPOINT, CONFIG, SUMMARY

# compile "off": "auto" decides by timing, and runs compared digit for digit must not decide apart
SMALL = RunConfig(z_dim=4, hidden_dims=(32,), epochs=2, lr=3e-3, compile="off")
STEPS = 12  # an epoch of the digits' 1,438 training images in batches of 128
SIDE = 8 * (8 + 1) + 1  # eight 8x8 images to a row and 1 pixel around each; eight rows
FLOAT32 = 1e-6  # TensorBoard keeps scalars as float32


def events(run_dir, purge=True):
    """The run's event files as TensorBoard reads them (``purge``: without what a restarted
    writer hides), every value kept."""
    reader = EventAccumulator(
        str(run_dir / BOARD),
        size_guidance={"scalars": 0, "images": 0},
        purge_orphaned_data=purge,
    )
    return reader.Reload()


def scalars(reader, tag):
    return [(event.step, event.value) for event in reader.Scalars(tag)]


def test_the_board_holds_the_history_the_elbo_terms_and_pictures_and_changes_no_step(tmp_path):
    run_dir = tmp_path / "watched"
    # meanfield: the KL term in closed form, which evaluate's per-dimension KLs add up to
    config = SMALL.replace(objective="meanfield")
    Run.create(run_dir, config.replace(tensorboard=True)).train(progress=False)
    # resumed by the command line, which keeps the run's tensorboard setting
    assert main(["train", "--out", str(run_dir), "--resume", "--epochs", "3", "--quiet"]) == 0
    run = Run.open(run_dir)
    history, reader = run.state.history, events(run_dir, purge=False)
    ends = [STEPS, 2 * STEPS, 3 * STEPS]
    # each step once, appended by the resumed run after the first run's 24
    losses = scalars(reader, "train/loss")
    assert [step for step, _ in losses] == list(range(1, 3 * STEPS + 1))
    assert [loss for _, loss in losses] == pytest.approx(history.step_loss, rel=FLOAT32)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for tag, column in (("train/elbo", "train_elbo"), ("test/elbo", "test_elbo")):
        written = scalars(reader, tag)
        assert [step for step, _ in written] == ends
        expected = [float(row[column]) for row in rows]
        assert [value for _, value in written] == pytest.approx(expected, rel=FLOAT32)
    # the test ELBO's two terms by its own draws: they add up to it
    reconstruction, kl = scalars(reader, "test/reconstruction"), scalars(reader, "test/kl")
    assert [step for step, _ in kl] == ends
    for (_, r), (_, k), row in zip(reconstruction, kl, rows, strict=True):
        assert r - k == pytest.approx(float(row["test_elbo"]), abs=1e-4)
        assert float(row["test_elbo"]) < r < 0 < k
    # the last epoch's against pyro-vae evaluate's, of the same weights with the same seed
    evaluation = run.evaluate(iwae_k=0)
    assert kl[-1][1] == pytest.approx(sum(evaluation["kl_per_dim"]), rel=FLOAT32)
    units = scalars(reader, "test/active_units")
    assert units[-1] == (ends[-1], json.loads((run_dir / SUMMARY).read_text())["active_units"])
    assert units[-1][1] == evaluation["active_units"]
    for tag in ("images/reconstructions", "images/samples"):
        pictures = reader.Images(tag)
        assert [(p.step, p.width, p.height) for p in pictures] == [(e, SIDE, SIDE) for e in ends]
    # writing the board after epoch 1 drew no random number: epoch 2 is a run's that wrote none
    Run.create(tmp_path / "unwatched", config).train(progress=False)
    assert metrics(run_dir)[:2] == metrics(tmp_path / "unwatched")
    assert not (tmp_path / "unwatched" / BOARD).exists()


def test_a_resumed_run_appends_and_hides_what_a_lost_epoch_wrote(tmp_path):
    run_dir = tmp_path / "run"
    Run.create(run_dir, SMALL.replace(epochs=1)).train(progress=False)
    shutil.copy(run_dir / CHECKPOINT, tmp_path / "epoch-1.pt")
    # switched on when resumed: the history so far is written first, then the epochs as they end
    Run.open(run_dir).train(epochs=2, tensorboard=True, progress=False)
    assert RunConfig.load(run_dir / CONFIG).tensorboard
    first = scalars(events(run_dir), "train/loss")
    assert [step for step, _ in first] == list(range(1, 2 * STEPS + 1))
    assert [step for step, _ in scalars(events(run_dir), "test/kl")] == [2 * STEPS]
    # as if the process had died after writing epoch 2's figures and before its checkpoint
    shutil.copy(tmp_path / "epoch-1.pt", run_dir / CHECKPOINT)
    history = Run.open(run_dir).train(epochs=3, progress=False)
    raw, shown = events(run_dir, purge=False), events(run_dir)
    steps = [step for step, _ in scalars(raw, "train/loss")]
    assert steps == [*range(1, 2 * STEPS + 1), *range(STEPS + 1, 3 * STEPS + 1)]
    # TensorBoard shows each step once: the resumed run's epoch 2, not the lost one's
    losses = scalars(shown, "train/loss")
    assert [step for step, _ in losses] == list(range(1, 3 * STEPS + 1))
    assert [loss for _, loss in losses] == pytest.approx(history.step_loss, rel=FLOAT32)
    assert [step for step, _ in scalars(shown, "test/elbo")] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert [step for step, _ in scalars(shown, "test/kl")] == [2 * STEPS, 3 * STEPS]


def without_tensorboard(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args),
    )


def test_tensorboard_without_the_package_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    without_tensorboard(monkeypatch)
    fix = "needs the tensorboard package, which is not installed: pip install pyro-vae[tensorboard]"
    out = tmp_path / "run"
    argv = ["train", "--z-dim", "4", "--hidden-dims", "32", "--epochs", "1", "--quiet"]
    argv += ["--compile", "off", "--out", str(out)]
    assert main([*argv, "--tensorboard"]) == 2
    assert capsys.readouterr().err == f"pyro-vae: error: --tensorboard {fix}\n"
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"^tensorboard needs the tensorboard package") as error:
        Run.create(out, SMALL.replace(tensorboard=True))
    assert error.value.param == "tensorboard" and not out.exists()
    # a run trained without it is resumed with it: refused, the run left as it was
    assert main(argv) == 0
    config = (out / CONFIG).read_text()
    resume = ["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet", "--tensorboard"]
    assert main(resume) == 2
    assert capsys.readouterr().err.endswith(f"pyro-vae: error: --tensorboard {fix}\n")
    assert (out / CONFIG).read_text() == config and Run.open(out).state.epoch == 1


def test_a_watched_run_resumes_unwatched_with_no_tensorboard(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["train", "--z-dim", "4", "--hidden-dims", "32", "--epochs", "1", "--quiet"]
    assert main([*argv, "--compile", "off", "--out", str(out), "--tensorboard"]) == 0
    without_tensorboard(monkeypatch)  # resumed on a machine without the package
    resume = ["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]
    assert main(resume) == 2  # the run keeps its setting
    assert "pip install pyro-vae[tensorboard]" in capsys.readouterr().err
    assert main([*resume, "--no-tensorboard"]) == 0
    run = Run.open(out)
    assert run.state.epoch == 2 and not run.config.tensorboard

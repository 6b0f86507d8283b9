import json
import os

import pytest
import torch
from helpers import binary_batch

from pyro_vae import PyroVAEError, Run, RunConfig, train
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.runs.folder import RunExists
from pyro_vae.runs.layout import CHECKPOINT, CONFIG, PREVIOUS
from pyro_vae.training.state import TrainState

CONFIG_OF_SMALL_VAE = RunConfig(z_dim=4, hidden_dims=(32,))  # the conftest's small_vae


@pytest.fixture
def trained(digits, small_vae, tmp_path):
    saved = {}

    def keep(state):
        saved["state"] = state
        saved["rng"] = torch.get_rng_state()
        save_checkpoint(tmp_path / CHECKPOINT, small_vae, state)

    (tmp_path / CONFIG).write_text(json.dumps(CONFIG_OF_SMALL_VAE.to_dict()))
    train(small_vae, digits, epochs=2, device="cpu", progress=False, checkpoint=keep, compile="off")
    return small_vae, saved, tmp_path


def test_round_trip_gives_identical_outputs(trained):
    vae, saved, run_dir = trained
    optimizer = saved["state"].optimizer
    run = Run.open(run_dir)
    loaded, state = run.vae, run.state
    x = binary_batch(16)
    assert torch.equal(loaded.reconstruct(x), vae.reconstruct(x))
    for a, b in zip(loaded.encode(x), vae.encode(x), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    samples = loaded.sample(8)
    torch.manual_seed(0)
    assert torch.equal(samples, vae.sample(8))
    assert state.epoch == 2 and state.history.epoch == [1, 2]
    assert loaded.config == vae.config
    restored = torch.optim.Adam(loaded.parameters())
    restored.load_state_dict(state.optimizer)
    assert restored.state_dict()["state"][0]["step"] == optimizer["state"][0]["step"] == 24
    assert torch.equal(state.rng["ranks"][0]["torch"], saved["rng"])


def test_a_failed_write_leaves_the_previous_checkpoint(trained, monkeypatch):
    vae, saved, run_dir = trained
    path = run_dir / CHECKPOINT
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, vae, saved["state"], previous=run_dir / PREVIOUS)
    assert path.read_bytes() == before  # and not yet moved to the previous one's place
    assert sorted(os.listdir(run_dir)) == [CHECKPOINT, CONFIG]  # no temporary file left behind
    assert load_checkpoint(path)["epoch"] == 2


def test_a_crash_between_the_renames_leaves_a_checkpoint_to_go_back_to(
    trained, monkeypatch, capsys
):
    vae, _, run_dir = trained
    path, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    before = path.read_bytes()
    replace, renamed = os.replace, []

    def killed_after_one_rename(src, dst):
        if renamed:
            raise OSError("killed")
        renamed.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_one_rename)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(path, vae, TrainState(), previous=previous)
    monkeypatch.undo()
    assert sorted(os.listdir(run_dir)) == [PREVIOUS, CONFIG]  # no temporary file left behind
    assert previous.read_bytes() == before
    capsys.readouterr()
    assert Run.open(run_dir).state.epoch == 2
    assert capsys.readouterr().err == (
        f"pyro-vae: no checkpoint at {path}; going back to {previous}, written after epoch 2\n"
    )
    with pytest.raises(RunExists):  # it still holds a run
        Run.create(run_dir, CONFIG_OF_SMALL_VAE)
    Run.create(run_dir, CONFIG_OF_SMALL_VAE.replace(dataset="digits"), overwrite=True)
    assert not previous.exists()  # never gone back to from the new run


class WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": 2, "model": WritesMarker(marker)}, tmp_path / CHECKPOINT)
    assert not marker.exists()
    with pytest.raises(PyroVAEError, match="refusing to load it, since unpickling them could"):
        load_checkpoint(tmp_path / CHECKPOINT)
    assert not marker.exists()


def test_bad_checkpoints_are_one_clear_error(trained, tmp_path_factory):
    vae, _, run_dir = trained
    path = run_dir / CHECKPOINT
    with pytest.raises(PyroVAEError, match="no run folder at"):
        Run.open(run_dir / "missing")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(PyroVAEError, match="has no config.json; was it written by pyro-vae"):
        Run.open(empty)
    (empty / CONFIG).write_text(json.dumps(CONFIG_OF_SMALL_VAE.to_dict()))
    with pytest.raises(PyroVAEError, match="no checkpoint at"):
        Run.open(empty)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(PyroVAEError, match="not a readable checkpoint"):
        Run.open(run_dir)
    other = tmp_path_factory.mktemp("other")
    (other / CONFIG).write_text(json.dumps(CONFIG_OF_SMALL_VAE.replace(z_dim=5).to_dict()))
    save_checkpoint(other / CHECKPOINT, vae)
    with pytest.raises(PyroVAEError, match="do not fit the model of its config"):
        Run.open(other)
    torch.save({"weights": torch.zeros(2)}, other / CHECKPOINT)
    with pytest.raises(PyroVAEError, match="not a pyro-vae checkpoint"):
        Run.open(other)
    (other / CONFIG).write_text("{")
    with pytest.raises(PyroVAEError, match="config.json is not valid JSON"):
        Run.open(other)

import json
import os

import pytest
import torch
from conftest import binary_batch

from pyro_vae import PyroVAEError, load_run, save_checkpoint, train
from pyro_vae.checkpoint import CHECKPOINT_NAME, load_checkpoint


def config_of(vae):
    return {"model": vae.config, "train": {"seed": 0}}


@pytest.fixture
def trained(digits, small_vae, tmp_path):
    saved = {}

    def keep(state):
        saved["state"] = state
        saved["rng"] = torch.get_rng_state()
        save_checkpoint(tmp_path / CHECKPOINT_NAME, small_vae, state, config=config_of(small_vae))

    train(small_vae, digits, epochs=2, device="cpu", progress=False, checkpoint=keep)
    return small_vae, saved, tmp_path


def test_round_trip_gives_identical_outputs(trained):
    vae, saved, run_dir = trained
    optimizer = saved["state"].optimizer
    loaded, state = load_run(run_dir)
    x = binary_batch(16)
    assert torch.equal(loaded.reconstruct(x), vae.reconstruct(x))
    for a, b in zip(loaded.encode(x), vae.encode(x), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    samples = loaded.sample(8)
    torch.manual_seed(0)
    assert torch.equal(samples, vae.sample(8))
    assert state["epoch"] == 2 and state["history"]["epoch"] == [1, 2]
    assert loaded.config == vae.config
    restored = torch.optim.Adam(loaded.parameters())
    restored.load_state_dict(state["optimizer"])
    assert restored.state_dict()["state"][0]["step"] == optimizer["state"][0]["step"] == 24
    assert torch.equal(state["rng"]["ranks"][0]["torch"], saved["rng"])


def test_a_failed_write_leaves_the_previous_checkpoint(trained, monkeypatch):
    vae, saved, run_dir = trained
    path = run_dir / CHECKPOINT_NAME
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, vae, saved["state"], config=config_of(vae))
    assert path.read_bytes() == before
    assert os.listdir(run_dir) == [CHECKPOINT_NAME]  # no temporary file left behind
    assert load_checkpoint(path)["epoch"] == 2


class WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "model": WritesMarker(marker)}, tmp_path / CHECKPOINT_NAME)
    assert not marker.exists()
    with pytest.raises(PyroVAEError, match="refusing to load it"):
        load_run(tmp_path)
    assert not marker.exists()


def test_bad_checkpoints_are_one_clear_error(trained, tmp_path_factory):
    vae, _, run_dir = trained
    path = run_dir / CHECKPOINT_NAME
    with pytest.raises(PyroVAEError, match="no run folder at"):
        load_run(run_dir / "missing")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(PyroVAEError, match="no checkpoint at"):
        load_run(empty)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(PyroVAEError, match="not a readable checkpoint"):
        load_run(run_dir)
    other = tmp_path_factory.mktemp("other")
    config = config_of(vae)
    config["model"]["z_dim"] = 5
    save_checkpoint(other / CHECKPOINT_NAME, vae, config=config)
    with pytest.raises(PyroVAEError, match="do not fit the model of its config"):
        load_run(other)
    torch.save({"weights": torch.zeros(2)}, other / CHECKPOINT_NAME)
    with pytest.raises(PyroVAEError, match="not a pyro-vae checkpoint"):
        load_run(other)
    (other / "x.json").write_text("{")
    with pytest.raises(PyroVAEError, match="not valid JSON"):
        from pyro_vae.checkpoint import read_json

        read_json(other / "x.json")
    assert json.loads(json.dumps(vae.config)) == vae.config

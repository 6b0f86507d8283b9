"""The run folder from Python: the typed config, creating, training, resuming and evaluating a run
without the command line, and the command line reading what Python wrote (and back)."""

import json

import pytest
from helpers import metrics

from pyro_vae import ConfigError, Run, RunConfig
from pyro_vae.cli import main
from pyro_vae.config import FIELDS, SECTIONS
from pyro_vae.runs.folder import RunExists
from pyro_vae.runs.layout import CONFIG, SUMMARY

# compile "off": "auto" decides by timing, and two runs on a busy machine may decide apart
SMALL = RunConfig(z_dim=4, hidden_dims=(32,), epochs=2, lr=3e-3, compile="off")
# SMALL's config.json as the runs written before the config had sections hold it: flat
SMALL_BEFORE_SECTIONS = (
    '{"dataset": "digits", "data_dir": null, "data_path": null, "image_size": null, '
    '"channels": null, "model": "vae", "z_dim": 4, "hidden_dims": [32], "encoder": "mlp", '
    '"prior": "standard-normal", "likelihood": "bernoulli", "guide": "diagonal", '
    '"prior_options": {}, "likelihood_options": {}, "guide_options": {}, "aux_weight": 50.0, '
    '"epochs": 2, "batch_size": 128, "lr": 0.003, "seed": 0, "objective": "trace", '
    '"num_particles": 1, "beta": 1.0, "kl_warmup": 0, "labeled": null, "binarization": '
    '"dynamic", "device": "auto", "compile": "off", "stream": false, "workers": 2, '
    '"tensorboard": false}'
)


def test_python_and_the_command_line_share_run_folders(tmp_path):
    python_run = tmp_path / "python"
    history = Run.create(python_run, SMALL).train(progress=False)
    assert history.epoch == [1, 2] and len(metrics(python_run)) == 2
    assert RunConfig.load(python_run / CONFIG) == SMALL
    # the command line goes on with a run Python wrote ...
    argv = ["train", "--out", str(python_run), "--resume", "--epochs", "4", "--quiet"]
    assert main(argv) == 0
    assert RunConfig.load(python_run / CONFIG) == SMALL.replace(epochs=4)
    # ... and its config, read back, trains the same four epochs in one go, to the last digit
    cli_run = tmp_path / "cli"
    argv = ["train", "--config", str(python_run / CONFIG), "--out", str(cli_run), "--quiet"]
    assert main(argv) == 0
    assert metrics(cli_run) == metrics(python_run)
    # Python opens what the command line wrote, and evaluates it as `pyro-vae evaluate` would
    run = Run.open(cli_run)
    assert run.config == SMALL.replace(epochs=4) and run.state.epoch == 4
    result = run.evaluate(iwae_k=10)
    assert result["test_elbo"] == json.loads((cli_run / SUMMARY).read_text())["test_elbo"]
    assert json.loads((cli_run / "evaluation.json").read_text()) == result


def test_a_run_trains_on_from_python_as_if_never_stopped(tmp_path):
    straight = Run.create(tmp_path / "straight", SMALL.replace(epochs=3))
    straight.train(progress=False)
    Run.create(tmp_path / "parts", SMALL.replace(epochs=1)).train(progress=False)
    Run.open(tmp_path / "parts").train(epochs=3, progress=False)
    assert metrics(tmp_path / "parts") == metrics(tmp_path / "straight")
    with pytest.raises(ConfigError, match="has finished 3 of 3 epochs; ask for more epochs"):
        Run.open(tmp_path / "parts").train(progress=False)
    with pytest.raises(RunExists, match="already holds a trained run"):
        Run.create(tmp_path / "parts", SMALL)
    Run.create(tmp_path / "parts", SMALL, overwrite=True).train(progress=False)
    assert len(metrics(tmp_path / "parts")) == 2


def test_the_config_checks_every_field_and_round_trips(tmp_path):
    config = RunConfig(prior="mog", prior_options={"components": 3}, hidden_dims=[64, 32])
    assert config.model.hidden_dims == (64, 32)  # a list from a file becomes the tuple it is
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    toml = tmp_path / "run.toml"
    toml.write_text('prior = "mog"\nhidden_dims = [64, 32]\n[prior_options]\ncomponents = 3\n')
    assert RunConfig.load(toml) == config
    assert [name for name, _, _ in config.changes(config.replace(lr=0.1, z_dim=3))] == [
        "z_dim",
        "lr",
    ]
    with pytest.raises(ConfigError, match="has unknown setting"):
        RunConfig.from_dict({"zdim": 3})
    for name in [*FIELDS, *SECTIONS]:  # no setting or section takes an object of another kind
        with pytest.raises(ConfigError) as error:
            RunConfig(**{name: object()})
        assert error.value.param == name


def test_a_run_written_before_the_sections_opens_and_trains_on(tmp_path):
    run_dir = tmp_path / "old"
    Run.create(run_dir, SMALL).train(progress=False)
    (run_dir / CONFIG).write_text(SMALL_BEFORE_SECTIONS)
    assert Run.open(run_dir).config == SMALL
    run = Run.resume(run_dir, {"epochs": 3})
    assert run.train(progress=False).epoch == [1, 2, 3]
    assert json.loads((run_dir / CONFIG).read_text()) == SMALL.replace(epochs=3).to_dict()
    assert "model" in json.loads((run_dir / CONFIG).read_text())  # rewritten in sections


def test_resuming_changes_only_what_a_resumed_run_may(tmp_path):
    Run.create(tmp_path / "run", SMALL.replace(epochs=1)).train(progress=False)
    with pytest.raises(ConfigError) as error:
        Run.resume(tmp_path / "run", {"epochs": 2, "z_dim": 5})
    assert error.value.param == "resume"
    assert "(z_dim: 4 -> 5); only epochs, lr, device, compile, stream, workers" in str(error.value)
    with pytest.raises(ConfigError, match="prior_components does not apply to the prior"):
        Run.resume(tmp_path / "run", {"prior_components": 3})
    run = Run.resume(tmp_path / "run", {"epochs": 2, "lr": 0.01})
    assert run.config == SMALL.replace(lr=0.01) and RunConfig.load(tmp_path / "run" / CONFIG) == (
        SMALL.replace(epochs=1)
    )  # written when it trains

"""The run configuration in sections (issue 26): the settings given flat or by section, config
files old and new, the flags made from the fields, and a config module that does not load the
trainer."""

import argparse
import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae.cli import build_parser, main
from pyro_vae.cli.flags import given
from pyro_vae.config import (
    FIELDS,
    PART_OPTIONS,
    SECTIONS,
    SETTING,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    RunConfig,
    TrainingConfig,
)
from pyro_vae.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
# A config.json of a run written before the config had sections (issue 26): every setting flat.
BEFORE_SECTIONS = {
    "dataset": "npz", "data_dir": None, "data_path": "x.npz", "image_size": None,
    "channels": None, "model": "m2", "z_dim": 16, "hidden_dims": [400], "encoder": "mlp",
    "prior": "mog", "likelihood": "gaussian", "guide": "diagonal",
    "prior_options": {"components": 3}, "likelihood_options": {}, "guide_options": {},
    "aux_weight": 10.0, "epochs": 3, "batch_size": 128, "lr": 0.001, "seed": 0,
    "objective": "manual", "num_particles": 1, "beta": 1.0, "kl_warmup": 2, "labeled": 100,
    "binarization": "none", "device": "auto", "compile": "auto", "stream": True, "workers": 0,
    "tensorboard": True,
}  # fmt: skip
IN_SECTIONS = RunConfig(
    data=DataConfig(dataset="npz", data_path="x.npz"),
    model=ModelConfig(
        model="m2", prior="mog", prior_options={"components": 3}, likelihood="gaussian",
        aux_weight=10.0,
    ),
    objective=ObjectiveConfig(objective="manual", kl_warmup=2),
    training=TrainingConfig(epochs=3, labeled=100, binarization="none", stream=True, workers=0),
    tensorboard=True,
)  # fmt: skip


def test_settings_given_by_name_go_to_their_sections():
    config = RunConfig(dataset="digits", z_dim=8, epochs=50, lr=3e-3)
    assert config == RunConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(z_dim=8),
        training=TrainingConfig(epochs=50, lr=3e-3),
    )
    assert (config.model.z_dim, config.training.epochs, config.training.lr) == (8, 50, 3e-3)
    assert config.replace(epochs=60).training == TrainingConfig(epochs=60, lr=3e-3)
    assert config.replace(training=TrainingConfig(seed=3)).training == TrainingConfig(seed=3)
    # model and objective name a section and a setting in it: a string is the setting
    m2 = RunConfig(model="m2", objective="manual", labeled=10)
    assert (m2.model.model, m2.objective.objective, m2.training.labeled) == ("m2", "manual", 10)
    with pytest.raises(TypeError, match="no setting"):
        RunConfig(zdim=3)


def test_a_flat_config_json_of_an_older_run_is_the_same_config_in_sections(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(BEFORE_SECTIONS))
    assert RunConfig.load(old) == IN_SECTIONS
    new = tmp_path / "new.json"
    new.write_text(json.dumps(IN_SECTIONS.to_dict()))
    assert list(IN_SECTIONS.to_dict()) == [*SECTIONS, "tensorboard"]
    assert RunConfig.load(new) == IN_SECTIONS
    assert IN_SECTIONS.settings() == RunConfig.load(old).settings()
    added = {"clip_norm": None, "program": None, "program_options": {}, "program_sha256": None}
    assert json.loads(json.dumps(IN_SECTIONS.settings())) == BEFORE_SECTIONS | added


def test_a_config_file_may_name_settings_in_tables_or_not_but_once(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('z_dim = 3\n[training]\nepochs = 5\n[model.prior_options]\ncomponents = 2\n')
    config = RunConfig.load(toml)
    assert (config.model.z_dim, config.training.epochs) == (3, 5)
    assert config.model.prior_options == {"components": 2}
    with pytest.raises(ConfigError, match="unknown setting.s. epochs in its data table"):
        RunConfig.from_dict({"data": {"epochs": 3}})
    with pytest.raises(ConfigError, match="sets z_dim in its model table and out"):
        RunConfig.from_dict({"z_dim": 3, "model": {"z_dim": 4}})


def flag_help(text):
    """A setting's help as its flag says it: the settings it names in braces as flags."""
    about = {name: FIELDS[name].metadata[SETTING] for name in FIELDS}
    return re.sub(
        r"\{(\w+)\}", lambda m: "--" + (about[m[1]].flag or m[1]).replace("_", "-"), text
    )


def test_every_setting_has_one_flag_made_from_its_field():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    fields = [f for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    fields += [f for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS]
    assert [f.name for f in fields] == list(FIELDS) and "clip_norm" in FIELDS
    settings = {a.dest for a in train._actions if a.dest in FIELDS or a.dest in PART_OPTIONS}
    flagged = {f.name for f in fields if f.metadata[SETTING].parse is not None}
    assert settings == flagged | set(PART_OPTIONS)  # a flag for each field, none for another
    for f in fields:
        about = f.metadata[SETTING]
        actions = [a for a in train._actions if a.dest == f.name]
        if about.parse is None:  # the parts' option tables: set by PART_OPTIONS' flags
            assert actions == [], f.name
            continue
        (action,) = actions
        assert action.option_strings[0] == "--" + (about.flag or f.name).replace("_", "-")
        assert action.help.startswith(flag_help(about.help)), f.name
        if about.choices is not None:
            assert action.choices == list(about.choices), f.name
        elif about.parse is bool:
            assert isinstance(action, argparse.BooleanOptionalAction), f.name
        else:
            assert action.choices is None and action.type is not None, f.name


def test_clip_norm_is_a_checked_setting_with_a_flag(capsys):
    args = build_parser().parse_args(["train", "--clip-norm", "1.5"])
    assert RunConfig().replace(**given(args)).training.clip_norm == 1.5
    assert RunConfig().training.clip_norm is None  # off by default
    with pytest.raises(ConfigError, match="clip_norm must be a positive finite number, got 0"):
        TrainingConfig(clip_norm=0)
    with pytest.raises(SystemExit):
        main(["train", "--clip-norm", "0"])
    err = capsys.readouterr().err
    assert "argument --clip-norm: must be a positive finite number, got 0" in err


def pyro_vae_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """The package's modules that importing ``module`` imports, by its source's import statements
    followed through the package, the packages above each module included (but the package's
    own ``__init__``, whose imports are its exports, not the module's)."""
    seen = set() if seen is None else seen
    parts = module.split(".")
    path = ROOT.joinpath(*parts)
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.walk(ast.parse(file.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            name_parts = name.split(".")
            for end in range(2, len(name_parts) + 1):  # pyro_vae.a, then pyro_vae.a.b
                found = ".".join(name_parts[:end])
                target = ROOT.joinpath(*name_parts[:end])
                exists = target.is_dir() or target.with_suffix(".py").is_file()
                if name_parts[0] == "pyro_vae" and exists and found not in seen:
                    seen.add(found)
                    pyro_vae_imports(found, seen)
    return seen


def test_the_config_does_not_import_the_trainer():
    imported = pyro_vae_imports("pyro_vae.config")
    assert {"pyro_vae.infer.elbo", "pyro_vae.models", "pyro_vae.validation"} <= imported
    assert sorted(m for m in imported if m.split(".")[:2] == ["pyro_vae", "training"]) == []
    # and in a fresh process, once the package's __init__ no longer imports the trainer itself
    code = (
        "import sys, pyro_vae; lazy = 'pyro_vae.training.trainer' not in sys.modules; "
        "import pyro_vae.config; print(lazy, 'pyro_vae.training.trainer' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lazy, loaded = out.stdout.split()
    assert loaded == "False" or lazy == "False"


def test_the_readmes_toml_config_file_is_read_as_it_says(tmp_path):
    (toml,) = re.findall(r"^```toml\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    (tmp_path / "runs.toml").write_text(toml)
    config = RunConfig.load(tmp_path / "runs.toml")
    assert config.model == ModelConfig(
        z_dim=8, hidden_dims=(512, 256), prior="mog", prior_options={"components": 5}
    )
    assert config.training == TrainingConfig(lr=0.003)

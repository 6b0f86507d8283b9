"""The swappable parts as a user meets them: by name from the CLI and Python, with options,
every combination training, the comparison script and a user-defined prior."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from helpers import DIGITS_OPTIONS

from pyro_vae import VAE, ConfigError, Run, RunConfig, train
from pyro_vae.analysis.evaluation import active_units
from pyro_vae.cli import build_parser, main
from pyro_vae.cli.flags import given
from pyro_vae.models import MODELS
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.priors import PRIORS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_list_prints_every_part_with_its_description(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for registry in (MODELS, PRIORS, LIKELIHOODS, GUIDES):
        for name, cls in registry.items():
            assert f"  {name} " in out and cls.description in out


def test_train_help_lists_every_name(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in [*MODELS, *PRIORS, *LIKELIHOODS, *GUIDES]:
        assert name in help_text


def options_of(argv):
    config = RunConfig().replace(**given(build_parser().parse_args(["train", *argv])))
    return {
        name: getattr(config.model, name)
        for name in ("prior_options", "likelihood_options", "guide_options")
    }


def test_option_flags_reach_the_parts_that_take_them():
    assert options_of(["--prior", "mog", "--prior-components", "3"])["prior_options"] == {
        "components": 3
    }
    both = options_of(["--prior", "flow", "--guide", "iaf", "--flow-steps", "4"])
    assert both["prior_options"] == both["guide_options"] == {"flow_steps": 4}
    guide_only = options_of(["--guide", "iaf", "--flow-steps", "4"])
    assert guide_only["prior_options"] == {} and guide_only["guide_options"] == {"flow_steps": 4}
    assert options_of(["--likelihood", "gaussian", "--likelihood-scale", "0.2"])[
        "likelihood_options"
    ] == {"scale": 0.2}
    with pytest.raises(
        ConfigError,
        match="flow_steps does not apply to the prior 'standard-normal' and the guide 'diagonal'",
    ):
        options_of(["--flow-steps", "4"])
    with pytest.raises(ConfigError, match="prior_df does not apply to the prior 'mog'"):
        options_of(["--prior", "mog", "--prior-df", "4"])


def test_unknown_options_in_python_are_clear_errors():
    with pytest.raises(
        ConfigError, match="the 'standard-normal' prior has no option 'components'; it takes none"
    ):
        VAE((1, 8, 8), prior_options={"components": 3})
    with pytest.raises(
        ConfigError, match="the 'mog' prior has no option 'k'; it takes: components"
    ):
        VAE((1, 8, 8), prior="mog", prior_options={"k": 3})


@pytest.mark.parametrize(
    "prior,likelihood,guide", list(itertools.product(PRIORS, LIKELIHOODS, GUIDES))
)
def test_every_combination_trains_on_digits(digits, prior, likelihood, guide):
    pyro.set_rng_seed(0)
    vae = VAE(
        digits.x_shape,
        z_dim=2,
        hidden_dims=(16,),
        prior=prior,
        likelihood=likelihood,
        guide=guide,
        likelihood_options=DIGITS_OPTIONS.get(likelihood),
    )
    history = train(vae, digits, epochs=1, batch_size=256, device="cpu", progress=False,
        compile="off")
    assert all(map(torch.isfinite, torch.tensor(history.step_loss)))
    assert torch.isfinite(torch.tensor(history.test_elbo[0]))


@pytest.mark.parametrize(
    "kind,names", [("prior", PRIORS), ("likelihood", LIKELIHOODS), ("guide", GUIDES)]
)
def test_every_part_trains_with_the_conv_networks(digits, kind, names):
    for name in names:
        pyro.set_rng_seed(0)
        vae = VAE(
            digits.x_shape,
            z_dim=2,
            hidden_dims=(8, 8),
            encoder="conv",
            **{kind: name, f"{kind}_options": DIGITS_OPTIONS.get(name)},
        )
        history = train(vae, digits, epochs=1, batch_size=256, device="cpu", progress=False,
            compile="off")
        assert torch.isfinite(torch.tensor(history.test_elbo[0])), name


def test_a_run_with_options_reloads_identically(tmp_path):
    out = tmp_path / "mog"
    argv = [
        "train",
        "--prior",
        "mog",
        "--prior-components",
        "3",
        "--guide",
        "iaf",
        "--flow-steps",
        "1",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["prior_options"] == {"components": 3}
    assert config["guide_options"] == {"flow_steps": 1}
    vae = Run.open(out).vae
    assert main(["evaluate", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "evaluation.json").read_text())["test_elbo"] == summary["test_elbo"]
    assert sum(p.numel() for p in vae.prior.parameters()) > 0


def test_active_units_count_the_codes_that_vary(digits):
    pyro.set_rng_seed(0)
    vae = VAE(digits.x_shape, z_dim=5, hidden_dims=(32,))
    last = vae.encoder.net[-1]
    with torch.no_grad():  # the first two means ignore the input: those units are dead
        last.weight[:2] = 0
        last.bias[:2] = 0
        last.weight[2:5] *= 10
    units, activity = active_units(vae, digits.x_test)
    assert activity[:2].tolist() == [0.0, 0.0]
    assert (activity[2:] > 0.01).all()
    assert units == 3


def run_example(*argv):
    result = subprocess.run(
        [sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compare_script_writes_a_table_and_pictures(tmp_path):
    run_example(
        EXAMPLES / "compare_priors.py",
        "--vary",
        "prior",
        "--only",
        "standard-normal",
        "mog",
        "--epochs",
        "1",
        "--iwae-k",
        "5",
        "--out",
        tmp_path,
        "--quiet",
    )
    table = (tmp_path / "digits-prior.md").read_text()
    assert "| standard-normal |" in table and "| mog |" in table
    assert (tmp_path / "digits-prior-mog.png").stat().st_size > 1000


def test_custom_prior_example_trains_and_checks(tmp_path):
    out = run_example(EXAMPLES / "custom_prior.py", "--epochs", "1")
    assert "test ELBO with the Cauchy prior" in out and "all equalities hold" in out


@pytest.mark.parametrize(
    "flag,name",
    [("--prior", n) for n in PRIORS]
    + [("--likelihood", n) for n in LIKELIHOODS]
    + [("--guide", n) for n in GUIDES],
)
def test_every_name_trains_from_the_cli(tmp_path, flag, name):
    extra = ["--likelihood-bins", "17"] if name == "discretized-logistic" else []
    argv = [
        "train",
        flag,
        name,
        *extra,
        "--epochs",
        "1",
        "--z-dim",
        "2",
        "--hidden-dims",
        "16",
        "--batch-size",
        "512",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert config[flag[2:]] == name

"""Your own Pyro program with the library's tooling (pyro_vae.models.user): a VAE written from
scratch as Pyro's tutorial writes it (examples/own_program.py's TutorialVAE) trains like plain
SVI, compiles, resumes, evaluates from its own traces, and bad programs are one line each."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import metrics
from pyro import poutine
from torch import nn

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.data.sources import eval_inputs
from pyro_vae.errors import ConfigError
from pyro_vae.models.user import LatentScale, as_program
from pyro_vae.runs.folder import Run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_program.py"
PROGRAM = f"{EXAMPLE}:TutorialVAE"
SMALL = '{"z_dim": 4, "hidden": 32}'
RUN_FLAGS = ["--dataset", "digits", "--program", PROGRAM, "--program-options", SMALL]
RUN_FLAGS += ["--compile", "off", "--quiet", "--batch-size", "256"]


@pytest.fixture(scope="module")
def own():
    spec = importlib.util.spec_from_file_location("own_program", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import leaves it: where its classes are found
    spec.loader.exec_module(module)
    return module


def test_compile_off_takes_the_very_steps_of_plain_svi(digits, own):
    settings = {"batch_size": 128, "lr": 1e-3, "seed": 4}
    plain, plain_vae = own.plain_svi_losses(digits, 2, **settings)
    history, vae = own.pyro_vae_run(digits, 2, compile="off", **settings)
    assert history.step_loss == plain and len(plain) == 24  # every step's loss, bit for bit
    for a, b in zip(vae.parameters(), plain_vae.parameters(), strict=True):
        assert torch.equal(a, b)


def test_compiled_steps_equal_plain_svi_to_float32_rounding(digits, own):
    settings = {"batch_size": 128, "lr": 1e-3, "seed": 4}
    plain, _ = own.plain_svi_losses(digits, 1, **settings)
    history, _ = own.pyro_vae_run(digits, 1, compile="on", **settings)
    assert history.compile.startswith("compiled the training step")
    assert history.step_loss == pytest.approx(plain, rel=1e-5)


def test_a_program_run_resumes_exactly_and_its_file_is_recorded(tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", *RUN_FLAGS, "--epochs", "4", "--out", str(whole)]) == 0
    assert main(["train", *RUN_FLAGS, "--epochs", "2", "--out", str(part)]) == 0
    assert main(["train", "--out", str(part), "--resume", "--epochs", "4"]) == 0
    assert metrics(part) == metrics(whole)
    a, b = Run.open(part).vae.state_dict(), Run.open(whole).vae.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = json.loads((part / "config.json").read_text())["model"]
    assert model["program"] == PROGRAM and model["program_options"] == json.loads(SMALL)
    assert model["program_sha256"] == __import__("hashlib").sha256(EXAMPLE.read_bytes()).hexdigest()
    capsys.readouterr()


def test_a_changed_or_missing_program_file_is_refused_in_one_line(tmp_path, capsys):
    program = tmp_path / "mine.py"
    program.write_text(EXAMPLE.read_text())
    run_dir = tmp_path / "run"
    flags = [*RUN_FLAGS[:2], "--program", f"{program}:TutorialVAE", *RUN_FLAGS[4:]]
    assert main(["train", *flags, "--epochs", "2", "--out", str(run_dir)]) == 0  # 2 checkpoints
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    capsys.readouterr()
    program.write_text(EXAMPLE.read_text() + "\n# changed\n")
    for command in (["evaluate", str(run_dir)], ["train", "--out", str(run_dir), "--resume",
                                                   "--epochs", "3"]):  # fmt: skip
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err == (
            f"pyro-vae: error: program file '{program}' has changed since the run was made "
            "(its SHA-256 differs): its weights are for the old code\n"
        )
    program.unlink()
    assert main(["evaluate", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_the_iwae_estimate_is_the_log_mean_exp_of_pyros_trace_log_weights(digits, own):
    pyro.set_rng_seed(0)
    vae = own.TutorialVAE(digits.x_shape, z_dim=3, hidden=32)
    pyro_vae.train(vae, digits, epochs=3, progress=False, compile="off")
    k, seed = 50, 7
    result = pyro_vae.evaluate(vae, digits, iwae_k=k, seed=seed, progress=False)
    # independently: Pyro's own traces with k particles and their log densities, by Pyro
    x = eval_inputs(as_program(vae, digits.x_shape).likelihood, digits.x_test)
    particles = pyro.plate("particles", k, dim=-2)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        guide = poutine.trace(particles(vae.guide)).get_trace(x)
        model = poutine.trace(poutine.replay(particles(vae.model), trace=guide)).get_trace(x)
    model.compute_log_prob()
    guide.compute_log_prob()
    log_w = sum(site["log_prob"] for site in model.nodes.values() if site["type"] == "sample"
                and site["name"] != "data")  # fmt: skip
    log_w = log_w - guide.nodes["latent"]["log_prob"]
    expected = (torch.logsumexp(log_w, dim=0) - math.log(k)).double().mean()
    assert result["iwae_log_likelihood"] == pytest.approx(float(expected), rel=1e-6)
    assert result["iwae_log_likelihood"] > result["test_elbo"]  # a tighter bound than the ELBO
    assert result["active_units_by_site"].keys() == {"latent"}


def test_a_vae_subclass_that_rewrites_its_model_is_scored_from_its_own_program(digits):
    # the user: the model's prior is N(0, 2^2) now, which the VAE's parts know nothing of
    class WidePrior(pyro_vae.VAE):
        def model(self, x, kl_weight=1.0):
            x = self.inputs(x)
            with pyro.plate("data", x.shape[0]):
                with poutine.scale(scale=kl_weight):
                    loc = x.new_zeros(x.shape[0], self.z_dim)
                    z = pyro.sample("z", dist.Normal(loc, 2.0).to_event(1))
                pyro.sample("x", self.likelihood_dist(z), obs=x)

    pyro.set_rng_seed(0)
    vae = WidePrior(digits.x_shape, z_dim=3, hidden_dims=(32,))
    assert "manual" not in vae.objectives  # the hand-written twin is of the VAE's own model
    pyro_vae.train(vae, digits, epochs=3, progress=False, compile="off")
    result = pyro_vae.evaluate(vae, digits, iwae_k=50, progress=False)
    assert result["iwae_log_likelihood"] > result["test_elbo"]
    x = eval_inputs(vae.likelihood, digits.x_test)
    q = vae.posterior_dist(x)  # KL(q || N(0, 4)) per dimension, by hand, in closed form
    var = q.base_dist.scale**2
    kl = (torch.log(2.0 / q.base_dist.scale) + (var + q.base_dist.loc**2) / 8 - 0.5).mean(0)
    assert result["kl_per_dim"] == pytest.approx(kl.tolist(), rel=1e-4)


class NoGuide(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(64))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(logits=self.w).to_event(1), obs=x.reshape(-1, 64))


class Latent(NoGuide):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))
            logits = self.w + z.sum(-1, keepdim=True)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(-1, 64))


class GuideMissesZ(Latent):
    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("u", dist.Normal(self.w[:2], 1.0).to_event(1))


class NoDataPlate(Latent):
    def model(self, x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(2))
        obs = x.reshape(-1, 64)
        logits = (self.w + z.sum()).expand(obs.shape)
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(2), obs=obs)

    def guide(self, x):
        pyro.sample("z", dist.Normal(self.w[:2], 1.0).expand([x.shape[0], 2]).to_event(2))


class Broken(Latent):
    def guide(self, x):  # Pyro's shape error: several lines, of which the first is said
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.w[:2], 1.0).expand([x.shape[0], 2]).to_event(3))


@pytest.mark.parametrize(
    "program, message",
    [
        (NoGuide(), "program 'NoGuide' has no method 'guide'"),
        (GuideMissesZ(), "the guide of program 'GuideMissesZ' has no site 'z'"),
        (NoDataPlate(), "site 'x' of program 'NoDataPlate' is not in a data plate"),
        (Broken(), "program 'Broken' failed on a batch of shape (3, 1, 8, 8): ValueError: "),
    ],
)
def test_a_program_pyro_vae_cannot_take_is_refused_in_one_line(digits, program, message):
    with pytest.raises(ConfigError) as error:
        pyro_vae.train(program, digits, epochs=1, progress=False)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--program", "nowhere.py:A"], "program file '"),
        (["--program", f"{EXAMPLE}:Nope"], "has no class 'Nope'"),
        (["--program", PROGRAM, "--program-options", "{z"], "expected a JSON object"),
        (["--program", PROGRAM, "--program-options", '{"width": 3}'], "does not fit program"),
        (["--program", PROGRAM, "--objective", "iwae-dreg"], "'iwae-dreg' is not one of"),
        (
            ["--model", "hvae", "--z-dim", "8"],
            "--z-dim is for --model 'vae', 'cvae' or 'm2', not 'hvae'",
        ),
    ],
)
def test_bad_program_input_is_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    try:
        code = main(["train", "--dataset", "digits", *flags, "--out", str(out)])
    except SystemExit as stopped:  # argparse's own refusals exit
        code = stopped.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


BARE = """
import pyro, pyro.distributions as dist, torch
from torch import nn


class Bare(nn.Module):  # a model and a guide, and nothing to draw pictures with
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(64))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))
            logits = self.w + z.sum(-1, keepdim=True)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(-1, 64))

    def guide(self, x):
        pyro.module("bare", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.w[:2], 1.0).to_event(1))
"""


def test_pictures_a_program_cannot_draw_are_skipped_with_one_line(tmp_path, capsys):
    (tmp_path / "bare.py").write_text(BARE)
    run_dir = tmp_path / "run"
    flags = ["--dataset", "digits", "--program", f"{tmp_path / 'bare.py'}:Bare", "--epochs", "1"]
    assert main(["train", *flags, "--compile", "off", "--out", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert "no samples.png: the samples need the method 'sample'" in err
    assert "no reconstructions.png: the reconstructions need the method 'reconstruct'" in err
    assert "(config.json, metrics.csv, summary.json, checkpoint.pt, elbo.png)" in out
    program = Run.open(run_dir).vae
    assert program.sites.latent == ("z",) and program.sites.observed == ("x",)
    assert program.likelihood.binary  # a Bernoulli site: the grey digits were binarized
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "s.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_latent_scale_weighs_the_latent_sites_alone():
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(3))

    with LatentScale(0.25):
        trace = poutine.trace(model).get_trace()
    assert trace.nodes["z"]["scale"] == 0.25 and trace.nodes["x"]["scale"] == 1.0


def test_run_create_takes_your_module_and_opens_it_again(tmp_path, own):
    pyro.set_rng_seed(3)
    mine = own.TutorialVAE((1, 8, 8), z_dim=4, hidden=32)
    settings = dict(dataset="digits", epochs=2, compile="off", batch_size=256)
    config = pyro_vae.RunConfig(program_options={"z_dim": 4, "hidden": 32}, **settings)
    run = Run.create(tmp_path / "run", config, program=mine)
    run.train(progress=False)
    opened = Run.open(tmp_path / "run")
    assert opened.config.model.program == PROGRAM
    trained = {f"program.{k}": v for k, v in mine.state_dict().items()}  # trained in place
    assert all(torch.equal(trained[k], v) for k, v in opened.vae.state_dict().items())
    with pytest.raises(ConfigError) as error:  # options that build another program
        Run.create(tmp_path / "other", pyro_vae.RunConfig(**settings), program=mine)
    assert error.value.param == "program_options"
    assert not (tmp_path / "other").exists()


class ReadsValues(Latent):
    def model(self, x):
        if x.sum().item() < 0:  # a value read into Python: no graph can hold it
            raise AssertionError("pixels are never negative")
        super().model(x)

    def guide(self, x):
        pyro.module("reads", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.w[:2], 1.0).to_event(1))


def test_a_program_that_reads_values_trains_eagerly_and_says_why(digits):
    history = pyro_vae.train(ReadsValues(), digits, epochs=1, compile="on", progress=False)
    assert history.compile.startswith("the training step stays eager: the program cannot be ")
    assert math.isfinite(history.test_elbo[-1])


def test_check_elbo_holds_a_program_against_its_hand_written_twin(capsys):
    options = '{"z_dims": [6, 3], "hidden_dims": [[32], [16]]}'
    assert main(["check-elbo", "--model", "hvae", "--program-options", options]) == 0
    out = capsys.readouterr().out
    assert "trace vs manual, KL weight 0.5" in out and "iwae vs manual-iwae" in out
    assert out.rstrip().endswith("all equalities hold")
    assert main(["check-elbo", "--program", PROGRAM]) == 2  # Pyro's tutorial VAE has no twin
    err = capsys.readouterr().err
    assert "has no hand-written twin" in err and err.count("\n") == 1

"""Properties over many drawn inputs (hypothesis):

- ``pyro-vae train`` with any values of its numeric options either trains (status 0, a checkpoint
  and finite metrics) or refuses in one line (status 2, one stderr line, no traceback); values
  that are plainly valid (the counts as digits, a learning rate in [1e-4, 0.1]) train;
- :func:`pyro_vae.train` with any valid choice of parts, options, objective and binarization
  either trains to a finite history or raises a :class:`~pyro_vae.errors.PyroVAEError`; it
  raises exactly where the configuration breaks one of the rules written out in
  :func:`refusals`, and for that reason.

The data sets are tiny (1x4x4 images) so that every drawn run takes a fraction of a second.
"""

import contextlib
import csv
import io
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from pyro_vae import VAE, train
from pyro_vae.analysis.evaluation import evaluate
from pyro_vae.cli import main
from pyro_vae.data.sources import BINARIZATION, Dataset
from pyro_vae.errors import PyroVAEError
from pyro_vae.infer.elbo import OBJECTIVES
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.networks import NETS
from pyro_vae.parts.priors import PRIORS
from pyro_vae.parts.registry import option_names
from pyro_vae.runs.layout import CHECKPOINT

SETTINGS = settings(
    max_examples=int(os.environ.get("PYRO_VAE_PROPERTY_EXAMPLES", 40)),  # more: a longer hunt
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """24 train and 8 test grey 1x4x4 images in [0, 1]."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    x = rng.random((32, 1, 4, 4), dtype=np.float32)
    np.savez(path, x_train=x[:24], x_test=x[24:])
    return str(path)


# Text that is no number (no digits: int() reads Unicode digits, and "٣٣" epochs is 33).
GARBAGE = st.text(alphabet=list("ab-+.,_ eE\t\n"), max_size=5)
# Too large for an int64: refused. (10**12 epochs would be valid and run forever: not drawn.)
OVERFLOW = st.sampled_from([str(2**63), str(10**30), "9" * 60, "9" * 60 + "\n", "9" * 5000])


def count(valid_max, huge=()):
    """A count option as text: mostly valid (1..valid_max), else zero, negative, huge, garbage."""
    valid = st.integers(1, valid_max).map(str)
    invalid = st.one_of(
        st.integers(-5, 0).map(str),
        st.sampled_from(["1.5", "1e2", "nan", "inf", *huge]),
        OVERFLOW,
        GARBAGE,
    )
    return mostly(valid, invalid)


def mostly(valid, invalid):
    """``valid`` four times in five: with five options drawn, a third of the runs train."""
    return st.integers(0, 4).flatmap(lambda i: invalid if i == 4 else valid)


# Networks too large to build: a one-line ConfigError, before anything is allocated.
HUGE_SIZES = [str(10**12), str(2**62)]
EPOCHS = count(3)
BATCH_SIZE = count(64, huge=[str(10**12)])  # 10**12: one batch of the whole (tiny) set
Z_DIM = count(6, huge=HUGE_SIZES)
HIDDEN_DIMS = mostly(
    st.lists(st.integers(1, 16).map(str), min_size=1, max_size=3).map(",".join),
    st.one_of(
        st.lists(count(16, huge=HUGE_SIZES), min_size=1, max_size=3).map(",".join),
        st.sampled_from(["", ",", "4,,5", "8,", " 8 , 4 "]),
    ),
)
LR = mostly(
    st.floats(1e-4, 0.1).map(repr),
    st.one_of(
        st.sampled_from(["0", "-1", "-0.001", "nan", "-nan", "inf", "-inf", "1e30", "1e31"]),
        st.sampled_from(["1e300", "1e-320", "5e-324", "10", "1000", "1e10", "0x1p-3", "1_0"]),
        st.sampled_from([" 0.01\n", "1e300\n", "\tinf", "-1\n"]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        GARBAGE,
    ),
)


def plain_count(text, largest):
    """Whether ``text`` is a count as the valid strategies draw it: ASCII digits, 1 to
    ``largest``."""
    short = len(text) <= len(str(largest))  # int() refuses strings of over 4,300 digits
    return text.isascii() and text.isdigit() and short and 1 <= int(text) <= largest


def plainly_valid(epochs, batch_size, z_dim, lr, hidden_dims):
    """Whether the options are ones ``pyro-vae train`` must train with: positive counts written as
    digits (a batch larger than the data set is one batch of all of it), a learning rate written
    as a plain number in [1e-4, 0.1]."""
    try:
        rate = float(lr) if re.fullmatch(r"[0-9.e+-]+", lr) else math.nan
    except ValueError:
        rate = math.nan
    return (
        plain_count(epochs, 3)
        and plain_count(batch_size, 10**12)
        and plain_count(z_dim, 6)
        and all(plain_count(width, 16) for width in hidden_dims.split(","))
        and 1e-4 <= rate <= 0.1
    )


def run_cli(argv):
    """main(argv) in-process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as e:  # argparse's errors
            status = e.code
    return status, out.getvalue(), err.getvalue()


@SETTINGS
@given(epochs=EPOCHS, batch_size=BATCH_SIZE, z_dim=Z_DIM, lr=LR, hidden_dims=HIDDEN_DIMS)
# one step per epoch, finite loss, then weights whose outputs overflow: the test ELBO is NaN
@example(epochs="1", batch_size="64", z_dim="3", lr="1e15", hidden_dims="8")
@example(epochs="2", batch_size="1", z_dim="3", lr="1e30", hidden_dims="8")  # loss not finite
# every batch loss finite (~1e37), their float32 sum not: the train ELBO is summed in float64
@example(epochs="1", batch_size="5", z_dim="4", lr="279672295.9879744", hidden_dims="13")
@example(epochs="2", batch_size="8", z_dim="2", lr="0.01", hidden_dims="8,4")  # plainly valid
def test_train_options_train_or_give_one_line(tiny_npz, epochs, batch_size, z_dim, lr, hidden_dims):
    root = Path(tempfile.mkdtemp(prefix="pyro-vae-prop-"))
    try:
        out = root / "run"
        argv = ["train", "--dataset", "npz", "--data-path", tiny_npz, "--epochs", epochs]
        argv += ["--batch-size", batch_size, "--z-dim", z_dim, "--lr", lr]
        argv += ["--hidden-dims", hidden_dims, "--out", str(out), "--quiet"]
        status, _, err = run_cli(argv)
        assert "Traceback" not in err, err
        event("trained" if status == 0 else f"refused: {err.split(':')[2].strip()[:40]}")
        if plainly_valid(epochs, batch_size, z_dim, lr, hidden_dims):
            event("plainly valid")
            assert status == 0, err
        if status == 0:
            assert (out / CHECKPOINT).is_file()
            with open(out / "metrics.csv") as f:
                rows = list(csv.DictReader(f))
            assert len(rows) == int(epochs)
            for row in rows:
                assert all(math.isfinite(float(v)) for v in row.values()), row
        else:
            assert status == 2, (status, err)
            assert len(err.strip().splitlines()) == 1, err
            assert err.startswith(("pyro-vae: error: ", "pyro-vae train: error: ")), err
    finally:
        shutil.rmtree(root)


def tiny_data(kind, x_shape, seed):
    """24 train / 8 test examples of ``kind``: grey on the grid k/16 (like digits), binary, or
    uniform grey values."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(32, *x_shape, generator=g)
    x = {"grid16": torch.round(u * 16) / 16, "binary": (u < 0.3).float(), "uniform": u}[kind]
    return Dataset("npz", x[:24], x[24:])


OPTION_VALUES = {
    "components": st.integers(1, 4),
    "df": st.floats(0.5, 30),
    "flow_steps": st.integers(1, 3),
    "context_dim": st.integers(1, 8),
    "scale": st.floats(0.05, 2),
    "min_scale": st.floats(1e-3, 0.5),
    "bins": st.sampled_from([2, 17, 256]),
}


@st.composite
def part(draw, registry):
    """A part's name and some of its options."""
    name = draw(st.sampled_from(list(registry)))
    options = {}
    for option in option_names(registry[name]):
        if draw(st.booleans()):
            options[option] = draw(OPTION_VALUES[option])
    return name, options


@st.composite
def configuration(draw):
    encoder = draw(st.sampled_from(list(NETS)))
    widths = (1, 8) if encoder == "conv" else (1, 16)
    return {
        "x_shape": draw(st.sampled_from([(1, 4, 4), (2, 3, 3), (16,)])),
        "z_dim": draw(st.integers(1, 5)),
        "hidden_dims": tuple(draw(st.lists(st.integers(*widths), min_size=1, max_size=2))),
        "encoder": encoder,
        "prior": draw(part(PRIORS)),
        "likelihood": draw(part(LIKELIHOODS)),
        "guide": draw(part(GUIDES)),
        "objective": draw(st.sampled_from(list(OBJECTIVES))),
        "binarization": draw(st.sampled_from(BINARIZATION)),
        "batch_size": draw(st.integers(1, 32)),
        "data": draw(st.sampled_from(["grid16", "binary", "uniform"])),
        "seed": draw(st.integers(0, 3)),
    }


# KL(q(z|x) || p(z)) in closed form: the diagonal guide against these priors (see priors.py)
CLOSED_FORM_KL = {"standard-normal", "normal", "laplace"}


def refusals(config):
    """What ``config`` must be refused for, as words of the error that says so, by the rules as
    documented: the conv and resnet encoders take images (C, H, W); objective meanfield needs
    the KL term in closed form, iwae-dreg the diagonal guide; the data the likelihood scores
    (binarized first where dynamic binarization meets the bernoulli likelihood) lie in its
    support: 0 or 1 for bernoulli, the grid k / (bins - 1) for the discretized logistic, whose
    bins are 256 unless given. The other likelihoods take any values in [0, 1]."""
    (prior, _), (likelihood, likelihood_options), (guide, _) = (
        config["prior"],
        config["likelihood"],
        config["guide"],
    )
    reasons = []
    if config["encoder"] != "mlp" and len(config["x_shape"]) != 3:
        reasons.append(f"the {config['encoder']} encoder needs images of shape (C, H, W)")
    if config["objective"] == "meanfield" and not (guide == "diagonal" and prior in CLOSED_FORM_KL):
        reasons.append(f"no closed-form KL between the {guide!r} guide and the {prior!r} prior")
    if config["objective"] == "iwae-dreg" and guide != "diagonal":
        reasons.append("objective 'iwae-dreg' needs the guide 'diagonal'")
    binary = config["data"] == "binary" or (
        likelihood == "bernoulli" and config["binarization"] == "dynamic"
    )
    if likelihood == "bernoulli" and not binary:
        reasons.append("the bernoulli likelihood needs binary data")
    bins = likelihood_options.get("bins", 256)
    on_grid = binary or (config["data"] == "grid16" and bins == 17)
    if likelihood == "discretized-logistic" and not on_grid:
        reasons.append("the discretized-logistic likelihood needs values on a grid")
    return reasons


@SETTINGS
@given(config=configuration())
def test_any_configuration_trains_or_says_why(config):
    refused_for = refusals(config)
    pyro.set_rng_seed(config["seed"])
    data = tiny_data(config["data"], config["x_shape"], config["seed"])
    (prior, prior_options), (likelihood, likelihood_options), (guide, guide_options) = (
        config["prior"],
        config["likelihood"],
        config["guide"],
    )
    try:
        vae = VAE(
            config["x_shape"],
            z_dim=config["z_dim"],
            hidden_dims=config["hidden_dims"],
            encoder=config["encoder"],
            prior=prior,
            likelihood=likelihood,
            guide=guide,
            prior_options=prior_options,
            likelihood_options=likelihood_options,
            guide_options=guide_options,
        )
        settings = {"objective": config["objective"], "binarization": config["binarization"]}
        history = train(
            vae,
            data,
            epochs=1,
            batch_size=config["batch_size"],
            device="cpu",
            seed=config["seed"],
            progress=False,
            compile="off",
            **settings,
        )
    except PyroVAEError as e:
        assert str(e) and "\n" not in str(e), str(e)
        # refused only for a rule the configuration breaks, and saying which
        assert any(reason in str(e) for reason in refused_for), (str(e), refused_for)
        event(f"refused: {type(e).__name__}: {str(e)[:50]}")
        return
    assert refused_for == [], f"trained though {refused_for}"
    event("trained")
    for series in (history.step_loss, history.train_elbo, history.test_elbo):
        assert series and all(math.isfinite(v) for v in series), history
    figures = evaluate(vae, data, seed=config["seed"], iwae_k=3, **settings)
    assert math.isfinite(figures["test_elbo"]) and math.isfinite(figures["iwae_log_likelihood"])
    assert figures["test_elbo"] == history.test_elbo[-1]

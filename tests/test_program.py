"""The model protocol's defaults (pyro_vae.models.program.Program), which a plain Pyro program
gets: the IWAE bound and the ELBO's terms from Pyro's traces, held against the VAE's hand-written
ones under the same draws; and what a model of x alone says of labels."""

import pyro
import pytest
import torch

from pyro_vae import VAE, ConfigError
from pyro_vae.data.sources import eval_inputs
from pyro_vae.models import MODELS
from pyro_vae.models.program import Program


@pytest.fixture(scope="module")
def vae_and_x(digits):
    pyro.set_rng_seed(0)
    vae = VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))
    return vae, eval_inputs(vae.likelihood, digits.x_test[:50], "dynamic")


def test_the_traced_iwae_chunk_is_the_hand_written_one(vae_and_x):
    vae, x = vae_and_x
    with torch.no_grad():
        torch.manual_seed(3)
        traced = Program.iwae_chunk(vae, x, 7)
        torch.manual_seed(3)
        by_hand = vae.iwae_chunk(x, 7)
    assert traced.shape == (len(x),)
    assert torch.allclose(traced, by_hand, rtol=1e-5, atol=1e-4)


def test_the_traced_elbo_terms_are_the_hand_written_ones(vae_and_x):
    vae, x = vae_and_x
    with torch.no_grad():
        torch.manual_seed(4)
        reconstruction, kl = Program.elbo_terms(vae, x, (), analytic=False)
        torch.manual_seed(4)
        expected = vae.elbo_terms(x, (), analytic=False)
    assert float(reconstruction) == pytest.approx(float(expected[0]), rel=1e-5)
    assert float(kl) == pytest.approx(float(expected[1]), rel=1e-4)
    with pytest.raises(ConfigError, match="closed-form"):
        Program.elbo_terms(vae, x, (), analytic=True)


def test_a_model_of_x_alone_takes_no_labels(digits, vae_and_x):
    vae, x = vae_and_x
    assert vae.condition(torch.zeros(3, dtype=torch.long), x) == ()
    assert len(vae.drawable_labels) == 0 and MODELS["vae"].label_classes(digits) == 0
    with pytest.raises(ConfigError, match="labeled"):
        MODELS["vae"].check_labeled(10)
    assert MODELS["m2"].check_labeled(10) == 10


def test_the_default_check_holds_each_objective_against_its_twin(vae_and_x):
    vae, x = vae_and_x
    report = Program.check_elbo(vae, x, None, seed=2, num_particles=3, kl_weight=0.5)
    names = [c.name for c in report.comparisons]
    assert names == ["trace vs manual", "trace vs manual, KL weight 0.5", "iwae vs manual-iwae"]
    assert not report.failures
    assert all(c.loss_difference < 1e-6 * abs(c.pyro_loss) for c in report.comparisons)


def test_the_default_check_sees_a_twin_that_differs(vae_and_x, monkeypatch):
    import pyro_vae.infer.elbo as elbo_module

    vae, x = vae_and_x
    real = elbo_module.manual_elbo
    monkeypatch.setattr(elbo_module, "manual_elbo", lambda *a, **k: real(*a, **k) + 1.0)
    report = Program.check_elbo(vae, x, None, seed=2)
    assert [f.split(":")[0] for f in report.failures] == [
        "trace vs manual",
        "trace vs manual, KL weight 0.5",
    ]

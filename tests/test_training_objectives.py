"""Training with the objectives a researcher varies: K particles, the IWAE bound, beta and a KL
warm-up. What the trainer does with each (the weights it uses, the test ELBO it reports, the steps
it takes) checked against an independent run or computation."""

import pyro
import pytest
import torch

from pyro_vae import VAE, dataset_elbo, train
from pyro_vae.data.sources import eval_inputs
from pyro_vae.errors import ConfigError


def fit(digits, epochs, **settings):
    pyro.set_rng_seed(0)
    vae = VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))
    history = train(vae, digits, epochs=epochs, device="cpu", progress=False, **settings,
        compile="off")
    return vae, history


def test_the_warm_up_weighs_the_kl_term_linearly_up_to_beta(digits):
    _, history = fit(digits, 5, beta=2.0, kl_warmup=4)
    assert history.kl_weight == [0.5, 1.0, 1.5, 2.0, 2.0]
    # the first epoch's steps are those of a run at that weight throughout: the weight is used
    _, at_half = fit(digits, 1, beta=0.5)
    assert history.step_loss[:12] == at_half.step_loss
    _, unweighted = fit(digits, 1)
    assert history.step_loss[:12] != unweighted.step_loss


@pytest.mark.parametrize(
    "settings",
    [{"beta": 4.0}, {"kl_warmup": 3}, {"objective": "iwae", "num_particles": 4}],
    ids=["beta", "warm-up", "iwae"],
)
def test_the_test_elbo_is_the_elbo_whatever_the_training_objective(digits, settings):
    vae, history = fit(digits, 3, **settings)
    x_test = eval_inputs(vae.likelihood, digits.x_test)
    assert history.test_elbo[-1] == dataset_elbo(vae, x_test, seed=0, objective="trace")
    # the training objective itself is another number: beta 4 costs more than the ELBO, the
    # IWAE bound is above it, and a warm-up's first weight costs less
    _, plain = fit(digits, 3)
    assert history.train_elbo[0] != pytest.approx(plain.train_elbo[0], abs=0.1)


@pytest.mark.parametrize(
    "pyro_objective, manual_objective, settings",
    [
        ("trace", "manual", {"beta": 0.5, "kl_warmup": 2}),
        ("iwae", "manual-iwae", {}),
    ],
)
def test_pyro_and_hand_written_trainers_take_the_same_steps_with_particles(
    digits, pyro_objective, manual_objective, settings
):
    pyro_vae, pyro_history = fit(digits, 2, objective=pyro_objective, num_particles=3, **settings)
    manual_vae, manual_history = fit(
        digits, 2, objective=manual_objective, num_particles=3, **settings
    )
    assert pyro_history.step_loss == pytest.approx(manual_history.step_loss, rel=1e-5)
    for a, b in zip(pyro_vae.parameters(), manual_vae.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    _, one_particle = fit(digits, 2, objective=pyro_objective)
    assert pyro_history.step_loss != pytest.approx(one_particle.step_loss, rel=1e-3)


def test_more_particles_than_memory_holds_is_refused_before_allocating(digits, monkeypatch):
    import pyro_vae.device

    # 1000 particles of 128 examples: the decoder's 128 outputs and the likelihood's 4 x 64
    # terms, 4 bytes each, twice for the backward pass: 0.37 GiB, more than the 0.25 said here
    monkeypatch.setattr(pyro_vae.device, "memory_bytes", lambda device: 2**28)
    message = r"^num_particles = 1000: the activations of 1000 particles .* need 0\.4 GiB"
    with pytest.raises(ConfigError, match=message):
        fit(digits, 1, num_particles=1000)
    fit(digits, 1, num_particles=100)  # a tenth of it fits

import pyro
import pytest
import torch

from pyro_vae import VAE, ConfigError, DataError, Dataset, dataset_elbo, train
from pyro_vae.analysis.evaluation import independent_pixel_log_likelihood
from pyro_vae.data.sources import eval_inputs, needs_binarization
from pyro_vae.device import resolve_device
from pyro_vae.parts.likelihoods import Bernoulli


def test_a_few_hundred_svi_steps_beat_the_independent_pixel_model(digits):
    # 34 epochs of 12 steps. Binarized 8x8 digits are noisy: even a model that knew each grey
    # image exactly would score -13.6 nats; independent pixels score -27.0.
    pyro.set_rng_seed(0)
    vae = VAE(digits.x_shape, z_dim=8, hidden_dims=(400,))
    history = train(vae, digits, epochs=34, lr=3e-3, device="cpu", progress=False, compile="off")
    x_test = eval_inputs(vae.likelihood, digits.x_test)
    baseline = independent_pixel_log_likelihood(digits.x_train, x_test)
    assert baseline == pytest.approx(-26.98, abs=0.01)
    # The ELBO is a lower bound on log p(x): beating the baseline's exact log-likelihood by 2.5
    # nats per image means a likelihood ratio above e^2.5 = 12 per test image. Untrained: -44.
    assert history.test_elbo[0] < history.test_elbo[-1] - 3
    assert history.test_elbo[-1] > baseline + 2.5
    assert history.train_elbo[-1] > baseline + 2.5


def fit(digits, seed, epochs=3):
    pyro.set_rng_seed(seed)
    vae = VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))
    return vae, train(vae, digits, epochs=epochs, seed=seed, device="cpu", progress=False,
        compile="off")


def test_fixed_seed_gives_the_same_numbers(digits):
    vae_a, first = fit(digits, seed=3)
    vae_b, again = fit(digits, seed=3)
    _, other = fit(digits, seed=4)
    assert first.train_elbo == again.train_elbo and first.test_elbo == again.test_elbo
    assert all(
        torch.equal(a, b) for a, b in zip(vae_a.parameters(), vae_b.parameters(), strict=True)
    )
    assert first.train_elbo != other.train_elbo
    assert first.rows()[0].keys() == {"epoch", "train_elbo", "test_elbo", "seconds", "kl_weight"}
    assert [row["epoch"] for row in first.rows()] == [1, 2, 3]


def test_test_elbo_is_seeded_and_leaves_the_global_rng_alone(digits, small_vae):
    x = eval_inputs(small_vae.likelihood, digits.x_test)
    state = torch.get_rng_state()
    a = dataset_elbo(small_vae, x, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert a == dataset_elbo(small_vae, x, seed=1)
    assert a != dataset_elbo(small_vae, x, seed=2)
    # the mean of many estimates agrees with one: the estimator is unbiased per example
    assert a == pytest.approx(dataset_elbo(small_vae, x, seed=5, num_particles=50), rel=0.02)


def test_grey_data_is_binarized_afresh_in_every_batch(digits, small_vae):
    steps = []  # what the model scores in training steps; the test ELBO runs without gradients
    model = small_vae.model

    def spy(x, kl_weight=1.0):
        if torch.is_grad_enabled():
            steps.append(x)
        return model(x, kl_weight)

    small_vae.model = spy
    train(small_vae, digits, epochs=2, batch_size=2000, device="cpu", progress=False, compile="off")
    assert [x.shape for x in steps] == [digits.x_train.shape] * 2  # one batch of all, each epoch
    assert all(((x == 0) | (x == 1)).all() for x in steps)
    # the same images in another order: per-pixel counts differ only if the draws are new
    assert not torch.equal(steps[0].sum(0), steps[1].sum(0))
    for x in steps:
        assert float(x.mean()) == pytest.approx(float(digits.x_train.mean()), abs=0.01)
    test_set = eval_inputs(small_vae.likelihood, digits.x_test)
    assert torch.equal(test_set, eval_inputs(small_vae.likelihood, digits.x_test))  # fixed


def test_bernoulli_refuses_grey_data_without_binarization(digits, small_vae):
    assert needs_binarization(small_vae.likelihood, digits.x_train, "dynamic")
    with pytest.raises(DataError, match="needs binary data.*use binarization dynamic"):
        train(small_vae, digits, epochs=1, binarization="none", device="cpu", progress=False,
            compile="off")
    with pytest.raises(ConfigError, match="binarization 'sometimes' is not one of: dynamic"):
        train(small_vae, digits, epochs=1, binarization="sometimes", device="cpu",
            progress=False, compile="off")


class UncheckedBernoulli(Bernoulli):
    """A likelihood that forgets to check its data: only Pyro's validation can catch it."""

    binary = False

    def check_data(self, x):
        pass


def test_validation_is_on_for_the_first_step(digits):
    vae = VAE(digits.x_shape, z_dim=2, hidden_dims=(8,), likelihood=UncheckedBernoulli((1, 8, 8)))
    with pytest.raises(ValueError, match="support"):
        train(vae, digits, epochs=1, device="cpu", progress=False, compile="off")


@pytest.mark.parametrize(
    "setting,message",
    [
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"epochs": 2.0}, "epochs must be a whole number, got 2.0"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"lr": -1.0}, "lr must be a positive finite number, got -1"),
        ({"lr": float("nan")}, "lr must be a positive finite number, got nan"),
        ({"lr": 1e300}, "lr must be at most 1e"),
        ({"objective": "renyi"}, "objective 'renyi' is not one of: trace, meanfield, iwae"),
        ({"beta": 0.0}, "beta must be a positive finite number, got 0"),
        ({"beta": float("inf")}, "beta must be a positive finite number, got inf"),
        ({"num_particles": 0}, "num_particles must be at least 1, got 0"),
        ({"kl_warmup": -1}, "kl_warmup must be at least 0, got -1"),
        ({"kl_warmup": 21}, r"kl_warmup \(21 epochs\) is longer than the training \(epochs 20\)"),
        ({"objective": "iwae", "beta": 2.0}, "^beta weighs the KL term of the ELBO, and objective"),
        ({"objective": "manual-iwae", "kl_warmup": 2}, "kl_warmup weighs the KL term of the"),
    ],
)
def test_bad_settings_raise_clear_errors(digits, small_vae, setting, message):
    with pytest.raises(ConfigError, match=message):
        train(small_vae, digits, device="cpu", progress=False, **setting, compile="off")


def test_data_of_the_wrong_shape_is_refused(small_vae):
    data = Dataset("npz", torch.rand(10, 1, 28, 28), torch.rand(5, 1, 28, 28))
    with pytest.raises(DataError, match=r"shape \(1, 28, 28\) but the model expects \(1, 8, 8\)"):
        train(small_vae, data, epochs=1, device="cpu", progress=False, compile="off")


def test_meanfield_objective_trains(digits, small_vae):
    history = train(
        small_vae, digits, epochs=2, objective="meanfield", device="cpu", progress=False,
            compile="off"
    )
    assert history.test_elbo[1] > history.test_elbo[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine with no GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_one_clear_error(name):
    with pytest.raises(ConfigError, match=f"device {name}: no CUDA GPU is available here"):
        resolve_device(name)


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device 'tpu' is not a device; choose auto, cpu, cuda"):
        resolve_device("tpu")

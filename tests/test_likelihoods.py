"""The likelihoods p(x|z): shapes, dtypes, the numbers against hand computation, the data checks,
and a short training run of each through the VAE (MLP and conv networks)."""

import math
import re

import pyro
import pytest
import torch
import torch.nn.functional as F
from helpers import DIGITS_OPTIONS

import pyro_vae
from pyro_vae import ConfigError, DataError
from pyro_vae.parts.distributions import (
    BETA_EPS,
    DiscretizedLogisticDistribution,
    StableContinuousBernoulli,
)
from pyro_vae.parts.likelihoods import LIKELIHOODS, MIN_LOG_SCALE
from pyro_vae.parts.registry import describe

X_SHAPE = (1, 8, 8)
NAMES = list(LIKELIHOODS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The networks here are tiny: one thread is several times faster than two that contend
    # for the cores with other processes. The setting is put back for the other test files.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name, **options):
    return LIKELIHOODS[name](X_SHAPE, **{**DIGITS_OPTIONS.get(name, {}), **options})


def decoder_output(name, *batch_shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (*batch_shape, LIKELIHOODS[name].params_per_pixel, *X_SHAPE)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def valid_data(name, n, dtype=torch.float32):
    """Data in the likelihood's support: binary for bernoulli, k/16 grey values otherwise."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 17, (n, *X_SHAPE), generator=g).to(dtype) / 16
    return x.round() if LIKELIHOODS[name].binary else x


def test_registry_holds_the_likelihoods_in_order_with_the_protocol():
    assert NAMES == [
        "bernoulli",
        "continuous-bernoulli",
        "gaussian",
        "gaussian-learned",
        "laplace",
        "beta",
        "discretized-logistic",
    ]
    for name, cls in LIKELIHOODS.items():
        assert issubclass(cls, torch.nn.Module) and cls.name == name
        assert cls.description and "\n" not in cls.description
        assert cls.params_per_pixel in (1, 2) and isinstance(cls.binary, bool)
    assert [name for name, cls in LIKELIHOODS.items() if cls.binary] == ["bernoulli"]
    options = {name: opts for name, opts, _ in describe(LIKELIHOODS)}
    assert options == {
        "bernoulli": "",
        "continuous-bernoulli": "",
        "gaussian": "scale=0.1",
        "gaussian-learned": "min_scale=0.001",
        "laplace": "min_scale=0.001",
        "beta": "",
        "discretized-logistic": "bins=256",
    }
    assert "[0.001, 1 - 0.001]" in LIKELIHOODS["beta"].description  # the stated epsilon


@pytest.mark.parametrize("batch_shape", [(5,), (3, 5)], ids=["B", "SxB"])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_of_distribution_mean_and_samples(name, batch_shape):
    likelihood = make(name)
    out = decoder_output(name, *batch_shape)
    p = likelihood(out)
    assert p.batch_shape == batch_shape and p.event_shape == X_SHAPE
    x = valid_data(name, batch_shape[-1])  # broadcasts over the particle dim, as in Pyro
    with pyro.validation_enabled(True):
        log_p = p.log_prob(x)
    assert log_p.shape == batch_shape and torch.isfinite(log_p).all()
    assert likelihood.mean(out).shape == (*batch_shape, *X_SHAPE)
    assert p.sample().shape == (*batch_shape, *X_SHAPE)
    assert p.sample((2,)).shape == (2, *batch_shape, *X_SHAPE)
    # Pyro's plates expand site distributions; the expanded one scores the same.
    expanded = p.expand((4, *batch_shape))
    assert expanded.batch_shape == (4, *batch_shape)
    assert torch.equal(expanded.log_prob(x), log_p.expand(4, *batch_shape))


@pytest.mark.parametrize("name", NAMES)
def test_mean_is_the_expected_value_clipped_to_the_unit_interval(name):
    # mean() is what pictures show: E[x|z] of the distribution that forward() returns, clipped
    # into [0, 1] where (for the Gaussian and Laplace) E[x|z] lies outside. Against the average
    # of 10000 draws, pixel by pixel, within five standard errors (clipping moves both sides
    # alike, so it cannot widen the difference).
    likelihood = make(name).double()
    out = decoder_output(name, 5, dtype=torch.float64)
    torch.manual_seed(0)
    draws = likelihood(out).sample((10_000,))
    standard_error = draws.std(0) / math.sqrt(len(draws))
    difference = likelihood.mean(out) - draws.mean(0).clamp(0, 1)
    assert (difference.abs() <= 5 * standard_error + 1e-6).all()


@pytest.mark.parametrize("name", NAMES)
def test_dtype_follows_the_decoder_output(name):
    likelihood = make(name)
    out = decoder_output(name, 5, dtype=torch.float64)
    p = likelihood(out)
    x = valid_data(name, 5, torch.float64)
    assert p.log_prob(x).dtype == torch.float64
    assert likelihood.mean(out).dtype == torch.float64
    assert p.sample().dtype == torch.float64
    single = likelihood(out.float()).log_prob(x.float())
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), p.log_prob(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_deterministic(name):
    # The ELBO tests rely on forward() drawing no random numbers.
    likelihood, out = make(name), decoder_output(name, 5)
    state = torch.get_rng_state()
    likelihood(out)
    likelihood.mean(out)
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------------------------
# Data checks


def one_line(error):
    message = str(error.value)
    assert message and "\n" not in message
    return message


def marked(error):
    """The message with the parameters it names marked <so>, as the command line spells them
    as its flags."""
    return error.value.worded(lambda name: f"<{name}>")


@pytest.mark.parametrize("name", NAMES)
def test_check_data_on_the_digits_data(digits, name):
    likelihood = make(name)
    if name == "bernoulli":  # grey data: train binarizes it, else this explains the flag
        with pytest.raises(DataError) as error:
            likelihood.check_data(digits.x_train)
        assert "use binarization dynamic (the default)" in one_line(error)
        assert "use <binarization> dynamic" in marked(error)
        likelihood.check_data(torch.bernoulli(digits.x_train))
    else:
        likelihood.check_data(digits.x_train)
        likelihood.check_data(digits.x_test)


def test_discretized_logistic_names_the_bins_that_fit_the_data(digits):
    likelihood = LIKELIHOODS["discretized-logistic"](X_SHAPE)  # bins=256
    with pytest.raises(DataError) as error:
        likelihood.check_data(digits.x_train)
    message = one_line(error)
    assert "grid of 1/255 (8-bit)" in message
    assert 'grid of 1/16: use likelihood_options["bins"] 17' in message
    assert 'use <likelihood_options["bins"]> 17' in marked(error)
    eight_bit = torch.randint(0, 256, (10, *X_SHAPE)) / 255
    likelihood.check_data(eight_bit)
    with pytest.raises(DataError, match=re.escape('use likelihood_options["bins"] 256')):
        LIKELIHOODS["discretized-logistic"](X_SHAPE, bins=17).check_data(eight_bit)
    with pytest.raises(DataError, match="quantize the data"):
        likelihood.check_data(torch.rand(10, *X_SHAPE, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("bad", ["nan", "inf", "negative", "above-one"])
@pytest.mark.parametrize("name", NAMES)
def test_check_data_refuses_bad_values_in_one_line(digits, name, bad):
    x = digits.x_test.clone()
    if LIKELIHOODS[name].binary:
        x = x.round()
    value = {"nan": math.nan, "inf": math.inf, "negative": -0.5, "above-one": 1.5}[bad]
    x[3, 0, 4, 4] = value
    x[7, 0, 2, 5] = value
    likelihood = make(name)
    if bad in ("negative", "above-one") and name in ("gaussian", "gaussian-learned", "laplace"):
        likelihood.check_data(x)  # real support: only finiteness is checked
        return
    with pytest.raises(DataError) as error:
        likelihood.check_data(x)
    message = one_line(error)
    assert f"the {name} likelihood" in message and "2 values" in message


def test_train_checks_the_data_before_the_first_step(digits):
    x_train = digits.x_train.clone()
    x_train[0, 0, 0, 0] = math.nan
    data = pyro_vae.Dataset("digits", x_train, digits.x_test)
    vae = pyro_vae.VAE(digits.x_shape, z_dim=2, hidden_dims=(8,), likelihood="gaussian")
    before = [p.detach().clone() for p in vae.parameters()]
    with pytest.raises(DataError, match="1 values are NaN or infinite"):
        pyro_vae.train(vae, data, epochs=1, device="cpu", progress=False, compile="off")
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters(), strict=True))


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("gaussian", {"scale": 0.0}, "scale must be a positive finite number, got 0"),
        ("gaussian", {"scale": -1.0}, "scale must be a positive finite number, got -1"),
        ("gaussian", {"scale": math.nan}, "scale must be a positive finite number, got nan"),
        ("gaussian-learned", {"min_scale": 0.0}, "min_scale must be a positive finite number"),
        ("laplace", {"min_scale": -1e-3}, "min_scale must be a positive finite number"),
        ("discretized-logistic", {"bins": 1}, "bins must be at least 2, got 1"),
        ("discretized-logistic", {"bins": 16.5}, "bins must be a whole number, got 16.5"),
    ],
)
def test_impossible_options_are_config_errors(name, options, message):
    with pytest.raises(ConfigError) as error:
        LIKELIHOODS[name](X_SHAPE, **options)
    assert str(error.value).startswith(message)
    option = next(iter(options))
    assert error.value.param == option
    # Given to the VAE, the same option is named as the VAE takes it.
    with pytest.raises(ConfigError) as error:
        pyro_vae.VAE(X_SHAPE, likelihood=name, likelihood_options=options)
    assert str(error.value).startswith(f'likelihood_options["{option}"] must be')
    assert error.value.param == f'likelihood_options["{option}"]'


# ----------------------------------------------------------------------------------------------
# The numbers, against hand computation


def test_gaussian_log_prob_by_hand():
    likelihood = LIKELIHOODS["gaussian"](X_SHAPE, scale=0.3)
    out = decoder_output("gaussian", 4, dtype=torch.float64)
    x = valid_data("gaussian", 4, torch.float64)
    mu, s = out[:, 0], 0.3
    by_hand = -0.5 * ((x - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(likelihood(out).log_prob(x), by_hand.sum((1, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("name", ["gaussian-learned", "laplace"])
def test_learned_scale_log_prob_by_hand_and_its_floor(name):
    likelihood = LIKELIHOODS[name](X_SHAPE, min_scale=0.01).double()
    with torch.no_grad():
        likelihood.raw_scale.copy_(torch.linspace(-3, 2, 64).reshape(X_SHAPE))
    out = decoder_output(name, 4, dtype=torch.float64)
    x = valid_data(name, 4, torch.float64)
    mu = out[:, 0]
    s = F.softplus(likelihood.raw_scale.detach()) + 0.01
    assert torch.equal(likelihood.scale(), s)
    if name == "gaussian-learned":
        by_hand = -0.5 * ((x - mu) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)
    else:
        by_hand = -(x - mu).abs() / s - (2 * s).log()
    assert torch.allclose(likelihood(out).log_prob(x), by_hand.sum((1, 2, 3)), rtol=1e-12)
    # However far the raw scale is pushed down, the scale stays at its floor and the density
    # of a perfect reconstruction stays finite.
    with torch.no_grad():
        likelihood.raw_scale.fill_(-1e4)
    assert torch.equal(likelihood.scale(), torch.full(X_SHAPE, 0.01, dtype=torch.float64))
    perfect = likelihood(x.unsqueeze(1)).log_prob(x)
    assert torch.isfinite(perfect).all()
    # A fresh likelihood starts at min_scale + 0.1.
    fresh = LIKELIHOODS[name](X_SHAPE)
    assert torch.allclose(fresh.scale(), torch.full(X_SHAPE, 0.101))


CB_LOGITS = [-60.0, -20.0, -5.0, -0.7, -0.3, -1e-4, 0.0, 1e-7, 0.4999, 0.5, 3.0, 16.0, 40.0]


def trapezoid_on_unit_interval(f, points=20001):
    xs = torch.linspace(0, 1, points, dtype=torch.float64)
    return torch.trapezoid(f(xs), xs)


@pytest.mark.parametrize("logit", CB_LOGITS)
def test_continuous_bernoulli_density_integrates_to_one(logit):
    # Including near 0, where the normalizing constant's formula has a removable singularity,
    # and beyond |logit| = 16, where PyTorch's own (float32, clamped) constant is off.
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        p = StableContinuousBernoulli(logits=torch.tensor(logit, dtype=dtype))

        def density(xs, p=p, dtype=dtype):
            return p.log_prob(xs.to(dtype)).double().exp()

        assert float(trapezoid_on_unit_interval(density)) == pytest.approx(1, abs=tol)
        mean = trapezoid_on_unit_interval(lambda xs, d=density: xs * d(xs))
        assert float(p.mean) == pytest.approx(float(mean), abs=tol)


def test_continuous_bernoulli_by_hand():
    logits = torch.tensor([-40.0, -3.0, -0.2, 0.0, 1e-3, 2.0, 25.0], dtype=torch.float64)
    x = torch.tensor([0.0, 0.3, 1.0, 0.5, 0.9, 0.1, 1.0], dtype=torch.float64)
    lam, one_minus_lam = torch.sigmoid(logits), torch.sigmoid(-logits)
    # C(l) = l / ((1 - lambda) (e^l - 1)), and 2 at l = 0; the Bernoulli kernel times C.
    constant = torch.where(logits == 0, 2.0, logits / (one_minus_lam * torch.expm1(logits)))
    by_hand = x * lam.log() + (1 - x) * one_minus_lam.log() + constant.log()
    p = StableContinuousBernoulli(logits=logits)
    assert torch.allclose(p.log_prob(x), by_hand, rtol=1e-10, atol=1e-12)
    # Where PyTorch's probs-based formula is accurate (float64, moderate logits) it agrees.
    moderate = logits.abs() < 10
    torch_cb = torch.distributions.ContinuousBernoulli(logits=logits[moderate])
    assert torch.allclose(torch_cb.log_prob(x[moderate]), p.log_prob(x)[moderate], atol=1e-9)
    assert torch.allclose(torch_cb.mean, p.mean[moderate], atol=1e-9)
    # The likelihood's mean is the distribution's mean, not sigmoid(logit).
    likelihood = LIKELIHOODS["continuous-bernoulli"](X_SHAPE)
    out = torch.full((1, 1, *X_SHAPE), 2.0)
    assert torch.allclose(likelihood.mean(out), torch.tensor(1 / (1 - math.exp(-2)) - 0.5))


def test_continuous_bernoulli_samples_follow_its_distribution():
    logits = torch.tensor([-30.0, -2.0, 0.0, 0.3, 5.0])
    p = StableContinuousBernoulli(logits=logits)
    torch.manual_seed(0)
    samples = p.sample((20000,))
    assert ((samples >= 0) & (samples <= 1)).all()
    assert torch.allclose(samples.mean(0), p.mean, atol=0.01)


def test_continuous_bernoulli_gradient_is_finite_at_logit_zero():
    logits = torch.zeros(3, requires_grad=True)
    p = StableContinuousBernoulli(logits=logits)
    (grad,) = torch.autograd.grad(p.log_prob(torch.tensor([0.0, 0.5, 1.0])).sum(), logits)
    assert torch.allclose(grad, torch.tensor([-0.5, 0.0, 0.5]))  # d log C / dl = 0 at l = 0


DL_PARAMS = [(0.3, -2.0), (0.5, MIN_LOG_SCALE), (0.5 + 1 / 510, MIN_LOG_SCALE), (-5.0, 0.0)]
DL_PARAMS += [(2.0, 3.0), (0.5, 20.0), (1e3, MIN_LOG_SCALE), (-1e3, MIN_LOG_SCALE), (0.123, -7)]


@pytest.mark.parametrize("bins", [2, 17, 256])
def test_discretized_logistic_probabilities_sum_to_one(bins):
    for loc, log_scale in DL_PARAMS:
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
            p = DiscretizedLogisticDistribution(
                torch.tensor(loc, dtype=dtype), torch.tensor(log_scale, dtype=dtype), bins
            )
            grid = torch.arange(bins, dtype=dtype) / (bins - 1)
            log_p = p.log_prob(grid)
            assert torch.isfinite(log_p).all() and (log_p <= 0).all()
            assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0, abs=tol)
            # The mean is sum_k x_k P(x_k).
            assert float(p.mean) == pytest.approx(float((log_p.exp() * grid).sum()), abs=10 * tol)


def test_discretized_logistic_matches_the_cdf_difference():
    bins, n = 256, 255
    loc = torch.tensor([0.2, 0.5, 0.9, 0.0], dtype=torch.float64).unsqueeze(-1)
    log_scale = torch.tensor([-3.0, -1.0, -5.0, 0.5], dtype=torch.float64).unsqueeze(-1)
    grid = torch.arange(bins, dtype=torch.float64) / n
    s = log_scale.exp()
    cdf_plus = torch.sigmoid((grid + 0.5 / n - loc) / s)
    cdf_minus = torch.sigmoid((grid - 0.5 / n - loc) / s)
    direct = cdf_plus - cdf_minus
    direct[:, 0] = cdf_plus[:, 0]  # the edge bins take the tails
    direct[:, -1] = 1 - cdf_minus[:, -1]
    p = DiscretizedLogisticDistribution(loc, log_scale, bins).log_prob(grid).exp()
    stable = direct > 1e-10  # where the direct difference has not cancelled away
    assert stable.sum() > 200
    assert torch.allclose(p[stable], direct[stable], rtol=1e-8)
    # The tails, where the direct difference is 0 or noise, are still finite and tiny.
    far = DiscretizedLogisticDistribution(torch.tensor(0.0), torch.tensor(-7.0), 256)
    log_far = far.log_prob(torch.tensor([128 / 255, 1.0]))
    assert torch.isfinite(log_far).all() and (log_far < -100).all()


def test_discretized_logistic_samples_follow_its_probabilities():
    p = DiscretizedLogisticDistribution(torch.tensor(0.4), torch.tensor(-2.0), bins=17)
    torch.manual_seed(0)
    samples = p.sample((40000,))
    grid = torch.arange(17) / 16
    counts = (samples.unsqueeze(-1) == grid).sum(0).double() / len(samples)
    assert counts.sum() == 1  # every sample is on the grid
    assert torch.allclose(counts, p.log_prob(grid).exp().double(), atol=0.01)


def test_discretized_logistic_clamps_the_log_scale():
    likelihood = LIKELIHOODS["discretized-logistic"](X_SHAPE, bins=17)
    out = torch.zeros(2, 2, *X_SHAPE)
    out[:, 1] = -50.0
    assert torch.equal(likelihood(out).base_dist.log_scale, torch.full((2, *X_SHAPE), -7.0))


def test_beta_clamps_the_data_it_scores():
    likelihood = LIKELIHOODS["beta"](X_SHAPE)
    out = decoder_output("beta", 3, dtype=torch.float64)
    x = valid_data("beta", 3, torch.float64)
    assert (x == 0).any() and (x == 1).any()
    with pyro.validation_enabled(True):  # exact 0 and 1 lie in the declared support
        log_p = likelihood(out).log_prob(x)
    assert torch.isfinite(log_p).all()
    a, b = F.softplus(out[:, 0]) + 1e-3, F.softplus(out[:, 1]) + 1e-3
    clamped = x.clamp(BETA_EPS, 1 - BETA_EPS)
    by_hand = (
        (a - 1) * clamped.log()
        + (b - 1) * torch.log1p(-clamped)
        - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b))
    )
    assert torch.allclose(log_p, by_hand.sum((1, 2, 3)), rtol=1e-10)
    assert torch.allclose(likelihood.mean(out), a / (a + b))


# ----------------------------------------------------------------------------------------------
# Training through the VAE


def distance_to_the_data_mean(vae, data, mean):
    """How far the average of 1000 of the model's images is from the training set's average
    image (Euclidean, over the pixels)."""
    torch.manual_seed(0)
    return float((vae.sample(1000, mean=mean).mean(0) - data.x_train.mean(0)).norm())


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
@pytest.mark.parametrize("name", NAMES)
def test_each_likelihood_trains(digits, name, encoder):
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE(
        digits.x_shape,
        z_dim=4,
        hidden_dims=(32,),
        encoder=encoder,
        likelihood=name,
        likelihood_options=DIGITS_OPTIONS.get(name),
    )
    own = {f"likelihood.{key}": p.detach().clone() for key, p in vae.likelihood.named_parameters()}
    untrained = [distance_to_the_data_mean(vae, digits, mean) for mean in (True, False)]
    history = pyro_vae.train(vae, digits, epochs=2, device="cpu", progress=False, compile="off")
    assert all(math.isfinite(v) for v in history.train_elbo + history.test_elbo)
    assert history.test_elbo[1] > history.test_elbo[0]
    for n, mean in ((4, True), (4, False)):
        images = vae.sample(n, mean=mean)
        assert images.shape == (n, *digits.x_shape) and torch.isfinite(images).all()
    # The model's images, means and draws alike, look more like the data than before training
    # (measured: 5 to 40 percent closer after two epochs).
    trained = [distance_to_the_data_mean(vae, digits, mean) for mean in (True, False)]
    assert trained[0] < untrained[0] and trained[1] < untrained[1]
    assert vae.reconstruct(digits.x_test[:3]).shape == (3, *digits.x_shape)
    # Learned scales are the likelihood's parameters: saved with the VAE, moved by training.
    if name in ("gaussian-learned", "laplace"):
        assert set(own) == {"likelihood.raw_scale"}
    state = vae.state_dict()
    for key, before in own.items():
        assert key in state and not torch.equal(state[key], before)


def test_a_learned_scale_survives_a_state_dict_round_trip(digits):
    vae = pyro_vae.VAE(digits.x_shape, z_dim=2, hidden_dims=(8,), likelihood="laplace")
    with torch.no_grad():
        vae.likelihood.raw_scale.fill_(-1.5)
    copy = pyro_vae.VAE(digits.x_shape, z_dim=2, hidden_dims=(8,), likelihood="laplace")
    copy.load_state_dict(vae.state_dict())
    assert torch.equal(copy.likelihood.scale(), vae.likelihood.scale())

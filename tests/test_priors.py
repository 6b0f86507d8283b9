"""The priors p(z): shapes, dtypes, parameters, densities against hand computations, closed-form KL
where it exists (and a clear error where it does not), options, and a short training run each."""

import copy
import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import HostReads, NoTorch, tiny_vae
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae import VAE, ConfigError, train
from pyro_vae.data.sources import eval_inputs
from pyro_vae.infer.elbo import manual_elbo
from pyro_vae.parts import priors
from pyro_vae.parts.priors import PRIORS, VampPrior
from pyro_vae.parts.registry import describe

NAMES = list(PRIORS)
LEARNED = {"normal", "mog", "vamp", "flow"}
RANDOM_INIT = {"mog", "vamp", "flow"}  # the learned normal starts as N(0, I) whatever the seed
CLOSED_FORM_KL = {"standard-normal", "normal", "laplace"}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def codes(*shape, dtype=torch.float32, seed=0):
    return 2 * torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def normal_log_density(z, loc, scale):
    return -0.5 * ((z - loc) / scale) ** 2 - scale.log() - LOG_SQRT_2PI


def test_registry_order_names_and_options():
    assert NAMES == ["standard-normal", "normal", "mog", "vamp", "laplace", "student-t", "flow"]
    rows = {name: (options, description) for name, options, description in describe(PRIORS)}
    assert {name: options for name, (options, _) in rows.items()} == {
        "standard-normal": "",
        "normal": "",
        "mog": "components=10",
        "vamp": "components=50",
        "laplace": "",
        "student-t": "df=3.0",
        "flow": "flow_steps=2",
    }
    for name, cls in PRIORS.items():
        assert cls.name == name
        assert cls.description and "\n" not in cls.description


@pytest.mark.parametrize("z_dim", [1, 2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_samples_and_finite_log_densities(name, z_dim):
    vae = tiny_vae(z_dim, prior=name)
    p = vae.prior_dist(5)
    assert p.batch_shape == (5,) and p.event_shape == (z_dim,)
    assert p.sample().shape == (5, z_dim)
    # Pyro's vectorized particles score (S, B, z_dim) codes and expand p(z) to batch (S, B).
    z = codes(4, 5, z_dim)
    log_p = p.log_prob(z)
    assert log_p.shape == (4, 5) and torch.isfinite(log_p).all()
    torch.testing.assert_close(p.expand((4, 5)).log_prob(z), log_p)
    assert vae.sample(3).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("name", NAMES)
def test_float64_vae_gives_a_float64_prior(name):
    vae = tiny_vae(prior=name).double()
    p = vae.prior_dist(5)
    assert p.sample().dtype == torch.float64
    assert p.log_prob(codes(4, 5, 3, dtype=torch.float64)).dtype == torch.float64
    assert vae.sample(2).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_learned_parameters_are_in_the_state_dict_and_get_gradients(name):
    vae = tiny_vae(prior=name)
    params = dict(vae.prior.named_parameters())
    assert bool(params) == (name in LEARNED)
    state = vae.state_dict()
    vae_params = {id(p) for p in vae.parameters()}
    for key, param in params.items():
        assert torch.equal(state[f"prior.{key}"], param.detach())
        assert id(param) in vae_params  # so the trainer's Adam updates it
    if not params:
        return
    vae.prior_dist(5).log_prob(codes(4, 5, 3)).sum().backward()
    for key, param in params.items():
        assert param.grad is not None and torch.isfinite(param.grad).all(), key
        assert param.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_the_same_prior(name):
    a, b = tiny_vae(prior=name, seed=0), tiny_vae(prior=name, seed=1)
    z = codes(4, 5, 3)
    with torch.no_grad():
        before = b.prior_dist(5).log_prob(z)
        b.load_state_dict(a.state_dict())
        after = b.prior_dist(5).log_prob(z)
        assert torch.equal(after, a.prior_dist(5).log_prob(z))
    assert (name not in RANDOM_INIT) or not torch.equal(before, after)


# ---- densities against the formulas -------------------------------------------------------


def test_standard_normal_density():
    vae = tiny_vae(prior="standard-normal").double()
    z = codes(4, 5, 3, dtype=torch.float64)
    expected = (-0.5 * z**2 - LOG_SQRT_2PI).sum(-1)
    torch.testing.assert_close(vae.prior_dist(5).log_prob(z), expected)


def test_learned_normal_starts_standard_and_uses_its_mean_and_scale():
    vae = tiny_vae(prior="normal").double()
    z = codes(4, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(vae.prior_dist(5).log_prob(z), (-0.5 * z**2 - LOG_SQRT_2PI).sum(-1))
    loc = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    scale = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    with torch.no_grad():
        vae.prior.loc.copy_(loc)
        vae.prior.raw_scale.copy_(torch.log(torch.expm1(scale - 1e-5)))
    torch.testing.assert_close(
        vae.prior_dist(5).log_prob(z), normal_log_density(z, loc, scale).sum(-1)
    )


def test_laplace_density():
    vae = tiny_vae(prior="laplace").double()
    z = codes(4, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(vae.prior_dist(5).log_prob(z), (-z.abs() - math.log(2)).sum(-1))


@pytest.mark.parametrize("df", [None, 5.5])
def test_student_t_density(df):
    vae = tiny_vae(prior="student-t", prior_options={} if df is None else {"df": df}).double()
    nu = 3.0 if df is None else df
    z = codes(4, 5, 3, dtype=torch.float64)
    per_dim = (
        math.lgamma((nu + 1) / 2)
        - math.lgamma(nu / 2)
        - 0.5 * math.log(nu * math.pi)
        - (nu + 1) / 2 * torch.log1p(z**2 / nu)
    )
    torch.testing.assert_close(vae.prior_dist(5).log_prob(z), per_dim.sum(-1))


def test_mog_density_is_the_logsumexp_over_its_components():
    vae = tiny_vae(prior="mog", prior_options={"components": 4}).double()
    prior = vae.prior
    with torch.no_grad():  # unequal weights and scales, so that every parameter matters
        prior.logits.copy_(torch.tensor([0.0, 1.0, -2.0, 0.5]))
        prior.raw_scales.add_(torch.linspace(-1.0, 1.0, 12).reshape(4, 3))
    z = codes(4, 5, 3, dtype=torch.float64)
    log_weights = prior.logits - prior.logits.logsumexp(0)
    scales = torch.nn.functional.softplus(prior.raw_scales) + 1e-5
    per_component = normal_log_density(z[..., None, :], prior.locs, scales).sum(-1)  # (4, 5, K)
    expected = torch.logsumexp(per_component + log_weights, dim=-1)
    torch.testing.assert_close(vae.prior_dist(5).log_prob(z), expected)
    assert not torch.allclose(prior.locs[0], prior.locs[1])  # the components start apart


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
def test_vamp_density_is_the_average_of_the_encoder_posteriors_at_the_pseudo_inputs(encoder):
    vae = tiny_vae(prior="vamp", encoder=encoder, prior_options={"components": 6}).double()
    u = vae.prior.pseudo_inputs
    assert u.shape == (6, 1, 8, 8)
    loc, scale = vae.encode(u)  # (K, z_dim) each: q(z | u_k) by the VAE's own encoder
    z = codes(4, 5, 3, dtype=torch.float64)
    per_component = normal_log_density(z[..., None, :], loc, scale).sum(-1)  # (4, 5, K)
    expected = torch.logsumexp(per_component, dim=-1) - math.log(6)
    torch.testing.assert_close(vae.prior_dist(5).log_prob(z), expected)


def integrate_flow_density(vae, z_dim):
    with torch.no_grad():
        if z_dim == 1:  # the splines give a spiky density: a fine grid
            grid = torch.linspace(-8, 8, 16_001, dtype=torch.float64)
            density = vae.prior_dist(1).log_prob(grid[:, None, None]).squeeze(-1).exp()
            return float(torch.trapezoid(density, grid))
        grid = torch.linspace(-8, 8, 401, dtype=torch.float64)
        points = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1)  # (401, 401, 2)
        density = vae.prior_dist(401).log_prob(points).exp()
        return float(torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid))


@pytest.mark.parametrize("z_dim", [1, 2])
def test_flow_density_integrates_to_one(z_dim):
    vae = tiny_vae(z_dim, prior="flow").double()
    assert integrate_flow_density(vae, z_dim) == pytest.approx(1.0, abs=1e-2)
    with torch.no_grad():  # move the flow away from its initial weights: still a density
        for param in vae.prior.parameters():
            param.add_(0.3 * torch.randn_like(param))
    assert integrate_flow_density(vae, z_dim) == pytest.approx(1.0, abs=1e-2)
    p = vae.prior_dist(1000)
    assert torch.isfinite(p.log_prob(p.sample())).all()


def flow_log_density_by_hand(vae, z):
    """log p(z) of the MAF prior: back through each step u = exp(s(z)) z + m(z), last step first,
    adding the log-Jacobians sum_i s_i; then the standard normal density of the base noise."""
    u, log_det = z, 0.0
    for arn in reversed(vae.prior.steps):
        mean, log_scale = arn(u)
        log_scale = log_scale.clamp(-5.0, 3.0)  # Pyro's clip of the log-scale
        u = torch.exp(log_scale) * u + mean
        log_det = log_det + log_scale.sum(-1)
    return (-0.5 * u**2 - LOG_SQRT_2PI).sum(-1) + log_det, u


def test_flow_density_matches_the_change_of_variables_by_hand():
    vae = tiny_vae(prior="flow", z_dim=4).double()
    z = codes(4, 5, 4, dtype=torch.float64)
    expected, _ = flow_log_density_by_hand(vae, z)
    torch.testing.assert_close(vae.prior_dist(5).log_prob(z), expected)


def test_flow_samples_invert_the_density_map():
    vae = tiny_vae(prior="flow", z_dim=4, prior_options={"flow_steps": 3}).double()
    p = vae.prior_dist(7)
    torch.manual_seed(1)
    z = p.sample()
    torch.manual_seed(1)
    noise = p.base_dist.sample()
    _, u = flow_log_density_by_hand(vae, z)
    torch.testing.assert_close(u, noise)


def test_flow_log_prob_takes_one_network_pass_per_step_and_sampling_z_dim():
    vae = tiny_vae(prior="flow", z_dim=6)
    calls = []
    for i, arn in enumerate(vae.prior.steps):
        arn.register_forward_hook(lambda *_, i=i: calls.append(i))
    vae.prior_dist(5).log_prob(codes(4, 5, 6))
    assert sorted(calls) == [0, 1]
    calls.clear()
    vae.prior_dist(5).sample()
    assert sorted(calls) == [0] * 6 + [1] * 6


def test_flow_sampling_reads_no_tensor_back_to_python():
    # The sequential inverse indexes z_dim times per step: with tensor indices, a GPU sync each.
    vae = tiny_vae(prior="flow", z_dim=4, prior_options={"flow_steps": 3})
    p = vae.prior_dist(5)
    with HostReads() as spy:
        z = p.sample()
    assert spy.reads == []
    assert z.shape == (5, 4) and torch.isfinite(z).all()


def test_flow_scores_its_sample_right_after_scoring_other_codes():
    # Scoring caches each step's log-scale; sampling must replace it with the sample's own
    # (through Pyro's private _cached_log_scale: this fails if an upgrade changes that).
    vae = tiny_vae(prior="flow", z_dim=4).double()
    p = vae.prior_dist(5)
    p.log_prob(codes(5, 4, dtype=torch.float64))
    z = p.sample()
    torch.testing.assert_close(p.log_prob(z), flow_log_density_by_hand(vae, z)[0])


def test_one_dimensional_flow_steps_are_pyros_rational_linear_splines():
    vae = tiny_vae(prior="flow", z_dim=1).double()
    with torch.no_grad():  # away from the initial weights, so that every parameter matters
        for param in vae.prior.parameters():
            param.add_(0.5 * torch.randn_like(param))
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)[:, None]
    for transform, spline in zip(vae.prior.transforms(), vae.prior.steps, strict=True):
        y = transform(x)
        torch.testing.assert_close(y, spline(x))
        torch.testing.assert_close(
            transform.log_abs_det_jacobian(x, y), spline.log_abs_det_jacobian(x, spline(x))
        )
        assert not torch.allclose(y, x)


def test_flow_never_scores_from_a_stale_cache():
    vae = tiny_vae(prior="flow")
    z = codes(4, 5, 3)
    for _ in range(2):  # the same z twice, each with a fresh graph
        vae.prior_dist(5).log_prob(z).sum().backward()
    before = vae.prior_dist(5).log_prob(z).detach()
    with torch.no_grad():  # an optimizer step changes the networks in place
        for param in vae.prior.parameters():
            param.add_(0.1)
    after = vae.prior_dist(5).log_prob(z).detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, flow_log_density_by_hand(vae, z)[0].detach())


def test_vamp_density_is_pytorchs_mixture_density_to_the_bit():
    vae = tiny_vae(prior="vamp", prior_options={"components": 6})
    p = vae.prior_dist(5)
    pytorch_mixture = dist.MixtureSameFamily(p.mixture_distribution, p.component_distribution)
    z = codes(4, 5, 3)
    assert torch.equal(p.log_prob(z), pytorch_mixture.log_prob(z))


class StockConditionalFlow(nn.Module):
    """A user's guide family: a diagonal Gaussian through Pyro's own conditional affine
    autoregressive step, which expands its context to z's shape (so z must not be size 1 where
    the context has K)."""

    name = "stock-flow"

    def __init__(self, z_dim, context_dim=4):
        super().__init__()
        self.z_dim, self.context_dim = z_dim, context_dim
        self.encoder_outputs = 2 * z_dim + context_dim
        self.step = pyro.distributions.transforms.conditional_affine_autoregressive(
            z_dim, context_dim
        )

    def params(self, h):
        loc, raw_scale, context = h.split([self.z_dim, self.z_dim, self.context_dim], dim=-1)
        return loc, torch.nn.functional.softplus(raw_scale) + 1e-5, context

    def forward(self, h):
        loc, scale, context = self.params(h)
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [self.step.condition(context)])


@pytest.mark.parametrize("guide", ["iaf", "stock-flow"])
def test_vamp_with_a_flow_guide_averages_the_posteriors_at_the_pseudo_inputs(guide):
    family = StockConditionalFlow(3) if guide == "stock-flow" else guide
    vae = tiny_vae(prior="vamp", guide=family, prior_options={"components": 4})
    z = codes(4, 5, 3)
    # each q(z | u_k) on its own, scored at every code: (4, 5) per component
    per_component = torch.stack(
        [vae.posterior_dist(u[None]).log_prob(z) for u in vae.prior.pseudo_inputs], dim=-1
    )
    expected = torch.logsumexp(per_component, dim=-1) - math.log(4)
    torch.testing.assert_close(vae.prior_dist(5).log_prob(z), expected)


# ---- the VampPrior's link to its VAE -------------------------------------------------------


def test_vamp_needs_to_be_attached():
    prior = VampPrior(3, (1, 8, 8))
    with pytest.raises(ConfigError, match="'vamp' prior .* must be attached to a VAE"):
        prior(5, torch.zeros(1))
    with pytest.raises(ConfigError, match="made for x_shape \\(1, 8, 8\\) and z_dim 3"):
        VAE((1, 4, 4), z_dim=3, hidden_dims=(16,), prior=prior)
    vae = VAE((1, 8, 8), z_dim=3, hidden_dims=(16,), prior=prior)  # a prior object attaches too
    assert vae.prior_dist(5).batch_shape == (5,)


def test_vamp_holds_no_module_cycle_and_deepcopy_rebinds_it():
    vae = tiny_vae(prior="vamp")
    assert [name for name, _ in vae.prior.named_modules()] == [""]
    assert list(vae.prior.state_dict()) == ["pseudo_inputs"]
    assert "VampPrior()" in repr(vae)
    twin = copy.deepcopy(vae)
    assert twin.prior._posterior_dist.__self__ is twin
    z = codes(4, 5, 3)
    with torch.no_grad():
        before = vae.prior_dist(5).log_prob(z)
        for param in twin.encoder.parameters():
            param.add_(0.1)
        assert torch.equal(vae.prior_dist(5).log_prob(z), before)  # the original is untouched
        assert not torch.equal(twin.prior_dist(5).log_prob(z), before)


# ---- closed-form KL ------------------------------------------------------------------------


def guide_normal(batch=5, z_dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, z_dim, generator=g, dtype=torch.float64)
    scale = 0.2 + torch.rand(batch, z_dim, generator=g, dtype=torch.float64)
    return loc, scale, pyro.distributions.Normal(loc, scale).to_event(1)


def gaussian_kl(m, s, mu, sigma):
    ratio = s**2 / sigma**2
    return 0.5 * (ratio + (m - mu) ** 2 / sigma**2 - 1 - ratio.log()).sum(-1)


def test_closed_form_kl_standard_normal():
    vae = tiny_vae(prior="standard-normal").double()
    m, s, q = guide_normal()
    expected = gaussian_kl(m, s, torch.zeros(3, dtype=torch.float64), 1.0)
    torch.testing.assert_close(kl_divergence(q, vae.prior_dist(5)), expected)


def test_closed_form_kl_learned_normal():
    vae = tiny_vae(prior="normal").double()
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    with torch.no_grad():
        vae.prior.loc.copy_(mu)
        vae.prior.raw_scale.copy_(torch.log(torch.expm1(sigma - 1e-5)))
    m, s, q = guide_normal()
    torch.testing.assert_close(kl_divergence(q, vae.prior_dist(5)), gaussian_kl(m, s, mu, sigma))


def test_closed_form_kl_laplace_matches_quadrature():
    # PyTorch registers KL(Normal || Laplace); check it against E_q[log q - log p] on a grid.
    vae = tiny_vae(prior="laplace").double()
    m, s, q = guide_normal()
    t = torch.linspace(-1, 1, 20_001, dtype=torch.float64)
    z = m[..., None] + 12 * s[..., None] * t  # (B, z_dim, N): +-12 sigma around each mean
    log_q = normal_log_density(z, m[..., None], s[..., None])
    integrand = log_q.exp() * (log_q - (-z.abs() - math.log(2)))
    expected = torch.trapezoid(integrand, z, dim=-1).sum(-1)
    torch.testing.assert_close(kl_divergence(q, vae.prior_dist(5)), expected)


@pytest.fixture(scope="module")
def digit_batch(digits):
    return eval_inputs(tiny_vae(prior="standard-normal").likelihood, digits.x_test[:16])


@pytest.mark.parametrize("name", NAMES)
def test_analytic_kl_exists_exactly_for_the_gaussian_and_laplace_priors(name, digit_batch):
    vae = tiny_vae(prior=name).double()
    _, _, q = guide_normal()
    p = vae.prior_dist(5)
    if name in CLOSED_FORM_KL:
        assert kl_divergence(q, p).shape == (5,)
        vae.float()
        assert torch.isfinite(manual_elbo(vae, digit_batch, analytic_kl=True))
        return
    with pytest.raises(NotImplementedError):
        kl_divergence(q, p)
    vae.float()
    with pytest.raises(ConfigError, match=f"'diagonal' guide and the '{name}' prior"):
        manual_elbo(vae, digit_batch, analytic_kl=True)


@pytest.mark.parametrize("name", sorted(set(NAMES) - CLOSED_FORM_KL))
def test_meanfield_training_without_closed_form_kl_stops_at_once(name, digits):
    vae = tiny_vae(prior=name)
    with pytest.raises(ConfigError, match=f"the '{name}' prior, so objective 'meanfield'"):
        train(vae, digits, epochs=1, objective="meanfield", device="cpu", progress=False,
            compile="off")


# ---- options -------------------------------------------------------------------------------


def test_options_reach_the_priors():
    mog = tiny_vae(prior="mog", prior_options={"components": 3})
    assert mog.prior.locs.shape == (3, 3)
    assert mog.prior_dist(5).mixture_distribution.logits.shape == (5, 3)
    vamp = tiny_vae(prior="vamp", prior_options={"components": 7})
    assert vamp.prior_dist(5).mixture_distribution.logits.shape == (5, 7)
    assert tiny_vae(prior="vamp").prior.pseudo_inputs.shape == (50, 1, 8, 8)
    assert tiny_vae(prior="mog").prior.locs.shape == (10, 3)
    assert tiny_vae(prior="student-t", prior_options={"df": 7}).prior.df == 7.0
    assert len(tiny_vae(prior="flow", prior_options={"flow_steps": 3}).prior.steps) == 3


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("mog", {"nope": 1}, "the 'mog' prior has no option 'nope'; it takes: components"),
        ("standard-normal", {"components": 3}, "has no option 'components'; it takes none"),
        ("flow", {"df": 3}, "it takes: flow_steps"),
        ("mog", {"components": 0}, 'prior_options["components"] must be at least 1, got 0'),
        ("vamp", {"components": 2.5}, 'prior_options["components"] must be a whole number, got'),
        ("mog", {"components": True}, 'components"] must be a whole number, got True'),
        ("flow", {"flow_steps": 0}, 'prior_options["flow_steps"] must be at least 1, got 0'),
        ("student-t", {"df": 0}, 'prior_options["df"] must be a positive finite number, got 0'),
        ("student-t", {"df": float("inf")}, 'df"] must be a positive finite number, got inf'),
        ("student-t", {"df": float("nan")}, 'df"] must be a positive finite number, got nan'),
    ],
)
def test_bad_options_are_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny_vae(prior=name, prior_options=options)


@pytest.mark.parametrize(
    "name,z_dim,option",
    [
        ("mog", 3, "components"),
        ("vamp", 3, "components"),
        ("flow", 1, "flow_steps"),
        ("flow", 4, "flow_steps"),
    ],
)
def test_a_huge_size_option_is_refused_before_anything_is_allocated(name, z_dim, option):
    with NoTorch(), pytest.raises(ConfigError) as error:
        VAE((1, 8, 8), z_dim=z_dim, hidden_dims=(16,), prior=name, prior_options={option: 10**12})
    param = f'prior_options["{option}"]'
    assert error.value.param == param
    message = str(error.value)
    assert message.startswith(f"{param} = 1000000000000 ") and "GiB" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "name,z_dim,options",
    [
        ("mog", 3, {}),
        ("mog", 8, {"components": 3}),
        ("vamp", 3, {}),
        ("flow", 1, {"flow_steps": 3}),
        ("flow", 2, {}),
        ("flow", 16, {"flow_steps": 3}),
    ],
)
def test_the_size_checked_bounds_the_size_built(name, z_dim, options, monkeypatch):
    checked = []
    itemsize = torch.get_default_dtype().itemsize
    monkeypatch.setattr(
        priors, "check_numbers_fit", lambda n, what, param: checked.append(n * itemsize)
    )
    prior = tiny_vae(z_dim, prior=name, prior_options=options).prior
    built = sum(t.numel() * t.element_size() for t in [*prior.parameters(), *prior.buffers()])
    assert len(checked) == 1 and built <= checked[0] <= 2 * built


# ---- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
@pytest.mark.parametrize("name", NAMES)
def test_training_improves_the_elbo_and_moves_the_prior(name, encoder, digits):
    pyro.set_rng_seed(0)
    vae = VAE(digits.x_shape, z_dim=3, hidden_dims=(16,), encoder=encoder, prior=name)
    start = {key: p.detach().clone() for key, p in vae.prior.named_parameters()}
    history = train(vae, digits, epochs=2, device="cpu", progress=False, compile="off")
    assert all(math.isfinite(v) for v in history.train_elbo + history.test_elbo)
    assert history.test_elbo[1] > history.test_elbo[0]
    for key, param in vae.prior.named_parameters():
        assert not torch.equal(param, start[key]), key
    assert torch.isfinite(vae.sample(4)).all()

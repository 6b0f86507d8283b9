"""The guide families q(z|x): shapes, reparameterized gradients, densities checked by hand and by
integration, what each family can represent, options, and training with each."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import HostReads, NoTorch, binary_batch, tiny_vae
from pyro.infer import Trace_ELBO
from torch.distributions import kl_divergence

from pyro_vae import VAE, ConfigError, train
from pyro_vae.infer.elbo import closed_form_kl
from pyro_vae.parts import guides
from pyro_vae.parts.guides import (
    GUIDES,
    MIN_SCALE,
    FullRankNormal,
    InverseAutoregressiveFlow,
    _IAFStep,
)
from pyro_vae.parts.registry import describe

SETUPS = [(3, "mlp"), (2, "mlp"), (3, "conv")]


def test_registry_lists_the_three_families_in_order():
    assert list(GUIDES) == ["diagonal", "full-rank", "iaf"]
    rows = describe(GUIDES)
    assert [(name, options) for name, options, _ in rows] == [
        ("diagonal", ""),
        ("full-rank", ""),
        ("iaf", "flow_steps=2, context_dim=16"),
    ]
    for name, cls in GUIDES.items():
        assert cls.name == name
        assert cls.description and "\n" not in cls.description


@pytest.mark.parametrize("z_dim", [1, 2, 3, 16])
def test_encoder_outputs(z_dim):
    assert GUIDES["diagonal"](z_dim).encoder_outputs == 2 * z_dim
    assert GUIDES["full-rank"](z_dim).encoder_outputs == z_dim + z_dim * (z_dim + 1) // 2
    assert GUIDES["iaf"](z_dim).encoder_outputs == 2 * z_dim + 16
    assert GUIDES["iaf"](z_dim, context_dim=5).encoder_outputs == 2 * z_dim + 5


@pytest.mark.parametrize("z_dim,encoder", SETUPS)
@pytest.mark.parametrize("guide", list(GUIDES))
def test_posterior_shapes_and_reparameterized_gradients(guide, z_dim, encoder):
    vae = tiny_vae(z_dim, guide=guide, encoder=encoder)
    x = binary_batch(5)
    q = vae.posterior_dist(x)
    assert q.batch_shape == (5,) and q.event_shape == (z_dim,) and q.has_rsample
    z = q.expand((4, 5)).rsample()  # what Pyro's vectorized particles do
    log_q = q.log_prob(z)
    assert z.shape == (4, 5, z_dim) and log_q.shape == (4, 5)
    assert torch.isfinite(log_q).all()
    assert len({tuple(r) for r in z.reshape(-1, z_dim).tolist()}) == 20  # independent draws
    params = list(vae.encoder.parameters()) + list(vae.posterior.parameters())
    for loss in (z.pow(2).sum(), log_q.sum()):  # both paths of the ELBO's gradient
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("z_dim,encoder", SETUPS)
@pytest.mark.parametrize("guide", list(GUIDES))
def test_encode_gives_a_code_first_and_reconstruct_decodes_it(guide, z_dim, encoder):
    vae = tiny_vae(z_dim, guide=guide, encoder=encoder, likelihood="bernoulli")
    x = binary_batch(5)
    # The code, from q(z|x) itself: a Gaussian's mean; for the flow, its base's mean pushed
    # through the flow's transforms (the image of eps = 0), which is not the flow's mean.
    with torch.no_grad():
        q = vae.posterior_dist(x)
        if guide == "iaf":
            code = q.base_dist.mean
            for transform in q.transforms:
                code = transform(code)
        else:
            code = q.mean
        # E[x|z] of Bernoulli pixels: the probabilities, sigmoid of the decoder's logits
        (logits,) = vae.decoder(code).unbind(1)
    assert code.shape == (5, z_dim)
    torch.testing.assert_close(vae.encode(x)[0], code)
    torch.testing.assert_close(vae.reconstruct(x), torch.sigmoid(logits))
    assert vae.reconstruct(x).shape == x.shape


def test_iaf_networks_are_parameters_of_the_vae():
    vae = tiny_vae(guide="iaf")
    flow = list(vae.posterior.parameters())
    assert len(flow) > 0
    assert {id(p) for p in flow} <= {id(p) for p in vae.parameters()}
    assert any(key.startswith("posterior.steps.1.") for key in vae.state_dict())
    clone = VAE((1, 8, 8), z_dim=3, hidden_dims=(16,), guide="iaf")  # other initial weights
    clone.load_state_dict(vae.state_dict())
    x = binary_batch(4)
    for a, b in zip(clone.encode(x), vae.encode(x), strict=True):
        assert torch.equal(a, b)


def test_full_rank_lays_out_the_cholesky_factor():
    family = FullRankNormal(3)
    h = torch.tensor([[0.5, -1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, -30.0]])
    loc, scale_tril = family.params(h)
    softplus = torch.nn.functional.softplus
    expected = torch.tensor(
        [
            [float(softplus(torch.tensor(1.0))) + MIN_SCALE, 0.0, 0.0],
            [2.0, float(softplus(torch.tensor(3.0))) + MIN_SCALE, 0.0],
            [4.0, 5.0, float(softplus(torch.tensor(-30.0))) + MIN_SCALE],
        ]
    )
    assert torch.equal(loc, torch.tensor([[0.5, -1.0, 2.0]]))
    torch.testing.assert_close(scale_tril[0], expected)
    assert scale_tril[0, 2, 2] > 0  # MIN_SCALE keeps the factor invertible in float32


def test_full_rank_log_prob_is_the_gaussian_density_written_out():
    vae = tiny_vae(guide="full-rank", z_dim=4).double()
    x = binary_batch(6).double()
    with torch.no_grad():
        loc, scale_tril = vae.encode(x)
    z = vae.posterior_dist(x).expand((3, 6)).rsample()
    # log N(z; mu, L L^T) = -|L^-1 (z - mu)|^2 / 2 - log|det L| - (d / 2) log(2 pi)
    u = torch.linalg.solve_triangular(scale_tril, (z - loc).unsqueeze(-1), upper=False)
    log_det = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    by_hand = -0.5 * u.squeeze(-1).pow(2).sum(-1) - log_det - 2 * math.log(2 * math.pi)
    torch.testing.assert_close(vae.posterior_dist(x).log_prob(z), by_hand, rtol=1e-12, atol=1e-12)
    # and the samples have that covariance
    many = vae.posterior_dist(x[:1]).expand((200_000, 1)).sample()[:, 0]
    cov = scale_tril[0] @ scale_tril[0].T
    torch.testing.assert_close(torch.cov(many.T), cov, atol=0.02 * float(cov.abs().max()), rtol=0)


def iaf_by_hand(family, h, eps):
    """Algorithm 1 of Kingma et al. (2016), written out: z and log q(z|x) for the noise eps."""
    loc, scale, context = family.base_params(h)
    z = loc + scale * eps
    log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
    for step in family.steps:
        m, s = step.nn(z, context=context)
        sigma = torch.sigmoid(s + 2.0)
        z = sigma * z + (1 - sigma) * m
        log_q = log_q - sigma.log().sum(-1)
    return z, log_q


@pytest.mark.parametrize("z_dim", [1, 3])
def test_iaf_sample_and_log_prob_match_algorithm_1(z_dim):
    vae = tiny_vae(guide="iaf", z_dim=z_dim, guide_options={"flow_steps": 3}).double()
    x = binary_batch(5).double()
    h = vae.encoder(x)
    torch.manual_seed(1)
    q = vae.posterior_dist(x)
    z = q.expand((4, 5)).rsample()
    log_q = q.log_prob(z)
    torch.manual_seed(1)
    eps = torch.randn(4, 5, z_dim, dtype=torch.float64)
    z_hand, log_q_hand = iaf_by_hand(vae.posterior, h, eps)
    torch.testing.assert_close(z, z_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_q, log_q_hand, rtol=1e-12, atol=1e-12)
    # the representative code is the base mean pushed through the same flow
    code, loc, scale, context = vae.encode(x)
    torch.testing.assert_close(code, iaf_by_hand(vae.posterior, h, torch.zeros_like(loc))[0])


def test_iaf_steps_are_autoregressive_in_alternating_order():
    family = InverseAutoregressiveFlow(3)
    x, context = torch.randn(1, 3), torch.randn(1, 16)
    orders = (torch.ones(3, 3).tril(-1), torch.ones(3, 3).triu(1))  # 0, 1, 2 then 2, 1, 0
    for step, earlier in zip(family.steps, orders, strict=True):

        def shift_and_scale(v, step=step):
            return torch.cat(step.nn(v, context=context), dim=-1)

        jacobian = torch.autograd.functional.jacobian(shift_and_scale, x)[0, :, 0, :]
        # m[i] and s[i] see exactly the variables before i in the step's order, and h
        assert torch.equal(jacobian.ne(0).float(), torch.cat([earlier, earlier]))
    one = InverseAutoregressiveFlow(1)
    x = torch.randn(4, 1, requires_grad=True)
    m, s = one.steps[0].nn(x, context=torch.randn(4, 16))
    assert torch.autograd.grad((m + s).sum(), x)[0].eq(0).all()  # z_dim = 1: h only


def test_iaf_log_jacobian_is_that_of_the_whole_flow():
    # The triangular-Jacobian shortcut against the full Jacobian of eps -> z, one example.
    vae = tiny_vae(guide="iaf", z_dim=4).double()
    h = vae.encoder(binary_batch(1).double())
    loc, scale, _ = vae.posterior.base_params(h)
    eps = torch.randn(1, 4, dtype=torch.float64)

    def flow(e):
        return iaf_by_hand(vae.posterior, h, e)[0]

    jacobian = torch.autograd.functional.jacobian(flow, eps)[0, :, 0, :]
    _, log_q = iaf_by_hand(vae.posterior, h, eps)
    base = dist.Normal(loc, scale).log_prob(loc + scale * eps).sum(-1)
    # log q(z) = log N(eps) - log|det dz/d eps|, and log N(z0) = log N(eps) - sum log sigma
    log_n_eps = base + scale.log().sum(-1)
    torch.testing.assert_close(log_q, log_n_eps - torch.linalg.slogdet(jacobian)[1])


def test_iaf_scores_its_own_samples_from_the_cache(monkeypatch):
    # Pyro's vectorized particles expand q, sample, run the model, then score that z: no
    # sequential inversion of the flow may happen on the way.
    def no_inverse(self, y):
        raise AssertionError("the IAF was inverted instead of read from its cache")

    vae = tiny_vae(guide="iaf")
    x = binary_batch(6)
    monkeypatch.setattr(_IAFStep, "_inverse", no_inverse)
    for particles in (1, 3):
        elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
        assert torch.isfinite(elbo.differentiable_loss(vae.model, vae.guide, x))
    with pytest.raises(AssertionError, match="inverted"):
        q = vae.posterior_dist(x)
        q.log_prob(q.rsample().clone())  # a z it did not just produce needs the inverse


def test_iaf_scores_other_codes_without_reading_tensors_back_to_python():
    # The sequential inverse indexes z_dim times per step: with tensor indices, a GPU sync each.
    vae = tiny_vae(guide="iaf", z_dim=4)
    q = vae.posterior_dist(binary_batch(5))
    z = torch.randn(3, 5, 4)
    with pyro.validation_enabled(False), HostReads() as spy:  # validating reads by design
        log_q = q.log_prob(z)
    assert spy.reads == []
    assert log_q.shape == (3, 5) and torch.isfinite(log_q).all()


def test_iaf_scores_any_code_right_after_sampling():
    # Sampling caches each step's log-scale; inverting must replace it with the code's own
    # (through Pyro's private _cached_log_scale: this fails if an upgrade changes that).
    vae = tiny_vae(guide="iaf", z_dim=3).double()
    x = binary_batch(5).double()
    q = vae.posterior_dist(x)
    q.rsample()
    eps = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z, log_q = iaf_by_hand(vae.posterior, vae.encoder(x), eps)
    torch.testing.assert_close(q.log_prob(z.detach().clone()), log_q, rtol=1e-10, atol=1e-10)


def grid_integral(q, z_dim, lo, hi, n):
    axes = [
        torch.linspace(float(lo[i]), float(hi[i]), n, dtype=torch.float64) for i in range(z_dim)
    ]
    points = torch.cartesian_prod(*axes).reshape(-1, z_dim)
    cell = math.prod(float(a[1] - a[0]) for a in axes)
    with torch.no_grad():
        return q.log_prob(points.unsqueeze(1)).exp().sum(0) * cell


@pytest.mark.parametrize("z_dim,n", [(1, 4001), (2, 301)])
@pytest.mark.parametrize("guide", list(GUIDES))
def test_density_integrates_to_one(guide, z_dim, n):
    # Arbitrary z, not samples: for the iaf this runs the sequential inverse, in float64.
    vae = tiny_vae(guide=guide, z_dim=z_dim).double()
    q = vae.posterior_dist(binary_batch(2).double())
    with torch.no_grad():
        draws = q.sample((20_000,))
    lo = draws.amin((0, 1)) - 8 * draws.std((0, 1))
    hi = draws.amax((0, 1)) + 8 * draws.std((0, 1))
    torch.testing.assert_close(
        grid_integral(q, z_dim, lo, hi, n), torch.ones(2, dtype=torch.float64), rtol=0, atol=2e-3
    )


@pytest.mark.parametrize("guide", list(GUIDES))
def test_float64(guide):
    vae = tiny_vae(guide=guide).double()
    x = binary_batch(4).double()
    q = vae.posterior_dist(x)
    z = q.expand((2, 4)).rsample()
    assert z.dtype == q.log_prob(z).dtype == vae.encode(x)[0].dtype == torch.float64
    loss = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    assert torch.isfinite(loss.differentiable_loss(vae.model, vae.guide, x))
    assert vae.reconstruct(x).dtype == torch.float64


def test_iaf_with_one_latent_dimension_builds_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vae = tiny_vae(guide="iaf", z_dim=1)
    q = vae.posterior_dist(binary_batch(3))
    assert q.expand((2, 3)).rsample().shape == (2, 3, 1)


def fit_to_target(name, target, steps=200):
    """Maximize E_q[log target - log q] over one fixed encoder output h (and the family's own
    parameters); return the fitted q."""
    torch.manual_seed(0)
    family = GUIDES[name](2)
    h = torch.zeros(1, family.encoder_outputs, requires_grad=True)
    optimizer = torch.optim.Adam([h, *family.parameters()], lr=0.05)
    for _ in range(steps):
        q = family(h)
        z = q.expand((128, 1)).rsample()
        loss = (q.log_prob(z) - target.log_prob(z)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return family, h.detach()


def test_full_rank_captures_correlation_the_diagonal_cannot():
    rho = 0.8
    cov = torch.tensor([[1.0, rho * 2.0], [rho * 2.0, 4.0]])
    target = dist.MultivariateNormal(torch.tensor([1.0, -1.0]), cov)
    full, h = fit_to_target("full-rank", target)
    loc, scale_tril = full.params(h)
    fitted = scale_tril[0] @ scale_tril[0].T
    assert float(fitted[0, 1] / fitted.diagonal().prod().sqrt()) == pytest.approx(rho, abs=0.05)
    torch.testing.assert_close(loc[0], target.loc, atol=0.1, rtol=0)
    kl_full = kl_divergence(dist.MultivariateNormal(loc, scale_tril=scale_tril), target)
    assert float(kl_full) < 0.02

    diagonal, h = fit_to_target("diagonal", target)
    loc, scale = diagonal.params(h)
    kl_diag = kl_divergence(
        dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale)), target
    )
    # the best any diagonal Gaussian can do: KL = -log(1 - rho^2) / 2 = 0.511 nats
    assert float(kl_diag) == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.03)


def test_iaf_captures_correlation_too():
    rho = 0.8
    target = dist.MultivariateNormal(
        torch.tensor([1.0, -1.0]), torch.tensor([[1.0, rho * 2.0], [rho * 2.0, 4.0]])
    )
    iaf, h = fit_to_target("iaf", target, steps=150)
    with torch.no_grad():
        z = iaf(h).sample((20_000,))[:, 0]
    # two steps of a small flow on a fixed h: close, if less exactly than the full-rank family
    assert float(torch.corrcoef(z.T)[0, 1]) == pytest.approx(rho, abs=0.15)


@pytest.mark.parametrize(
    "guide,encoder", [(g, "mlp") for g in GUIDES] + [("iaf", "conv")], ids=lambda v: v
)
def test_each_family_trains(digits, guide, encoder):
    pyro.set_rng_seed(0)
    hidden = (64,) if encoder == "mlp" else (16, 32)
    vae = VAE(digits.x_shape, z_dim=4, hidden_dims=hidden, encoder=encoder, guide=guide)
    history = train(vae, digits, epochs=2, device="cpu", progress=False, compile="off")
    assert all(math.isfinite(v) for v in history.train_elbo + history.test_elbo)
    assert all(math.isfinite(v) for v in history.step_loss)
    assert history.test_elbo[1] > history.test_elbo[0]


def test_iaf_options():
    vae = tiny_vae(guide="iaf", guide_options={"flow_steps": 3, "context_dim": 5})
    assert len(vae.posterior.steps) == 3
    assert vae.posterior.encoder_outputs == 2 * 3 + 5
    assert vae.config["guide_options"] == {"flow_steps": 3, "context_dim": 5}
    assert len(tiny_vae(guide="iaf").posterior.steps) == 2
    orders = [step.nn.permutation.tolist() for step in vae.posterior.steps]
    assert orders == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]  # reversed after every step
    assert isinstance(vae.posterior, InverseAutoregressiveFlow)


@pytest.mark.parametrize(
    "value,problem",
    [
        (0, "must be at least 1, got 0"),
        (-1, "must be at least 1, got -1"),
        (2.5, "must be a whole number, got 2.5"),
        ("3", "must be a whole number, got '3'"),
        (True, "must be a whole number, got True"),
        (None, "must be a whole number, got None"),
    ],
)
def test_iaf_rejects_bad_option_values(value, problem):
    for option in ("flow_steps", "context_dim"):
        with pytest.raises(ConfigError) as error:
            tiny_vae(guide="iaf", guide_options={option: value})
        assert error.value.param == f'guide_options["{option}"]'
        assert str(error.value) == f'guide_options["{option}"] {problem}'


def test_a_huge_number_of_iaf_steps_is_refused_before_anything_is_allocated():
    with NoTorch(), pytest.raises(ConfigError) as error:
        VAE(
            (1, 8, 8), z_dim=3, hidden_dims=(16,), guide="iaf", guide_options={"flow_steps": 10**12}
        )
    assert error.value.param == 'guide_options["flow_steps"]'
    message = str(error.value)
    assert message.startswith('guide_options["flow_steps"] = 1000000000000 ') and "GiB" in message
    assert "\n" not in message


@pytest.mark.parametrize("z_dim,flow_steps,context_dim", [(1, 2, 16), (3, 2, 16), (8, 3, 5)])
def test_the_size_checked_bounds_the_size_built(z_dim, flow_steps, context_dim, monkeypatch):
    checked = []
    itemsize = torch.get_default_dtype().itemsize
    monkeypatch.setattr(
        guides, "check_numbers_fit", lambda n, what, param: checked.append(n * itemsize)
    )
    family = InverseAutoregressiveFlow(z_dim, flow_steps=flow_steps, context_dim=context_dim)
    built = sum(t.numel() * t.element_size() for t in [*family.parameters(), *family.buffers()])
    assert len(checked) == 1 and built <= checked[0] <= 2 * built


def test_unknown_guide_options_are_config_errors():
    with pytest.raises(ConfigError, match="has no option 'steps'; it takes: flow_steps, context"):
        tiny_vae(guide="iaf", guide_options={"steps": 3})
    with pytest.raises(ConfigError, match="'full-rank' guide has no option 'flow_steps'; it takes"):
        tiny_vae(guide="full-rank", guide_options={"flow_steps": 3})


def test_closed_form_kl_exists_for_the_diagonal_family_only(digits):
    x = binary_batch(3)
    for guide in GUIDES:
        vae = tiny_vae(guide=guide)
        q, p = vae.posterior_dist(x), vae.prior_dist(3)
        if guide == "diagonal":
            # by hand, per example: sum_d (mu_d^2 + sigma_d^2 - 1) / 2 - log sigma_d against the
            # standard normal prior
            mu, sigma = vae.encode(x)
            by_hand = ((mu**2 + sigma**2 - 1) / 2 - sigma.log()).sum(-1)
            kl = closed_form_kl(vae, q, p)
            assert kl.shape == (3,) and (by_hand > 0.01).all()
            torch.testing.assert_close(kl, by_hand, rtol=1e-5, atol=1e-6)
            continue
        with pytest.raises(NotImplementedError):
            kl_divergence(q, p)
        with pytest.raises(ConfigError, match=f"no closed-form KL between the '{guide}' guide"):
            train(vae, digits, epochs=1, objective="meanfield", device="cpu", progress=False,
                compile="off")

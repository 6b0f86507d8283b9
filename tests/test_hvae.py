"""The hierarchical VAE (Burda et al. 2015's architecture), a user's own Pyro program: its
hand-written ELBO and IWAE bound against Pyro's objectives on its programs (value and gradient,
under one seed), those bounds against log p(x) and the ELBO computed by quadrature with densities
written here, and its other methods."""

import json
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.hvae import HVAE
from pyro_vae.models.user import LatentScale

SMALL = {"z_dims": (6, 3), "hidden_dims": ((32, 32), (16, 16))}
# relative, of a value and of each parameter's gradient (to its largest entry); measured: float64
# agrees to 1e-14, float32 to 5e-6 (summation order; the IWAE's normalized weights)
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.fixture(scope="module")
def batch():
    """32 digits binarized with a fixed seed, floats 0/1, (32, 1, 8, 8)."""
    from pyro_vae.data.sources import load_dataset

    grey = load_dataset("digits").x_train[:32].float() / 255
    return torch.bernoulli(grey, generator=torch.Generator().manual_seed(0))


def small_hvae(dtype=torch.float64, seed=0, **options):
    torch.manual_seed(seed)
    return HVAE((1, 8, 8), **{**SMALL, **options}).to(dtype)


def grads(loss, module):
    return torch.autograd.grad(loss, list(module.parameters()))


def assert_agree(pyro_loss, pyro_grads, twin_loss, twin_grads, rtol):
    assert pyro_loss.item() == pytest.approx(twin_loss.item(), rel=rtol, abs=0)
    assert len(pyro_grads) == len(twin_grads) > 0
    for a, b in zip(pyro_grads, twin_grads, strict=True):
        assert b.abs().max() > 0
        assert (a - b).abs().max() <= rtol * b.abs().max()


def trace_elbo(k):
    return Trace_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 3])
def test_manual_elbo_is_pyros_trace_elbo(batch, dtype, k):
    h, x = small_hvae(dtype), batch.to(dtype)
    pyro.set_rng_seed(1)
    loss = trace_elbo(k).differentiable_loss(h.model, h.guide, x)
    pyro.set_rng_seed(1)
    twin = -h.manual_elbo(x, k)
    assert_agree(loss, grads(loss, h), twin, grads(twin, h), RTOL[dtype])
    pyro.set_rng_seed(2)  # other draws, another value: the agreement is not of a constant
    assert h.manual_elbo(x, k).item() != pytest.approx(-twin.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 3])
def test_kl_weighted_manual_elbo_is_trace_elbo_under_latent_scale(batch, dtype, k):
    h, x = small_hvae(dtype, seed=3), batch.to(dtype)
    pyro.set_rng_seed(4)
    with LatentScale(0.3):
        loss = trace_elbo(k).differentiable_loss(h.model, h.guide, x)
    pyro.set_rng_seed(4)
    twin = -h.manual_elbo(x, k, kl_weight=0.3)
    assert_agree(loss, grads(loss, h), twin, grads(twin, h), RTOL[dtype])
    pyro.set_rng_seed(4)
    assert h.manual_elbo(x, k).item() != pytest.approx(-twin.item(), rel=1e-3)  # w matters


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_manual_iwae_is_pyros_renyi_elbo_with_alpha_zero(batch, dtype):
    h, x, k = small_hvae(dtype, seed=5), batch.to(dtype), 5
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(6)
    h.zero_grad(set_to_none=True)
    loss = renyi.loss_and_grads(h.model, h.guide, x)  # RenyiELBO has no differentiable_loss
    pyro_grads = [p.grad.clone() for p in h.parameters()]
    pyro.set_rng_seed(6)
    bound = h.manual_iwae(x, k)
    assert bound.shape == (len(x),)
    twin = -bound.sum()
    loss = torch.tensor(loss, dtype=dtype)
    assert_agree(loss, pyro_grads, twin, grads(twin, h), RTOL[dtype])
    pyro.set_rng_seed(6)
    assert bound.sum().item() > h.manual_elbo(x, k).item()  # Jensen, at the same draws


def test_the_default_architecture_is_burdas_and_agrees_with_pyro():
    torch.manual_seed(7)
    h = HVAE((1, 28, 28))
    widths = [
        [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)]
        for net in (*h.encoders, *h.decoders)
    ]
    assert widths == [
        [(784, 200), (200, 200), (200, 200)],  # q(z1|x): 200 loc + 200 raw scales
        [(100, 100), (100, 100), (100, 100)],  # q(z2|z1): 50 + 50
        [(100, 200), (200, 200), (200, 784)],  # p(x|z1): the logits
        [(50, 100), (100, 100), (100, 200)],  # p(z1|z2): 100 + 100
    ]
    assert sum(isinstance(m, nn.Tanh) for m in h.modules()) == 8
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    model = poutine.trace(h.model).get_trace(x)
    guide = poutine.trace(h.guide).get_trace(x)
    shapes = {n: s["value"].shape for n, s in model.nodes.items() if s["type"] == "sample"}
    assert shapes == {"data": (8,), "z2": (8, 50), "z1": (8, 100), "x": (8, 784)}
    assert [n for n, s in guide.nodes.items() if s["type"] == "sample"] == ["data", "z1", "z2"]
    pyro.set_rng_seed(8)
    loss = trace_elbo(2).differentiable_loss(h.model, h.guide, x)
    pyro.set_rng_seed(8)
    twin = -h.manual_elbo(x, 2)
    assert loss.item() == pytest.approx(twin.item(), rel=RTOL[torch.float32])


# ---- an independent check: log p(x) and the ELBO by quadrature over a grid of z, with the
# networks and densities written out here (Linear, tanh; loc and softplus(r) + 1e-5)


def mlp(net, h):
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for m in linears[:-1]:
        h = torch.tanh(h @ m.weight.T + m.bias)
    return h @ linears[-1].weight.T + linears[-1].bias


def gaussian(net, h):
    loc, raw = mlp(net, h).chunk(2, dim=-1)
    return loc, F.softplus(raw) + 1e-5


def log_normal(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(
        -1
    )


def quadrature(h, x, w):
    """log p(x), E_q[f] and Var_q[f] for f = log p(x|z1) + w (log p(z) - log q(z|x)), one example
    ``x`` (1, D), on a grid of step 0.1 over [-7, 7] in each latent dimension (z1 2-D, z2 1-D),
    with the weights of q summing to 1 (the grid holds its mass)."""
    grid = torch.linspace(-7, 7, 141, dtype=torch.float64)
    step = (grid[1] - grid[0]).item()
    z1 = torch.cartesian_prod(grid, grid)  # (N1, 2)
    logits = mlp(h.decoders[0], z1)
    log_px = (x * logits - F.softplus(logits)).sum(-1)[:, None]  # (N1, 1)
    log_q1 = log_normal(z1, *gaussian(h.encoders[0], x))[:, None]
    if len(h.z_dims) == 1:
        log_p, log_q, log_cell = log_normal(z1, 0.0, torch.ones(()))[:, None], log_q1, 2
    else:
        z2 = grid[:, None]  # (N2, 1)
        loc2, scale2 = gaussian(h.encoders[1], z1)  # q(z2|z1), (N1, 1) each
        loc1, scale1 = gaussian(h.decoders[1], z2)  # p(z1|z2), (N2, 2) each
        log_q = log_q1 + log_normal(z2.T[..., None], loc2[:, None], scale2[:, None])  # (N1, N2)
        log_p = log_normal(z2, 0.0, torch.ones(()))[None] + log_normal(z1[:, None], loc1, scale1)
        log_cell = 3
    log_cell *= math.log(step)
    q = torch.exp(log_q + log_cell)
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-6)
    f = log_px + w * (log_p - log_q)
    mean = (q * f).sum()
    var = (q * (f - mean) ** 2).sum()
    return float(torch.logsumexp((log_px + log_p).flatten(), 0)) + log_cell, float(mean), float(var)


@pytest.mark.parametrize(
    "z_dims, hidden_dims, iwae_tol",
    [((2,), ((8,),), 0.03), ((2, 1), ((8,), (4,)), 0.1)],
)
def test_the_bounds_agree_with_quadrature(z_dims, hidden_dims, iwae_tol):
    torch.manual_seed(9)
    h = HVAE((8,), z_dims, hidden_dims).double()
    with torch.no_grad():  # a sharper likelihood: the posterior is far from the prior
        [m for m in h.decoders[0] if isinstance(m, nn.Linear)][-1].weight.mul_(3.0)
    x = torch.tensor([[1.0, 0, 1, 1, 0, 0, 1, 0]], dtype=torch.float64)
    k = 20000
    with torch.no_grad():
        for w in (1.0, 0.3):
            log_px, elbo, var = quadrature(h, x, w)
            pyro.set_rng_seed(10)
            estimate = float(h.manual_elbo(x, k, kl_weight=w))
            assert abs(estimate - elbo) < 5 * math.sqrt(var / k)  # 5 standard errors
        elbo = quadrature(h, x, 1.0)[1]
        pyro.set_rng_seed(11)
        iwae = float(h.manual_iwae(x, k))
    assert elbo < iwae and elbo < log_px - 0.2  # the ELBO is well below; the IWAE bound is near
    assert iwae == pytest.approx(log_px, abs=iwae_tol)


# ---- the other methods


def test_sample_reconstruct_and_encode(batch):
    h, x = small_hvae(torch.float32), batch
    pyro.set_rng_seed(12)
    means = h.sample(7)
    pyro.set_rng_seed(12)
    assert torch.equal(h.sample(7), means)  # seeded alike, drawn alike
    draws = h.sample(7, mean=False)
    assert means.shape == draws.shape == (7, 1, 8, 8)
    assert not means.requires_grad and ((means > 0) & (means < 1)).all()
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(means[0], means[1])  # each image has its own z2 and z1
    loc, scale = h.encode(x)
    assert loc.shape == scale.shape == (32, 6) and (scale > 0).all()
    recon = h.reconstruct(x)
    assert recon.shape == x.shape and not recon.requires_grad
    assert ((recon > 0) & (recon < 1)).all() and not torch.equal(recon[0], recon[1])
    decoded = torch.sigmoid(mlp(h.decoders[0], loc)).reshape(x.shape)
    assert torch.allclose(recon, decoded, atol=1e-6)


def test_config_rebuilds_the_model(batch):
    h = small_hvae(torch.float32)
    config = json.loads(json.dumps(h.config))
    assert h.config == config  # lists already, as JSON gives them back
    assert config == {"x_shape": [1, 8, 8], "z_dims": [6, 3], "hidden_dims": [[32, 32], [16, 16]]}
    twin = HVAE(**config)
    twin.load_state_dict(h.state_dict())
    pyro.set_rng_seed(13)
    value = h.manual_elbo(batch, 2)
    pyro.set_rng_seed(13)
    assert torch.equal(twin.manual_elbo(batch, 2), value)


@pytest.mark.parametrize(
    "options, named",
    [
        ({"z_dims": (6, 3), "hidden_dims": ((32,),)}, "z_dims and hidden_dims"),
        ({"z_dims": (6,), "hidden_dims": ((32,), (16,))}, "z_dims and hidden_dims"),
        ({"z_dims": (6,), "hidden_dims": (32,)}, "hidden_dims"),
        ({"z_dims": (0,), "hidden_dims": ((32,),)}, "z_dims"),
        ({"z_dims": (6,), "hidden_dims": "32"}, "hidden_dims"),
    ],
)
def test_the_constructor_refuses_mismatched_or_bad_sizes(options, named):
    with pytest.raises(ConfigError, match=named) as refused:
        HVAE((1, 8, 8), **options)
    assert "\n" not in str(refused.value)

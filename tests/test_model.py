import pyro
import pyro.optim
import pytest
import torch
from conftest import binary_batch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import VAE, ConfigError

SHAPES = [
    ("mlp", (1, 8, 8)),
    ("conv", (1, 8, 8)),
    ("conv", (1, 28, 28)),
    ("conv", (3, 13, 9)),
    ("mlp", (20,)),
]


def traces(vae, x):
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    return model_trace, guide_trace


@pytest.mark.parametrize("encoder,x_shape", SHAPES)
def test_site_names_and_shapes(encoder, x_shape):
    vae = VAE(x_shape, z_dim=3, hidden_dims=(8, 16), encoder=encoder)
    x = binary_batch(5, x_shape)
    model_trace, guide_trace = traces(vae, x)
    model_sites = {n: s for n, s in model_trace.nodes.items() if s["type"] == "sample"}
    guide_sites = {n: s for n, s in guide_trace.nodes.items() if s["type"] == "sample"}
    assert set(model_sites) == {"data", "z", "x"}
    assert set(guide_sites) == {"data", "z"}
    assert model_sites["x"]["is_observed"] and not model_sites["z"]["is_observed"]
    assert model_sites["z"]["value"].shape == (5, 3)
    assert model_sites["z"]["fn"].event_shape == (3,)
    assert guide_sites["z"]["fn"].event_shape == (3,)
    assert model_sites["x"]["fn"].batch_shape == (5,)
    assert model_sites["x"]["fn"].event_shape == x_shape
    # the guide's z is the very z the model scores
    assert model_sites["z"]["value"] is guide_sites["z"]["value"]


def test_guide_sample_is_reparameterized(small_vae):
    x = binary_batch(6)
    _, guide_trace = traces(small_vae, x)
    z = guide_trace.nodes["z"]["value"]
    assert guide_trace.nodes["z"]["fn"].has_rsample
    z.sum().backward()
    grads = [p.grad for p in small_vae.encoder.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
def test_public_methods(encoder):
    vae = VAE((1, 8, 8), z_dim=4, hidden_dims=(16,), encoder=encoder)
    x = binary_batch(7)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (7, 4) and (scale > 0).all()
    prior = vae.prior_dist(5)
    assert prior.batch_shape == (5,) and prior.event_shape == (4,)
    assert vae.likelihood_dist(torch.zeros(2, 3, 4)).batch_shape == (2, 3)
    assert vae.likelihood_dist(torch.zeros(2, 4)).event_shape == (1, 8, 8)
    rec = vae.reconstruct(x)
    assert rec.shape == x.shape and (rec >= 0).all() and (rec <= 1).all()
    assert vae.sample(9).shape == (9, 1, 8, 8)
    drawn = vae.sample(9, mean=False)
    assert ((drawn == 0) | (drawn == 1)).all()


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
def test_vectorized_particles_match_a_loop_of_particles(encoder):
    # Pyro's vectorized particles put an extra dim in front of the data plate; the decoder must
    # carry it through. Same seed -> the vectorized and the looped estimates use different draws,
    # so compare their means over many particles instead.
    vae = VAE((1, 8, 8), z_dim=2, hidden_dims=(8,), encoder=encoder)
    x = binary_batch(3)
    torch.manual_seed(0)
    vectorized = Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
    looped = Trace_ELBO(num_particles=400)
    a = float(vectorized.loss(vae.model, vae.guide, x))
    b = float(looped.loss(vae.model, vae.guide, x))
    assert a == pytest.approx(b, rel=0.01)


def test_model_tensors_follow_the_data_dtype_and_device(small_vae):
    # Prior parameters are made with x.new_zeros: a float64 model on float64 data stays float64.
    vae = small_vae.double()
    x = binary_batch(4).double()
    model_trace, _ = traces(vae, x)
    assert model_trace.nodes["z"]["fn"].base_dist.loc.dtype == torch.float64
    assert vae.prior_dist(3).sample().dtype == torch.float64


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ConfigError, match="unknown prior 'nope'; choose one of: standard-normal"):
        VAE((1, 8, 8), prior="nope")
    with pytest.raises(ConfigError, match="unknown likelihood 'gauss'; choose one of: bernoulli"):
        VAE((1, 8, 8), likelihood="gauss")
    with pytest.raises(ConfigError, match="unknown guide 'flow'; choose one of: diagonal"):
        VAE((1, 8, 8), guide="flow")
    with pytest.raises(ConfigError, match="unknown encoder 'rnn'; choose one of: mlp, conv"):
        VAE((1, 8, 8), encoder="rnn")
    with pytest.raises(ConfigError, match="conv encoder needs images"):
        VAE((20,), encoder="conv")
    with pytest.raises(ConfigError, match="z-dim must be a positive integer"):
        VAE((1, 8, 8), z_dim=0)
    with pytest.raises(ConfigError, match="hidden dims"):
        VAE((1, 8, 8), hidden_dims=())


def test_textbook_svi_loop_trains_the_vae(small_vae):
    # The loop from Pyro's tutorials works on vae.model / vae.guide as they are.
    x = binary_batch(64)
    before = [p.detach().clone() for p in small_vae.parameters()]
    svi = SVI(small_vae.model, small_vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(50)]
    assert all(not torch.equal(b, p) for b, p in zip(before, small_vae.parameters(), strict=True))
    assert sum(losses[-10:]) < sum(losses[:10])

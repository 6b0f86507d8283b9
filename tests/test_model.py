import pyro
import pyro.optim
import pytest
import torch
from helpers import binary_batch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_vae import VAE, ConfigError, train
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.priors import PRIORS

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
    # A reconstruction is E[x|z] at the guide's mean code: the mean of torch's Bernoulli there.
    rec = vae.reconstruct(x)
    assert rec.shape == x.shape
    assert torch.allclose(rec, vae.likelihood_dist(loc).mean)
    assert vae.sample(9).shape == (9, 1, 8, 8)
    drawn = vae.sample(4000, mean=False)
    assert ((drawn == 0) | (drawn == 1)).all()
    # The images E[x|z] average, over z ~ p(z), to what the draws x ~ p(x|z) average to.
    means = vae.sample(4000)
    standard_error = (drawn.var(0) / 4000 + means.var(0) / 4000).sqrt()
    assert ((drawn.mean(0) - means.mean(0)).abs() < 5 * standard_error).all()


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


def tensors_of(site):
    """Every tensor a trace's sample site holds: its value, log density and the parameters of
    its distribution (and of the distributions that one wraps)."""
    found = [site[key] for key in ("value", "log_prob") if torch.is_tensor(site.get(key))]
    fn, seen = site["fn"], 0
    while fn is not None and seen < 5:
        found += [v for v in vars(fn).values() if torch.is_tensor(v)]
        fn, seen = getattr(fn, "base_dist", None), seen + 1
    return found


PARTS = [("prior", name) for name in PRIORS] + [("guide", name) for name in GUIDES]
PARTS += [("likelihood", name) for name in LIKELIHOODS]


@pytest.mark.parametrize("part", PARTS, ids=lambda part: f"{part[0]}-{part[1]}")
def test_model_tensors_follow_the_data_dtype_and_device(part):
    # Every tensor the model and guide make must be made on the VAE's (and the data's) device
    # and in its dtype: one made with torch.zeros(...) instead of x.new_zeros(...) would be a
    # CPU float32 tensor. The "meta" device holds shapes but no data, so this runs anywhere
    # (and costs nothing); tests/test_cuda.py runs on a real GPU.
    kind, name = part
    options = {"likelihood_options": {"bins": 2}} if name == "discretized-logistic" else {}
    vae = VAE((1, 8, 8), z_dim=3, hidden_dims=(8,), **{kind: name}, **options)
    vae = vae.to("meta", torch.float64)
    x = torch.empty(4, 1, 8, 8, device="meta", dtype=torch.float64)
    with pyro.validation_enabled(False):  # validation reads values, which meta has not got
        model_trace, guide_trace = traces(vae, x)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        made = [vae.prior_dist(3).sample(), vae.sample(2), vae.reconstruct(x), *vae.encode(x)]
        if name != "beta":  # torch has no meta kernel for drawing Beta variates
            made.append(vae.sample(2, mean=False))
    tensors = made + [
        t
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)  # plate indices: Pyro's
        for t in tensors_of(site)
    ]
    assert len(tensors) > 8
    assert {(t.device.type, t.dtype) for t in tensors} == {("meta", torch.float64)}


@pytest.mark.parametrize(
    "options,param,message",
    [
        ({"prior": "nope"}, "prior", "prior 'nope' is not one of: standard-normal, normal, mog"),
        ({"likelihood": "gauss"}, "likelihood", "likelihood 'gauss' is not one of: bernoulli"),
        ({"guide": "flow"}, "guide", "guide 'flow' is not one of: diagonal, full-rank, iaf"),
        ({"encoder": "rnn"}, "encoder", "encoder 'rnn' is not one of: mlp, conv"),
        ({"z_dim": 0}, "z_dim", "z_dim must be at least 1, got 0"),
        ({"z_dim": 2.0}, "z_dim", "z_dim must be a whole number, got 2.0"),
        ({"hidden_dims": ()}, "hidden_dims", "hidden_dims must be one size or more, got none"),
        ({"hidden_dims": (8, 0)}, "hidden_dims", "hidden_dims must be at least 1, got 0"),
        (
            {"prior": "mog", "prior_options": {"components": 0}},
            'prior_options["components"]',
            'prior_options["components"] must be at least 1, got 0',
        ),
    ],
)
def test_bad_configurations_raise_clear_errors(options, param, message):
    with pytest.raises(ConfigError) as error:
        VAE((1, 8, 8), **options)
    assert str(error.value).startswith(message) and error.value.param == param


def test_a_conv_encoder_on_flat_data_names_the_encoder_setting():
    with pytest.raises(ConfigError) as error:
        VAE((20,), encoder="conv")
    assert str(error.value).startswith("the conv encoder needs images of shape (C, H, W)")
    # the setting to change is marked as a parameter, so the command line can name its flag
    assert "use <encoder> mlp" in error.value.worded(lambda name: f"<{name}>")


def test_textbook_svi_loop_trains_the_vae():
    # The loop from Pyro's tutorials works on vae.model / vae.guide as they are: the guide's one
    # pyro.module call registers every parameter, the prior's and the likelihood's too.
    vae = VAE((1, 8, 8), z_dim=4, hidden_dims=(32,), prior="normal", likelihood="gaussian-learned")
    x = binary_batch(64)
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    assert {name.split(".")[0] for name in before} == {"prior", "likelihood", "encoder", "decoder"}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(50)]
    for name, p in vae.named_parameters():
        assert not torch.equal(before[name], p), name
    assert sum(losses[-10:]) < sum(losses[:10])


def test_two_vaes_train_in_one_process_as_each_would_alone(digits):
    # pyro_vae.train never reads Pyro's global param store, where both VAEs register as "vae"
    def trained(seed, alone):
        pyro.set_rng_seed(seed)
        vae = VAE(digits.x_shape, z_dim=2, hidden_dims=(16,))
        if alone:
            pyro.clear_param_store()
        train(vae, digits, epochs=1, seed=seed, device="cpu", progress=False, compile="off")
        return vae.state_dict()

    together = [trained(seed, alone=False) for seed in (1, 2)]
    alone = [trained(seed, alone=True) for seed in (1, 2)]
    for a, b in zip(together, alone, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)

"""Public methods and functions that take images take a data set's own tensors: 8-bit images
stored as uint8 give exactly what their floats k / 255 give (issue 25: ``vae.encode`` raised
"mat1 and mat2 must have the same dtype" on Fashion-MNIST's test images)."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import build_model, encode, score
from pyro_vae.analysis.evaluation import iwae_estimate
from pyro_vae.analysis.inspection import importance_diagnostics, posterior_samples


@pytest.fixture(scope="module")
def images():
    """Eight 8x8 grey images as a uint8 data set stores them, and as the floats they stand for."""
    x = torch.randint(0, 256, (8, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    x = x.to(torch.uint8)
    return x, x.double().div(255).float()  # k / 255, computed another way than the library's


def model_of(kind, likelihood="gaussian"):
    pyro.set_rng_seed(0)
    options = {"num_classes": 3} if kind != "vae" else {}
    shape = (1, 8, 8)
    return build_model(kind, shape, z_dim=2, hidden_dims=(16,), likelihood=likelihood, **options)


def same(a, b):
    assert a.dtype == b.dtype and torch.equal(a, b)


def test_the_vaes_methods_take_bytes_as_their_floats(images):
    x8, x = images
    vae = model_of("vae")
    for a, b in zip(vae.encode(x8), vae.encode(x), strict=True):
        same(a, b)
    same(vae.reconstruct(x8), vae.reconstruct(x))
    same(vae.posterior_dist(x8).mean, vae.posterior_dist(x).mean)
    losses = []
    for batch in (x8, x):
        pyro.set_rng_seed(1)
        losses.append(Trace_ELBO().differentiable_loss(vae.model, vae.guide, batch))
    same(*losses)


def test_the_label_models_methods_take_bytes_as_their_floats(images):
    x8, x = images
    y = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])]
    cvae, m2 = model_of("cvae"), model_of("m2")
    same(cvae.encode(x8, y)[0], cvae.encode(x, y)[0])
    same(cvae.reconstruct(x8, y), cvae.reconstruct(x, y))
    same(m2.classify(x8), m2.classify(x))
    same(m2.reconstruct(x8), m2.reconstruct(x))
    losses = []
    for batch in (x8, x):
        pyro.set_rng_seed(1)
        elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
        losses.append(elbo.differentiable_loss(m2.model, m2.guide, batch))
    same(*losses)


def test_scores_codes_and_inspection_take_bytes_as_their_floats(images):
    x8, x = images
    vae = model_of("vae")
    for key, value in score(vae, x8, 5, progress=False).items():
        same(value, score(vae, x, 5, progress=False)[key])
    assert iwae_estimate(vae, x8, 5, progress=False).value == iwae_estimate(
        vae, x, 5, progress=False
    ).value
    same(encode(vae, x8, progress=False).mean, encode(vae, x, progress=False).mean)
    samples = [posterior_samples(vae, batch, 10).posterior["z"].values for batch in (x8, x)]
    assert (samples[0] == samples[1]).all()
    weights = [importance_diagnostics(vae, batch, 20).log_weights for batch in (x8, x)]
    same(*weights)


def test_the_discretized_logistics_scores_of_bytes_are_those_of_their_floats(images):
    # the likelihood of 8-bit images, whose scores add the bits of each image compressed
    x8, x = images
    vae = model_of("vae", likelihood="discretized-logistic")
    scores = score(vae, x8, 3, progress=False)
    assert "complexity_bits" in scores
    for key, value in score(vae, x, 3, progress=False).items():
        same(scores[key], value)

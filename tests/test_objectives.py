"""The sync-free objectives against Pyro's own Trace_ELBO, TraceMeanField_ELBO and
RenyiELBO(alpha=0): the same value and the same gradients, bit for bit, with no read of a tensor
into Python."""

from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import HostReads, covering_combinations, loss_and_grads, make, renyi_loss_and_grads
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.infer.sync_free import (
    SyncFreeIWAE_ELBO,
    SyncFreeTrace_ELBO,
    SyncFreeTraceMeanField_ELBO,
)

COMBINATIONS = [pytest.param(*combo, id="-".join(combo)) for combo in covering_combinations()]
PAIRS = {"trace": (Trace_ELBO, SyncFreeTrace_ELBO)}
PAIRS["meanfield"] = (TraceMeanField_ELBO, SyncFreeTraceMeanField_ELBO)


def differentiable_loss(elbo_class, owner, **options):
    """The loss of ``elbo_class(**options)`` on ``owner``'s model and guide, a function of their
    arguments."""
    return partial(elbo_class(**options).differentiable_loss, owner.model, owner.guide)


def assert_identical(pyro_class, ours_class, owner, *args, **options):
    """Pyro's ``pyro_class`` and our ``ours_class`` give the same loss, bit for bit and of the same
    dtype, and the same gradients of ``owner``'s parameters."""
    expected = loss_and_grads(owner, differentiable_loss(pyro_class, owner, **options), *args)
    got = loss_and_grads(owner, differentiable_loss(ours_class, owner, **options), *args)
    assert got[0].dtype == expected[0].dtype and torch.equal(got[0], expected[0])
    for a, b in zip(got[1], expected[1], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("objective", list(PAIRS))
@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_the_same_value_and_gradients_as_pyro(
    digits, prior, likelihood, guide, encoder, objective, num_particles
):
    vae, x = make(digits, prior, likelihood, guide, encoder)
    options = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    with pyro.validation_enabled(False):
        assert_identical(*PAIRS[objective], vae, x, **options)


class DiscreteLatent(torch.nn.Module):
    """c ~ Bernoulli(1/2), x ~ N(loc c, 1) per datum; the guide's c ~ Bernoulli(logits)."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
        self.loc = torch.nn.Parameter(torch.tensor(0.5))

    def model(self, x):
        with pyro.plate("data", 2):
            c = pyro.sample("c", dist.Bernoulli(logits=torch.zeros(2)))
            pyro.sample("x", dist.Normal(self.loc * c, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", 2):
            pyro.sample("c", dist.Bernoulli(logits=self.logits))


def test_a_guide_site_without_rsample_gets_pyros_score_function_term():
    # a discrete latent: Trace_ELBO's gradient then has a REINFORCE term, log r * grad log q
    data = torch.tensor([1.2, -0.3])
    for objective in ("trace",):  # TraceMeanField_ELBO needs reparameterized sites
        assert_identical(*PAIRS[objective], DiscreteLatent(), data, num_particles=2)


@pytest.mark.parametrize("objective", list(PAIRS))
def test_no_value_goes_to_the_host(digits, objective):
    vae, x = make(digits, "vamp", "gaussian-learned", "iaf", "mlp")
    elbo = PAIRS[objective][1](vectorize_particles=True, max_plate_nesting=1)
    with pyro.validation_enabled(False), HostReads() as reads:
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        loss.backward()
    assert reads.reads == []
    stock = PAIRS[objective][0](vectorize_particles=True, max_plate_nesting=1)
    with pyro.validation_enabled(False), HostReads() as reads:
        stock.differentiable_loss(vae.model, vae.guide, x)
    assert "item" in reads.reads  # what the test would see, were the objective Pyro's own


@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_iwae_is_renyi_elbo_with_alpha_zero_bit_for_bit(
    digits, prior, likelihood, guide, encoder, num_particles
):
    vae, x = make(digits, prior, likelihood, guide, encoder)
    expected, expected_grads = renyi_loss_and_grads(vae, x, num_particles)
    options = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    with pyro.validation_enabled(False):
        loss, grads = loss_and_grads(vae, differentiable_loss(SyncFreeIWAE_ELBO, vae, **options), x)
    assert loss.dtype == torch.float32 and loss.item() == expected
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads, strict=True))


def test_iwae_sends_no_value_to_the_host(digits):
    vae, x = make(digits, "vamp", "gaussian-learned", "iaf", "mlp")
    elbo = SyncFreeIWAE_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    with pyro.validation_enabled(False), HostReads() as reads:
        elbo.differentiable_loss(vae.model, vae.guide, x).backward()
    assert reads.reads == []

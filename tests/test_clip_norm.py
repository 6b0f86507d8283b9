"""Gradient clipping by global norm (``clip_norm``): each step's gradients, summed over ranks,
scaled by min(1, c / ||g||) before Adam's update, eager and compiled alike."""

import pyro
import pytest
import torch

from pyro_vae import VAE, train
from pyro_vae.data.sources import eval_inputs
from pyro_vae.infer.compiling import CompilePolicy
from pyro_vae.infer.elbo import make_loss
from pyro_vae.training.step import SVIStep

LR = 1e-2


def small(digits):
    pyro.set_rng_seed(0)
    return VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))


def hand_steps(vae, x, clip_norm, steps):
    """Adam on the Pyro loss's gradients, scaled by hand to a global norm of at most
    ``clip_norm``: the steps SVIStep must take."""
    params = list(vae.parameters())
    adam = torch.optim.Adam(params, lr=LR)
    loss_fn = make_loss(vae, "trace")
    for step in range(steps):
        torch.manual_seed(step)
        grads = torch.autograd.grad(loss_fn(x, kl_weight=1.0), params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        scale = min(1.0, clip_norm / (float(norm) + 1e-6))
        for p, g in zip(params, grads, strict=True):
            p.grad = g * scale
        adam.step()
        adam.zero_grad()
    return params


@pytest.mark.parametrize("clip_norm", [0.5, 1e6])
def test_each_step_scales_the_gradient_to_the_norm_as_by_hand(digits, clip_norm):
    x = eval_inputs(small(digits).likelihood, digits.x_test[:64], "dynamic")
    vae, twin = small(digits), small(digits)
    policy = CompilePolicy("the training step", "off")
    step = SVIStep(vae, "trace", 1, LR, 1.0, policy, clip_norm=clip_norm)
    for s in range(3):
        torch.manual_seed(s)
        step(x)
    expected = hand_steps(twin, x, clip_norm, 3)
    for a, b in zip(vae.parameters(), expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_clipping_changes_training_and_a_huge_norm_does_not(digits):
    options = dict(epochs=1, batch_size=256, lr=LR, progress=False, compile="off")
    plain = train(small(digits), digits, **options).step_loss
    clipped = train(small(digits), digits, clip_norm=0.1, **options).step_loss
    loose = train(small(digits), digits, clip_norm=1e9, **options).step_loss
    assert loose == plain  # a norm never reached leaves every step as it was
    assert clipped[0] == plain[0] and clipped[1:] != plain[1:]  # the first update differs


def test_a_compiled_step_clips_as_the_eager_one(digits):
    options = dict(epochs=2, batch_size=256, lr=LR, progress=False, clip_norm=0.1)
    eager = train(small(digits), digits, compile="off", **options)
    compiled = train(small(digits), digits, compile="on", **options)
    assert compiled.compile.startswith("compiled the training step")
    pairs = zip(compiled.step_loss, eager.step_loss, strict=True)
    diff = max(abs(a - b) / abs(b) for a, b in pairs)
    assert diff < 1e-5


def test_a_clip_norm_must_be_positive(digits):
    from pyro_vae import ConfigError

    with pytest.raises(ConfigError, match="clip_norm"):
        train(small(digits), digits, epochs=1, clip_norm=0.0, progress=False, compile="off")

"""What several test files share, imported as ``from helpers import ...``; the fixtures are in
conftest.py. pytest's default import mode puts this folder on ``sys.path`` (it has no
``__init__.py``), as it does for conftest.py."""

import csv

import pyro
import torch
from pyro.infer import RenyiELBO
from torch.overrides import TorchFunctionMode

from pyro_vae import VAE, train
from pyro_vae.data.sources import eval_inputs
from pyro_vae.infer import elbo_check
from pyro_vae.models import build_model
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.priors import PRIORS

# what a part needs on the embedded digits, whose grey levels are k/16
DIGITS_OPTIONS = {"discretized-logistic": {"bins": 17}}


def binary_batch(n: int, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, *shape, generator=g), generator=g)


class HostReads(TorchFunctionMode):
    """Records each time a tensor's value goes to Python (``item``, ``bool``, ``__index__``, a
    tensor as an index, ...): on a GPU each one waits for the device."""

    TO_PYTHON = {"__index__", "__bool__", "__int__", "__float__", "item", "tolist"}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("__getitem__", "__setitem__"):
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) for i in index):
                self.reads.append(f"{name} with a tensor index")
        elif name in self.TO_PYTHON:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


class NoTorch(TorchFunctionMode):
    """Fails at any torch call but ``torch.device``: code run under it allocates no tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.device:
            return func(*args, **(kwargs or {}))
        raise AssertionError(f"{func} was called")


def covering_combinations() -> list[tuple[str, str, str, str]]:
    """Prior x likelihood x guide x encoder combinations in which every registered part meets at
    least two partners of each other kind: each part with the defaults of the other two, then
    a cyclic pass that pairs it with others. Grows linearly with the registries, not as their
    product."""
    priors, likelihoods, guides = list(PRIORS), list(LIKELIHOODS), list(GUIDES)
    combos = [(p, likelihoods[0], guides[0]) for p in priors]
    combos += [(priors[0], lik, guides[0]) for lik in likelihoods]
    combos += [(priors[0], likelihoods[0], g) for g in guides]
    n = max(len(priors), len(likelihoods), len(guides))
    combos += [
        (
            priors[i % len(priors)],
            likelihoods[(i + 1) % len(likelihoods)],
            guides[(i + 2) % len(guides)],
        )
        for i in range(n)
    ]
    unique = list(dict.fromkeys(combos))
    return [(*c, "conv" if i % 2 else "mlp") for i, c in enumerate(unique)] + [
        (priors[0], likelihoods[0], guides[0], "conv")
    ]


def make(digits, prior, likelihood, guide, encoder, n=32, model="vae"):
    """An untrained ``model`` of the digits with these parts, and ``n`` test digits as it scores
    them."""
    pyro.set_rng_seed(0)
    vae = build_model(
        model,
        digits.x_shape,
        10,
        z_dim=3,
        hidden_dims=(16, 8),
        encoder=encoder,
        prior=prior,
        likelihood=likelihood,
        guide=guide,
        likelihood_options=DIGITS_OPTIONS.get(likelihood),
    )
    return vae, eval_inputs(vae.likelihood, digits.x_test[:n])


def tiny_vae(z_dim=3, seed=0, **options):
    """An untrained VAE of 1x8x8 images with one hidden layer of 16, its weights drawn under
    ``seed``; ``options`` are the VAE's (``prior``, ``guide``, ``encoder``, ...)."""
    pyro.set_rng_seed(seed)
    return VAE((1, 8, 8), z_dim=z_dim, hidden_dims=(16,), **options)


def trained_on_digits(digits, epochs, lr=3e-3, **options):
    """A VAE of the digits (``options``: ``z_dim``, ``hidden_dims``, ...), its weights drawn under
    seed 0, trained for ``epochs`` on the CPU."""
    pyro.set_rng_seed(0)
    vae = VAE(digits.x_shape, **options)
    train(vae, digits, epochs=epochs, lr=lr, device="cpu", progress=False)
    return vae


def metrics(run_dir):
    """metrics.csv without the seconds column, which no two runs share."""
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def loss_and_grads(model, loss_fn, *args, seed=1):
    """``loss_fn(*args)`` under ``seed`` and the gradients of ``model``'s parameters (``None``
    where unused), by the library's own :func:`pyro_vae.infer.elbo_check.loss_and_grads`; the
    loss comes back as the tensor it was (detached), whose dtype and bits the tests compare."""
    losses = []

    def kept(*a):
        losses.append(loss_fn(*a))
        return losses[-1]

    _, grads = elbo_check.loss_and_grads(model, kept, args, seed)
    return losses[0].detach(), grads


def renyi_loss_and_grads(vae, x, num_particles, seed=1):
    """Pyro's own RenyiELBO(alpha=0) on the VAE, which has no differentiable_loss: the float its
    loss_and_grads returns, and the gradients it leaves in .grad."""
    renyi = RenyiELBO(
        alpha=0, num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
    )
    vae.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with pyro.validation_enabled(False):
        loss = renyi.loss_and_grads(vae.model, vae.guide, x)
    return loss, [p.grad for p in vae.parameters()]

"""The objective: the evidence lower bound, and its estimate over a whole data set.

For one example x the ELBO is

    ELBO(x) = E_{q(z|x)}[ log p(x|z) + log p(z) - log q(z|x) ]  <=  log p(x),

estimated by Monte Carlo with reparameterized draws z = mu(x) + sigma(x) * eps, eps ~ N(0, I)
(Kingma & Welling, "Auto-Encoding Variational Bayes", arXiv:1312.6114). Pyro's ``Trace_ELBO``
computes exactly this from the model and guide traces; ``TraceMeanField_ELBO`` replaces
``E_q[log p(z) - log q(z|x)]`` by the closed-form ``-KL(q(z|x) || p(z))`` where one exists.
Pyro's *loss* is the negative ELBO, summed over the batch.
"""

from __future__ import annotations

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from .errors import ConfigError
from .model import VAE

OBJECTIVES: dict[str, type[ELBO]] = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
}

# Test-set estimates are made in chunks of this many examples. It is fixed because the Monte
# Carlo draws, and so the estimate for a given seed, depend on how the data set is cut.
EVAL_BATCH_SIZE = 1000


def make_objective(name: str, num_particles: int = 1) -> ELBO:
    """A Pyro ELBO by name (see :data:`OBJECTIVES`), vectorized over particles."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](
        num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
    )


def dataset_elbo(
    vae: VAE, x: torch.Tensor, *, seed: int, objective: str = "trace", num_particles: int = 1
) -> float:
    """The mean ELBO per example of ``x`` in nats, a Monte Carlo estimate with a fixed seed.

    The same ``vae``, ``x`` and ``seed`` give the same number on the same device. The global
    random state is saved and restored, so estimating never changes the course of training.
    """
    elbo = make_objective(objective, num_particles)
    devices = [x.device] if x.device.type == "cuda" else []
    total = 0.0
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for batch in x.split(EVAL_BATCH_SIZE):
            total += float(elbo.differentiable_loss(vae.model, vae.guide, batch))
    return -total / len(x)

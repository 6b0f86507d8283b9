"""Evaluation of a trained VAE: its test ELBO, against the best model that ignores structure.

The reference point is the *independent-pixel* model: every pixel an independent Bernoulli with
the training set's pixel mean (smoothed by half a count, so an unseen value costs finite nats). A
VAE that has learned anything about shapes beats it by a wide margin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_run, write_json
from .data import Dataset, load_dataset
from .elbo import EVAL_BATCH_SIZE, dataset_elbo
from .errors import DataError
from .model import VAE
from .train import eval_inputs, resolve_device

EVALUATION_NAME = "evaluation.json"


def independent_pixel_log_likelihood(x_train: torch.Tensor, x_test: torch.Tensor) -> float:
    """Mean log-likelihood (nats per example) of binary ``x_test`` under independent Bernoulli
    pixels with p_i = (sum_n x_train[n, i] + 1/2) / (N + 1)."""
    p = (x_train.double().sum(0) + 0.5) / (len(x_train) + 1)
    x = x_test.double()
    log_lik = x * p.log() + (1 - x) * torch.log1p(-p)
    return float(log_lik.flatten(1).sum(1).mean())


@torch.no_grad()
def posterior_means(vae: VAE, x: torch.Tensor, num_samples: int = 256) -> torch.Tensor:
    """E_q[z|x] for each example, ``(B, z_dim)``: exact where the guide has a mean, else the
    average of ``num_samples`` draws (flows)."""
    means = []
    for batch in x.split(EVAL_BATCH_SIZE):
        q = vae.posterior_dist(batch)
        try:
            means.append(q.mean)
        except NotImplementedError:
            means.append(q.rsample((num_samples,)).mean(0))
    return torch.cat(means)


def active_units(vae: VAE, x: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """The number of active latent units and each unit's activity Cov_x(E_q[z_d|x]).

    A unit is active when its posterior mean varies across inputs by more than ``threshold``
    (Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders", arXiv:1509.00519).
    """
    activity = posterior_means(vae, x).double().var(0)
    return int((activity > threshold).sum()), activity


def evaluate(
    vae: VAE,
    data: Dataset,
    *,
    seed: int = 0,
    objective: str = "trace",
    binarization: str = "dynamic",
) -> dict[str, Any]:
    """Test-set figures of ``vae`` on ``data``: ``test_elbo`` (nats per example, seeded), and the
    independent-pixel baseline ``baseline_log_likelihood`` for binary likelihoods."""
    if tuple(data.x_shape) != vae.x_shape:
        raise DataError(
            f"the data's examples have shape {tuple(data.x_shape)} but the model expects "
            f"{vae.x_shape}"
        )
    device = next(vae.parameters()).device
    x_test = eval_inputs(vae, data.x_test, binarization)
    result: dict[str, Any] = {
        "test_elbo": dataset_elbo(vae, x_test.to(device), seed=seed, objective=objective),
        "seed": seed,
        "num_test": len(x_test),
    }
    if vae.likelihood.binary:
        result["baseline_log_likelihood"] = independent_pixel_log_likelihood(data.x_train, x_test)
    return result


def evaluate_run(
    run_dir: str | Path, *, seed: int | None = None, device: str | None = None
) -> dict[str, Any]:
    """Reload a run folder, evaluate it on its own test set, and write ``evaluation.json``.

    ``seed`` defaults to the run's seed and ``device`` to the run's device (the CPU when that one
    is not present), so that the test ELBO equals the one in ``summary.json``.
    """
    run_dir = Path(run_dir)
    vae, state = load_run(run_dir)
    config = state["config"]
    if device is None:
        device = (
            config["device"] if config["device"] == "cpu" or torch.cuda.is_available() else "cpu"
        )
    vae.to(resolve_device(device))
    data = load_dataset(
        config["dataset"], data_dir=config["data_dir"], data_path=config["data_path"]
    )
    seed = config["train"]["seed"] if seed is None else seed
    result = evaluate(
        vae,
        data,
        seed=seed,
        objective=config["train"]["objective"],
        binarization=config["train"]["binarization"],
    )
    result["epoch"] = state["epoch"]
    write_json(run_dir / EVALUATION_NAME, result)
    return result

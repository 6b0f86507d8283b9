"""Training: stochastic variational inference on a VAE, on the CPU or a CUDA device.

Each step draws a mini-batch, estimates the negative ELBO with a Pyro objective (``Trace_ELBO`` by
default) and takes an Adam step on its gradient, which flows through the reparameterized z. This is
``pyro.infer.SVI.step`` with one ``torch.optim.Adam`` over ``vae.parameters()`` in place of
``pyro.optim``'s one optimizer per parameter: the same update, without the global param store, so
that the optimizer's state is a plain ``state_dict`` and any number of VAEs can train in one
process. It is also the optimizer of the pure-PyTorch trainer (``objective="manual"``, the
hand-written ELBO with no ``pyro.infer``), so that the two trainers take the very same steps and
their loss trajectories can be compared number for number.

The whole training set lives on the device as one tensor and batches are drawn by a shuffled index,
so no per-example data loader runs in the hot loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from tqdm.auto import tqdm

from .data import Dataset, binarize, is_binary
from .elbo import closed_form_kl, dataset_elbo, make_loss
from .errors import ConfigError, DataError, PyroVAEError
from .model import VAE

BINARIZATION = ("dynamic", "none")
# The test set of grey data is binarized once, with this seed, so every run and every
# evaluation of a binary likelihood scores the same binary images.
TEST_BINARIZATION_SEED = 0


EPOCH_COLUMNS = ("epoch", "train_elbo", "test_elbo", "seconds")


@dataclass
class History:
    """Per-epoch figures: ELBOs in nats per example, ``seconds`` of training in that epoch; and
    ``step_loss``, each step's loss (the negative ELBO of its batch, nats per example)."""

    epoch: list[int] = field(default_factory=list)
    train_elbo: list[float] = field(default_factory=list)
    test_elbo: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)

    def rows(self) -> list[dict[str, float]]:
        """One dict per epoch, keyed like the columns of ``metrics.csv``."""
        columns = [getattr(self, name) for name in EPOCH_COLUMNS]
        return [dict(zip(EPOCH_COLUMNS, row, strict=True)) for row in zip(*columns, strict=True)]


class TrainingError(PyroVAEError):
    """Training cannot go on, e.g. the loss stopped being finite."""


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when there is a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = str(spec).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: no CUDA GPU is available here; use --device cpu or auto"
            )
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"--device {name}: not a device name; use cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are present"
            )
        return device
    raise ConfigError(f"unknown device {str(spec)!r}; choose auto, cpu, cuda or cuda:N")


def needs_binarization(vae: VAE, x: torch.Tensor, binarization: str) -> bool:
    """Whether ``x`` must be binarized for ``vae``'s likelihood; checks ``x`` fits it otherwise."""
    if binarization not in BINARIZATION:
        raise ConfigError(
            f"unknown binarization {binarization!r}; choose one of: {', '.join(BINARIZATION)}"
        )
    if binarization == "dynamic" and vae.likelihood.binary and not is_binary(x):
        return True
    vae.likelihood.check_data(x)
    return False


def eval_inputs(vae: VAE, x_test: torch.Tensor, binarization: str = "dynamic") -> torch.Tensor:
    """The test set as the likelihood scores it: a fixed binarization of grey data if needed."""
    if needs_binarization(vae, x_test, binarization):
        return binarize(x_test, TEST_BINARIZATION_SEED)
    return x_test


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            flag = name.replace("_", "-")
            raise ConfigError(f"--{flag} must be positive, got {value}")


def train(
    vae: VAE,
    data: Dataset,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    seed: int = 0,
    objective: str = "trace",
    binarization: str = "dynamic",
    progress: bool = True,
    on_epoch_end: Callable[[int, History, torch.optim.Optimizer], None] | None = None,
) -> History:
    """Fit ``vae`` to ``data.x_train`` by SVI; return the per-epoch history.

    :param objective: ``"trace"`` (``Trace_ELBO``), ``"meanfield"`` (``TraceMeanField_ELBO``) or
        ``"manual"`` (:func:`pyro_vae.elbo.manual_elbo`, plain PyTorch, no ``pyro.infer``).
    :param binarization: ``"dynamic"``: for a binary likelihood, grey training data is binarized
        afresh in every batch (x ~ Bernoulli(pixel)) and the test set once with a fixed seed;
        ``"none"``: the data are used as they are.
    :param seed: seeds the batch order, the binarization and the guide's noise. The initial
        weights come from the RNG state when ``vae`` was built: seed before building it
        (``pyro.set_rng_seed``) for a fully repeatable run.
    :param on_epoch_end: called after each epoch with ``(epoch, history, optimizer)``, e.g. to
        write a checkpoint.

    The test ELBO after each epoch is :func:`pyro_vae.elbo.dataset_elbo` with ``seed``.
    """
    _check_positive(epochs=epochs, batch_size=batch_size, lr=lr)
    if tuple(data.x_shape) != vae.x_shape:
        raise DataError(
            f"the data's examples have shape {tuple(data.x_shape)} but the model expects "
            f"{vae.x_shape}"
        )
    device = resolve_device(device)
    vae.to(device)
    x_train = data.x_train.to(device)
    x_test = eval_inputs(vae, data.x_test, binarization).to(device)
    dynamic = needs_binarization(vae, data.x_train, binarization)
    loss_fn = make_loss(vae, objective)
    if objective == "meanfield":  # Pyro would quietly fall back to the sampled KL instead
        with torch.no_grad():
            closed_form_kl(vae, vae.posterior_dist(x_test[:1]), vae.prior(1, x_test))
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)

    pyro.set_rng_seed(seed)
    batch_order = torch.Generator().manual_seed(seed)
    n = len(x_train)
    steps_per_epoch = math.ceil(n / batch_size)
    history = History()
    step = 0
    with tqdm(
        total=epochs * steps_per_epoch, disable=not progress, unit="step", dynamic_ncols=True
    ) as bar:
        for epoch in range(1, epochs + 1):
            bar.set_description(f"epoch {epoch}/{epochs}")
            start = time.perf_counter()
            batch_losses = []  # summed over each batch, kept on the device until the epoch ends
            for index in torch.randperm(n, generator=batch_order).to(device).split(batch_size):
                x = x_train[index]
                if dynamic:
                    x = torch.bernoulli(x)
                # Pyro's validation on the first step makes a malformed model fail loudly; after
                # that it costs 0.5-1 ms a step (15% of a digits step on 2 CPU cores).
                with pyro.validation_enabled(step == 0):
                    loss = loss_fn(x)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                batch_losses.append(loss.detach())
                step += 1
                bar.update()
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item() / len(x):.2f}")
            batch_losses = torch.stack(batch_losses)
            sizes = torch.full_like(batch_losses, batch_size)
            sizes[-1] = n - batch_size * (len(sizes) - 1)
            history.step_loss += (batch_losses / sizes).tolist()
            train_elbo = -batch_losses.sum().item() / n
            seconds = time.perf_counter() - start
            if not math.isfinite(train_elbo):
                raise TrainingError(
                    f"the loss stopped being finite in epoch {epoch}; try a lower --lr (now {lr})"
                )
            history.epoch.append(epoch)
            history.train_elbo.append(train_elbo)
            history.test_elbo.append(dataset_elbo(vae, x_test, seed=seed, objective=objective))
            history.seconds.append(seconds)
            bar.set_postfix(
                train_elbo=f"{train_elbo:.2f}", test_elbo=f"{history.test_elbo[-1]:.2f}"
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, history, optimizer)
    return history

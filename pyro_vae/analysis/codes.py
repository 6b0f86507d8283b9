"""Representations: what the guide makes of each input, and how much of the labels it keeps.

The encoder maps an input x to q(z|x); its mean E_q[z|x] is the input's code, a vector of
``z_dim`` numbers, and its standard deviation says how sure the guide is of each of them.
:func:`encode` gives both for a whole data set. :func:`linear_probe` measures the code as a
representation: a logistic regression fitted on the training set's codes, its accuracy on the test
set's (the linear evaluation of representation learning, e.g. Chen et al. 2020, "A Simple
Framework for Contrastive Learning of Visual Representations", arXiv:2002.05709). The codes are
standardized first, so that the probe's L2 penalty weighs every dimension alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from pyro_vae.errors import DataError
from pyro_vae.files import atomic_write
from pyro_vae.infer.passes import seeded_pass
from pyro_vae.models.vae import VAE

# A probe's logistic regression is fitted by L-BFGS to this many iterations at most: enough for
# a few dozen standardized dimensions and ten classes to converge.
PROBE_MAX_ITER = 1000


class Codes(NamedTuple):
    """Each example's code, as :func:`encode` gives it.

    :param mean: E_q[z|x], ``(N, z_dim)``.
    :param scale: the standard deviation of each dimension under q(z|x), ``(N, z_dim)``.
    :param labels: the examples' integer labels, ``(N,)``, or ``None``.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    labels: torch.Tensor | None


@torch.no_grad()
def encode(
    vae: VAE,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    seed: int = 0,
    num_samples: int = 256,
    progress: bool = True,
) -> Codes:
    """The codes of the examples ``x``, on ``x``'s device.

    Mean and standard deviation are exact where the guide's distribution has them (the diagonal
    and full-rank Gaussians: for the diagonal one, the ``loc`` and ``scale`` of
    ``vae.encode``); otherwise (flows) they are estimated from draws of z, the global random
    state left as it was.

    :param vae: the trained model.
    :param x: the examples, floats as the model scores them
        (:func:`~pyro_vae.data.sources.eval_inputs`).
    :param labels: the examples' integer labels: the label models' guide q(z|x,y) is taken at
        them, so those models need them; the codes keep them whatever the model.
    :param seed: seeds the draws of z, where there are draws.
    :param num_samples: the draws of z per example, for a guide with no closed-form mean
        (flows).
    :param progress: show a progress bar (tqdm); ``False`` for none.
    :raises DataError: for a label model without ``labels``.
    """
    given = vae.encoder_condition(labels, x)  # a label model refuses here without labels
    means, scales = [], []
    with seeded_pass(x, given, seed=seed, progress=progress, desc="encode") as batches:
        for batch, cond in batches:
            (q, _), *_ = vae.latent_dists(batch, *cond).values()  # the guide's first site
            mean, scale = mean_and_scale(q, num_samples)
            means.append(mean)
            scales.append(scale)
    return Codes(torch.cat(means), torch.cat(scales), labels)


def mean_and_scale(q: Any, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard deviation of the guide's ``q``: exact where it has them, else from
    ``num_samples`` draws (flows).

    :param q: a distribution of the guide.
    :param num_samples: the draws where there is no closed form.
    """
    try:
        return q.mean, q.stddev
    except NotImplementedError:  # a flow: no closed form
        z = q.rsample((num_samples,))
        return z.mean(0), z.std(0)


class Probe(NamedTuple):
    """A linear probe's result, as :func:`linear_probe` gives it.

    :param accuracy: the share of test examples whose label the probe predicts.
    :param chance: the accuracy of always answering the training set's most common label.
    """

    accuracy: float
    chance: float


def linear_probe(train: Codes, test: Codes, *, seed: int = 0) -> Probe:
    """Fit a multinomial logistic regression (scikit-learn, L2 penalty C = 1, after
    standardizing each dimension on the training codes) on ``train.mean`` to ``train.labels``,
    and score it on ``test``: the share of test examples whose label it predicts.

    :param train: the training examples' codes, with labels.
    :param test: the test examples' codes, with labels.
    :param seed: the regression's ``random_state``.
    :raises DataError: for codes without labels, or training labels of one class.
    """
    # here, not at the top: scikit-learn takes about a second to import, and only the probe uses it
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if train.labels is None or test.labels is None:
        raise DataError("a linear probe needs labels for the training and the test examples")
    x_train, y_train = _numpy(train.mean), _numpy(train.labels)
    x_test, y_test = _numpy(test.mean), _numpy(test.labels)
    if len(np.unique(y_train)) < 2:  # scikit-learn refuses to fit one class
        raise DataError("a linear probe needs at least two classes among the training labels")
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed)
    )
    probe.fit(x_train, y_train)
    values, counts = np.unique(y_train, return_counts=True)
    majority = values[counts.argmax()]
    return Probe(float(probe.score(x_test, y_test)), float((y_test == majority).mean()))


def save_codes(codes: Codes, path: str | Path) -> None:
    """``codes`` as an ``.npz`` file of float32 arrays ``mean`` and ``scale``, ``(N, z_dim)``, and
    int64 ``labels`` where there are labels; ``numpy.load(path)["mean"]`` reads them back.

    :param codes: the codes, as :func:`encode` gives them.
    :param path: the ``.npz`` file to write.
    """
    arrays = {"mean": _numpy(codes.mean), "scale": _numpy(codes.scale)}
    if codes.labels is not None:
        arrays["labels"] = _numpy(codes.labels)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()

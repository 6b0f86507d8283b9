"""Pictures of a VAE: image grids of reconstructions and samples, ELBO curves, the latent space
(scatter of codes, traversals) and the posterior diagnostics of :mod:`pyro_vae.analysis.inspection`
(Pareto k-hat histogram, guide against NUTS).

Every function returns its matplotlib figure and, given ``path``, also saves it as a PNG. Figures
are built as ``matplotlib.figure.Figure`` objects, not through pyplot, so they need no display,
leave pyplot's state alone, and show in a notebook when they are a cell's value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from pyro_vae.data.sources import as_floats
from pyro_vae.device import random_state_kept

# The default traversal, torch.linspace(-3, 3, 9): +-3 prior standard deviations for N(0, I).
TRAVERSAL_VALUES = (-3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0)


def as_images(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` images from a batch of images, ``(N, H, W)`` or flat ``(N, D)`` vectors.

    Flat vectors are shown as square images when D is a square number, else as a 1-pixel strip.

    :param x: the images: ``(N, C, H, W)``, ``(N, H, W)`` or flat ``(N, D)``, floats or 8-bit
        ``uint8``.
    """
    x = as_floats(x.detach().cpu()).float()
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    side = math.isqrt(x.shape[1])
    if side * side == x.shape[1]:
        return x.reshape(len(x), 1, side, side)
    return x.reshape(len(x), 1, 1, x.shape[1])


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def image_grid(images: torch.Tensor, nrow: int = 8, pad_value: float = 0.0) -> torch.Tensor:
    """``(N, C, H, W)`` images as one ``(C', H', W')`` picture, ``nrow`` to a row with 1 pixel of
    ``pad_value`` around each; grey images become three equal channels. It is
    ``torchvision.utils.make_grid(images, nrow, padding=1, pad_value=pad_value)``, written out so
    that drawing a picture does not import torchvision (about 1.5 s a process).

    :param images: the images, ``(N, C, H, W)``, C 1 or 3.
    :param nrow: the images in a row.
    :param pad_value: the value of the padding between the images.
    """
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if len(images) == 1:
        return images[0]
    n, channels, height, width = images.shape
    columns, rows = min(nrow, n), math.ceil(n / min(nrow, n))
    size = (channels, rows * (height + 1) + 1, columns * (width + 1) + 1)
    grid = images.new_full(size, pad_value)
    for k, image in enumerate(images):
        top, left = 1 + k // columns * (height + 1), 1 + k % columns * (width + 1)
        grid[:, top : top + height, left : left + width] = image
    return grid


def picture(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """A batch of images (any shape :func:`as_images` takes) as the one ``(C', H', W')`` picture
    the plots show: values clamped to [0, 1], ``nrow`` to a row, 1 pixel of grey between them.

    :param images: the images, values in [0, 1]: ``(N, C, H, W)``, ``(N, H, W)`` or flat ``(N, D)``.
    :param nrow: the images in a row.
    """
    return image_grid(as_images(images).clamp(0, 1), nrow=nrow, pad_value=0.5)


def reconstruction_rows(
    x: torch.Tensor, x_rec: torch.Tensor, nrow: int = 8
) -> tuple[torch.Tensor, int]:
    """Inputs and their reconstructions as one batch of images in alternating rows of ``nrow``,
    an input row over its reconstruction row, and the row length (fewer for fewer images).

    :param x: the inputs, any shape :func:`as_images` takes.
    :param x_rec: their reconstructions, shaped alike.
    :param nrow: the images in a row.
    """
    x, x_rec = as_images(x), as_images(x_rec)
    n = len(x) // nrow * nrow or len(x)
    rows = [t for i in range(0, n, nrow) for t in (x[i : i + nrow], x_rec[i : i + nrow])]
    return torch.cat(rows), min(nrow, n)


def _show_grid(ax: Any, images: torch.Tensor, nrow: int) -> None:
    """Draw (N, C, H, W) images in [0, 1] on ``ax`` as one grid, 1 pixel of grey between them."""
    grid = picture(images, nrow)
    cmap = "gray" if images.shape[1] == 1 else None
    ax.imshow(
        grid.permute(1, 2, 0).squeeze(-1).numpy(),
        cmap=cmap,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )


def plot_grid(
    images: torch.Tensor, nrow: int = 8, title: str | None = None, path: str | Path | None = None
) -> Figure:
    """A grid of images with values in [0, 1], ``nrow`` to a row.

    :param images: the images, values in [0, 1]: ``(N, C, H, W)``, ``(N, H, W)`` or flat ``(N, D)``.
    :param nrow: the images in a row.
    :param title: the figure's title, if any.
    :param path: where to save the figure as a PNG; ``None``: not saved.
    """
    images = as_images(images)
    height, width = image_grid(images, nrow=nrow).shape[1:]
    scale = 6 / max(height, width)
    fig = Figure(figsize=(max(width * scale, 3), max(height * scale, 1) + 0.4))
    ax = fig.subplots()
    _show_grid(ax, images, nrow)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def plot_reconstructions(
    x: torch.Tensor, x_rec: torch.Tensor, path: str | Path | None = None, nrow: int = 8
) -> Figure:
    """Inputs and their reconstructions in alternating rows: input row, reconstruction row.

    :param x: the inputs, any shape :func:`as_images` takes.
    :param x_rec: their reconstructions, shaped alike.
    :param path: where to save the figure as a PNG; ``None``: not saved.
    :param nrow: the images in a row.
    """
    images, nrow = reconstruction_rows(x, x_rec, nrow)
    return plot_grid(images, nrow=nrow, title="inputs (odd rows) and reconstructions", path=path)


def plot_samples(images: torch.Tensor, path: str | Path | None = None, nrow: int = 8) -> Figure:
    """Images generated by the model, E[x|z] for z ~ p(z).

    :param images: the images, values in [0, 1]: ``(N, C, H, W)``, ``(N, H, W)`` or flat ``(N, D)``.
    :param path: where to save the figure as a PNG; ``None``: not saved.
    :param nrow: the images in a row.
    """
    return plot_grid(images, nrow=nrow, title="samples from the model", path=path)


def plot_typical(
    most: torch.Tensor, least: torch.Tensor, path: str | Path | None = None, what: str = "log p(x)"
) -> Figure:
    """The inputs a model finds most typical (top row, the most first) and least typical
    (bottom row, the least first) by the score ``what``.

    :param most: the most typical inputs, the most first.
    :param least: the least typical inputs, the least first.
    :param path: where to save the figure as a PNG; ``None``: not saved.
    :param what: the score's name, for the title.
    """
    n = max(len(most), 1)
    title = f"top: highest {what}; bottom: lowest {what}"
    return plot_grid(torch.cat([as_images(most), as_images(least)]), nrow=n, title=title, path=path)


def plot_interpolation(
    images: torch.Tensor, path: str | Path | None = None, title: str = "interpolation"
) -> Figure:
    """Images decoded along a path in the latent space, in one row, from its start to its end.

    :param images: the images, values in [0, 1]: ``(N, C, H, W)``, ``(N, H, W)`` or flat ``(N, D)``.
    :param path: where to save the figure as a PNG; ``None``: not saved.
    :param title: the figure's title.
    """
    return plot_grid(images, nrow=len(images), title=title, path=path)


def plot_class_samples(model: Any, path: str | Path | None = None, per_class: int = 8) -> Figure:
    """``per_class`` samples of each class of a label model (E[x | y, z], z ~ p(z)), a column
    per class, labelled 0 .. K-1 from left to right.

    :param model: a label model, a :class:`~pyro_vae.models.cvae.CVAE` or
        :class:`~pyro_vae.models.m2.M2`.
    :param path: where to save the figure as a PNG; ``None``: not saved.
    :param per_class: the samples of each class, one column's worth.
    """
    k = len(model.drawable_labels)
    images = model.sample(per_class * k)  # the labels 0, 1, ..., K-1 in turn: a column each
    title = f"samples of each class, columns 0 to {k - 1}"
    return plot_grid(images, nrow=k, title=title, path=path)


def plot_confusion(
    confusion: torch.Tensor, title: str = "", path: str | Path | None = None
) -> Figure:
    """A confusion matrix of counts, rows the true labels and columns the predicted ones, each
    cell shaded by its share of the row and written out.

    :param confusion: ``(K, K)`` counts, as :func:`~pyro_vae.analysis.evaluation.confusion_matrix`
        gives them.
    :param title: the figure's title; empty: "confusion matrix".
    :param path: where to save the figure as a PNG; ``None``: not saved.
    """
    counts = _array(confusion)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(counts)
    fig = Figure(figsize=(1.2 + 0.45 * k, 1.0 + 0.45 * k))
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted label", ylabel="true label")
    ax.set_title(title or "confusion matrix", fontsize=9)
    return _finish(fig, path)


def plot_elbo(history: Mapping[str, Sequence[float]], path: str | Path | None = None) -> Figure:
    """Train and test ELBO (nats per example) by epoch, from a history's columns.

    :param history: columns by name, with ``epoch``, ``train_elbo`` and ``test_elbo``: a
        :class:`~pyro_vae.training.state.History`'s ``__dict__``, or a dict of lists.
    :param path: where to save the figure as a PNG; ``None``: not saved.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    marker = "." if len(history["epoch"]) <= 50 else None  # dots only where they can be told apart
    ax.plot(history["epoch"], history["train_elbo"], marker=marker, label="train ELBO")
    ax.plot(history["epoch"], history["test_elbo"], marker=marker, label="test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per example)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, path)


def _array(values: Any) -> np.ndarray:
    if torch.is_tensor(values):
        values = values.detach().cpu()
    return np.asarray(values, dtype=np.float64)


def _principal_components(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The codes projected on their first two principal components, and each component's share
    of the total variance. Signs are fixed (largest loading positive) so a plot does not flip
    between runs."""
    centred = z - z.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    vt = vt * signs[:, None]
    return centred @ vt[:2].T, s**2 / (s**2).sum()


def plot_latent_scatter(
    z: torch.Tensor | np.ndarray, labels: Any = None, path: str | Path | None = None
) -> Figure:
    """Codes ``z`` ``(N, z_dim)`` (e.g. posterior means) as points in the plane, coloured by
    ``labels`` ``(N,)`` if given: a legend for up to 20 integer classes, a colorbar otherwise.

    z_dim = 2 is plotted as it is; z_dim > 2 is projected on its first two principal components,
    whose axis labels give their share of the variance, e.g. "PC 1 (37% of variance)"; z_dim = 1
    is a strip along the horizontal axis.

    :param z: the codes, ``(N, z_dim)``: a tensor or an array.
    :param labels: a label or value per code, ``(N,)``, that colours it; ``None``: one colour.
    :param path: where to save the figure as a PNG; ``None``: not saved.
    """
    z = _array(z)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"z must be (N, z_dim) codes, got shape {z.shape}")
    n, z_dim = z.shape
    if z_dim > 2:
        xy, share = _principal_components(z)
        axis_labels = [f"PC {i + 1} ({share[i]:.0%} of variance)" for i in range(2)]
    elif z_dim == 2:
        xy, axis_labels = z, ["z[0]", "z[1]"]
    else:
        xy, axis_labels = np.column_stack([z[:, 0], np.zeros(n)]), ["z[0]", ""]
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    size = 12 if n <= 2000 else 4  # small points where there are many
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7)
    else:
        labels = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        classes = np.unique(labels)
        discrete = np.issubdtype(labels.dtype, np.integer) and len(classes) <= 20
        if discrete:
            colours = colormaps["tab10" if len(classes) <= 10 else "tab20"]
            for i, label in enumerate(classes):
                keep = labels == label
                ax.scatter(
                    xy[keep, 0], xy[keep, 1], s=size, alpha=0.7, color=colours(i), label=label
                )
            ax.legend(title="label", fontsize="small", markerscale=1.5, loc="best")
        else:
            points = ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7, c=labels.astype(float))
            fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if z_dim == 1:
        ax.set_yticks([])
    ax.set_title(f"{n} latent codes" + (f", {z_dim}-D by PCA" if z_dim > 2 else ""))
    ax.grid(alpha=0.3)
    return _finish(fig, path)


@torch.no_grad()
def _prior_mean(vae: Any) -> torch.Tensor:
    """E[z] under the VAE's prior: in closed form where the distribution has one, else the mean
    of 4096 seeded draws (flow priors), leaving the global random state alone; zero where the
    mean does not exist (a Student-t with df <= 1, symmetric about 0)."""
    prior = vae.prior_dist(1)
    try:
        mean = prior.mean[0]
    except NotImplementedError:
        device = vae.anchor().device
        with random_state_kept(device):
            torch.manual_seed(0)
            mean = vae.prior_dist(4096).sample().mean(0)
    return torch.where(torch.isfinite(mean), mean, torch.zeros_like(mean))


@torch.no_grad()
def plot_traversals(
    vae: Any,
    z: torch.Tensor | None = None,
    dims: Sequence[int] | None = None,
    values: torch.Tensor | Sequence[float] = TRAVERSAL_VALUES,
    path: str | Path | None = None,
) -> Figure:
    """Latent traversals: row d shows E[x | z + v e_d] for each v in ``values``, the images the
    decoder makes as one coordinate of the base code moves and the others stay put.

    :param vae: a model of p(x | z), the VAE.
    :param z: the base code ``(z_dim,)``; by default the prior's mean (0 for N(0, I)).
    :param dims: the latent dimensions to traverse, one row each; by default all of them.
    :param values: what is added to the chosen coordinate, one column each, in z's own units
        (prior standard deviations for the N(0, I) prior).
    :param path: where to save the figure as a PNG; ``None``: not saved.
    """
    anchor = vae.anchor()
    base = _prior_mean(vae) if z is None else torch.as_tensor(z).to(anchor).reshape(vae.z_dim)
    dims = list(range(vae.z_dim)) if dims is None else [int(d) for d in dims]
    values = torch.as_tensor(values).to(anchor).flatten()
    codes = base.repeat(len(dims), len(values), 1)
    for row, d in enumerate(dims):
        codes[row, :, d] += values
    images = as_images(vae.likelihood.mean(vae.decoder(codes.reshape(-1, vae.z_dim))))
    height, width = images.shape[2:]
    fig = Figure(figsize=(1 + 0.7 * len(values), 0.8 + 0.7 * len(dims)))
    ax = fig.subplots()
    _show_grid(ax, images, len(values))
    # One tick at the centre of each cell: columns by value, rows by dimension.
    ax.set_xticks([1 + j * (width + 1) + (width - 1) / 2 for j in range(len(values))])
    ax.set_xticklabels([f"{v:+.3g}" for v in values.tolist()])
    ax.set_yticks([1 + i * (height + 1) + (height - 1) / 2 for i in range(len(dims))])
    ax.set_yticklabels([f"z[{d}]" for d in dims])
    ax.tick_params(length=0)
    ax.set_xlabel("value added to the base code")
    ax.set_title("latent traversals, E[x | z]")
    return _finish(fig, path)


def plot_khat(khat: Any, path: str | Path | None = None) -> Figure:
    """Histogram of the Pareto k-hat of each input (an array, or the ``ImportanceDiagnostics`` of
    :func:`pyro_vae.analysis.inspection.importance_diagnostics`), with the thresholds 0.5 (good
    below) and 0.7 (importance sampling with the guide unreliable above) and the count above 0.7.

    :param khat: the k-hat of each input: an array, or ``ImportanceDiagnostics`` with a ``khat``.
    :param path: where to save the figure as a PNG; ``None``: not saved.
    """
    khat = _array(getattr(khat, "khat", khat)).ravel()
    above = int((khat > 0.7).sum())  # an infinite k-hat counts, though it cannot be drawn
    shown = khat[np.isfinite(khat)]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.hist(shown, bins=min(30, max(5, len(shown) // 3)), color="C0", alpha=0.8)
    ax.axvline(0.5, color="C1", linestyle="--", label="0.5: good below")
    ax.axvline(0.7, color="C3", label="0.7: unreliable above")
    ax.set_xlabel("Pareto k-hat of the importance weights p(x, z) / q(z|x)")
    ax.set_ylabel("inputs")
    ax.set_title(f"Pareto k-hat of {len(khat)} inputs: {above} above 0.7")
    ax.legend()
    return _finish(fig, path)


def plot_guide_vs_nuts(
    guide: Any,
    nuts: Any,
    obs: int = 0,
    dims: Sequence[int] | None = None,
    path: str | Path | None = None,
    names: tuple[str, str] = ("guide q(z|x)", "NUTS p(z|x)"),
) -> Figure:
    """The guide's draws against NUTS's for the input labelled ``obs``: one panel per latent
    dimension with both histograms (densities), and with two dimensions one more panel of both
    clouds of draws in the plane (at most 1000 of each).

    :param guide: ``InferenceData`` of the guide's draws, as made by
        :func:`~pyro_vae.analysis.inspection.posterior_samples` (or
        :func:`~pyro_vae.analysis.inspection.importance_resample`).
    :param nuts: ``InferenceData`` of NUTS's draws, as made by
        :func:`~pyro_vae.analysis.inspection.nuts_posterior`.
    :param obs: the input's coordinate label.
    :param dims: the coordinate labels of the latent dimensions to show; by default all.
    :param path: where to save the figure as a PNG, if given.
    :param names: the two labels of the legend.
    """

    def draws(idata: Any) -> np.ndarray:  # (draws, z_dim) for this input
        z = idata.posterior["z"].sel(obs=obs).stack(sample=("chain", "draw"))
        return z.transpose("sample", "z_dim").sel(z_dim=dims).values

    dims = list(guide.posterior["z"]["z_dim"].values) if dims is None else list(dims)
    q, p = draws(guide), draws(nuts)
    panels = len(dims) + (len(dims) == 2)
    columns = min(panels, 4)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(3.2 * columns, 3 * rows + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        fig.delaxes(ax)
    for i, (ax, d) in enumerate(zip(axes, dims, strict=False)):
        both = np.concatenate([q[:, i], p[:, i]])
        bins = np.linspace(both.min(), both.max(), 41)
        ax.hist(p[:, i], bins, density=True, color="C1", alpha=0.45, label=names[1])
        ax.hist(q[:, i], bins, density=True, histtype="step", color="C0", lw=1.5, label=names[0])
        ax.set_xlabel(f"z[{d}]")
        ax.set_yticks([])
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize="small")
    if len(dims) == 2:
        ax = axes[2]
        # At most 1000 evenly spaced draws of each, so that neither cloud buries the other.
        for cloud, colour, name in ((q, "C0", names[0]), (p, "C1", names[1])):
            shown = cloud[:: math.ceil(len(cloud) / 1000)]
            ax.scatter(shown[:, 0], shown[:, 1], s=3, alpha=0.4, color=colour, label=name)
        ax.set_xlabel(f"z[{dims[0]}]")
        ax.set_ylabel(f"z[{dims[1]}]")
    fig.suptitle(f"input {obs}: {names[0]} against {names[1]}")
    return _finish(fig, path)

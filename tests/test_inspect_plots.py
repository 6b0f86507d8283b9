"""The latent-space and posterior-diagnostic plots: figures returned and saved, what they show."""

import matplotlib.image
import numpy as np
import pytest
import torch
from helpers import binary_batch, tiny_vae

from pyro_vae.analysis.inspection import (
    importance_diagnostics,
    importance_resample,
    posterior_samples,
)
from pyro_vae.analysis.plots import (
    TRAVERSAL_VALUES,
    plot_guide_vs_nuts,
    plot_khat,
    plot_latent_scatter,
    plot_traversals,
)


def saved(path):
    return path.stat().st_size > 1000 and matplotlib.image.imread(path).shape[2] in (3, 4)


def test_latent_scatter_in_two_dimensions_coloured_by_class(tmp_path):
    z = torch.randn(60, 2)
    labels = torch.arange(60) % 3
    fig = plot_latent_scatter(z, labels, path=tmp_path / "s.png")
    assert saved(tmp_path / "s.png")
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z[0]", "z[1]")
    assert len(ax.collections) == 3  # one per class
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2"]
    shown = np.concatenate([c.get_offsets() for c in ax.collections])
    assert np.allclose(np.sort(shown, 0), np.sort(z.numpy(), 0))


def test_latent_scatter_uses_pca_beyond_two_dimensions():
    # Orthogonal zero-mean columns (rows of a Hadamard matrix) with variances 1, 9 and 4: the
    # principal components are z[1], z[2], z[0], explaining 9/14, 4/14 and 1/14 of the variance.
    hadamard = torch.tensor([[1.0, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]]).T.repeat(5, 1)
    z = hadamard * torch.tensor([1.0, 3.0, 2.0])
    fig = plot_latent_scatter(z)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "PC 1 (64% of variance)"
    assert ax.get_ylabel() == "PC 2 (29% of variance)"
    assert "3-D by PCA" in ax.get_title()
    xy = ax.collections[0].get_offsets()
    centred = z.numpy() - z.numpy().mean(0)
    assert np.allclose(np.abs(xy), np.abs(centred[:, [1, 2]]), atol=1e-5)


def test_latent_scatter_with_continuous_labels_and_one_dimension():
    fig = plot_latent_scatter(np.random.default_rng(0).normal(size=(30, 2)), np.linspace(0, 1, 30))
    assert len(fig.axes) == 2  # the plot and its colorbar
    fig = plot_latent_scatter(torch.randn(10, 1))
    assert fig.axes[0].get_xlabel() == "z[0]"
    with pytest.raises(ValueError, match="labels must have shape"):
        plot_latent_scatter(torch.randn(10, 2), torch.arange(9))
    with pytest.raises(ValueError, match=r"\(N, z_dim\)"):
        plot_latent_scatter(torch.randn(10))


@torch.no_grad()
def test_traversal_grid_has_one_image_per_dimension_and_value(tmp_path):
    vae = tiny_vae(z_dim=3)
    values = [-2.0, 0.0, 1.0, 2.5]
    fig = plot_traversals(vae, dims=[0, 2], values=values, path=tmp_path / "t.png")
    assert saved(tmp_path / "t.png")
    ax = fig.axes[0]
    grid = ax.images[0].get_array()[..., 0]  # make_grid repeats a grey channel as RGB
    cell = 9  # 8 pixels and 1 of padding
    assert grid.shape[:2] == (2 * cell + 1, 4 * cell + 1)  # 2 dims x 4 values
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z[0]", "z[2]"]
    assert len(ax.get_xticklabels()) == 4
    # Row 1 (dimension 2), column 3 (value 2.5) is E[x | z = 0 + 2.5 e_2]: the prior mean is 0.
    code = torch.tensor([[0.0, 0.0, 2.5]])
    expected = vae.likelihood.mean(vae.decoder(code))[0, 0].numpy()
    shown = grid[1 + cell : 1 + cell + 8, 1 + 3 * cell : 1 + 3 * cell + 8]
    assert np.allclose(shown, expected, atol=1e-6)


@torch.no_grad()
def test_traversals_default_to_every_dimension_around_the_prior_mean():
    vae = tiny_vae(z_dim=2, prior="normal")
    vae.prior.loc.fill_(0.5)  # a learned prior whose mean is not 0
    fig = plot_traversals(vae)
    grid = fig.axes[0].images[0].get_array()[..., 0]
    assert grid.shape[:2] == (2 * 9 + 1, len(TRAVERSAL_VALUES) * 9 + 1)
    centre = len(TRAVERSAL_VALUES) // 2  # value 0: the base code itself
    expected = vae.likelihood.mean(vae.decoder(torch.full((1, 2), 0.5)))[0, 0].numpy()
    shown = grid[1:9, 1 + centre * 9 : 1 + centre * 9 + 8]
    assert np.allclose(shown, expected, atol=1e-6)
    # A flow prior has no closed-form mean: a seeded Monte Carlo one, the same each time.
    flow = tiny_vae(z_dim=2, prior="flow")
    state = torch.get_rng_state()
    a = plot_traversals(flow, values=[0.0]).axes[0].images[0].get_array()
    b = plot_traversals(flow, values=[0.0]).axes[0].images[0].get_array()
    assert np.array_equal(a, b) and torch.equal(state, torch.get_rng_state())


def test_khat_histogram_marks_the_thresholds(tmp_path):
    khat = np.array([0.1, 0.2, 0.3, 0.55, 0.8, 1.2, np.inf])
    fig = plot_khat(khat, path=tmp_path / "k.png")
    assert saved(tmp_path / "k.png")
    ax = fig.axes[0]
    assert ax.get_title() == "Pareto k-hat of 7 inputs: 3 above 0.7"
    assert sorted(line.get_xdata()[0] for line in ax.lines) == [0.5, 0.7]
    assert sum(p.get_height() for p in ax.patches) == 6  # the infinite one is counted, not drawn
    # The diagnostics object itself is accepted.
    vae = tiny_vae(z_dim=2)
    diagnostics = importance_diagnostics(vae, binary_batch(4), 200)
    assert "Pareto k-hat of 4 inputs" in plot_khat(diagnostics).axes[0].get_title()


def test_guide_vs_nuts_overlays_each_dimension(tmp_path):
    vae = tiny_vae(z_dim=2)
    x = binary_batch(3)
    guide = posterior_samples(vae, x, 300)
    other = importance_resample(vae, x, 300, proposals=1000)  # any draws do: here SIR's
    fig = plot_guide_vs_nuts(guide, other, obs=1, path=tmp_path / "g.png")
    assert saved(tmp_path / "g.png")
    assert len(fig.axes) == 3  # z[0], z[1] and the plane
    first, second, plane = fig.axes
    assert (first.get_xlabel(), second.get_xlabel()) == ("z[0]", "z[1]")
    assert [t.get_text() for t in first.get_legend().get_texts()] == [
        "NUTS p(z|x)",
        "guide q(z|x)",
    ]
    assert len(plane.collections) == 2
    drawn = plane.collections[0].get_offsets()  # the guide's draws for input 1
    assert np.allclose(drawn, guide.posterior["z"].sel(obs=1).values[0])
    assert "input 1" in fig._suptitle.get_text()

    vae3 = tiny_vae(z_dim=3)
    three = posterior_samples(vae3, x, 100)
    assert len(plot_guide_vs_nuts(three, three, dims=[0, 2]).axes) == 3
    assert len(plot_guide_vs_nuts(three, three).axes) == 3  # one per dimension, no plane

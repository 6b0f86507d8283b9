import matplotlib.image
import pytest
import torch
from torchvision.utils import make_grid

from pyro_vae.analysis.plots import (
    as_images,
    image_grid,
    plot_elbo,
    plot_grid,
    plot_reconstructions,
)


@pytest.mark.parametrize(
    "shape,expected",
    [
        ((5, 1, 8, 8), (5, 1, 8, 8)),
        ((5, 8, 8), (5, 1, 8, 8)),
        ((5, 64), (5, 1, 8, 8)),
        ((5, 20), (5, 1, 1, 20)),
        ((5, 3, 4, 4), (5, 3, 4, 4)),
    ],
)
def test_any_example_shape_becomes_an_image(shape, expected):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    images = as_images(x)
    assert images.shape == expected
    # the same pixels in the same order: row by row, as the flat vector holds them
    assert torch.equal(images.flatten(1), x.flatten(1))


def test_reconstructions_alternate_input_and_output_rows(tmp_path):
    x, x_rec = torch.zeros(16, 1, 8, 8), torch.ones(16, 1, 8, 8)
    fig = plot_reconstructions(x, x_rec, tmp_path / "r.png", nrow=8)
    shown = fig.axes[0].images[0].get_array()
    cell = 9  # 8 pixels and 1 of padding
    rows = [float(shown[1 + r * cell : r * cell + cell, 1:8].mean()) for r in range(4)]
    assert rows == [0.0, 1.0, 0.0, 1.0]
    assert matplotlib.image.imread(tmp_path / "r.png").shape[2] in (3, 4)


def test_figures_are_returned_and_saved(tmp_path):
    fig = plot_grid(torch.rand(10, 1, 8, 8), path=tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 1000 and fig.axes
    history = {"epoch": [1, 2, 3], "train_elbo": [-30, -28, -27], "test_elbo": [-31, -29, -28]}
    fig = plot_elbo(history)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "ELBO (nats per example)"
    assert [line.get_label() for line in ax.lines] == ["train ELBO", "test ELBO"]
    for line, column in zip(ax.lines, ("train_elbo", "test_elbo"), strict=True):
        assert list(line.get_xdata()) == history["epoch"]
        assert list(line.get_ydata()) == history[column]


@pytest.mark.parametrize("shape, nrow", [((1, 1, 8, 8), 8), ((5, 1, 8, 8), 2), ((7, 3, 4, 6), 3)])
def test_the_image_grid_is_torchvisions_make_grid(shape, nrow):
    images = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    expected = make_grid(images, nrow=nrow, padding=1, pad_value=0.5)
    assert torch.equal(image_grid(images, nrow=nrow, pad_value=0.5), expected)

"""The ``resnet`` network family: shapes, residual blocks, training, and the unchanged conv pair."""

import pyro
import pytest
import torch
import torch.nn.functional as F

from pyro_vae import VAE
from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import manual_elbo
from pyro_vae.parts.networks import (
    NETS,
    ConvDecoder,
    ResidualBlock,
    ResNetDecoder,
    ResNetEncoder,
    make_classifier,
    make_nets,
)

IMAGE_SHAPES = [(3, 32, 32), (1, 28, 28), (3, 8, 8), (3, 7, 9), (2, 13, 5), (1, 1, 1)]


@pytest.mark.parametrize("x_shape", IMAGE_SHAPES, ids=str)
def test_encoder_maps_images_to_out_dim(x_shape):
    torch.manual_seed(0)
    encoder = ResNetEncoder(x_shape, (8, 16), 6)
    assert encoder(torch.rand(5, *x_shape)).shape == (5, 6)


@pytest.mark.parametrize("x_shape", IMAGE_SHAPES, ids=str)
@pytest.mark.parametrize("leading", [(2,), (5, 4), ()], ids=str)
def test_decoder_meets_every_image_size_with_any_leading_dims(x_shape, leading):
    torch.manual_seed(0)
    decoder = ResNetDecoder(3, (8, 16), x_shape, 2)
    assert decoder(torch.randn(*leading, 3)).shape == (*leading, 2, *x_shape)


def test_decoder_with_leading_dims_decodes_each_code_alone():
    torch.manual_seed(0)
    decoder = ResNetDecoder(4, (8, 16), (3, 7, 9), 2)
    z = torch.randn(5, 4, 4)
    assert torch.allclose(decoder(z)[3, 1], decoder(z[3, 1:2])[0], atol=1e-6)


def test_residual_block_with_zero_convolutions_is_the_identity():
    torch.manual_seed(0)
    block = ResidualBlock(6)
    x = torch.randn(3, 6, 7, 9)
    assert not torch.equal(block(x), x)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
            conv.bias.zero_()
    assert torch.equal(block(x), x)


def test_residual_block_keeps_channels_and_size():
    assert ResidualBlock(4)(torch.randn(2, 4, 5, 3)).shape == (2, 4, 5, 3)


def test_resnet_is_registered_and_rejects_flat_data():
    assert NETS["resnet"] == (ResNetEncoder, ResNetDecoder)
    with pytest.raises(ConfigError, match="the resnet encoder needs images"):
        VAE((20,), encoder="resnet")


def test_conditional_pair_and_classifier_build_and_run():
    torch.manual_seed(0)
    encoder, decoder = make_nets("resnet", (3, 32, 32), 16, (32, 64), 32, 2, num_classes=10)
    x, y = torch.rand(4, 3, 32, 32), torch.eye(10)[:4]
    assert encoder(x, y).shape == (4, 32)
    assert decoder(torch.randn(4, 16), y).shape == (4, 2, 3, 32, 32)
    # every label at once, as M2 enumerates them: y of shape (K, 1, K)
    every_label = torch.eye(10).unsqueeze(1)
    assert decoder(torch.randn(4, 16), every_label).shape == (10, 4, 2, 3, 32, 32)
    assert make_classifier("resnet", (3, 32, 32), (8,), 10)(x).shape == (4, 10)


def test_a_resnet_vae_trains():
    pyro.set_rng_seed(0)
    vae = VAE(
        (3, 8, 8), z_dim=4, hidden_dims=(8, 16), encoder="resnet", likelihood="discretized-logistic"
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), generator=g) / 255
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = -manual_elbo(vae, x) / x.shape[0]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.05 * abs(first), losses


# (x_shape, hidden_dims, P) and the output padding of each transposed convolution, by hand: a
# stride-2 3x3 convolution with padding 1 takes size n to (n - 1) // 2 + 1, its transpose takes
# m to 2 m - 1, plus 1 where the encoder's n was even
CONV_DECODERS = [
    ((1, 7, 9), (8, 16), 2, [(1, 0), (0, 0)]),  # 7x9 -> 4x5 -> 2x3, and back up
    ((1, 28, 28), (16, 32), 1, [(1, 1), (1, 1)]),  # 28 -> 14 -> 7
    ((3, 6, 5), (4,), 2, [(1, 0)]),  # 6x5 -> 3x3; six channels out, two per colour channel
]


@pytest.mark.parametrize("x_shape,hidden_dims,params_per_pixel,paddings", CONV_DECODERS, ids=str)
def test_conv_decoder_is_a_linear_layer_then_relu_and_transposed_convolutions(
    x_shape, hidden_dims, params_per_pixel, paddings
):
    # The documented network, computed with torch.nn.functional from the decoder's own weights:
    # z -> Linear -> (C_last, h, w) -> [ReLU, ConvTranspose3x3 stride 2] per stage -> (P, C, H, W)
    torch.manual_seed(0)
    z_dim, channels = 4, x_shape[0]
    decoder = ConvDecoder(z_dim, hidden_dims, x_shape, params_per_pixel)
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    deconvs = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(linears) == 1 and len(deconvs) == len(hidden_dims)
    z = torch.randn(5, z_dim)
    h = F.linear(z, linears[0].weight, linears[0].bias)
    height, width = x_shape[1:]
    for _ in hidden_dims:
        height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    h = h.reshape(5, hidden_dims[-1], height, width)
    for deconv, padding in zip(deconvs, paddings, strict=True):
        h = F.conv_transpose2d(
            F.relu(h), deconv.weight, deconv.bias, stride=2, padding=1, output_padding=padding
        )
    assert h.shape == (5, params_per_pixel * channels, *x_shape[1:])
    expected = h.reshape(5, params_per_pixel, *x_shape)
    out = decoder(z)
    assert out.shape == (5, params_per_pixel, *x_shape)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # a code's image does not depend on the other codes of its batch, nor on their number
    torch.testing.assert_close(decoder(z[2:3])[0], out[2], rtol=1e-5, atol=1e-6)

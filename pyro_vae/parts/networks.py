"""The neural networks behind the guide (encoder) and the model (decoder).

An encoder maps a batch ``x`` of shape ``(B, *x_shape)`` to ``(B, out_dim)`` numbers that a guide
family turns into q(z|x). A decoder maps ``z`` of shape ``(..., z_dim)`` to ``(..., P, *x_shape)``
numbers, ``P`` per pixel, that a likelihood turns into p(x|z). Decoders accept any leading batch
dims because Pyro's vectorized particles add one in front of the data plate.

Three families, picked by name:

- ``mlp``: fully connected; ``hidden_dims`` are layer widths.
- ``conv``: strided 3x3 convolutions; ``hidden_dims`` are channel counts; images only.
- ``resnet``: strided 3x3 convolutions, each followed by a residual block; for colour images
  (CIFAR-like, 32-64 px); ``hidden_dims`` are channel counts; images only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyro_vae import validation
from pyro_vae.device import check_fits
from pyro_vae.errors import ConfigError


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """x -> flatten -> [Linear, ReLU] per hidden width -> Linear(out_dim).

    :param x_shape: the shape of one example, any: it is flattened.
    :param hidden_dims: the layer widths, first layer first.
    :param out_dim: the numbers output per example: what the guide family takes (or K logits for a
        classifier).
    """

    def __init__(self, x_shape: Sequence[int], hidden_dims: Sequence[int], out_dim: int):
        super().__init__()
        self.net = _mlp([math.prod(x_shape), *hidden_dims, out_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, out_dim)`` numbers for a batch ``x`` of shape ``(B, *x_shape)``.

        :param x: a batch of examples, ``(B, *x_shape)``.
        """
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """z -> [Linear, ReLU] per hidden width (reversed) -> Linear(P * prod(x_shape)).

    :param z_dim: the size of a code, the input (plus K for a label-conditioned decoder).
    :param hidden_dims: the encoder's layer widths, mirrored: the decoder's first layer is the
        encoder's last.
    :param x_shape: the shape of one example.
    :param params_per_pixel: P, the numbers per pixel the likelihood takes (1 for Bernoulli logits,
        2 for a location and a scale).
    """

    def __init__(
        self, z_dim: int, hidden_dims: Sequence[int], x_shape: Sequence[int], params_per_pixel: int
    ):
        super().__init__()
        self.out_shape = (params_per_pixel, *x_shape)
        self.net = _mlp([z_dim, *reversed(hidden_dims), math.prod(self.out_shape)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(..., P, *x_shape)`` numbers for codes ``z`` of shape ``(..., z_dim)``.

        :param z: codes, ``(..., z_dim)``.
        """
        return self.net(z).unflatten(-1, self.out_shape)


def _halve(size: int) -> int:
    # Spatial size after a 3x3 convolution with stride 2 and padding 1.
    return (size - 1) // 2 + 1


def _check_image_shape(x_shape: Sequence[int], family: str) -> None:
    if len(x_shape) != 3:
        raise ConfigError(
            f"the {family} encoder needs images of shape (C, H, W), got per-example shape "
            f"{tuple(x_shape)}; use {{encoder}} mlp for flat data"
        )


def _spatial_sizes(x_shape: Sequence[int], stages: int) -> list[tuple[int, int]]:
    """The (H, W) of an image of shape ``(C, H, W)``, then after each of ``stages`` stride-2
    convolutions: the sizes an image decoder must meet, in reverse, on its way back up."""
    sizes = [(x_shape[1], x_shape[2])]
    for _ in range(stages):
        sizes.append((_halve(sizes[-1][0]), _halve(sizes[-1][1])))
    return sizes


def _upsample(
    n_in: int, n_out: int, size_in: tuple[int, int], size_out: tuple[int, int]
) -> nn.ConvTranspose2d:
    """A 3x3 transposed convolution of stride 2 from spatial size ``size_in`` to exactly
    ``size_out``, one of the sizes :func:`_halve` maps to ``size_in``.

    Without output padding it gives 2 * size - 1; the padding (0 or 1 per dim) adds back the row
    or column that the stride-2 convolution rounded away from an even size.
    """
    padding = (size_out[0] - (2 * size_in[0] - 1), size_out[1] - (2 * size_in[1] - 1))
    return nn.ConvTranspose2d(n_in, n_out, 3, 2, 1, output_padding=padding)


class ConvEncoder(nn.Module):
    """x -> [Conv3x3 stride 2, ReLU] per channel count -> flatten -> Linear(out_dim).

    :param x_shape: the shape of one image, ``(C, H, W)``.
    :param hidden_dims: the channel counts, first convolution first; each halves the image's height
        and width.
    :param out_dim: the numbers output per example: what the guide family takes (or K logits for a
        classifier).
    """

    def __init__(self, x_shape: Sequence[int], hidden_dims: Sequence[int], out_dim: int):
        super().__init__()
        _check_image_shape(x_shape, "conv")
        channels, height, width = x_shape
        layers: list[nn.Module] = []
        for n_out in hidden_dims:
            layers += [nn.Conv2d(channels, n_out, 3, stride=2, padding=1), nn.ReLU()]
            channels, height, width = n_out, _halve(height), _halve(width)
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(channels * height * width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, out_dim)`` numbers for images ``x`` of shape ``(B, C, H, W)``.

        :param x: a batch of images, ``(B, C, H, W)``.
        """
        return self.head(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
    """z -> Linear -> [ReLU, ConvTranspose3x3 stride 2] mirroring the encoder -> (P * C) channels.

    Each transposed convolution's output padding is chosen so that every spatial size of the
    encoder is met exactly, whatever the image size (8x8 digits, 28x28 MNIST, odd sizes).

    :param z_dim: the size of a code, the input (plus K for a label-conditioned decoder).
    :param hidden_dims: the encoder's channel counts, mirrored.
    :param x_shape: the shape of one image, ``(C, H, W)``.
    :param params_per_pixel: P, the numbers per pixel the likelihood takes (1 for Bernoulli logits,
        2 for a location and a scale).
    """

    family = "conv"

    def __init__(
        self, z_dim: int, hidden_dims: Sequence[int], x_shape: Sequence[int], params_per_pixel: int
    ):
        super().__init__()
        _check_image_shape(x_shape, self.family)
        sizes = _spatial_sizes(x_shape, len(hidden_dims))
        self.out_shape = (params_per_pixel, *x_shape)
        self.start_shape = (hidden_dims[-1], *sizes[-1])
        self.head = nn.Linear(z_dim, math.prod(self.start_shape))
        widths = [*reversed(hidden_dims), params_per_pixel * x_shape[0]]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers += self.stage(n_in, n_out, sizes[-1 - i], sizes[-2 - i])
        self.deconvs = nn.Sequential(*layers)

    def stage(
        self, n_in: int, n_out: int, size_in: tuple[int, int], size_out: tuple[int, int]
    ) -> list[nn.Module]:
        """The layers that take ``n_in`` channels of ``size_in`` up to ``n_out`` of ``size_out``.

        :param n_in: the channels in.
        :param n_out: the channels out.
        :param size_in: the (H, W) in.
        :param size_out: the (H, W) out, one that a stride-2 convolution halves to ``size_in``.
        """
        return [nn.ReLU(), _upsample(n_in, n_out, size_in, size_out)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(..., P, C, H, W)`` numbers for codes ``z`` of shape ``(..., z_dim)``.

        :param z: codes, ``(..., z_dim)``.
        """
        batch_shape = z.shape[:-1]
        h = self.head(z.reshape(-1, z.shape[-1])).unflatten(-1, self.start_shape)
        return self.deconvs(h).reshape(*batch_shape, *self.out_shape)


class ResidualBlock(nn.Module):
    """x -> x + Conv3x3(ReLU(Conv3x3(ReLU(x)))): a pre-activation residual block (He et al. 2016)
    that keeps the channel count and the spatial size, the identity when its convolutions are 0.

    :param channels: the channels in and out.
    """

    def __init__(self, channels: int):
        super().__init__()
        # No batch norm: batch statistics would make an example's likelihood depend on its batch.
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + Conv3x3(ReLU(Conv3x3(ReLU(x)))), shaped like ``x``.

        :param x: feature maps, ``(B, channels, H, W)``.
        """
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class ResNetEncoder(nn.Module):
    """x -> [Conv3x3 stride 2, ResidualBlock] per channel count -> ReLU -> flatten ->
    Linear(out_dim).

    :param x_shape: the shape of one image, ``(C, H, W)``.
    :param hidden_dims: the channel counts, first convolution first; each halves the image's height
        and width.
    :param out_dim: the numbers output per example: what the guide family takes (or K logits for a
        classifier).
    """

    def __init__(self, x_shape: Sequence[int], hidden_dims: Sequence[int], out_dim: int):
        super().__init__()
        _check_image_shape(x_shape, "resnet")
        channels = x_shape[0]
        layers: list[nn.Module] = []
        for n_out in hidden_dims:
            layers += [nn.Conv2d(channels, n_out, 3, stride=2, padding=1), ResidualBlock(n_out)]
            channels = n_out
        self.convs = nn.Sequential(*layers, nn.ReLU())
        height, width = _spatial_sizes(x_shape, len(hidden_dims))[-1]
        self.head = nn.Linear(channels * height * width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, out_dim)`` numbers for images ``x`` of shape ``(B, C, H, W)``.

        :param x: a batch of images, ``(B, C, H, W)``.
        """
        return self.head(self.convs(x).flatten(1))


class ResNetDecoder(ConvDecoder):
    """z -> Linear -> [ResidualBlock, ReLU, ConvTranspose3x3 stride 2] mirroring the encoder ->
    (P * C) channels: :class:`ConvDecoder` with a residual block before each upsampling."""

    family = "resnet"

    def stage(
        self, n_in: int, n_out: int, size_in: tuple[int, int], size_out: tuple[int, int]
    ) -> list[nn.Module]:
        """A residual block, then :class:`ConvDecoder`'s stage from ``n_in`` channels of
        ``size_in`` up to ``n_out`` of ``size_out``.

        :param n_in: the channels in.
        :param n_out: the channels out.
        :param size_in: the (H, W) in.
        :param size_out: the (H, W) out.
        """
        return [ResidualBlock(n_in), *super().stage(n_in, n_out, size_in, size_out)]


#: the network families by name: (encoder class, decoder class)
NETS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "mlp": (MLPEncoder, MLPDecoder),
    "conv": (ConvEncoder, ConvDecoder),
    "resnet": (ResNetEncoder, ResNetDecoder),
}


def make_nets(
    kind: str,
    x_shape: Sequence[int],
    z_dim: int,
    hidden_dims: Sequence[int],
    encoder_outputs: int,
    params_per_pixel: int,
    num_classes: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair of family ``kind``, one of :data:`NETS`; with ``num_classes``
    K > 0, the pair of a label-conditioned model, :class:`ConditionalEncoder` and
    :class:`ConditionalDecoder`.

    The nets are first built on the meta device, which allocates nothing, to count their weights:
    nets too large for this machine's memory are a :class:`ConfigError` before any allocation.

    :param kind: the family: ``"mlp"``, ``"conv"`` or ``"resnet"``.
    :param x_shape: the shape of one example.
    :param z_dim: the size of the code.
    :param hidden_dims: the encoder's layer widths or channel counts; the decoder mirrors them.
    :param encoder_outputs: the numbers per example the guide family takes from the encoder.
    :param params_per_pixel: P, the numbers per pixel the likelihood takes (1 for Bernoulli logits,
        2 for a location and a scale).
    :param num_classes: K, for a model that takes labels; 0 for one that does not.
    """
    encoder_cls, decoder_cls = NETS[validation.choice("encoder", kind, list(NETS))]

    def build() -> tuple[nn.Module, nn.Module]:
        if not num_classes:
            return (
                encoder_cls(x_shape, hidden_dims, encoder_outputs),
                decoder_cls(z_dim, hidden_dims, x_shape, params_per_pixel),
            )
        width = hidden_dims[-1]
        features = encoder_cls(x_shape, hidden_dims, width)
        decoder = decoder_cls(z_dim + num_classes, hidden_dims, x_shape, params_per_pixel)
        return (
            ConditionalEncoder(features, num_classes, width, encoder_outputs),
            ConditionalDecoder(decoder),
        )

    with torch.device("meta"):
        weights = sum(p.numel() * p.element_size() for net in build() for p in net.parameters())
    check_fits(
        weights,
        torch.device("cpu"),
        f"the networks with z_dim {z_dim} and hidden_dims {list(hidden_dims)}",
    )
    return build()


def make_classifier(
    kind: str, x_shape: Sequence[int], hidden_dims: Sequence[int], num_classes: int
) -> nn.Module:
    """x -> ``num_classes`` logits, an encoder of family ``kind``: q(y|x) of the M2 model and the
    supervised baseline it is measured against.

    :param kind: the family: ``"mlp"``, ``"conv"`` or ``"resnet"``.
    :param x_shape: the shape of one example.
    :param hidden_dims: its layer widths or channel counts.
    :param num_classes: K, the logits per example.
    """
    encoder_cls, _ = NETS[validation.choice("encoder", kind, list(NETS))]
    return encoder_cls(x_shape, hidden_dims, num_classes)


class ConditionalEncoder(nn.Module):
    """(x, y) -> ReLU(features(x) + W y) -> Linear(out_dim): the encoder of q(z | x, y), with y
    one-hot of shape ``(..., K)`` broadcasting against x's batch.

    x's features are computed once per example and the label joins them in a hidden layer, so
    that summing over K labels (M2's enumeration, y of shape ``(K, 1, K)``) repeats only the last
    two layers, not the whole encoder, K times.

    :param features: the encoder of x alone, whose output has ``width`` numbers.
    :param num_classes: K, the size of a one-hot label.
    :param width: the size of the hidden layer where x's features and the label meet.
    :param out_dim: the numbers output per example, what the guide family takes.
    """

    def __init__(self, features: nn.Module, num_classes: int, width: int, out_dim: int):
        super().__init__()
        self.features = features
        self.label = nn.Linear(num_classes, width, bias=False)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(..., B, out_dim)`` numbers for a batch ``x`` and one-hot labels ``y`` broadcasting
        against it.

        :param x: a batch of examples, ``(B, *x_shape)``.
        :param y: one-hot labels, ``(..., B, K)`` or ``(K, 1, K)``.
        """
        return self.head(torch.relu(self.features(x) + self.label(y)))


class ConditionalDecoder(nn.Module):
    """(z, y) -> decoder([z, y]): the decoder of p(x | y, z), the one-hot y broadcast over z's
    leading dims (particles, enumerated labels) and appended to the code.

    :param net: a decoder of codes of size ``z_dim + K``.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The decoder's output for codes ``z`` with the one-hot labels ``y`` appended, the two
        broadcast against each other's leading dims.

        :param z: codes, ``(..., z_dim)``.
        :param y: one-hot labels, ``(..., K)``.
        """
        shape = torch.broadcast_shapes(z.shape[:-1], y.shape[:-1])
        zy = torch.cat([z.expand(*shape, z.shape[-1]), y.expand(*shape, y.shape[-1])], -1)
        return self.net(zy)


@torch.no_grad()
def activation_numbers(net: nn.Module, *example: torch.Tensor) -> int:
    """The numbers ``net``'s layers output for one input ``example`` (with its batch dim of 1;
    several tensors for a net of several inputs): what one more example, or one more particle,
    adds to a forward pass.

    :param net: the network.
    :param example: its input(s), each with a batch dim of 1.
    """
    counted = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: counted.append(out.numel()))
        for layer in net.modules()
        if not list(layer.children())
    ]
    try:
        net(*example)
    finally:
        for hook in hooks:
            hook.remove()
    return sum(counted)

"""Likelihoods p(x|z): how the decoder's outputs become a distribution over an observed image.

A likelihood is a small ``nn.Module`` built for one per-example shape ``x_shape``. It says how many
decoder outputs it needs per pixel (``params_per_pixel``), turns the decoder's output of shape
``(..., params_per_pixel, *x_shape)`` into a distribution whose event shape is ``x_shape``
(``forward``) and into the expected image (``mean``, for pictures), and checks data before training
starts (``check_data``) so that a bad value is one clear line, not a validation error mid-epoch.
``binary = True`` marks likelihoods that need 0/1 data: grey data is then binarized by the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from .errors import DataError


class Bernoulli(nn.Module):
    """p(x|z) = prod_pixels Bernoulli(x_i; sigmoid(logit_i(z))), for binary images."""

    name = "bernoulli"
    description = "independent Bernoulli pixels; grey data is binarized (--binarize dynamic)"
    params_per_pixel = 1
    binary = True

    def __init__(self, x_shape: Sequence[int]):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        return out.squeeze(-1 - len(self.x_shape))

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self.logits(out)).to_event(len(self.x_shape))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(out))

    def check_data(self, x: torch.Tensor) -> None:
        grey = int(((x != 0) & (x != 1)).sum())
        if grey:
            raise DataError(
                f"the bernoulli likelihood needs binary data but {grey} values are neither 0 "
                "nor 1; use --binarize dynamic (the default) or a likelihood for grey values"
            )


LIKELIHOODS: dict[str, type[nn.Module]] = {
    Bernoulli.name: Bernoulli,
}

"""Guide families q(z|x): how the encoder's outputs become a reparameterized distribution over z.

A family is a small ``nn.Module`` that says how many numbers per input it needs from the encoder
(``encoder_outputs``), turns them into its parameters (``params``, what ``VAE.encode`` returns), and
into a distribution with batch shape ``(B,)`` and event shape ``(z_dim,)`` whose ``rsample`` is
differentiable in those parameters, so that gradients flow through the sampled z.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

# The smallest posterior scale: keeps log q(z|x) finite when softplus underflows in float32.
MIN_SCALE = 1e-5


class DiagonalNormal(nn.Module):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)), sigma = softplus(.) + MIN_SCALE.

    Sampling is z = mu + sigma * eps with eps ~ N(0, I): the reparameterization trick.
    """

    name = "diagonal"
    description = "diagonal Gaussian N(mu(x), diag sigma(x)^2) (default)"

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.encoder_outputs = 2 * z_dim

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = h.split(self.z_dim, dim=-1)
        return loc, F.softplus(raw_scale) + MIN_SCALE

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return dist.Normal(*self.params(h)).to_event(1)


GUIDES: dict[str, type[nn.Module]] = {
    DiagonalNormal.name: DiagonalNormal,
}

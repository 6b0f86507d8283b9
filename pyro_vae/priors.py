"""Priors p(z) over the latent code.

A prior is a small ``nn.Module`` (so that learned priors keep their parameters in the VAE's
``state_dict``) called as ``prior(batch_size, like)``. It returns a distribution with batch shape
``(batch_size,)`` and event shape ``(z_dim,)``, every tensor made on ``like``'s device and dtype.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormal(nn.Module):
    """p(z) = N(0, I), the prior of Kingma & Welling (2014)."""

    name = "standard-normal"
    description = "N(0, I): the classic fixed isotropic Gaussian"

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        loc = like.new_zeros(batch_size, self.z_dim)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)


PRIORS: dict[str, type[nn.Module]] = {
    StandardNormal.name: StandardNormal,
}

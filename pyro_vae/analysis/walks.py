"""Walking the latent space: the images a VAE decodes along a path between two inputs' codes.

Each end is an input's code, the guide's representative code of q(z|x) (its mean for the
Gaussian guides, as :meth:`~pyro_vae.models.vae.VAE.reconstruct` uses), so the first and last images
are the two inputs' reconstructions. In between, z_t for t = 0, 1/(N-1), ..., 1 follows

- ``linear``: z_t = (1 - t) z_a + t z_b;
- ``spherical``: the great-circle path of Shoemake's slerp,
  z_t = sin((1 - t) w) / sin(w) z_a + sin(t w) / sin(w) z_b, w the angle between z_a and z_b
  (White 2016, "Sampling Generative Networks", arXiv:1609.04468). Under the standard Gaussian
  prior in many dimensions almost all of p(z)'s mass lies near the sphere of radius sqrt(z_dim);
  the straight line between two codes cuts inside it, where codes are atypical, while the great
  circle keeps the codes' norms near the ends' (exactly, for ends of equal norm). It is the
  path for the ``standard-normal`` prior; for others it still goes from z_a to z_b, with no
  such reason.

Each image is E[x | z_t], the likelihood's mean.
"""

from __future__ import annotations

import torch

from pyro_vae import validation
from pyro_vae.errors import ConfigError
from pyro_vae.models.vae import VAE

# Below this angle (radians) between the codes, slerp's sin(w) divides by almost nothing; the
# two paths agree there to far better than float32, so the straight one is taken.
PARALLEL = 1e-4


def linear(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1 - t) a + t b for each t: ``(len(t), z_dim)``.

    :param a: the first code, ``(z_dim,)``.
    :param b: the last code, ``(z_dim,)``.
    :param t: the weights in [0, 1], ``(T,)``: 0 gives ``a``, 1 gives ``b``.
    """
    t = t[:, None]
    return (1 - t) * a + t * b


def spherical(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Slerp from ``a`` to ``b``: sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b for each t,
    ``(len(t), z_dim)``, w the angle between them; the straight line when they are parallel.

    :param a: the first code, ``(z_dim,)``.
    :param b: the last code, ``(z_dim,)``.
    :param t: the weights in [0, 1], ``(T,)``: 0 gives ``a``, 1 gives ``b``.
    """
    cosine = torch.dot(a, b) / (a.norm() * b.norm())
    w = torch.arccos(cosine.clamp(-1, 1))
    if not (w.abs() > PARALLEL and (torch.pi - w).abs() > PARALLEL):  # (anti)parallel
        return linear(a, b, t)
    t = t[:, None]  # the weights first: at t = 0 and 1 they are exactly 1 and 0
    return torch.sin((1 - t) * w) / torch.sin(w) * a + torch.sin(t * w) / torch.sin(w) * b


#: the paths :func:`interpolate` walks, by name
PATHS = {"linear": linear, "spherical": spherical}


@torch.no_grad()
def interpolate(
    vae: VAE, x_from: torch.Tensor, x_to: torch.Tensor, steps: int = 10, path: str = "linear"
) -> torch.Tensor:
    """The ``steps`` images, ``(steps, *x_shape)``, that ``vae`` decodes along a path from the
    code of the input ``x_from`` to that of ``x_to``: the first and last are their reconstructions.

    :param vae: a model of p(x | z) (model ``vae``).
    :param x_from: the input the walk starts from, one example shaped ``x_shape``.
    :param x_to: the input it ends at, likewise.
    :param steps: the number of images, at least 2.
    :param path: a name of :data:`PATHS`: ``"linear"`` or ``"spherical"``.
    :raises ConfigError: for a label model, fewer than 2 steps or an unknown path.
    """
    steps = validation.whole("steps", steps, low=2)
    walk = PATHS[validation.choice("path", path, list(PATHS))]
    if vae.drawable_labels:
        raise ConfigError(
            f"model {vae.name!r} decodes p(x | y, z); interpolation walks the codes of a model "
            "of p(x | z), model 'vae'"
        )
    a, b = vae.encode(torch.stack([x_from, x_to]))[0]
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device)
    return vae.likelihood.mean(vae.decoder(walk(a, b, t)))

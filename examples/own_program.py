"""Your own Pyro program, trained by pyro-vae: a VAE written from scratch the way Pyro's VAE
tutorial writes it (an ``nn.Module`` with ``model`` and ``guide`` methods), trained with the
compiled step, evaluated by the IWAE bound, and held against Pyro's own ``SVI`` loop.

The check: over the same batches (pyro-vae's order, binarization and seed), pyro-vae's step with
compile off takes the very steps of ``pyro.infer.SVI(model, guide, pyro.optim.Adam, Trace_ELBO())``,
per-step losses equal bit for bit; compiled, equal to float32 rounding.

    python examples/own_program.py --epochs 20
    pyro-vae train --program examples/own_program.py:TutorialVAE --epochs 20 --out runs/own
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

import pyro_vae
from pyro_vae.data.sources import as_floats


class Encoder(nn.Module):
    """x -> softplus hidden layer -> the loc and scale of q(z|x)."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int):
        super().__init__()
        self.x_dim = x_dim
        self.fc1 = nn.Linear(x_dim, hidden)
        self.fc21, self.fc22 = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = nn.functional.softplus(self.fc1(x.reshape(-1, self.x_dim)))
        return self.fc21(h), torch.exp(self.fc22(h))


class Decoder(nn.Module):
    """z -> softplus hidden layer -> each pixel's probability of being on."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(z_dim, hidden), nn.Linear(hidden, x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc21(nn.functional.softplus(self.fc1(z))))


class TutorialVAE(nn.Module):
    """The VAE of Pyro's tutorial: z ~ N(0, I), x ~ Bernoulli(decoder(z)); q(z|x) =
    N(encoder(x)). It knows nothing of pyro-vae.

    :param x_shape: the shape of one example (pyro-vae passes it to a constructor that asks).
    :param z_dim: the size of z.
    :param hidden: the width of the hidden layers.
    """

    def __init__(self, x_shape: tuple[int, ...] = (1, 8, 8), z_dim: int = 8, hidden: int = 200):
        super().__init__()
        self.x_dim, self.z_dim = int(torch.tensor(x_shape).prod()), z_dim
        self.encoder = Encoder(self.x_dim, z_dim, hidden)
        self.decoder = Decoder(self.x_dim, z_dim, hidden)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, self.x_dim),
            )

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    # What pyro-vae's pictures, codes and walks use: optional.
    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        probs = self.decoder(torch.randn(n, self.z_dim, device=self.decoder.fc1.weight.device))
        return (probs if mean else torch.bernoulli(probs)).reshape(n, -1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)[0]).reshape(x.shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)


def plain_svi_losses(
    data: pyro_vae.Dataset, epochs: int, *, batch_size: int, lr: float, seed: int
) -> tuple[list[float], TutorialVAE]:
    """Pyro's own loop, ``SVI.step`` per batch, over pyro-vae's batches: each epoch's order a
    ``randperm`` of a generator seeded with ``seed``, each batch binarized afresh from the
    global generator, seeded alike. Returns the per-example loss of each step, and the VAE."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = TutorialVAE(data.x_shape)
    svi = SVI(vae.model, vae.guide, Adam({"lr": lr}), Trace_ELBO())
    order, x_train = torch.Generator().manual_seed(seed), as_floats(data.x_train)  # 8-bit: k/255
    pyro.set_rng_seed(seed)  # pyro-vae seeds the draws again as training starts
    losses = []
    for _ in range(epochs):
        for index in torch.randperm(len(x_train), generator=order).split(batch_size):
            x = torch.bernoulli(x_train[index])
            loss = torch.tensor(svi.step(x), dtype=torch.float32)
            losses.append(float(loss / torch.tensor(len(index), dtype=torch.float32)))
    return losses, vae


def pyro_vae_run(
    data: pyro_vae.Dataset, epochs: int, *, batch_size: int, lr: float, seed: int, compile: str
) -> tuple[pyro_vae.History, TutorialVAE]:
    """pyro-vae's training of a TutorialVAE seeded alike: its history (``step_loss``, the
    per-example loss of each step) and the VAE."""
    pyro.set_rng_seed(seed)
    vae = TutorialVAE(data.x_shape)
    history = pyro_vae.train(vae, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             compile=compile, progress=False)  # fmt: skip
    return history, vae


def check_against_plain_svi(
    data: pyro_vae.Dataset, epochs: int, seed: int, compiled: bool = True
) -> None:
    """Print how far pyro-vae's per-step losses are from Pyro's own loop's, eager and (with
    ``compiled``) compiled."""
    settings = {"batch_size": 128, "lr": 1e-3, "seed": seed}
    plain, _ = plain_svi_losses(data, epochs, **settings)
    for compile in ("off", "on") if compiled else ("off",):
        ours = pyro_vae_run(data, epochs, compile=compile, **settings)[0].step_loss
        worst = max(abs(a - b) / abs(b) for a, b in zip(ours, plain, strict=True))
        same = sum(a == b for a, b in zip(ours, plain, strict=True))
        print(f"compile {compile}: {same} of {len(plain)} steps' losses equal to the last bit "
              f"to pyro.infer.SVI's; largest relative difference {worst:.1e}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of training (default 20)")
    parser.add_argument("--iwae-k", type=int, default=1000, help="IWAE particles (default 1000)")
    parser.add_argument(
        "--check-epochs", type=int, default=2, help="epochs of the check against plain SVI, 0: none"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds everything (default 0)")
    parser.add_argument("--compile", default="on", choices=("on", "off"),
                        help="compile the training step (default on)")  # fmt: skip
    args = parser.parse_args(argv)
    data = pyro_vae.load_dataset("digits")

    pyro.set_rng_seed(args.seed)
    vae = TutorialVAE(data.x_shape)
    history = pyro_vae.train(vae, data, epochs=args.epochs, seed=args.seed, compile=args.compile)
    print(f"trained: test ELBO {history.test_elbo[-1]:.2f} nats; {history.compile}")
    result = pyro_vae.evaluate(vae, data, iwae_k=args.iwae_k, seed=args.seed, progress=False)
    print(f"IWAE estimate of log p(x), k = {args.iwae_k}: {result['iwae_log_likelihood']:.2f} "
          f"nats; active units {result['active_units']} of {vae.z_dim}")  # fmt: skip
    if args.check_epochs:
        check_against_plain_svi(data, args.check_epochs, args.seed, args.compile == "on")


if __name__ == "__main__":
    main()

"""Swap the prior: train the same VAE with the standard normal prior and with another, compare.

    python examples/swap_prior.py --prior vamp --epochs 50

Same data (the embedded digits), seed and epochs; only p(z) changes. Prints the test ELBO and the
IWAE bound of both and saves a grid of samples from each.
"""

import argparse
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae.analysis.plots import plot_samples
from pyro_vae.parts.priors import PRIORS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default="vamp", choices=list(PRIORS), help="the other prior")
    parser.add_argument("--epochs", type=int, default=50, help="epochs of each run")
    parser.add_argument("--out", type=Path, default=Path("runs/swap-prior"), help="PNG folder")
    args = parser.parse_args()

    data = pyro_vae.load_dataset("digits")
    args.out.mkdir(parents=True, exist_ok=True)
    for prior in ("standard-normal", args.prior):
        pyro.set_rng_seed(0)
        vae = pyro_vae.VAE(data.x_shape, z_dim=8, prior=prior)
        pyro_vae.train(vae, data, epochs=args.epochs, lr=3e-3, device="cpu", progress=False)
        figures = pyro_vae.evaluate(vae, data, seed=0, iwae_k=100)
        torch.manual_seed(0)
        plot_samples(vae.sample(64), args.out / f"samples-{prior}.png")
        print(
            f"{prior:>16}: test ELBO {figures['test_elbo']:.2f}, "
            f"IWAE {figures['iwae_log_likelihood']:.2f} nats per image"
        )


if __name__ == "__main__":
    main()

"""Swap the likelihood: model the digits' grey values instead of binarized pixels.

    python examples/swap_likelihood.py --likelihood continuous-bernoulli --epochs 50

The Bernoulli likelihood sees binarized images; the others score the grey values themselves
(the discretized logistic on the digits' 17 grey levels). Their ELBOs are on different scales, so
the pictures are the comparison: reconstructions from each, side by side.
"""

import argparse
from pathlib import Path

import pyro

import pyro_vae
from pyro_vae.analysis.plots import plot_reconstructions
from pyro_vae.parts.likelihoods import LIKELIHOODS

OPTIONS = {"discretized-logistic": {"bins": 17}}  # the digits have grey levels k/16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--likelihood",
        default="continuous-bernoulli",
        choices=list(LIKELIHOODS),
        help="the likelihood to compare with bernoulli",
    )
    parser.add_argument("--epochs", type=int, default=50, help="epochs of each run")
    parser.add_argument("--out", type=Path, default=Path("runs/swap-likelihood"), help="PNG folder")
    args = parser.parse_args()

    data = pyro_vae.load_dataset("digits")
    args.out.mkdir(parents=True, exist_ok=True)
    for likelihood in ("bernoulli", args.likelihood):
        pyro.set_rng_seed(0)
        vae = pyro_vae.VAE(
            data.x_shape, z_dim=8, likelihood=likelihood, likelihood_options=OPTIONS.get(likelihood)
        )
        history = pyro_vae.train(
            vae, data, epochs=args.epochs, lr=3e-3, device="cpu", progress=False
        )
        x = data.x_test[:32]
        plot_reconstructions(x, vae.reconstruct(x), args.out / f"reconstructions-{likelihood}.png")
        print(f"{likelihood:>22}: test ELBO {history.test_elbo[-1]:.2f} nats per image")


if __name__ == "__main__":
    main()

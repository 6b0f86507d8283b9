"""Train a VAE on the embedded 8x8 digits from Python, evaluate it, and save pictures.

    python examples/train_digits.py --epochs 50 --out runs/example

The same steps as ``pyro-vae train``, written out: load data, seed, build the model, run SVI,
score the test set against the independent-pixel baseline, draw reconstructions and samples.
"""

import argparse
from pathlib import Path

import pyro

import pyro_vae
from pyro_vae.analysis.plots import plot_elbo, plot_reconstructions, plot_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50, help="passes over the training set")
    parser.add_argument("--z-dim", type=int, default=8, help="size of the latent code")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, batches and noise")
    parser.add_argument("--out", type=Path, default=Path("runs/example"), help="folder for PNGs")
    args = parser.parse_args()

    data = pyro_vae.load_dataset("digits")
    pyro.set_rng_seed(args.seed)
    vae = pyro_vae.VAE(data.x_shape, z_dim=args.z_dim, hidden_dims=(400,))
    history = pyro_vae.train(vae, data, epochs=args.epochs, lr=args.lr, seed=args.seed)
    figures = pyro_vae.evaluate(vae, data, seed=args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    vae.cpu()
    plot_elbo(history.__dict__, args.out / "elbo.png")
    plot_reconstructions(
        data.x_test[:32], vae.reconstruct(data.x_test[:32]), args.out / "reconstructions.png"
    )
    plot_samples(vae.sample(64), args.out / "samples.png")
    print(
        f"test ELBO {figures['test_elbo']:.2f} nats per example; independent pixels "
        f"{figures['baseline_log_likelihood']:.2f}; pictures in {args.out}"
    )


if __name__ == "__main__":
    main()

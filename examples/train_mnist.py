"""Train and evaluate a VAE on MNIST, Fashion-MNIST or KMNIST from a folder of IDX files.

    apt-get install dataset-fashion-mnist     # offline: Debian ships Fashion-MNIST
    python examples/train_mnist.py --dataset fashion-mnist \\
        --data-dir /usr/share/datasets/fashion-mnist --epochs 10 --out runs/fashion

The folder holds the four IDX files (plain or .gz), directly or in torchvision's layout
(DIR/FashionMNIST/raw/); with no --data-dir, torchvision downloads them when online. Training
uses the conv or MLP networks on 28x28 images, then reports the test ELBO and the importance-
weighted log-likelihood, and saves reconstructions and samples.
"""

import argparse
from pathlib import Path

import pyro

import pyro_vae
from pyro_vae.analysis.plots import plot_elbo, plot_reconstructions, plot_samples
from pyro_vae.data.sources import as_floats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        default="fashion-mnist",
        choices=["mnist", "fashion-mnist", "kmnist"],
        help="which data set",
    )
    parser.add_argument("--data-dir", help="folder with the four IDX files")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the 60,000 images")
    parser.add_argument(
        "--encoder", default="mlp", choices=["mlp", "conv", "resnet"], help="network family"
    )
    parser.add_argument("--z-dim", type=int, default=32, help="size of the latent code")
    parser.add_argument("--iwae-k", type=int, default=100, help="particles of the IWAE estimate")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path("runs/mnist-example"), help="PNG folder")
    args = parser.parse_args()

    data = pyro_vae.load_dataset(args.dataset, data_dir=args.data_dir)
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE(
        data.x_shape,
        z_dim=args.z_dim,
        hidden_dims=(512, 256) if args.encoder == "mlp" else (32, 64),
        encoder=args.encoder,
    )
    history = pyro_vae.train(vae, data, epochs=args.epochs, batch_size=128, device=args.device)
    figures = pyro_vae.evaluate(vae, data, seed=0, iwae_k=args.iwae_k, progress=True)

    args.out.mkdir(parents=True, exist_ok=True)
    vae.cpu()
    plot_elbo(history.__dict__, args.out / "elbo.png")
    x = as_floats(data.x_test[:32])  # 8-bit images as values in [0, 1]
    plot_reconstructions(x, vae.reconstruct(x), args.out / "reconstructions.png")
    plot_samples(vae.sample(64), args.out / "samples.png")
    print(
        f"{args.dataset}: test ELBO {figures['test_elbo']:.2f}, IWAE (k={args.iwae_k}) "
        f"{figures['iwae_log_likelihood']:.2f} nats per image, {figures['active_units']} "
        f"active units; pictures in {args.out}"
    )


if __name__ == "__main__":
    main()

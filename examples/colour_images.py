"""A VAE for 8-bit colour images: a residual convolutional network, the discretized logistic
likelihood per pixel and channel, scored in bits per dimension.

    python examples/colour_images.py                                    # the offline photos
    python examples/colour_images.py --dataset folder --data-dir ~/pictures --image-size 32
    python examples/colour_images.py --dataset cifar10 --data-dir data --epochs 50

The photos (32x32 patches of scikit-learn's two sample photographs) need no files or network;
a folder of your own pictures or CIFAR-10 work the same way. The images stay bytes in memory and
become floats a batch at a time; the test set is scored by its ELBO and IWAE estimate, in bits per
dimension, beside the independent-pixel model fitted to the training set. Samples and
reconstructions are saved in colour.
"""

import argparse
from pathlib import Path

import pyro

import pyro_vae
from pyro_vae.analysis.plots import plot_reconstructions, plot_samples
from pyro_vae.data.sources import Dataset, as_floats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="photos", help="photos, folder, cifar10, svhn, ...")
    parser.add_argument("--data-dir", help="the folder of pictures or of the data set's files")
    parser.add_argument("--image-size", type=int, help="resize and crop pictures to this size")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    parser.add_argument("--limit", type=int, help="train on the first N images only (a quick look)")
    parser.add_argument("--iwae-k", type=int, default=100, help="particles of the IWAE estimate")
    parser.add_argument("--out", type=Path, default=Path("runs/colour"), help="pictures' folder")
    args = parser.parse_args()

    size = {} if args.image_size is None else {"image_size": args.image_size}
    data = pyro_vae.load_dataset(args.dataset, data_dir=args.data_dir, **size)
    if args.limit:
        data = Dataset(data.name, data.x_train[: args.limit], data.x_test[: args.limit])
    print(data.describe())
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE(
        data.x_shape,
        z_dim=32,
        hidden_dims=(32, 64),
        encoder="resnet",
        likelihood="discretized-logistic",  # 256 bins: the 8-bit values themselves
    )
    pyro_vae.train(vae, data, epochs=args.epochs, batch_size=64, compile="auto")
    figures = pyro_vae.evaluate(vae, data, iwae_k=args.iwae_k)
    print(
        f"test bits per dimension: {figures['test_bits_per_dim']:.3f} (ELBO), "
        f"{figures['iwae_bits_per_dim']:.3f} (IWAE, k={args.iwae_k}); independent pixels: "
        f"{figures['baseline_bits_per_dim']:.3f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    vae.cpu()
    x = as_floats(data.x_test[:32])
    plot_reconstructions(x, vae.reconstruct(x), args.out / "reconstructions.png")
    plot_samples(vae.sample(64), args.out / "samples.png")
    print(f"pictures in {args.out}")


if __name__ == "__main__":
    main()

"""Train one VAE per prior (or likelihood, or guide) on the same data, seed and epochs, and compare.

    python examples/compare_priors.py --vary prior --epochs 50          # about 1 min on 2 cores
    python examples/compare_priors.py --vary likelihood --epochs 50
    python examples/compare_priors.py --vary guide --epochs 50

Writes ``OUT/DATASET-VARY.md`` (test ELBO, IWAE bound with k = 100, active units, wall time) and one
PNG grid of samples per choice, ``OUT/DATASET-VARY-NAME.png``. The other two parts stay at their
defaults (standard-normal prior, bernoulli likelihood, diagonal guide).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae.analysis.evaluation import active_units
from pyro_vae.analysis.plots import plot_samples
from pyro_vae.data.sources import eval_inputs
from pyro_vae.infer.elbo import iwae_bound
from pyro_vae.parts.guides import GUIDES
from pyro_vae.parts.likelihoods import LIKELIHOODS
from pyro_vae.parts.priors import PRIORS

CHOICES = {"prior": PRIORS, "likelihood": LIKELIHOODS, "guide": GUIDES}
# Options a choice needs on the embedded digits, whose grey levels are k/16.
DIGITS_OPTIONS = {"likelihood": {"discretized-logistic": {"bins": 17}}}


def iwae_per_example(vae: pyro_vae.VAE, x: torch.Tensor, k: int, seed: int) -> float:
    torch.manual_seed(seed)
    return float(torch.cat([iwae_bound(vae, batch, k) for batch in x.split(200)]).mean())


def compare(args: argparse.Namespace) -> list[dict]:
    data = pyro_vae.load_dataset(args.dataset, data_dir=args.data_dir)
    names = args.only or list(CHOICES[args.vary])
    rows = []
    for name in names:
        options = (
            DIGITS_OPTIONS.get(args.vary, {}).get(name, {}) if args.dataset == "digits" else {}
        )
        pyro.set_rng_seed(args.seed)
        vae = pyro_vae.VAE(
            data.x_shape,
            z_dim=args.z_dim,
            hidden_dims=args.hidden_dims,
            **{args.vary: name, f"{args.vary}_options": options},
        )
        start = time.perf_counter()
        history = pyro_vae.train(
            vae,
            data,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            progress=not args.quiet,
        )
        seconds = time.perf_counter() - start
        vae.cpu()
        x_test = eval_inputs(vae.likelihood, data.x_test)
        units, _ = active_units(vae, x_test)
        rows.append(
            {
                "name": name,
                "test_elbo": history.test_elbo[-1],
                "iwae": iwae_per_example(vae, x_test, args.iwae_k, args.seed),
                "active_units": units,
                "seconds": seconds,
            }
        )
        torch.manual_seed(args.seed)
        plot_samples(vae.sample(64), args.out / f"{args.dataset}-{args.vary}-{name}.png")
        print(
            f"{name}: test ELBO {rows[-1]['test_elbo']:.2f}, IWAE {rows[-1]['iwae']:.2f}, "
            f"{units}/{args.z_dim} active units, {seconds:.1f} s"
        )
    return rows


def markdown(args: argparse.Namespace, rows: list[dict]) -> str:
    lines = [
        f"# {args.vary} comparison on {args.dataset}",
        "",
        f"Same data, seed ({args.seed}), epochs ({args.epochs}), lr ({args.lr}), z_dim "
        f"({args.z_dim}), hidden dims ({','.join(map(str, args.hidden_dims))}); other parts at "
        "their defaults. ELBO and IWAE in nats per test example (higher is better); IWAE with "
        f"k = {args.iwae_k}. Active units: Cov_x(E_q[z_d|x]) > 0.01 (Burda et al. 2015).",
    ]
    if args.vary == "likelihood":
        lines += [
            "",
            "Likelihoods are not comparable by these numbers: bernoulli scores binarized "
            "images (a probability), the others grey values (a density, or for "
            "discretized-logistic a probability over grey levels).",
        ]
    lines += [
        "",
        f"| {args.vary} | test ELBO | IWAE (k={args.iwae_k}) | active units | wall time (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['name']} | {r['test_elbo']:.2f} | {r['iwae']:.2f} | {r['active_units']}/"
        f"{args.z_dim} | {r['seconds']:.1f} |"
        for r in rows
    ]
    lines += [
        "",
        "Command: `python examples/compare_priors.py " + " ".join(args.argv) + "`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.device} device; Python "
        f"{platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vary",
        choices=list(CHOICES),
        default="prior",
        help="which part to swap; the others stay at their defaults",
    )
    parser.add_argument("--only", nargs="+", help="compare only these names")
    parser.add_argument("--dataset", default="digits", help="a pyro-vae data set name")
    parser.add_argument("--data-dir", help="folder with MNIST-family IDX files")
    parser.add_argument("--epochs", type=int, default=50, help="epochs per choice")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--z-dim", type=int, default=8, help="size of the latent code")
    parser.add_argument(
        "--hidden-dims",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[400],
        help="comma-separated hidden sizes",
    )
    parser.add_argument("--iwae-k", type=int, default=100, help="particles of the IWAE bound")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("examples/results"),
        help="folder for the table and the sample grids",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = compare(args)
    table = args.out / f"{args.dataset}-{args.vary}.md"
    table.write_text(markdown(args, rows))
    print(f"wrote {table}")


if __name__ == "__main__":
    main()

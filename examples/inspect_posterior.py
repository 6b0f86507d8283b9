"""Inspect a trained VAE's posterior: ArviZ summary, Pareto k-hat, NUTS against the guide, gaps.

    python examples/inspect_posterior.py --epochs 60 --out runs/inspect

Trains a VAE with a 2-D latent space on the embedded digits, then for a few test images compares
the guide q(z|x) with p(z|x) sampled by NUTS, and reports the amortization gap; saves the plots.
"""

import argparse
import warnings
from pathlib import Path

import arviz as az
import pyro

import pyro_vae
from pyro_vae.analysis.inspection import (
    amortization_gap,
    compare_to_nuts,
    importance_diagnostics,
    nuts_posterior,
    posterior_samples,
)
from pyro_vae.analysis.plots import plot_guide_vs_nuts, plot_khat, plot_latent_scatter
from pyro_vae.data.sources import eval_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="training epochs on the digits")
    parser.add_argument("--inputs", type=int, default=3, help="test images given to NUTS")
    parser.add_argument("--nuts-samples", type=int, default=500, help="NUTS draws per chain")
    parser.add_argument("--out", type=Path, default=Path("runs/inspect"), help="PNG folder")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    data = pyro_vae.load_dataset("digits")
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE(data.x_shape, z_dim=2, hidden_dims=(64,))
    pyro_vae.train(vae, data, epochs=args.epochs, lr=3e-3, device="cpu", progress=False)
    x = eval_inputs(vae.likelihood, data.x_test)
    args.out.mkdir(parents=True, exist_ok=True)

    guide = posterior_samples(vae, x[: args.inputs], num_samples=1000)
    print(az.summary(guide, kind="stats"))
    diagnostics = importance_diagnostics(vae, x)
    print(f"k-hat > 0.7 for {len(diagnostics.flagged)} of {len(x)} test images")
    nuts = nuts_posterior(
        vae, x[: args.inputs], num_samples=args.nuts_samples, warmup_steps=args.nuts_samples
    )
    comparison = compare_to_nuts(guide, nuts)
    print(
        f"NUTS r-hat <= {comparison['nuts_rhat_max']:.3f}; guide means within "
        f"{comparison['max_abs_mean_difference_in_sd']:.2f} posterior sd of NUTS; median "
        f"variance ratio {comparison['median_variance_ratio']:.2f}"
    )
    gap = amortization_gap(vae, x[: args.inputs], k=1000, steps=300).means()
    print(
        f"approximation gap {gap['approximation_gap']:.3f} nats, amortization gap "
        f"{gap['amortization_gap']:.3f} nats"
    )

    plot_latent_scatter(
        vae.posterior_dist(x).mean.detach(), labels=data.y_test, path=args.out / "latent.png"
    )
    plot_khat(diagnostics.khat, path=args.out / "khat.png")
    plot_guide_vs_nuts(guide, nuts, obs=0, path=args.out / "guide-vs-nuts.png")
    print(f"plots in {args.out}")


if __name__ == "__main__":
    main()

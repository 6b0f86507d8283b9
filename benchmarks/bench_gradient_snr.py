"""The guide's gradient as K grows: the signal-to-noise ratio of IWAE's gradient estimator and of
the doubly reparameterized one (DReG), for the encoder and the decoder.

    python benchmarks/bench_gradient_snr.py            # the embedded digits, about a minute

Rainforth et al. (2018, "Tighter Variational Bounds are Not Necessarily Better") show that the
signal-to-noise ratio |E g| / std(g) of IWAE's encoder gradient falls like 1/sqrt(K) while the
decoder's rises like sqrt(K); Tucker et al. (2018) show that DReG's encoder gradient does not
fall. Here: a VAE (64-64-64-8 MLP, Bernoulli likelihood) trained for a few epochs on the digits,
one fixed batch of test digits, and for each objective and K, ``--repeats`` independent gradient
estimates of the batch's loss (``pyro_vae.infer.elbo.make_loss``, one seed each); per parameter
element the SNR, then its median over the encoder's and over the decoder's elements whose
gradient is not always zero (the weights of pixels that are blank in every digit of the batch).
Results go to ``OUT/gradient-snr-<device>-<date>.md`` and ``.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.data.sources import eval_inputs  # noqa: E402
from pyro_vae.infer.elbo import make_loss  # noqa: E402

OBJECTIVES = ("iwae", "iwae-dreg")


def gradient_snr(vae, x: torch.Tensor, objective: str, k: int, repeats: int) -> dict[str, float]:
    """The median SNR over the encoder's and over the decoder's parameter elements."""
    loss_fn = make_loss(vae, objective, k)
    names = [name for name, _ in vae.named_parameters()]
    params = list(vae.parameters())
    draws = []
    with pyro.validation_enabled(False):
        for seed in range(repeats):
            torch.manual_seed(seed)
            grads = torch.autograd.grad(loss_fn(x), params)
            draws.append(torch.cat([g.flatten() for g in grads]))
    g = torch.stack(draws).double()
    std = g.std(0)
    snr = g.mean(0).abs() / std.clamp_min(1e-300)
    moving = std > 0  # the weights of pixels blank in every digit of the batch never move
    parts = torch.cat(
        [
            torch.full((p.numel(),), n.startswith("encoder"))
            for n, p in zip(names, params, strict=True)
        ]
    )
    return {
        "encoder": float(snr[parts & moving].median()),
        "decoder": float(snr[~parts & moving].median()),
    }


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0], "seeds the model, its training and the batch")
    p.set_defaults(data="digits")
    p.add_argument("--ks", type=C.int_list, default=[1, 10, 100, 1000], help="particles K")
    p.add_argument("--repeats", type=C.positive, default=100, help="gradient estimates per K")
    p.add_argument("--epochs", type=C.positive, default=10, help="training epochs first")
    p.add_argument("--batch", type=C.positive, default=32, help="test digits in the batch")
    args = p.parse_args()
    device = C.setup_device(args.device, args.threads)
    data, data_line = C.load_images("digits", None, args.seed)
    pyro.set_rng_seed(args.seed)
    vae = pyro_vae.VAE(data.x_shape, z_dim=8, hidden_dims=(64, 64))
    pyro_vae.train(vae, data, epochs=args.epochs, lr=3e-3, device=device, progress=False)
    x = eval_inputs(vae.likelihood, data.x_test[: args.batch]).to(device)
    md = Path(args.out) / f"gradient-snr-{C.results_path(args.out, device).name}"
    with C.Run(device, data_line) as run:
        rows = [
            {"objective": o, "k": k, **gradient_snr(vae, x, o, k, args.repeats)}
            for k in args.ks
            for o in OBJECTIVES
        ]
    lines = [
        "| K | IWAE encoder | DReG encoder | IWAE decoder | DReG decoder |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in args.ks:
        iwae, dreg = (
            next(r for r in rows if r["k"] == k and r["objective"] == o) for o in OBJECTIVES
        )
        lines.append(
            f"| {k} | {iwae['encoder']:.3f} | {dreg['encoder']:.3f} | {iwae['decoder']:.3f} | "
            f"{dreg['decoder']:.3f} |"
        )
    text = "\n".join(
        [
            "## Gradient signal-to-noise ratio against K",
            "",
            *run.lines(),
            f"- model: 64-64-64-8 MLP VAE, Bernoulli likelihood, trained {args.epochs} epochs "
            f"(trace, lr 3e-3, seed {args.seed}); batch: the first {args.batch} test digits, "
            "binarized once",
            f"- per objective and K: {args.repeats} gradient estimates of the batch's loss; per "
            "parameter element |mean| / std; the median over the encoder's and the decoder's "
            "elements whose gradient is not always zero",
            "",
            *lines,
            "",
        ]
    )
    C.write_results(md, "gradient-snr", text, {"rows": rows}, run)
    print(text)
    print(md)


if __name__ == "__main__":
    main()

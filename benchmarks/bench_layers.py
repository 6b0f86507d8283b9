"""One stochastic layer or two: Burda et al. (2015)'s VAE and IWAE with one and two stochastic
layers (``--model hvae``, a program written as a user writes one), on the same data and budget.

    python benchmarks/bench_layers.py                       # Fashion-MNIST, 20 epochs, k=1000
    python benchmarks/bench_layers.py --data digits --epochs 2 --iwae-k 10   # a quick look

Networks as Burda et al.'s (tanh): one layer 784-200-200-50, two layers 784-200-200-100-100-100-50
(the model mirrors the guide), a Bernoulli likelihood on dynamically binarized images (the test set
binarized once, seed 0). Every row starts from the same seed and trains for the same epochs with
Adam (lr 1e-3, batch 100) through :func:`pyro_vae.train`; the VAE rows with ``Trace_ELBO`` (one
particle), the IWAE rows with the IWAE bound with k = 5. Per row: the test log-likelihood (the
IWAE bound with ``--iwae-k`` particles on the full test set, from Pyro's traces), the test ELBO
(one particle), the active units of each layer (Cov_x E_q[z|x] > 0.01, a layer above the first at
one draw of those below) and the training time. Results go to ``OUT/layers-<device>-<date>.md``
and ``.json``; rows are logged to stderr as they finish.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.analysis.evaluation import iwae_estimate, units_by_site  # noqa: E402
from pyro_vae.data.sources import eval_inputs  # noqa: E402
from pyro_vae.infer.elbo import dataset_elbo  # noqa: E402
from pyro_vae.models.hvae import HVAEProgram  # noqa: E402

# the networks, Fashion-MNIST's and the digits' (a quick look): (z_dims, hidden_dims)
LAYERS = {
    1: {"full": ((50,), ((200, 200),)), "small": ((8,), ((64, 64),))},
    2: {"full": ((100, 50), ((200, 200), (100, 100))), "small": ((8, 4), ((64, 64), (32, 32)))},
}
# row -> (what it is, stochastic layers, the training settings)
ROWS = {
    "vae-1": ("VAE, 1 stochastic layer", 1, {}),
    "vae-2": ("VAE, 2 stochastic layers", 2, {}),
    "iwae-1": ("IWAE k=5, 1 stochastic layer", 1, {"objective": "iwae", "num_particles": 5}),
    "iwae-2": ("IWAE k=5, 2 stochastic layers", 2, {"objective": "iwae", "num_particles": 5}),
}
# Burda et al. (2015), Table 1, MNIST (dynamically binarized), -log p(x) by IWAE k=5000
BURDA_MNIST = {"vae-1": 86.76, "vae-2": 85.33, "iwae-1": 85.54, "iwae-2": 83.89}


def run_row(name: str, data, device: torch.device, args) -> dict:
    """Train one row from the seed and measure it on the test set."""
    label, layers, settings = ROWS[name]
    z_dims, hidden_dims = LAYERS[layers]["small" if args.data == "digits" else "full"]
    pyro.set_rng_seed(args.seed)
    options = {"z_dims": z_dims, "hidden_dims": hidden_dims}
    model = HVAEProgram.build(data.x_shape, 0, program_options=options)
    start = time.perf_counter()
    history = pyro_vae.train(model, data, epochs=args.epochs, batch_size=args.batch_size,
                             lr=1e-3, device=device, seed=args.seed, compile=args.compile,
                             progress=False, **settings)  # fmt: skip
    wall = time.perf_counter() - start
    x_test = eval_inputs(model.likelihood, data.x_test, "dynamic").to(device)
    elbo = dataset_elbo(model, x_test, seed=args.seed, objective="trace")
    units = {site: n for site, (n, _) in units_by_site(model, x_test).items()}
    iwae_start = time.perf_counter()
    iwae = iwae_estimate(model, x_test, args.iwae_k, seed=args.seed, compile=args.compile)
    row = {
        "row": name, "label": label, "settings": settings, "z_dims": list(z_dims),
        "test_log_likelihood": iwae.value, "test_elbo": elbo, "active_units": units,
        "train_seconds": sum(history.seconds), "train_wall_seconds": wall,
        "compile": history.compile, "test_elbo_by_epoch": history.test_elbo,
        "iwae_seconds": time.perf_counter() - iwae_start, "iwae_compile": iwae.compile,
    }  # fmt: skip
    C.log(f"{name}: log p(x) {iwae.value:.2f}, ELBO {elbo:.2f}, active {units}, train "
          f"{row['train_seconds']:.0f} s, IWAE {row['iwae_seconds']:.0f} s")  # fmt: skip
    return row


def table(rows: list[dict], args) -> str:
    lines = [
        f"| row | test log p(x), IWAE k={args.iwae_k} | test ELBO | active units per layer | "
        "train time (s) | Burda et al., MNIST |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        counts = zip(r["active_units"].values(), r["z_dims"], strict=True)
        units = " + ".join(f"{n}/{d}" for n, d in counts)
        lines.append(
            f"| {r['label']} | {r['test_log_likelihood']:.2f} | {r['test_elbo']:.2f} | {units} | "
            f"{r['train_seconds']:.0f} | -{BURDA_MNIST[r['row']]:.2f} |"
        )
    return "\n".join(lines)


def ranking(rows: list[dict]) -> str:
    """The rows from best to worst, ours and Burda et al.'s, and the second layer's gains."""
    ours = {r["row"]: r["test_log_likelihood"] for r in rows}
    order = sorted(ours, key=ours.get, reverse=True)
    theirs = sorted((n for n in ours), key=lambda n: BURDA_MNIST[n])
    lines = [f"- ranking here: {' > '.join(order)}; Burda et al.'s: {' > '.join(theirs)} "
             f"({'the same' if order == theirs else 'not the same'})"]  # fmt: skip
    for objective in ("vae", "iwae"):
        one, two = f"{objective}-1", f"{objective}-2"
        if one in ours and two in ours:
            theirs = BURDA_MNIST[one] - BURDA_MNIST[two]
            lines.append(f"- the second layer's gain, {objective}: {ours[two] - ours[one]:+.2f} "
                         f"nats here, {theirs:+.2f} in Burda et al.")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = C.rows_parser(__doc__.split("\n\n")[0], epochs=20)
    p.add_argument("--rows", type=C.choice_list(list(ROWS)), default=list(ROWS), help="rows")
    args = p.parse_args()
    device = C.setup_device(args.device, args.threads)
    data, data_line = C.load_images(args.data, args.data_dir, args.seed)
    md = Path(args.out) / f"layers-{C.results_path(args.out, device).name}"
    with C.Run(device, data_line) as run:
        rows = [run_row(name, data, device, args) for name in args.rows]
    text = "\n".join([
        "## One stochastic layer or two (`--model hvae`)",
        "",
        *run.lines(),
        f"- networks: Burda et al.'s (tanh), Bernoulli likelihood, dynamic binarization; "
        f"{args.epochs} epochs, batch {args.batch_size}, Adam lr 1e-3, seed {args.seed}, compile "
        f"{args.compile}; the VAE rows Trace_ELBO with one particle, the IWAE rows k = 5",
        f"- test log p(x): the IWAE bound with k = {args.iwae_k} on all {len(data.x_test)} test "
        "images; test ELBO: one particle; active units: Cov_x E_q[z|x] > 0.01, per layer (z1, z2); "
        "train time: the epochs' training seconds (compiling included, test ELBOs not)",
        "- Burda et al. (2015), Table 1: MNIST, 3,280 epochs, -log p(x) by IWAE k = 5000; a "
        "different data set and budget, so only the ranking and the gains compare",
        "",
        table(rows, args),
        "",
        ranking(rows),
        "",
    ])  # fmt: skip
    C.write_results(md, "layers", text, {"rows": rows}, run)
    print(text)
    print(md)


if __name__ == "__main__":
    main()

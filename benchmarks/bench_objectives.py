"""What the objectives do: the test log-likelihood of VAEs trained with each objective a researcher
varies (K particles, the IWAE bound, beta, KL warm-up) and with two richer parts (the VampPrior,
the IAF guide), all else equal.

    python benchmarks/bench_objectives.py                      # Fashion-MNIST, 50 epochs, k=1000
    python benchmarks/bench_objectives.py --data digits --epochs 2 --iwae-k 10   # a quick look

The network is the one-stochastic-layer network of Burda et al. (2015): 784-200-200-50, two
deterministic layers each way (ReLU here, tanh there), a Bernoulli likelihood on dynamically
binarized images (the test set binarized once, seed 0). Every row starts from the same seed and
trains for the same epochs with Adam (lr 1e-3, batch 100) through :func:`pyro_vae.train`
(``compile="auto"``). Per row: the test log-likelihood (the IWAE bound with ``--iwae-k``
particles on the full test set), the test ELBO (one particle, weight 1), the active units
(Cov_x E_q[z_d|x] > 0.01) and the training time. Results go to ``OUT/objectives-<device>-<date>.md``
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
from pyro_vae.analysis.evaluation import active_units, iwae_estimate  # noqa: E402
from pyro_vae.data.sources import eval_inputs  # noqa: E402
from pyro_vae.infer.elbo import dataset_elbo  # noqa: E402

# row -> (what it is, the VAE's parts, the training settings)
ROWS = {
    "vae-k1": ("VAE, K = 1", {}, {}),
    "vae-k5": ("VAE, K = 5 particles", {}, {"num_particles": 5}),
    "iwae-k5": ("IWAE, K = 5", {}, {"objective": "iwae", "num_particles": 5}),
    "beta-0.5": ("beta = 0.5", {}, {"beta": 0.5}),
    "beta-2": ("beta = 2", {}, {"beta": 2.0}),
    "warmup-10": ("KL warm-up over {kl_warmup} epochs", {}, {"kl_warmup": 10}),
    "vamp": ("VampPrior (10 pseudo-inputs)", {"prior": "vamp"}, {}),
    "iaf": ("IAF guide (2 steps)", {"guide": "iaf"}, {}),
    "iwae-dreg-k5": ("IWAE-DReG, K = 5", {}, {"objective": "iwae-dreg", "num_particles": 5}),
}
DEFAULT_ROWS = [name for name in ROWS if name != "iwae-dreg-k5"]  # the rows


def run_row(name: str, data, device: torch.device, args) -> dict:
    """Train one row from the seed (or, with ``--load``, take its kept weights) and measure it on
    the test set."""
    label, parts, settings = ROWS[name]
    if "kl_warmup" in settings:  # a short look trains for fewer epochs than the warm-up
        settings = {**settings, "kl_warmup": min(settings["kl_warmup"], args.epochs)}
        label = label.format(**settings)
    if args.load:
        vae, training = load_row(name, device, args)
    else:
        vae, training = train_row(data, device, args, parts, settings)
    if args.save:  # the weights, to evaluate again (with more particles, say) without training
        Path(args.save).mkdir(parents=True, exist_ok=True)
        kept = {"config": vae.config, "state": vae.state_dict(), "training": training}
        torch.save(kept, Path(args.save) / f"{name}.pt")
    x_test = eval_inputs(vae.likelihood, data.x_test, "dynamic").to(device)
    elbo = dataset_elbo(vae, x_test, seed=args.seed, objective="trace")
    units = active_units(vae, x_test)[0]
    iwae_start = time.perf_counter()
    iwae = iwae_estimate(vae, x_test, args.iwae_k, seed=args.seed, compile=args.compile)
    row = {
        "row": name,
        "label": label,
        "parts": parts,
        "settings": settings,
        "test_log_likelihood": iwae.value,
        "test_elbo": elbo,
        "active_units": units,
        "z_dim": vae.z_dim,
        **training,
        "iwae_seconds": time.perf_counter() - iwae_start,
    }
    C.log(
        f"{name}: log p(x) {iwae.value:.2f}, ELBO {elbo:.2f}, active {units}/{vae.z_dim}, "
        f"train {C.fmt(row['train_seconds'], 1)} s, IWAE {row['iwae_seconds']:.1f} s"
    )
    return row


def train_row(data, device: torch.device, args, parts, settings) -> tuple[pyro_vae.VAE, dict]:
    hidden = (200, 200) if args.data != "digits" else (64, 64)
    z_dim = 50 if args.data != "digits" else 8
    pyro.set_rng_seed(args.seed)
    vae = pyro_vae.VAE(data.x_train.shape[1:], z_dim=z_dim, hidden_dims=hidden, **parts)
    start = time.perf_counter()
    history = pyro_vae.train(
        vae,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        device=device,
        seed=args.seed,
        compile=args.compile,
        progress=False,
        **settings,
    )
    return vae, {
        "train_seconds": sum(history.seconds),
        "train_wall_seconds": time.perf_counter() - start,
        "compile": history.compile,
        "final_train_objective": history.train_elbo[-1],
        "test_elbo_by_epoch": history.test_elbo,
    }


def load_row(name: str, device: torch.device, args) -> tuple[pyro_vae.VAE, dict]:
    kept = torch.load(Path(args.load) / f"{name}.pt", map_location=device, weights_only=True)
    config = dict(kept["config"])
    vae = pyro_vae.VAE(config.pop("x_shape"), **config).to(device)
    vae.load_state_dict(kept["state"])
    training = kept.get("training") or {"train_seconds": None, "compile": "(weights loaded)"}
    return vae, training


def table(rows: list[dict], args) -> str:
    lines = [
        f"| row | test log p(x), IWAE k={args.iwae_k} | test ELBO | gap | active units | "
        "train time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        gap = r["test_log_likelihood"] - r["test_elbo"]
        lines.append(
            f"| {r['label']} | {r['test_log_likelihood']:.2f} | {r['test_elbo']:.2f} | "
            f"{gap:.2f} | {r['active_units']}/{r['z_dim']} | {C.fmt(r['train_seconds'], 0)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = C.rows_parser(__doc__.split("\n\n")[0], epochs=50)
    p.add_argument("--save", help="folder to keep each row's trained weights in (ROW.pt)")
    p.add_argument("--load", help="a --save folder: measure its weights again, no training")
    p.add_argument("--rows", type=C.choice_list(list(ROWS)), default=DEFAULT_ROWS, help="rows")
    args = p.parse_args()
    device = C.setup_device(args.device, args.threads)
    data, data_line = C.load_images(args.data, args.data_dir, args.seed)
    md = Path(args.out) / f"objectives-{C.results_path(args.out, device).name}"
    with C.Run(device, data_line) as run:
        rows = [run_row(name, data, device, args) for name in args.rows]
    text = "\n".join(
        [
            "## Objectives on one network"
            + (f", kept weights, k = {args.iwae_k}" if args.load else ""),
            "",
            *run.lines(),
            f"- network: {'784-200-200-50' if args.data != 'digits' else '64-64-64-8'} MLP VAE "
            f"(ReLU), Bernoulli likelihood, dynamic binarization; {args.epochs} epochs, batch "
            f"{args.batch_size}, Adam lr 1e-3, seed {args.seed}, compile {args.compile}",
            f"- test log p(x): the IWAE bound with k = {args.iwae_k} on all "
            f"{len(data.x_test)} test images; test ELBO: one particle, KL weight 1; gap: their "
            "difference; active units: Cov_x E_q[z_d|x] > 0.01; train time: the epochs' "
            "training seconds (compiling included, test ELBOs not)",
            *(
                [
                    f"- weights: kept in {args.load} by an earlier run with --save, not trained "
                    "again; the training figures are that run's"
                ]
                if args.load
                else []
            ),
            "",
            table(rows, args),
            "",
        ]
    )
    # the rows are one section; other choices of rows a section of their own
    key = "objectives" if args.rows == DEFAULT_ROWS else "objectives-" + "-".join(args.rows)
    key += f"-k{args.iwae_k}-loaded" if args.load else ""
    C.write_results(md, key, text, {"rows": rows}, run)
    print(text)
    print(md)


if __name__ == "__main__":
    main()

"""Semi-supervised classification: the M2 model's test accuracy against the same classifier network
trained on the labelled examples alone, for several numbers of labels.

    python benchmarks/bench_semi_supervised.py                   # Fashion-MNIST, 100 to 3000 labels
    python benchmarks/bench_semi_supervised.py --data digits --labels 50 --epochs 2   # a quick look

M2 (``--model m2``) as in Pyro's ss-vae tutorial: 784-500-{50 | 10} MLPs, a Bernoulli likelihood on
dynamically binarized images, y enumerated for the unlabelled examples (TraceEnum_ELBO), the
auxiliary term alpha log q(y|x) on the labelled ones (alpha = the library's default), Adam, trained
through :func:`pyro_vae.train` (``compile="auto"``). The baseline is the very classifier network
(:func:`pyro_vae.parts.networks.make_classifier`) trained by cross-entropy on the same labelled
examples (the same seeded, class-balanced choice, :func:`pyro_vae.data.sources.labeled_split`), also
on dynamically binarized images, with Adam for a fixed number of steps. Both are scored on the whole
test set, binarized once with seed 0. The baseline's best accuracy over its steps (chosen on the
test set: an optimistic figure no real run could pick) is reported beside its final one. Results go
to ``OUT/semi-supervised-<device>-<date>.md`` and ``.json``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.data.sources import TEST_BINARIZATION_SEED, binarize, binarize_afresh, labeled_split  # noqa: E402
from pyro_vae.models import build_model  # noqa: E402
from pyro_vae.parts.networks import make_classifier  # noqa: E402

# Pyro's ss-vae tutorial, MNIST, 50,000 training images: M2 with the auxiliary loss (its table)
TUTORIAL_MNIST = {100: (0.9319, 0.7713), 600: (0.9574, 0.8812), 1000: (0.9652, 0.9095),
                  3000: (0.9714, 0.9453)}  # fmt: skip


def m2_row(data, device: torch.device, labels: int, seed: int, args) -> dict:
    """Train M2 from ``seed`` with ``labels`` labelled examples; its test accuracy by epoch."""
    pyro.set_rng_seed(seed)
    hidden, z_dim = _sizes(args)
    m2 = build_model("m2", data.x_shape, 10, z_dim=z_dim, hidden_dims=hidden)
    start = time.perf_counter()
    history = pyro_vae.train(
        m2,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=device,
        seed=seed,
        labeled=labels,
        compile=args.compile,
        progress=False,
    )
    return {
        "accuracy": history.test_accuracy[-1],
        "accuracy_by_epoch": history.test_accuracy,
        "test_elbo": history.test_elbo[-1],
        "train_seconds": sum(history.seconds),
        "wall_seconds": time.perf_counter() - start,
        "compile": history.compile,
    }


def baseline_row(data, device: torch.device, labels: int, seed: int, args) -> dict:
    """The classifier network alone, trained by cross-entropy on the same labelled examples."""
    index, _ = labeled_split(data.y_train, labels, 10, seed)
    x, y = data.x_train[index].to(device), data.y_train[index].to(device)
    x_test = binarize(data.x_test, TEST_BINARIZATION_SEED).to(device)
    y_test = data.y_test.to(device)
    torch.manual_seed(seed)
    net = make_classifier("mlp", data.x_shape, _sizes(args)[0], 10).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    batch = min(labels, 100)
    order = torch.Generator().manual_seed(seed)
    accuracies, batches = [], iter(())
    for step in range(1, args.baseline_steps + 1):
        chosen = next(batches, None)
        if chosen is None:
            batches = iter(torch.randperm(labels, generator=order).to(device).split(batch))
            chosen = next(batches)
        loss = F.cross_entropy(net(binarize_afresh(x[chosen])), y[chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.baseline_steps:
            with torch.no_grad():
                predicted = torch.cat([net(b).argmax(-1) for b in x_test.split(1000)])
            accuracies.append(float((predicted == y_test).double().mean()))
    return {"accuracy": accuracies[-1], "best_accuracy": max(accuracies), "steps": step}


def seed_list(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``: seeds, 0 or more."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 0:
        raise ValueError(text)
    return values


def _sizes(args) -> tuple[tuple[int, ...], int]:
    return ((500,), 50) if args.data != "digits" else ((128,), 8)


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(rows: list[dict], seeds: list[int]) -> str:
    lines = [
        "| labels | M2 (enumeration + aux. loss) | supervised baseline | baseline, best step on "
        "test | M2 - baseline | M2 per seed | baseline per seed |",
        "| ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        m2 = [s["m2"]["accuracy"] for s in r["seeds"]]
        base = [s["baseline"]["accuracy"] for s in r["seeds"]]
        best = [s["baseline"]["best_accuracy"] for s in r["seeds"]]
        gain = statistics.mean(m2) - statistics.mean(base)
        lines.append(
            f"| {r['labels']} | {_mean_sd(m2)} | {_mean_sd(base)} | {_mean_sd(best)} | "
            f"{gain:+.4f} | {', '.join(f'{v:.4f}' for v in m2)} | "
            f"{', '.join(f'{v:.4f}' for v in base)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0], "unused: see --seeds")
    p.set_defaults(data="fashion-mnist")
    p.add_argument("--labels", type=C.int_list, default=[100, 600, 1000, 3000], help="rows")
    p.add_argument("--seeds", type=seed_list, default=[0], help="seeds of each row, averaged")
    p.add_argument("--epochs", type=C.positive, default=15, help="M2's epochs")
    p.add_argument("--batch-size", type=C.positive, default=200, help="M2's unlabelled batch")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate, both models")
    p.add_argument("--baseline-steps", type=C.positive, default=3000, help="baseline's steps")
    p.add_argument("--eval-every", type=C.positive, default=100, help="baseline steps per look")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="see train")
    args = p.parse_args()
    device = C.setup_device(args.device, args.threads)
    data, data_line = C.load_images(args.data, args.data_dir, args.seeds[0])
    md = Path(args.out) / f"semi-supervised-{C.results_path(args.out, device).name}"
    rows = []
    with C.Run(device, data_line) as run:
        for labels in args.labels:
            per_seed = []
            for seed in args.seeds:
                m2 = m2_row(data, device, labels, seed, args)
                baseline = baseline_row(data, device, labels, seed, args)
                per_seed.append({"seed": seed, "m2": m2, "baseline": baseline})
                C.log(
                    f"{labels} labels, seed {seed}: M2 {m2['accuracy']:.4f} "
                    f"({C.fmt(m2['train_seconds'], 0)} s), baseline {baseline['accuracy']:.4f} "
                    f"(best {baseline['best_accuracy']:.4f})"
                )
            rows.append({"labels": labels, "seeds": per_seed})
    hidden, z_dim = _sizes(args)
    text = "\n".join(
        [
            "## M2 against the supervised baseline",
            "",
            *run.lines(),
            f"- M2: MLPs {'-'.join(map(str, hidden))} (classifier, encoder, decoder), z_dim "
            f"{z_dim}, Bernoulli likelihood, dynamic binarization; {args.epochs} epochs of "
            f"{args.batch_size} unlabelled examples a step (plus the step's labelled ones), "
            f"Adam lr {args.lr:g}, compile {args.compile}; seeds {args.seeds}",
            f"- baseline: the same classifier network, cross-entropy on the labelled examples "
            f"alone, batches of min(labels, 100), {args.baseline_steps} Adam steps, dynamic "
            f"binarization; 'best step on test' is its best test accuracy over the steps, looked "
            f"at every {args.eval_every} (optimistic: chosen on the test set)",
            f"- accuracy on all {len(data.x_test)} test images (binarized once, seed 0); mean ± "
            "standard deviation over the seeds where there are several",
            "",
            table(rows, args.seeds),
            "",
        ]
    )
    key = f"semi-supervised-{'-'.join(map(str, args.labels))}-e{args.epochs}"
    C.write_results(md, key, text, {"rows": rows, "tutorial_mnist": TUTORIAL_MNIST}, run)
    print(text)
    print(md)


if __name__ == "__main__":
    main()

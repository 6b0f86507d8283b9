"""Training speed: the project's trainer, the same trainer on the hand-written ELBO, the textbook
Pyro loop and the matrix-multiply floor, side by side in one run.

    python benchmarks/bench_train.py               # batch 128 and 256 (and 1024 on a GPU)
    python benchmarks/bench_train.py --scaling     # also sweeps of batch, hidden width and z_dim

Every variant trains a fresh 784-400-50 MLP VAE (Bernoulli likelihood, dynamic binarization, Adam
at lr 1e-3) for one epoch and returns the seconds of its training steps. To add a variant, add its
function to :data:`VARIANTS` (and a ratio to :data:`RATIOS` if one should be reported). ``floor``
is no variant: it is the network's matrix-multiply FLOPs per epoch (3x the forward FLOPs of every
``nn.Linear``, forward and backward) over the rate of a ``(batch x 784) @ (784 x 400)`` float32
product, measured again in every round.

Per batch size, every variant first trains ``--warmup-epochs`` untimed epochs; then, in each of
``--epochs`` rounds, every variant trains one timed epoch in turn, so that a slow spell of a shared
machine falls on all alike. The tables give the median over rounds; the results go to
``OUT/<device>-<date>.md`` and ``.json`` (see ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.config import training_sections  # noqa: E402
from pyro_vae.data.sources import Dataset  # noqa: E402
from pyro_vae.training.trainer import Trainer  # noqa: E402

EVAL_IMAGES = 1000  # test images for the trainer's (untimed) test ELBO after each epoch
LR = 1e-3
HIDDEN, Z_DIM = 400, 50
Z_DIMS = {"digits": 8}  # the digits' network is 64-400-8; 28x28 images get 784-400-50

# A variant trains ``vae`` on ``data`` for one epoch of batches of ``batch`` and returns the
# seconds of its training steps: f(vae, data, batch, device, seed) -> seconds.
Variant = Callable[[pyro_vae.VAE, Dataset, int, torch.device, int], float]


TRAINERS: dict[tuple, Trainer] = {}  # one per variant, network, batch and device


def trainer_variant(objective: str, compile: str = "off") -> Variant:
    """The project's trainer, ``pyro_vae.training.trainer.Trainer``, as ``pyro_vae.train`` runs it:
    ``fit`` takes ``Trainer.step`` on each of ``Trainer.batches``; ``History.seconds`` times the
    steps, not the test ELBO after the epoch. One trainer per network, batch and device trains on
    from round to round, so that the warm-up epoch holds the first step (Pyro's validation) and,
    with ``compile="on"``, the compiling (whose time goes into the results)."""

    def run(vae, data: Dataset, batch: int, device: torch.device, seed: int) -> float:
        key = (objective, compile, batch, vae.x_shape, vae.hidden_dims, vae.z_dim, str(device))
        key += (len(data.x_train),)
        if key not in TRAINERS:
            settings = dict(lr=LR, device=device, seed=seed, binarization="dynamic",
                            batch_size=batch, compile=compile)  # fmt: skip
            TRAINERS[key] = Trainer(vae, data, *training_sections(None, objective, settings))
        trainer = TRAINERS[key]
        history = trainer.fit(trainer.state.epoch + 1, progress=False)
        return history.seconds[-1]

    return run


def pyro_naive(vae, data: Dataset, batch: int, device: torch.device, seed: int) -> float:
    """The loop of Pyro's VAE tutorial: ``SVI`` with ``pyro.optim.Adam`` and ``Trace_ELBO``,
    validation on, a ``DataLoader`` on the CPU, each batch moved to the device and binarized by
    ``torch.bernoulli``."""
    loader = DataLoader(TensorDataset(data.x_train), batch_size=batch, shuffle=True)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    with pyro.validation_enabled(True):
        seconds, total = C.timed(
            lambda: sum(svi.step(torch.bernoulli(x.to(device))) for (x,) in loader), device
        )
    pyro.clear_param_store()
    if not math.isfinite(total):
        raise RuntimeError("pyro-naive: the loss stopped being finite")
    return seconds


VARIANTS: dict[str, Variant] = {
    "svi": trainer_variant("trace"),  # Trace_ELBO, eager
    "svi-compiled": trainer_variant("trace", compile="on"),  # the step captured and compiled
    "manual": trainer_variant("manual"),  # pyro_vae.infer.elbo.manual_elbo, no pyro.infer
    "pyro-naive": pyro_naive,
}
# name -> (numerator, denominator): ratios of median epoch times, reported where both ran.
RATIOS = {
    "svi/manual": ("svi", "manual"),
    "svi-compiled/manual": ("svi-compiled", "manual"),
    "pyro-naive/svi": ("pyro-naive", "svi"),
    "pyro-naive/svi-compiled": ("pyro-naive", "svi-compiled"),
    "svi/floor": ("svi", "floor"),
    "svi-compiled/floor": ("svi-compiled", "floor"),
}
# Issue 12's targets, per device type and data: the batch, and (ratio, comparison, threshold).
TARGETS = {
    ("cpu", "digits"): (128, [("svi-compiled/manual", "<=", 0.75)]),
    ("cpu", "images"): (
        256,
        [
            ("svi-compiled/manual", "<=", 0.95),
            ("pyro-naive/svi-compiled", ">=", 1.6),
            ("svi-compiled/floor", "<=", 1.8),
        ],
    ),
    ("cuda", "images"): (
        256,
        [("svi-compiled/manual", "<=", 1.0), ("pyro-naive/svi-compiled", ">=", 10.0)],
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = C.parser(
        "Time training epochs of several trainers and the matmul floor; write "
        "OUT/<device>-<date>.md and .json.",
        seed_help="seeds weights, batch order and noise",
    )
    names = list(VARIANTS)
    add = p.add_argument
    add("--batch-sizes", type=C.int_list, help="default: 128,256 on cpu; 128,256,1024 on cuda")
    add("--variants", type=C.choice_list(names), default=names, help="the floor always runs")
    add("--epochs", type=C.positive, default=7, help="rounds: timed epochs per variant and batch")
    add("--warmup-epochs", type=int, default=1, help="untimed epochs per variant and batch")
    add("--max-steps", type=C.positive, help="cut every epoch to this many steps (smoke tests)")
    add("--scaling", action="store_true", help="also sweep batch, width and z_dim, and plot")
    add("--scaling-steps", type=C.positive, default=60, help="steps timed per epoch, extrapolated")
    add("--scaling-epochs", type=C.positive, default=3, help="rounds per point of the sweeps")
    add("--scaling-variants", type=C.choice_list(names), default=["svi", "manual"])
    add("--scaling-batch-sizes", type=C.int_list, default=[32, 64, 128, 256, 512, 1024])
    add("--scaling-hidden", type=C.int_list, default=[100, 200, 400, 800, 1600])
    add("--scaling-z-dims", type=C.int_list, default=[10, 25, 50, 100, 200])
    return p.parse_args(argv)


def build_vae(device: torch.device, seed: int, x_shape, hidden: int, z_dim: int):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    return pyro_vae.VAE(x_shape, z_dim=z_dim, hidden_dims=(hidden,)).to(device)


def run_variant(name: str, data: Dataset, batch: int, device, seed: int, hidden, z_dim):
    vae = build_vae(device, seed, data.x_shape, hidden, z_dim)
    return VARIANTS[name](vae, data, batch, device, seed)


def epoch_flops(x_shape, hidden: int, z_dim: int, images: int) -> int:
    """Matrix-multiply FLOPs of an epoch: forward and backward, 3x the forward's 2 per
    multiply-add in every ``nn.Linear``."""
    vae = build_vae(torch.device("cpu"), 0, x_shape, hidden, z_dim)
    linears = [m for m in vae.modules() if isinstance(m, nn.Linear)]
    return 3 * 2 * sum(m.in_features * m.out_features for m in linears) * images


cached_matmul_rate = functools.cache(C.matmul_rate)  # the sweeps: once per batch size


def bench_data(data: Dataset, batch: int, steps: int | None) -> Dataset:
    x_train = data.x_train if steps is None else data.x_train[: steps * batch]
    return Dataset(data.name, x_train, data.x_test[:EVAL_IMAGES])


def interleave(names: list[str], run, rounds: int, warmup: int, device) -> dict[str, dict]:
    """``run(name)``, the seconds of one epoch, for each name: ``warmup`` untimed calls each, then
    ``rounds`` rounds in which each name takes its turn. Seconds and peak memory per round."""
    for name in names:
        for _ in range(warmup):
            run(name)
    rows = {name: {"variant": name, "seconds": [], "peak_mib": []} for name in names}
    for r in range(rounds):
        for name in names:
            with C.PeakMemory(device) as memory:
                seconds = run(name)
            rows[name]["seconds"].append(seconds)
            rows[name]["peak_mib"].append(memory.mib)
            C.log(f"round {r + 1}: {name} {seconds:.3f} s, {memory.mib:.0f} MiB")
    for row in rows.values():
        row["median"] = C.median(row["seconds"])
    return rows


def measure_batch(args, device, data: Dataset, batch: int) -> dict[str, dict]:
    """Per variant and the floor: the seconds of each round's epoch, their median, peak memory."""
    d = bench_data(data, batch, args.max_steps)
    z_dim = Z_DIMS.get(data.name, Z_DIM)
    flops = epoch_flops(d.x_shape, HIDDEN, z_dim, len(d.x_train))

    def run(name: str) -> float:
        if name == "floor":
            return flops / C.matmul_rate(batch, device, d.x_shape)
        return run_variant(name, d, batch, device, args.seed, HIDDEN, z_dim)

    C.log(f"batch {batch}:")
    rows = interleave([*args.variants, "floor"], run, args.epochs, args.warmup_epochs, device)
    for row in rows.values():
        row.update(batch=batch, steps=math.ceil(len(d.x_train) / batch))
    rows["floor"].update(flops_per_epoch=flops, peak_mib=[])
    return rows


def ratios(rows: dict[str, dict]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The ratios of :data:`RATIOS` whose two sides ran: of the medians, and within each round."""
    of_medians, per_round = {}, {}
    for name, (a, b) in RATIOS.items():
        if a in rows and b in rows:
            of_medians[name] = rows[a]["median"] / rows[b]["median"]
            pairs = zip(rows[a]["seconds"], rows[b]["seconds"], strict=True)
            per_round[name] = [x / y for x, y in pairs]
    return of_medians, per_round


def check_targets(device: torch.device, data: Dataset, table: dict) -> list[dict]:
    """Each target of :data:`TARGETS` for this device and data, against the measured ratio."""
    batch, wanted = TARGETS.get((device.type, _kind(data)), (None, []))
    ratios_at_target = table[batch][0] if batch in table else {}
    targets = []
    for name, op, threshold in wanted:
        value = ratios_at_target.get(name)
        met = value is not None and (value <= threshold if op == "<=" else value >= threshold)
        targets.append(
            {"ratio": name, "op": op, "threshold": threshold, "value": value, "met": met}
        )
        targets[-1]["batch"] = batch
    return targets


def _kind(data: Dataset) -> str:
    return "digits" if data.name == "digits" else "images"


def verdict(target: dict) -> str:
    value, op, threshold = target["value"], target["op"], target["threshold"]
    if value is None:
        return "not measured"
    if target["met"]:
        return f"met ({value:.2f} {op} {threshold:g})"
    gap = value / threshold - 1 if op == "<=" else 1 - value / threshold
    return f"missed by {100 * gap:.1f}% ({value:.2f}, target {op} {threshold:g})"


def train_report(
    args, device, data: Dataset, header: list[str], by_batch: dict[int, dict]
) -> tuple[str, dict]:
    """The markdown section and the JSON record of the main benchmark."""
    table = {b: ratios(rows) for b, rows in by_batch.items()}
    targets = check_targets(device, data, table)
    z_dim = Z_DIMS.get(data.name, Z_DIM)
    compiled = {
        str(key[2]): t.state.history.compile for key, t in TRAINERS.items() if key[1] == "on"
    }
    lines = [
        "## Training epochs" + (" on the digits" if _kind(data) == "digits" else ""),
        "",
        *header,
        f"- network: {math.prod(data.x_shape)}-{HIDDEN}-{z_dim} MLP VAE, Bernoulli likelihood, "
        "dynamic binarization, Adam lr 1e-3"
        + (f"; epochs cut to {args.max_steps} steps" if args.max_steps else ""),
        f"- timing: {args.warmup_epochs} warm-up epoch(s) per variant, then {args.epochs} "
        "rounds of 1 timed epoch per variant; median over rounds; training steps only. floor: "
        "matmul FLOPs per epoch over the matmul rate of each round",
        f"- peak memory: {C.PeakMemory.METHOD[device.type]}, the largest of the rounds",
        *[f"- svi-compiled, batch {b}: {text}" for b, text in compiled.items()],
        "- each trainer variant trains one VAE on from round to round: its warm-up epoch holds "
        "the first step, with Pyro's validation, and svi-compiled's compiling; pyro-naive a "
        "fresh VAE each round",
        "",
        "| batch | variant | epoch time (s) | timed epochs (s) | steps/s | ms/step | peak MiB |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for batch, rows in by_batch.items():
        for r in rows.values():
            peak = C.fmt(max(r["peak_mib"]), 0) if r["peak_mib"] else ""
            rounds = " ".join(f"{s:.3f}" for s in r["seconds"])
            lines.append(
                f"| {batch} | {r['variant']} | {r['median']:.3f} | {rounds} | "
                f"{r['steps'] / r['median']:.1f} | {1000 * r['median'] / r['steps']:.2f} | {peak} |"
            )
    lines += ["", "| batch | " + " | ".join(RATIOS) + " |", "| ---: |" + " ---: |" * len(RATIOS)]
    for batch, (of_medians, per_round) in table.items():
        cells = [
            f"{of_medians[n]:.2f} ({min(per_round[n]):.2f}-{max(per_round[n]):.2f})"
            if n in of_medians
            else "n/a"
            for n in RATIOS
        ]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios of median epoch times; in brackets, the lowest and highest of the same",
        "ratio within a round.",
        "",
        f"Targets ({device.type}, {_kind(data)}, batch {targets[0]['batch'] if targets else '-'}):",
        "",
    ]
    lines += [f"- {t['ratio']} {t['op']} {t['threshold']:g}: {verdict(t)}" for t in targets]
    payload = {
        "max_steps": args.max_steps,
        "results": [row for rows in by_batch.values() for row in rows.values()],
        "ratios": {str(b): of_medians for b, (of_medians, _) in table.items()},
        "round_ratios": {str(b): per_round for b, (_, per_round) in table.items()},
        "targets": targets,
        "compile": compiled,
    }
    return "\n".join(lines) + "\n", payload


def scaling_point(args, device, data: Dataset, sweep: str, batch: int, hidden: int, z_dim: int):
    """Each scaling variant's epoch time at one point, from ``--scaling-steps`` steps."""
    full_steps = math.ceil(len(data.x_train) / batch)
    steps = min(args.scaling_steps, full_steps)
    d = bench_data(data, batch, steps)
    flops = epoch_flops(data.x_shape, hidden, z_dim, len(data.x_train))
    point = dict(sweep=sweep, batch=batch, hidden=hidden, z_dim=z_dim, steps=steps)
    rate = cached_matmul_rate(batch, device, data.x_shape)
    point.update(full_steps=full_steps, floor=flops / rate)

    def run(name: str) -> float:
        return run_variant(name, d, batch, device, args.seed, hidden, z_dim)

    C.log(f"{sweep}: batch {batch}, hidden {hidden}, z_dim {z_dim}")
    rows = interleave(args.scaling_variants, run, args.scaling_epochs, 1, device)
    for name, row in rows.items():
        point[name] = row["median"] * full_steps / steps
    return point


def scaling_report(args, header: list[str], points: list[dict], png: Path) -> str:
    variants = [*args.scaling_variants, "floor"]
    ratio_names = [name for name, (a, b) in RATIOS.items() if a in variants and b in variants]
    lines = [
        "## Scaling of the epoch time",
        "",
        *header,
        f"- each point: 1 warm-up epoch per variant, then {args.scaling_epochs} rounds of 1 epoch "
        f"of at most {args.scaling_steps} steps per variant; the median scaled to a full epoch "
        "(x full steps / timed steps)",
        "",
        f"![scaling]({png.name})",
        "",
        "| sweep | batch | hidden | z_dim | "
        + " | ".join([f"{v} (s)" for v in variants] + ratio_names)
        + " |",
        "| --- |" + " ---: |" * (3 + len(variants) + len(ratio_names)),
    ]
    for p in points:
        figures = [p[v] for v in variants] + [
            p[RATIOS[n][0]] / p[RATIOS[n][1]] for n in ratio_names
        ]
        cells = " | ".join(f"{x:.2f}" for x in figures)
        lines.append(f"| {p['sweep']} | {p['batch']} | {p['hidden']} | {p['z_dim']} | {cells} |")
    return "\n".join(lines) + "\n"


def plot_scaling(points: list[dict], variants: list[str], device, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (sweep, key) in zip(
        axes, [("batch size", "batch"), ("hidden width", "hidden"), ("z_dim", "z_dim")], strict=True
    ):
        pts = [p for p in points if p["sweep"] == sweep]
        xs = [p[key] for p in pts]
        for v in variants:
            ax.plot(xs, [p[v] for p in pts], marker="o", label=v)
        ax.plot(xs, [p["floor"] for p in pts], ls="--", color="grey", label="matmul floor")
        ax.set(xscale="log", yscale="log", xlabel=sweep, title=f"epoch time vs {sweep}")
        ax.set_xticks(xs, [str(x) for x in xs], minor=False)
        ax.set_ylabel("seconds per full epoch")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Training epoch time, {device.type}, {torch.get_num_threads()} threads "
        "(batch 256, hidden 400, z_dim 50 unless swept)"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.setup_device(args.device, args.threads)
    data, data_line = C.load_images(args.data, args.data_dir, args.seed)
    md = C.results_path(args.out, device)
    batch_sizes = args.batch_sizes or ([128, 256, 1024] if device.type == "cuda" else [128, 256])
    with C.Run(device, data_line) as run:
        by_batch = {batch: measure_batch(args, device, data, batch) for batch in batch_sizes}
    key = "train" if _kind(data) == "images" else "train-digits"  # each data set a section
    C.write_results(md, key, *train_report(args, device, data, run.lines(), by_batch), run)
    if args.scaling:
        z_dim = Z_DIMS.get(data.name, Z_DIM)
        configs = (
            [("batch size", b, HIDDEN, z_dim) for b in args.scaling_batch_sizes]
            + [("hidden width", 256, h, z_dim) for h in args.scaling_hidden]
            + [("z_dim", 256, HIDDEN, z) for z in args.scaling_z_dims]
        )
        with C.Run(device, data_line) as run:
            points = [scaling_point(args, device, data, *config) for config in configs]
        png = md.with_name(f"train-scaling-{md.stem}.png")
        plot_scaling(points, args.scaling_variants, device, png)
        text = scaling_report(args, run.lines(), points, png)
        C.write_results(md, "train-scaling", text, {"points": points, "plot": png.name}, run)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

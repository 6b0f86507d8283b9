"""Training speed: the project's SVI trainer against plain PyTorch, the textbook Pyro loop and
the matrix-multiply floor, on one network and one data set, side by side in one run.

    python benchmarks/bench_train.py                       # CPU or GPU, batch 128 and 256
    python benchmarks/bench_train.py --scaling             # also the scaling sweeps and plot

Variants (all train the same 784-400-50 MLP VAE with a Bernoulli likelihood, dynamic
binarization, Adam at lr 1e-3, on the same data):

- ``svi``: ``pyro_vae.train(..., objective="trace")``: ``Trace_ELBO().differentiable_loss`` and
  one ``torch.optim.Adam`` over ``vae.parameters()``, validation on the first step only, the data
  on the device and batches by shuffled index;
- ``manual``: ``pyro_vae.train(..., objective="manual")``: the same trainer on the hand-written
  ELBO ``pyro_vae.elbo.manual_elbo`` (no ``pyro.infer``);
- ``pyro-naive``: the loop of Pyro's VAE tutorial: ``SVI(vae.model, vae.guide,
  pyro.optim.Adam({"lr": lr}), Trace_ELBO())``, validation on, a ``DataLoader`` over a
  ``TensorDataset`` on the CPU, each batch ``.to(device)`` and binarized with ``torch.bernoulli``;
- ``floor``: the network's matrix-multiply FLOPs per epoch (forward and backward, 3x the forward
  FLOPs of every ``nn.Linear``) divided by the FLOP rate of a ``(batch x 784) @ (784 x 400)``
  float32 product measured in the same run on the same device (median of 31 timings, taken
  again in every round; the median over rounds).

For each batch size, every variant first trains ``--warmup-epochs`` untimed epochs (the warm-up);
then the measurement runs in ``--epochs`` rounds, in each of which every variant trains a fresh
VAE for one timed epoch, so that a slow spell of a shared machine falls on all variants alike;
the table gives the median over rounds. For ``svi`` and ``manual`` the time of an epoch is
``History.seconds``: the training steps only (batching, binarization, loss, backward, Adam step,
and the trainer's own once-per-10-steps loss readout), not the test ELBO computed after each
epoch (on the first 1,000 test images here, to keep the untimed part short). For ``pyro-naive``
it is the loop over the ``DataLoader``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.data import Dataset  # noqa: E402

VARIANTS = ("svi", "manual", "pyro-naive")
EVAL_IMAGES = 1000  # test images for the (untimed) test ELBO after each epoch
LR = 1e-3
HIDDEN, Z_DIM = 400, 50

# Targets of the issue, at batch 256: (ratio, comparison, threshold), per device type.
TARGETS = {
    "cpu": [("svi/manual", "<=", 1.10), ("pyro-naive/svi", ">=", 1.6), ("svi/floor", "<=", 2.0)],
    "cuda": [("svi/manual", "<=", 1.2), ("pyro-naive/svi", ">=", 10.0)],
}
TARGET_BATCH = 256


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time training epochs of the project's SVI trainer, the same trainer on the "
        "hand-written ELBO, the textbook Pyro loop and the matmul floor; write a markdown table to "
        "OUT/<device>-<date>.md (and the raw numbers to a .json beside it).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    C.add_run_flags(
        p,
        seed_help="seeds weights, batch order and noise",
        out_help="folder for <device>-<YYYY-MM-DD>.md, .json and the scaling PNG",
    )
    p.add_argument(
        "--batch-sizes",
        type=C.int_list,
        default=None,
        help="comma-separated batch sizes (default: 128,256 on cpu; 128,256,1024 on cuda)",
    )
    p.add_argument(
        "--variants",
        type=C.str_list(VARIANTS),
        default=list(VARIANTS),
        help=f"comma-separated variants among {','.join(VARIANTS)} (the floor is always computed)",
    )
    p.add_argument(
        "--epochs",
        type=C.positive_int,
        default=7,
        help="rounds, i.e. timed epochs per variant and batch size (the variants take turns, "
        "one timed epoch each per round); the median is reported",
    )
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=1,
        help="untimed epochs of every variant at each batch size before the timed rounds",
    )
    p.add_argument(
        "--max-steps",
        type=C.positive_int,
        default=None,
        help="cut every epoch to this many steps (the first N*batch training images); "
        "for smoke tests",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="also sweep batch size, hidden width and z_dim (svi and manual) and plot "
        "epoch time against each",
    )
    p.add_argument(
        "--scaling-steps",
        type=C.positive_int,
        default=60,
        help="steps per timed epoch in the sweeps; the epoch time is extrapolated to "
        "the full data set",
    )
    p.add_argument(
        "--scaling-epochs",
        type=C.positive_int,
        default=3,
        help="rounds (timed epochs per variant, after one warm-up epoch) per point of the sweeps",
    )
    p.add_argument(
        "--scaling-variants",
        type=C.str_list(("svi", "manual")),
        default=["svi", "manual"],
        help="variants in the sweeps",
    )
    p.add_argument(
        "--scaling-batch-sizes",
        type=C.int_list,
        default=[32, 64, 128, 256, 512, 1024],
        help="batch sizes of the batch sweep (hidden 400, z_dim 50)",
    )
    p.add_argument(
        "--scaling-hidden",
        type=C.int_list,
        default=[100, 200, 400, 800, 1600],
        help="hidden widths of the width sweep (batch 256, z_dim 50)",
    )
    p.add_argument(
        "--scaling-z-dims",
        type=C.int_list,
        default=[10, 25, 50, 100, 200],
        help="latent sizes of the z_dim sweep (batch 256, hidden 400)",
    )
    return p.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_vae(device: torch.device, seed: int, hidden: int = HIDDEN, z_dim: int = Z_DIM):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    return pyro_vae.VAE(C.IMAGE_SHAPE, z_dim=z_dim, hidden_dims=(hidden,)).to(device)


def forward_flops_per_example(vae: nn.Module) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of one example through every ``nn.Linear``."""
    return sum(
        2 * m.in_features * m.out_features for m in vae.modules() if isinstance(m, nn.Linear)
    )


def run_trainer(
    objective: str,
    data: Dataset,
    batch: int,
    epochs: int,
    device,
    seed: int,
    hidden: int = HIDDEN,
    z_dim: int = Z_DIM,
) -> list[float]:
    vae = build_vae(device, seed, hidden, z_dim)
    history = pyro_vae.train(
        vae,
        data,
        epochs=epochs,
        batch_size=batch,
        lr=LR,
        device=device,
        seed=seed,
        objective=objective,
        progress=False,
    )
    return list(history.seconds)


def run_pyro_naive(data: Dataset, batch: int, epochs: int, device, seed: int) -> list[float]:
    vae = build_vae(device, seed)
    loader = DataLoader(TensorDataset(data.x_train), batch_size=batch, shuffle=True)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    seconds = []
    with pyro.validation_enabled(True):
        for _ in range(epochs):
            C.synchronize(device)
            start = time.perf_counter()
            total = 0.0
            for (x,) in loader:
                x = torch.bernoulli(x.to(device))
                total += svi.step(x)
            C.synchronize(device)
            seconds.append(time.perf_counter() - start)
            if not math.isfinite(total):
                raise RuntimeError("pyro-naive: the loss stopped being finite")
    pyro.clear_param_store()
    return seconds


def run_variant(variant: str, data: Dataset, batch: int, epochs: int, device, seed: int):
    if variant == "svi":
        return run_trainer("trace", data, batch, epochs, device, seed)
    if variant == "manual":
        return run_trainer("manual", data, batch, epochs, device, seed)
    return run_pyro_naive(data, batch, epochs, device, seed)


def bench_data(data: Dataset, batch: int, steps: int | None) -> Dataset:
    x_train = data.x_train if steps is None else data.x_train[: steps * batch]
    return Dataset(data.name, x_train, data.x_test[:EVAL_IMAGES])


def check(value: float, op: str, threshold: float) -> tuple[bool, str]:
    """Whether ``value op threshold`` holds, and a phrase saying by how much it is met or missed."""
    if not math.isfinite(value):
        return False, "not measured"
    met = value <= threshold if op == "<=" else value >= threshold
    if op == "<=":
        gap = value / threshold - 1
    else:
        gap = 1 - value / threshold
    if met:
        return True, f"met ({value:.2f} {op} {threshold:g})"
    return False, f"missed by {100 * gap:.1f}% ({value:.2f}, target {op} {threshold:g})"


def main_benchmark(args, device, data, data_line) -> tuple[str, dict]:
    batch_sizes = args.batch_sizes or ([128, 256, 1024] if device.type == "cuda" else [128, 256])
    started = C.now()
    load_start = C.load_average()
    # Once per process: library set-up, kernel selection and first allocations, so that they
    # count against no variant's time or memory.
    for variant in args.variants:
        run_variant(
            variant, bench_data(data, batch_sizes[0], 2), batch_sizes[0], 1, device, args.seed
        )
    results = []
    floors = {}
    other = C.OtherLoad().start()
    for batch in batch_sizes:
        d = bench_data(data, batch, args.max_steps)
        n = len(d.x_train)
        steps = math.ceil(n / batch)
        flops = 3 * forward_flops_per_example(build_vae(device, args.seed)) * n
        rates = []
        rows = {
            v: {"batch": batch, "variant": v, "steps": steps, "seconds": [], "warmup_seconds": []}
            for v in args.variants
        }
        if args.warmup_epochs > 0:
            for variant in args.variants:
                seconds = run_variant(variant, d, batch, args.warmup_epochs, device, args.seed)
                rows[variant]["warmup_seconds"] = seconds
                log(f"batch {batch} warm-up: {variant:>10} {seconds[-1]:.3f} s")
        # Rounds: in each, every variant trains a fresh VAE for one timed epoch, so that a slow
        # spell of a shared machine falls on all variants alike.
        for r in range(args.epochs):
            rates.append(C.matmul_rate(batch, device))
            for variant in args.variants:
                with C.PeakMemory(device) as memory:
                    (seconds,) = run_variant(variant, d, batch, 1, device, args.seed)
                row = rows[variant]
                row["seconds"].append(seconds)
                row["peak_mib"] = max(row.get("peak_mib", 0.0), memory.mib)
                log(
                    f"batch {batch} round {r + 1}: {variant:>10} {seconds:.3f} s, "
                    f"peak {memory.mib:.0f} MiB"
                )
        rate = C.median(rates)
        floors[batch] = {
            "flops_per_epoch": flops,
            "matmul_flops_per_s": rate,
            "matmul_flops_per_s_rounds": rates,
            "seconds": flops / rate,
            "steps": steps,
        }
        log(f"batch {batch}: matmul {rate / 1e9:.1f} GFLOP/s, floor {flops / rate:.3f} s/epoch")
        for row in rows.values():
            row["median"] = C.median(row["seconds"])
            results.append(row)
    other.stop()
    load_end = C.load_average()

    def med(batch, variant):
        for r in results:
            if r["batch"] == batch and r["variant"] == variant:
                return r["median"]
        return float("nan")

    def per_round(batch, variant):
        for r in results:
            if r["batch"] == batch and r["variant"] == variant:
                return r["seconds"]
        return [float("nan")] * args.epochs

    ratios, round_ratios = {}, {}
    for batch in batch_sizes:
        svi = med(batch, "svi")
        ratios[batch] = {
            "svi/manual": svi / med(batch, "manual"),
            "pyro-naive/svi": med(batch, "pyro-naive") / svi,
            "svi/floor": svi / floors[batch]["seconds"],
        }
        # The same ratios within each round, whose epochs ran minutes apart at most.
        svi_r = per_round(batch, "svi")
        floor_r = [
            floors[batch]["flops_per_epoch"] / q for q in floors[batch]["matmul_flops_per_s_rounds"]
        ]
        round_ratios[batch] = {
            "svi/manual": [a / b for a, b in zip(svi_r, per_round(batch, "manual"), strict=True)],
            "pyro-naive/svi": [
                b / a for a, b in zip(svi_r, per_round(batch, "pyro-naive"), strict=True)
            ],
            "svi/floor": [a / b for a, b in zip(svi_r, floor_r, strict=True)],
        }

    lines = [
        "## Training epochs",
        "",
        f"- command: `{C.command_line()}`",
        f"- run: started {started}, device {device}, {torch.get_num_threads()} torch threads",
        f"- data: {data_line}"
        + (f"; epochs cut to {args.max_steps} steps" if args.max_steps else ""),
        "- network: 784-400-50 MLP VAE (`VAE((1,28,28), z_dim=50, hidden_dims=(400,))`), "
        "Bernoulli likelihood, dynamic binarization, Adam lr 1e-3",
        f"- timing: per batch size, {args.warmup_epochs} warm-up epoch(s) of every variant, "
        f"then {args.epochs} rounds in which every variant trains a fresh VAE for 1 timed "
        "epoch; the median over rounds; training steps only (no test ELBO)",
        f"- peak memory: {C.PeakMemory.method(device)}, over a variant's whole call, the "
        "largest of the rounds",
        *C.load_lines(load_start, load_end, other),
        "",
        "| batch | variant | epoch time (s) | timed epochs (s) | steps/s | ms/step "
        "| peak memory (MiB) |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for batch in batch_sizes:
        for r in (r for r in results if r["batch"] == batch):
            lines.append(
                f"| {batch} | {r['variant']} | {r['median']:.3f} | "
                f"{' '.join(f'{s:.3f}' for s in r['seconds'])} | {r['steps'] / r['median']:.1f} | "
                f"{1000 * r['median'] / r['steps']:.2f} | {r['peak_mib']:.0f} |"
            )
        f = floors[batch]
        lines.append(
            f"| {batch} | floor | {f['seconds']:.3f} | {f['flops_per_epoch'] / 1e9:.0f} GFLOP at "
            f"{f['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s | {f['steps'] / f['seconds']:.1f} | "
            f"{1000 * f['seconds'] / f['steps']:.2f} | |"
        )
    lines += [
        "",
        "| batch | svi/manual | pyro-naive/svi | svi/floor | svi - manual (ms/step) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(batch, name):
        spread = [v for v in round_ratios[batch][name] if math.isfinite(v)]
        text = C.fmt(ratios[batch][name])
        if len(spread) > 1:
            text += f" ({min(spread):.2f}-{max(spread):.2f})"
        return text

    for batch in batch_sizes:
        extra = 1000 * (med(batch, "svi") - med(batch, "manual")) / floors[batch]["steps"]
        lines.append(
            f"| {batch} | {cell(batch, 'svi/manual')} | {cell(batch, 'pyro-naive/svi')} | "
            f"{cell(batch, 'svi/floor')} | {C.fmt(extra)} |"
        )
    lines += [
        "",
        "Ratios are of median epoch times (pyro-naive/svi is also svi's step rate over "
        "pyro-naive's: both take the same number of steps); in brackets, the lowest and highest "
        "of the same ratio taken within each round.",
        "",
    ]
    targets = []
    if TARGET_BATCH in ratios:
        lines += [f"Targets ({device.type}, batch {TARGET_BATCH}):", ""]
        for name, op, threshold in TARGETS[device.type]:
            met, phrase = check(ratios[TARGET_BATCH][name], op, threshold)
            targets.append(
                {
                    "ratio": name,
                    "op": op,
                    "threshold": threshold,
                    "value": ratios[TARGET_BATCH][name],
                    "met": met,
                }
            )
            lines.append(f"- {name} {op} {threshold:g}: {phrase}")
    else:
        lines.append(f"(No target check: batch {TARGET_BATCH} was not run.)")
    payload = {
        "command": C.command_line(),
        "run": started,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "data": data_line,
        "max_steps": args.max_steps,
        "load_start": load_start,
        "load_end": load_end,
        "other_cpu_seconds": other.seconds,
        "other_cpu_share": other.share,
        "results": results,
        "floors": {str(b): f for b, f in floors.items()},
        "ratios": {str(b): r for b, r in ratios.items()},
        "round_ratios": {str(b): r for b, r in round_ratios.items()},
        "targets": targets,
    }
    return "\n".join(lines) + "\n", payload


def scaling(args, device, data, data_line, png: Path) -> tuple[str, dict]:
    started = C.now()
    load_start = C.load_average()
    n_full = len(data.x_train)
    rates: dict[int, float] = {}
    sweeps = {
        "batch size": [(b, HIDDEN, Z_DIM) for b in args.scaling_batch_sizes],
        "hidden width": [(256, h, Z_DIM) for h in args.scaling_hidden],
        "z_dim": [(256, HIDDEN, z) for z in args.scaling_z_dims],
    }
    points = []
    other = C.OtherLoad().start()
    for sweep, configs in sweeps.items():
        for batch, hidden, z_dim in configs:
            full_steps = math.ceil(n_full / batch)
            steps = min(args.scaling_steps, full_steps)
            d = bench_data(data, batch, steps)
            if batch not in rates:
                rates[batch] = C.matmul_rate(batch, device)
            flops = 3 * forward_flops_per_example(build_vae(device, args.seed, hidden, z_dim))
            point = {
                "sweep": sweep,
                "batch": batch,
                "hidden": hidden,
                "z_dim": z_dim,
                "steps": steps,
                "full_steps": full_steps,
                "floor": flops * n_full / rates[batch],
            }
            seconds = {v: [] for v in args.scaling_variants}
            objectives = {"svi": "trace", "manual": "manual"}
            for variant in args.scaling_variants:  # warm-up
                run_trainer(objectives[variant], d, batch, 1, device, args.seed, hidden, z_dim)
            for _ in range(args.scaling_epochs):  # rounds, variants taking turns
                for variant in args.scaling_variants:
                    seconds[variant] += run_trainer(
                        objectives[variant], d, batch, 1, device, args.seed, hidden, z_dim
                    )
            for variant in args.scaling_variants:
                point[variant] = C.median(seconds[variant]) * full_steps / steps
            points.append(point)
            log(
                f"{sweep}: batch {batch} hidden {hidden} z_dim {z_dim}: "
                + ", ".join(f"{v} {point[v]:.2f} s/epoch" for v in args.scaling_variants)
                + f", floor {point['floor']:.2f}"
            )
    other.stop()
    load_end = C.load_average()
    plot_scaling(points, args.scaling_variants, device, png)

    variants = args.scaling_variants
    lines = [
        "## Scaling of the epoch time",
        "",
        f"- command: `{C.command_line()}`",
        f"- run: started {started}, device {device}, {torch.get_num_threads()} torch threads",
        f"- data: {data_line}",
        f"- each point: {args.scaling_epochs} rounds; in each, every variant trains a fresh VAE "
        f"for 1 timed epoch of at most {args.scaling_steps} steps (after 1 warm-up epoch of "
        "each variant); the median "
        "over rounds is extrapolated to a full epoch of "
        f"{n_full} images (x full steps / timed steps)",
        *C.load_lines(load_start, load_end, other, "the sweeps", "their"),
        f"- plot: `{png.name}`",
        "",
        f"![scaling]({png.name})",
        "",
        "| sweep | batch | hidden | z_dim | "
        + " | ".join(f"{v} (s/epoch)" for v in variants)
        + " | floor (s/epoch) |"
        + (" svi/manual |" if len(variants) == 2 else ""),
        "| --- | ---: | ---: | ---: | "
        + "---: | " * len(variants)
        + "---: |"
        + (" ---: |" if len(variants) == 2 else ""),
    ]
    for p in points:
        row = (
            f"| {p['sweep']} | {p['batch']} | {p['hidden']} | {p['z_dim']} | "
            + " | ".join(f"{p[v]:.2f}" for v in variants)
            + f" | {p['floor']:.2f} |"
        )
        if len(variants) == 2:
            row += f" {p['svi'] / p['manual']:.2f} |"
        lines.append(row)
    payload = {
        "command": C.command_line(),
        "run": started,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_start": load_start,
        "load_end": load_end,
        "other_cpu_seconds": other.seconds,
        "other_cpu_share": other.share,
        "points": points,
        "plot": png.name,
    }
    return "\n".join(lines) + "\n", payload


def plain_ticks(ax, xs, y: bool = True) -> None:
    """Tick labels as plain numbers on log axes: the swept values on x, %g on y."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xticks(xs, [str(x) for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if y:
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2, 3, 5)))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))


def plot_scaling(points, variants, device, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = {"batch size": "batch", "hidden width": "hidden", "z_dim": "z_dim"}
    ratio = "svi" in variants and "manual" in variants
    fig, axes = plt.subplots(
        2 if ratio else 1, 3, figsize=(13, 7 if ratio else 4), squeeze=False, sharex="col"
    )
    for col, (sweep, key) in enumerate(keys.items()):
        pts = [p for p in points if p["sweep"] == sweep]
        xs = [p[key] for p in pts]
        ax = axes[0][col]
        for v in variants:
            ax.plot(xs, [p[v] for p in pts], marker="o", label=v)
        ax.plot(xs, [p["floor"] for p in pts], ls="--", color="grey", label="matmul floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        plain_ticks(ax, xs)
        ax.set_title(f"epoch time vs {sweep}")
        ax.set_ylabel("seconds per epoch (60k images)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if ratio:
            ax = axes[1][col]
            ax.plot(xs, [p["svi"] / p["manual"] for p in pts], marker="o", color="C3")
            target = TARGETS[device.type][0][2]
            ax.axhline(target, ls=":", color="k", label=f"target {target:g}")
            ax.axhline(1.0, color="grey", lw=0.5)
            ax.set_xscale("log", base=2)
            plain_ticks(ax, xs, y=False)
            ax.set_ylabel("svi / manual epoch time")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        (axes[-1][col]).set_xlabel(sweep)
    fig.suptitle(
        f"Training epoch time, {device.type}, {torch.get_num_threads()} threads "
        "(default: batch 256, hidden 400, z_dim 50)"
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.setup_device(args.device, args.threads)
    data, data_line = C.load_images(args.data, args.data_dir, args.seed)
    md = C.results_path(args.out, device)
    js = md.with_suffix(".json")
    log(
        f"device {device}, {torch.get_num_threads()} threads, {data_line}; load "
        f"{C.fmt(C.load_average())}"
    )
    text, payload = main_benchmark(args, device, data, data_line)
    C.write_section(md, "train", text, device)
    C.write_json(js, "train", payload)
    if args.scaling:
        png = md.with_name(f"train-scaling-{md.stem}.png")
        text, payload = scaling(args, device, data, data_line, png)
        C.write_section(md, "train-scaling", text, device)
        C.write_json(js, "train-scaling", payload)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

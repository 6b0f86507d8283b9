"""8-bit colour images: bits per dimension of the conv and resnet networks against the independent-
pixel baseline, and the memory and epoch time of a training set kept on the device or streamed.

    python benchmarks/bench_images.py                        # both parts, on the CPU
    python benchmarks/bench_images.py --device cuda          # the same on a GPU
    python benchmarks/bench_images.py --parts memory --memory-epochs 1   # a quick look

**Bits per dimension** (``--parts bits``): VAEs with the discretized logistic likelihood (256 bins,
per pixel and channel) on the offline ``photos`` set (32x32 colour patches of scikit-learn's two
sample photographs), one per network family (``--encoders``), trained through
:func:`pyro_vae.train`; each scored on the test set by
:func:`pyro_vae.analysis.evaluation.evaluate` (test
ELBO and the IWAE estimate with ``--iwae-k``), in bits per dimension, beside the independent
discretized logistic per value fitted to the training set.

**Memory and time** (``--parts memory``): one VAE trained on Fashion-MNIST's 60,000 images (or,
without its files, 60,000 random 8-bit images of the same shape) three ways, each in a process of
its own so that its peak memory is its own: the images as float32 on the device (the old way),
as uint8 on the device, and streamed from host memory through the DataLoader. Peak memory is the
process's peak resident set (and its largest DataLoader worker's) on the CPU, and
``torch.cuda.max_memory_allocated`` on a GPU; the epoch time is the last epoch's.
Results go to ``OUT/images-<device>-<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.analysis.evaluation import evaluate  # noqa: E402
from pyro_vae.data.sources import Dataset, as_floats  # noqa: E402

MODES = ("float32 on the device", "uint8 on the device", "uint8 streamed")


def bits_row(data: Dataset, device: torch.device, encoder: str, seed: int, args) -> dict:
    """Train one discretized-logistic VAE of network family ``encoder`` from ``seed``; score it."""
    pyro.set_rng_seed(seed)
    vae = pyro_vae.VAE(
        data.x_shape,
        z_dim=args.z_dim,
        hidden_dims=args.channels,
        encoder=encoder,
        likelihood="discretized-logistic",
    )
    start = time.perf_counter()
    history = pyro_vae.train(
        vae,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=device,
        seed=seed,
        compile=args.compile,
        progress=False,
    )
    seconds = time.perf_counter() - start
    result = evaluate(vae, data, seed=seed, iwae_k=args.iwae_k, compile=args.compile)
    row = {"encoder": encoder, "seed": seed, "train_seconds": seconds}
    row["weights"] = sum(p.numel() for p in vae.parameters())
    for key in ("test_bits_per_dim", "iwae_bits_per_dim", "baseline_bits_per_dim"):
        row[key] = result[key]
    C.log(f"{encoder}, seed {seed}: {row['iwae_bits_per_dim']:.3f} bits/dim ({seconds:.0f} s)")
    return row | {"train_elbo": history.train_elbo[-1], "compile": history.compile}


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    return [int(part) for part in text.split(",")]


def memory_data(kind: str, data_dir: str | None, n: int) -> tuple[Dataset, str]:
    """The first ``n`` of Fashion-MNIST's training images as uint8, or ``n`` random 8-bit 28x28
    images (and 10,000 test images, or ``n`` if fewer)."""
    if kind != "random":
        data, line = C.load_images("fashion-mnist" if kind == "fashion-mnist" else "auto", data_dir)
        if data.eight_bit:
            return Dataset(data.name, data.x_train[:n], data.x_test), line.replace(
                f"({len(data.x_train)} train", f"({min(n, len(data.x_train))} train"
            )
    g = torch.Generator().manual_seed(0)
    shape = C.IMAGE_SHAPE
    x_train = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    m = min(C.RANDOM_TEST, n)
    x_test = torch.randint(0, 256, (m, *shape), generator=g, dtype=torch.uint8)
    return Dataset("random8", x_train, x_test), f"random: {n:,} 8-bit 28x28 training images"


def memory_row(mode: str, device: torch.device, args) -> dict:
    """In this process: load the data, train as ``mode`` says, and measure."""
    base_rss = C.PeakMemory._status_kb("VmRSS") / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data, line = memory_data(args.memory_data, args.data_dir, args.memory_images)
    if mode == MODES[0]:
        data = Dataset(data.name, as_floats(data.x_train), as_floats(data.x_test))
    pyro.set_rng_seed(args.seed)
    vae = pyro_vae.VAE(data.x_shape, z_dim=16, hidden_dims=(400,))
    history = pyro_vae.train(
        vae,
        data,
        epochs=args.memory_epochs,
        batch_size=args.memory_batch_size,
        device=device,
        seed=args.seed,
        compile="off",  # the data path differs between the modes, not the step
        stream=mode == MODES[2],
        workers=args.workers,
        progress=False,
    )
    row = {"mode": mode, "data": line, "placement": history.data}
    row["epoch_seconds"] = history.seconds[-1]
    row["train_elbo"] = history.train_elbo[-1]
    row["bytes_per_example"] = data.bytes_per_example
    row["start_rss_mib"] = base_rss
    # VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss over into a child it starts
    row["peak_rss_mib"] = C.PeakMemory._status_kb("VmHWM") / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    row["worker_peak_rss_mib"] = children if mode == MODES[2] else None
    if device.type == "cuda":
        row["peak_device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def memory_rows(args) -> list[dict]:
    rows = []
    for mode in args.modes:
        command = [sys.executable, __file__, "--memory-row", mode, *sys.argv[1:]]
        C.log(f"memory: {mode} ...")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"error: the {mode!r} run failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        C.log(f"  {rows[-1]}")
    return rows


def bits_table(rows: list[dict]) -> list[str]:
    """One line per network: each figure's mean over the seeds (± their standard deviation where
    there are several), and each seed's IWAE figure."""
    lines = [
        "| network | weights | test bits/dim (ELBO) | test bits/dim (IWAE) | "
        "independent-pixel baseline | train s | IWAE bits/dim by seed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for encoder in dict.fromkeys(r["encoder"] for r in rows):
        mine = [r for r in rows if r["encoder"] == encoder]

        seeds = ", ".join(f"{r['seed']}: {r['iwae_bits_per_dim']:.3f}" for r in mine)
        lines.append(
            f"| {encoder} | {mine[0]['weights']:,} | {_spread(mine, 'test_bits_per_dim')} | "
            f"{_spread(mine, 'iwae_bits_per_dim')} | {_spread(mine, 'baseline_bits_per_dim')} | "
            f"{statistics.mean(r['train_seconds'] for r in mine):.0f} | {seeds} |"
        )
    return lines


def _spread(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows]
    if len(values) == 1:
        return C.fmt(values[0], 3)
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def memory_table(rows: list[dict], device: torch.device) -> list[str]:
    device_column = " peak device MiB |" if device.type == "cuda" else ""
    lines = [
        f"| training set | bytes/example | epoch s | peak RSS MiB (start) | largest worker MiB |"
        f"{device_column} train ELBO |",
        "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if device_column else "") + " ---: |",
    ]
    for r in rows:
        gpu = f" {r['peak_device_mib']:,.0f} |" if device_column else ""
        lines.append(
            f"| {r['mode']} | {r['bytes_per_example']:,} | {r['epoch_seconds']:.2f} | "
            f"{r['peak_rss_mib']:,.0f} ({r['start_rss_mib']:,.0f}) | "
            f"{C.fmt(r['worker_peak_rss_mib'], 0)} |{gpu} {r['train_elbo']:.2f} |"
        )
    return lines


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0], "seeds the weights, batches and noise")
    p.add_argument("--seeds", default=[0], type=seed_list, help="bits: seeds of each network")
    p.add_argument("--parts", default="bits,memory", type=C.choice_list(["bits", "memory"]))
    p.add_argument(
        "--encoders", default="conv,resnet", type=C.choice_list(["mlp", "conv", "resnet"])
    )
    p.add_argument("--channels", default=[32, 64], type=C.int_list, help="channels per stage")
    p.add_argument("--z-dim", default=32, type=C.positive, help="latent size")
    p.add_argument("--epochs", default=20, type=C.positive, help="photos: epochs of each net")
    p.add_argument("--limit", type=C.positive, help="photos: the first N patches (a quick look)")
    p.add_argument("--batch-size", default=64, type=C.positive, help="photos: batch size")
    p.add_argument("--lr", default=1e-3, type=float, help="Adam's learning rate")
    p.add_argument("--iwae-k", default=100, type=C.positive, help="particles of the IWAE estimate")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="see train")
    p.add_argument("--memory-data", default="auto", choices=("auto", "fashion-mnist", "random"))
    p.add_argument("--memory-images", default=60_000, type=C.positive, help="memory: images")
    p.add_argument("--memory-epochs", default=2, type=C.positive, help="memory: epochs per mode")
    p.add_argument("--memory-batch-size", default=128, type=C.positive, help="memory: batch")
    p.add_argument("--workers", default=2, type=int, help="memory: the streamed run's workers")
    p.add_argument(
        "--modes",
        default=list(MODES),
        type=C.choice_list(MODES),
        help=f"memory: the ways to hold the data, some of: {', '.join(MODES)}",
    )
    p.add_argument("--memory-row", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    device = C.setup_device(args.device, args.threads)
    if args.memory_row:  # one row, in its own process: print it as JSON
        print(json.dumps(memory_row(args.memory_row, device, args)))
        return
    photos = pyro_vae.load_dataset("photos")
    if args.limit:
        photos = Dataset("photos", photos.x_train[: args.limit], photos.x_test[: args.limit])
    md = Path(args.out) / f"images-{C.results_path(args.out, device).name}"
    with C.Run(device, f"{photos.describe()} (the memory rows name theirs)") as run:
        encoders = args.encoders if "bits" in args.parts else []
        bits = [bits_row(photos, device, e, seed, args) for e in encoders for seed in args.seeds]
        memory = memory_rows(args) if "memory" in args.parts else []
    if bits:
        lines = [
            "## 8-bit colour images: bits per dimension",
            "",
            *run.lines(),
            "",
            f"Bits per dimension on the {len(photos.x_test)} test patches: discretized logistic "
            f"(256 bins per value), z_dim {args.z_dim}, channels {args.channels}, {args.epochs} "
            f"epochs of batch {args.batch_size}, Adam lr {args.lr:g}, compile {args.compile}, "
            f"seeds {', '.join(map(str, args.seeds))}; IWAE k = {args.iwae_k}.",
            "",
            *bits_table(bits),
        ]
        C.write_results(md, "images-bits", "\n".join(lines) + "\n", {"bits": bits}, run)
        print("\n".join(lines))
    if memory:
        lines = [
            "## 8-bit images: memory and epoch time, on the device or streamed",
            "",
            *run.lines(),
            "",
            f"{memory[0]['data']}; a 784-400-16 MLP VAE, Bernoulli, dynamic binarization, batch "
            f"{args.memory_batch_size}, {args.memory_epochs} epochs (the last one's time), "
            f"compile off; streamed with {args.workers} workers. Each mode in a process of its "
            "own; peak RSS (VmHWM) includes torch itself (the start column: before the data "
            "were loaded); a worker's includes the pages it shares with the main process.",
            "",
            *memory_table(memory, device),
        ]
        C.write_results(md, "images-memory", "\n".join(lines) + "\n", {"memory": memory}, run)
        print("\n".join(lines))
    print(md)


if __name__ == "__main__":
    main()

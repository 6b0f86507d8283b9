"""Training from a prepared copy larger than the memory it may use: peak resident memory and
epoch time, against the same data in memory.

    python benchmarks/bench_stream.py                          # 4 GB against a 1 GiB limit
    python benchmarks/bench_stream.py --size-gb 0.5 --limit-gb 0.25   # a quick look

A synthetic data set of random 28x28 bytes (``--size-gb`` of training images, 1,000 test
images) is written once as an ``.npz`` and prepared (``pyro_vae.data.prepare.prepare_dataset``)
under ``--work-dir``. Each row trains one epoch of the same VAE on the same batches, in a process
of its own:

- ``in memory``: the ``.npz`` read into memory (``--dataset npz``), no memory limit;
- ``mapped, warm``: the prepared copy memory-mapped, its file read into the page cache first
  (by this process, outside the limit);
- ``mapped, cold``: the same, the file dropped from the page cache first (``fsync`` and
  ``posix_fadvise(DONTNEED)``).

The mapped rows run inside a cgroup (v1 memory controller) limited to ``--limit-gb``, where the
machine allows it (root); the table says whether they did. Per row: the epoch's training time
(``history.seconds``, without the test ELBO), the peak resident memory of the training process
(``VmHWM``: mapped file pages included; DataLoader workers, with ``--stream``, are processes of
their own, not counted), and the cgroup's peak usage (page cache charged to it included). On a
GPU (``--device cuda --stream --workers 4``) the batches come through the ``DataLoader``, pinned
memory and non-blocking copies. Results go to ``OUT/stream-<device>-<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from pyro_vae import VAE, load_dataset, train  # noqa: E402
from pyro_vae.data.prepare import prepare_dataset  # noqa: E402
from pyro_vae.files import drop_from_page_cache  # noqa: E402

CGROUP = Path("/sys/fs/cgroup/memory")
TEST_EXAMPLES = 1000
ROW = 28 * 28
TARGETS = {"peak_rss_gb": 1.5, "warm_over_in_memory": 1.3}


def make_data(work: Path, size_gb: float, seed: int) -> tuple[Path, Path]:
    """The ``.npz`` source and its prepared copy, made once for a size and seed."""
    n = int(size_gb * 1e9) // ROW
    source, prepared = work / f"random-{n}-{seed}.npz", work / f"prepared-{n}-{seed}"
    if not source.is_file():
        C.log(f"writing {n:,} random 28x28 images ({n * ROW / 1e9:.2f} GB) to {source}")
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (n + TEST_EXAMPLES, 1, 28, 28), dtype=np.uint8)
        np.savez(source, x_train=x[:n], x_test=x[n:])
        del x
    if not (prepared / "prepared.json").is_file():
        C.log(f"preparing {prepared}")
        prepare_dataset("npz", prepared, data_path=source, overwrite=True)
    return source, prepared


def child(args) -> None:
    """One row: train one epoch, print what it measured as JSON."""
    if args.child == "in-memory":
        data = load_dataset("npz", data_path=args.source)
    else:
        data = load_dataset("prepared", data_dir=args.prepared)
    pyro.set_rng_seed(args.seed)
    hidden = tuple(args.hidden_dims)
    vae = VAE(data.x_shape, z_dim=args.z_dim, hidden_dims=hidden)
    device = str(C.setup_device(args.device, args.threads))
    history = train(vae, data, epochs=1, batch_size=args.batch_size, lr=1e-3, seed=args.seed,
                    device=device, compile=args.compile, workers=args.workers, stream=args.stream,
                    progress=False)  # fmt: skip
    status = Path("/proc/self/status").read_text()
    hwm = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    print(json.dumps({
        "seconds": history.seconds[0],
        "train_elbo": history.train_elbo[0],
        "steps": len(history.step_loss),
        "peak_rss_mib": hwm / 1024,
        "data": history.data,
    }))  # fmt: skip


def limited(limit_bytes: int) -> tuple[Path | None, str]:
    """A fresh memory cgroup limited to ``limit_bytes``, or ``None`` and why not."""
    if not CGROUP.is_dir() or not os.access(CGROUP, os.W_OK):
        return None, "no writable cgroup v1 memory controller: run as root"
    group = CGROUP / f"pyro-vae-bench-{os.getpid()}"
    group.mkdir(exist_ok=True)
    (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
    return group, f"a cgroup limited to {limit_bytes / 2**30:g} GiB"


def warm_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 * 2**20):
            pass


def run_row(args, mode: str, group: Path | None) -> dict:
    command = [sys.executable, __file__, "--child", mode, *args.passed]
    enter = None
    if group is not None:
        procs = group / "cgroup.procs"
        enter = lambda: procs.write_text(str(os.getpid()))  # noqa: E731
        (group / "memory.max_usage_in_bytes").write_text("0")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=enter)
    row = {"mode": mode, "wall_seconds": time.perf_counter() - started, "status": done.returncode}
    if done.returncode != 0:
        row["error"] = done.stderr.strip().splitlines()[-1:] or ["killed"]
        C.log(f"{mode}: failed ({row['error']})")
        return row
    row |= json.loads(done.stdout.strip().splitlines()[-1])
    if group is not None:
        row["cgroup_peak_mib"] = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20
        row["cgroup_oom_events"] = int((group / "memory.failcnt").read_text())
    C.log(f"{mode}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB")
    return row


def table(rows: list[dict], limit_line: str) -> str:
    lines = [
        f"Mapped rows run in {limit_line}.",
        "",
        "| row | epoch (s) | vs in memory | peak RSS (MiB) | cgroup peak (MiB) | train ELBO |",
        "|---|---|---|---|---|---|",
    ]
    base = next((r["seconds"] for r in rows if r["mode"] == "in-memory" and "seconds" in r), None)
    for r in rows:
        if "seconds" not in r:
            lines.append(f"| {r['mode']} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['seconds'] / base:.2f}x" if base else "-"
        cgroup = f"{r['cgroup_peak_mib']:.0f}" if "cgroup_peak_mib" in r else "-"
        lines.append(
            f"| {r['mode']} | {r['seconds']:.1f} | {ratio} | {r['peak_rss_mib']:.0f} | "
            f"{cgroup} | {r['train_elbo']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0], "seeds the data, the weights and the batch order")
    p.add_argument("--size-gb", type=float, default=4.0, help="training images, in GB")
    p.add_argument("--limit-gb", type=float, default=1.0, help="the mapped rows' memory limit")
    p.add_argument("--batch-size", type=C.positive, default=256, help="examples per step")
    p.add_argument("--hidden-dims", type=C.int_list, default=[64], help="the VAE's layers")
    p.add_argument("--z-dim", type=C.positive, default=8, help="the VAE's latent dimensions")
    p.add_argument("--compile", default="off", choices=("auto", "on", "off"), help="see train")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (with --stream)")
    p.add_argument("--stream", action="store_true", help="stream through a DataLoader")
    p.add_argument("--modes", default="in-memory,mapped-warm,mapped-cold", help="rows to run")
    p.add_argument("--work-dir", default="/var/tmp/pyro-vae-stream", help="where the data go")
    for hidden in ("--child", "--source", "--prepared"):  # the rows' own processes
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    source, prepared = make_data(work, args.size_gb, args.seed)
    args.passed = [*sys.argv[1:], "--source", str(source), "--prepared", str(prepared)]
    group, limit_line = limited(int(args.limit_gb * 2**30))
    x_train = prepared / "x_train.npy"
    rows = []
    data_line = f"{x_train.stat().st_size / 1e9:.2f} GB of random 28x28 bytes, {prepared}"
    device = C.setup_device(args.device, args.threads)
    with C.Run(device, data_line) as run:
        for mode in args.modes.split(","):
            if mode == "mapped-warm":
                warm_cache(x_train)
            elif mode == "mapped-cold":
                drop_from_page_cache(x_train)
            rows.append(run_row(args, mode, None if mode == "in-memory" else group))
    if group is not None:
        group.rmdir()
    heading = f"## Streaming {args.size_gb:g} GB from a prepared copy, one epoch"
    text = "\n".join([heading, "", *run.lines(), "", table(rows, limit_line), ""])
    print(text)
    md = Path(args.out) / f"stream-{device.type}-{time.strftime('%Y-%m-%d')}.md"
    C.write_results(md, "stream", text, {"rows": rows, "targets": TARGETS}, run)
    print(md)


if __name__ == "__main__":
    main()

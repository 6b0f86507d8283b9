"""Helpers shared by the benchmark scripts: flags, data, timing, and the results files with the
machine, the versions, the load and the command beside the figures.

Not part of the ``pyro_vae`` package: the scripts in this folder import it as a sibling module.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae.data.sources import Dataset
from pyro_vae.device import resolve_device
from pyro_vae.errors import PyroVAEError

FASHION_MNIST_DIRS = ("data", "/usr/share/datasets/fashion-mnist")
RANDOM_TRAIN, RANDOM_TEST = 60_000, 10_000
IMAGE_SHAPE = (1, 28, 28)
median = statistics.median


def positive(text: str) -> int:
    if int(text) < 1:
        raise ValueError(text)
    return int(text)


def int_list(text: str) -> list[int]:
    """``"128,256"`` -> ``[128, 256]``; every entry a positive integer."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise ValueError(text)
    return values


def choice_list(choices):
    """An argparse type: a comma-separated list of some of ``choices``."""

    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        if not values or any(v not in choices for v in values):
            raise ValueError(text)
        return values

    parse.__name__ = f"comma-separated list of {', '.join(choices)}"
    return parse


def parser(description: str, seed_help: str) -> argparse.ArgumentParser:
    """A benchmark's parser, with the flags every benchmark takes: where to run, on which data,
    into which folder."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where")
    p.add_argument(
        "--data",
        default="auto",
        choices=("auto", "fashion-mnist", "random", "digits"),
        help="auto: Fashion-MNIST when its IDX files are found, else random images; digits: the "
        "embedded 8x8 digits (bench_train: a 64-400-8 network)",
    )
    p.add_argument("--data-dir", help=f"Fashion-MNIST's folder (default: {FASHION_MNIST_DIRS})")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--out", default="benchmarks/results", help="folder of the results files")
    return p


def rows_parser(description: str, epochs: int) -> argparse.ArgumentParser:
    """The parser of a benchmark whose rows each train a model on Fashion-MNIST and measure its
    test log-likelihood: :func:`parser`'s flags, and every row's epochs, batch size, IWAE k and
    compile."""
    p = parser(description, "seeds the weights, batch order and noise of every row")
    p.set_defaults(data="fashion-mnist")
    p.add_argument("--epochs", type=positive, default=epochs, help="epochs of every row")
    p.add_argument("--batch-size", type=positive, default=100, help="examples per step")
    p.add_argument("--iwae-k", type=positive, default=1000, help="particles of log p(x)")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="see train")
    return p


def setup_device(spec: str, threads: int) -> torch.device:
    torch.set_num_threads(threads)
    try:
        return resolve_device(spec)
    except PyroVAEError as error:
        sys.exit(f"error: {error}")


def load_images(kind: str, data_dir: str | None, seed: int = 0) -> tuple[Dataset, str]:
    """Fashion-MNIST, or 60,000 + 10,000 uniform random grey images; and a line saying which."""
    if kind == "digits":
        data = pyro_vae.load_dataset("digits")
        return data, f"the embedded 8x8 digits ({len(data.x_train)} train images)"
    if kind != "random":
        for folder in [data_dir] if data_dir else FASHION_MNIST_DIRS:
            try:
                data = pyro_vae.load_dataset("fashion-mnist", data_dir=folder, download=False)
            except PyroVAEError:
                continue
            return data, f"Fashion-MNIST from {folder} ({len(data.x_train)} train images)"
        if kind == "fashion-mnist":
            sys.exit("error: no Fashion-MNIST IDX files found; see --data-dir")
    g = torch.Generator().manual_seed(seed)
    x_train = torch.rand(RANDOM_TRAIN, *IMAGE_SHAPE, generator=g)
    data = Dataset("random", x_train, torch.rand(RANDOM_TEST, *IMAGE_SHAPE, generator=g))
    return data, f"random: {RANDOM_TRAIN} uniform grey 28x28 images (Fashion-MNIST not used)"


def as_uint8(data: Dataset) -> Dataset:
    """``data`` with its images stored as 8-bit ``uint8``, round(255 x), as the 8-bit sources
    (Fashion-MNIST) store theirs: the value ``k`` means ``k / 255``."""

    def to_bytes(x: torch.Tensor) -> torch.Tensor:
        return x.mul(255).round_().to(torch.uint8)

    x_train, x_test = to_bytes(data.x_train), to_bytes(data.x_test)
    return Dataset(data.name, x_train, x_test, data.y_train, data.y_test)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(fn, device: torch.device):
    """``(seconds, fn())``, the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, value


class PeakMemory:
    """Peak memory of a ``with`` block in MiB (``.mib``): on CUDA the growth of
    ``max_memory_allocated``; on Linux the peak resident set (VmHWM, reset through
    ``/proc/self/clear_refs``) above the resident set at the start; elsewhere NaN."""

    METHOD = {"cuda": "torch.cuda.max_memory_allocated growth", "cpu": "peak RSS growth (VmHWM)"}

    def __init__(self, device: torch.device):
        self.device, self.mib, self._start = device, math.nan, None

    @staticmethod
    def _status_kb(field: str) -> int | None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
        return int(match.group(1)) if match else None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
            self._start = self._status_kb("VmRSS") / 1024
        except (OSError, TypeError):
            pass
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start
        elif self._start is not None:
            self.mib = max(0.0, self._status_kb("VmHWM") / 1024 - self._start)
        return False


class Run:
    """A measured run, as a ``with`` block: when it started, the 1-minute load average before and
    after, and the CPU time of other processes meanwhile (all CPUs' busy time in ``/proc/stat``
    minus this process's and its waited-for children's: rows run in processes of their own are
    the benchmark's); :meth:`lines` and :meth:`record` give them with the command."""

    def __init__(self, device: torch.device, data_line: str):
        self.device, self.data_line = device, data_line
        self.other_seconds = self.other_share = None

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
        except OSError:
            return None
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait

    def __enter__(self) -> Run:
        self.started = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self._wall, self._busy0, self._own0 = time.perf_counter(), self._busy(), sum(os.times()[:4])
        return self

    def __exit__(self, *exc) -> bool:
        self.load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        busy = self._busy()
        if busy is not None and self._busy0 is not None:
            self.other_seconds = max(0.0, busy - self._busy0 - (sum(os.times()[:4]) - self._own0))
            wall = time.perf_counter() - self._wall
            self.other_share = self.other_seconds / (wall * (os.cpu_count() or 1))
        return False

    def lines(self) -> list[str]:
        """The first lines of a results section."""
        other = "not measured (no /proc/stat)"
        if self.other_seconds is not None:
            other = f"{self.other_seconds:.1f} s, {100 * self.other_share:.1f}% of the CPUs"
        return [
            f"- command: `python {shlex.join(sys.argv)}`",
            f"- run: started {self.started}, device {self.device}, "
            f"{torch.get_num_threads()} torch threads",
            f"- data: {self.data_line}",
            f"- 1-minute load average: {fmt(self.load_before)} before, {fmt(self.load_after)} "
            "after (the benchmark's own threads included)",
            f"- CPU time of other processes meanwhile: {other}",
        ]

    def record(self) -> dict:
        """The same for the JSON file, with the machine."""
        names = ("started", "load_before", "load_after", "other_seconds", "other_share")
        return {
            "command": f"python {shlex.join(sys.argv)}",
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "data": self.data_line,
            "machine": machine_lines(self.device),
            **{name: getattr(self, name) for name in names},
        }


def matmul_rate(batch: int, device: torch.device, x_shape=IMAGE_SHAPE, repeats: int = 31) -> float:
    """FLOP/s of a float32 ``(batch x D) @ (D x 400)`` product, D the pixels of ``x_shape``: the
    median of ``repeats`` timings, each of enough back-to-back products to last about 20 ms."""
    g = torch.Generator().manual_seed(0)
    d = math.prod(x_shape)
    a, w = torch.randn(batch, d, generator=g).to(device), torch.randn(d, 400, generator=g)
    w = w.to(device)

    def products(count: int) -> None:
        for _ in range(count):
            torch.matmul(a, w)

    def run(count: int) -> float:
        return timed(lambda: products(count), device)[0] / count

    run(5)  # warm-up
    count = max(1, math.ceil(0.02 / max(run(5), 1e-7)))
    return 2.0 * batch * d * 400 / median(run(count) for _ in range(repeats))


def machine_lines(device: torch.device) -> list[str]:
    """Markdown lines on the machine and the software versions."""
    model = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = re.findall(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = names[0] if names else model
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"- CPU: {model}, {cores} cores available to the process ({os.cpu_count()} logical CPUs)",
        f"- torch threads: {torch.get_num_threads()} (`torch.set_num_threads`)",
        f"- Python {platform.python_version()}, torch {torch.__version__}, pyro-ppl "
        f"{pyro.__version__}, pyro-vae {pyro_vae.__version__}, {platform.system()} "
        f"{platform.release()}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gib = props.total_memory / 2**30
        lines.append(f"- GPU: {props.name}, {gib:.0f} GiB, CUDA {torch.version.cuda}")
    return lines


def results_path(out: str | Path, device: torch.device) -> Path:
    """``OUT/<cpu|cuda>-<YYYY-MM-DD>.md``; the JSON and the plots go beside it."""
    return Path(out) / f"{device.type}-{dt.date.today().isoformat()}.md"


def write_results(md: Path, key: str, text: str, payload: dict, run: Run) -> None:
    """Put ``text`` into ``md`` as the section ``key``, and ``run``'s record with ``payload`` into
    the JSON beside it under ``key``, replacing earlier ones of that key."""
    device = run.device
    md.parent.mkdir(parents=True, exist_ok=True)
    old = md.read_text() if md.exists() else ""
    sections = dict(re.findall(r"<!-- begin (\S+) -->\n(.*?)<!-- end \1 -->\n", old, re.S))
    sections["machine"] = (
        f"# Benchmarks on {device.type}, {dt.date.today().isoformat()}\n\nWritten by the scripts "
        "in `benchmarks/` (see `benchmarks/README.md`); each section says which command wrote "
        "it.\n\n## Machine\n\n" + "\n".join(machine_lines(device)) + "\n"
    )
    sections[key] = text.rstrip("\n") + "\n"
    order = ["machine", "train", "train-digits", "train-scaling", "iwae"]
    keys = sorted(sections, key=lambda k: order.index(k) if k in order else len(order))
    md.write_text("\n".join(f"<!-- begin {k} -->\n{sections[k]}<!-- end {k} -->\n" for k in keys))
    js = md.with_suffix(".json")
    data = json.loads(js.read_text()) if js.exists() else {}
    data[key] = run.record() | payload
    js.write_text(json.dumps(_finite_or_none(data), indent=2, allow_nan=False) + "\n")


def _finite_or_none(value):
    # JSON has no NaN or infinity: they become null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

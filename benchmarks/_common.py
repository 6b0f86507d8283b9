"""Helpers shared by the benchmark scripts: the machine, the data, peak memory, the results file.

Not part of the ``pyro_vae`` package: the scripts in this folder import it as a sibling module.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import resource
import shlex
import sys
import time
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae.data import Dataset
from pyro_vae.errors import PyroVAEError
from pyro_vae.train import resolve_device

# Where the Fashion-MNIST IDX files are looked for when --data-dir is not given.
FASHION_MNIST_DIRS = ("data", "/usr/share/datasets/fashion-mnist")
RANDOM_TRAIN, RANDOM_TEST = 60_000, 10_000
IMAGE_SHAPE = (1, 28, 28)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def int_list(text: str) -> list[int]:
    """``"128,256"`` -> ``[128, 256]``; every entry a positive integer."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 1 for v in values):
        raise ValueError(text)
    return values


def str_list(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise ValueError(text)
        return values

    parse.__name__ = f"comma-separated list of {', '.join(choices)}"
    return parse


def add_run_flags(p: argparse.ArgumentParser, *, seed_help: str | None, out_help: str) -> None:
    """The flags every benchmark takes: where to run, on which data, into which folder
    (and ``--seed`` where ``seed_help`` says what it seeds)."""
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto is cuda when a GPU is present, else cpu",
    )
    p.add_argument(
        "--data",
        default="auto",
        choices=("auto", "fashion-mnist", "random"),
        help="auto: Fashion-MNIST when its IDX files are found, else random images",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder of the Fashion-MNIST IDX files (default: look in data/ and "
        f"{FASHION_MNIST_DIRS[1]})",
    )
    p.add_argument(
        "--threads", type=positive_int, default=2, help="torch.set_num_threads for the CPU work"
    )
    if seed_help is not None:
        p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--out", default="benchmarks/results", help=out_help)


def setup_device(spec: str, threads: int) -> torch.device:
    """The device, with torch's CPU thread count set to ``threads`` (also on CUDA runs)."""
    torch.set_num_threads(threads)
    try:
        return resolve_device(spec)
    except PyroVAEError as error:
        sys.exit(f"error: {error}")


def load_images(kind: str, data_dir: str | None, seed: int = 0) -> tuple[Dataset, str]:
    """Fashion-MNIST (``kind="fashion-mnist"``), 60,000 + 10,000 uniform random 28x28 grey images
    (``"random"``), or the first when it is installed and the second otherwise (``"auto"``).

    Returns the data and a line saying what they are.
    """
    if kind in ("fashion-mnist", "auto"):
        dirs = [data_dir] if data_dir else list(FASHION_MNIST_DIRS)
        for folder in dirs:
            try:
                data = pyro_vae.load_dataset("fashion-mnist", data_dir=folder, download=False)
            except PyroVAEError:
                continue
            return data, f"Fashion-MNIST from {folder} ({len(data.x_train)} train images)"
        if kind == "fashion-mnist":
            sys.exit(f"error: no Fashion-MNIST IDX files in {', '.join(map(str, dirs))}")
    g = torch.Generator().manual_seed(seed)
    data = Dataset(
        "random",
        torch.rand(RANDOM_TRAIN, *IMAGE_SHAPE, generator=g),
        torch.rand(RANDOM_TEST, *IMAGE_SHAPE, generator=g),
    )
    return data, f"random: {RANDOM_TRAIN} uniform grey 28x28 images (Fashion-MNIST not used)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _proc_status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    # Linux: writing 5 to clear_refs resets VmHWM (the peak resident set) to the current RSS.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


def _malloc_trim() -> None:
    # Hand freed heap memory back to the OS, so that the next variant's growth shows in the RSS.
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block of code, in MiB, in ``.mib`` after the ``with`` block.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated at the start (tensors
    only, not the caching allocator's reserve). CPU on Linux: the growth of the process's peak
    resident set (``VmHWM``, reset at the start through ``/proc/self/clear_refs``) above the
    resident set at the start, after a garbage collection and ``malloc_trim``. Elsewhere: the
    growth of ``getrusage``'s ``ru_maxrss``, which never goes down, so only a block that sets a new
    process peak shows.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")

    @staticmethod
    def method(device: torch.device) -> str:
        if device.type == "cuda":
            return "torch.cuda.max_memory_allocated growth"
        if _proc_status_kb("VmHWM") is not None and Path("/proc/self/clear_refs").exists():
            return "peak RSS growth (VmHWM reset via /proc/self/clear_refs)"
        return "ru_maxrss growth (getrusage)"

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            if _reset_peak_rss():
                self._start = _proc_status_kb("VmRSS")
                self._hwm = True
            else:
                self._start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                self._hwm = False
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._start
            self.mib = peak / 2**20
        elif self._hwm:
            self.mib = (_proc_status_kb("VmHWM") - self._start) / 1024
        else:
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._start) / 1024
        return False


class OtherLoad:
    """CPU time that other processes took while a block ran, from ``/proc/stat`` (all CPUs'
    busy time) minus this process's own user and system time; ``None`` where there is no
    ``/proc/stat``. ``.seconds`` of CPU and ``.share`` of the machine's CPUs over the block's
    wall time, after the ``with`` block."""

    def __init__(self):
        self.seconds = self.share = None

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def start(self) -> OtherLoad:
        self._wall, self._busy0, self._own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def stop(self) -> None:
        busy = self._busy()
        if busy is not None and self._busy0 is not None:
            wall = time.perf_counter() - self._wall
            self.seconds = max(0.0, (busy - self._busy0) - (self._own() - self._own0))
            self.share = self.seconds / (wall * (os.cpu_count() or 1))

    def __enter__(self) -> OtherLoad:
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def line(self) -> str:
        if self.seconds is None:
            return "- CPU time of other processes during the run: not measured (no /proc/stat)"
        return (
            f"- CPU time of other processes during the run: {self.seconds:.1f} s, "
            f"{100 * self.share:.1f}% of the machine's {os.cpu_count()} CPUs"
        )


def load_lines(
    load_start: float | None,
    load_end: float | None,
    other: OtherLoad,
    span: str = "the run",
    its: str = "its",
) -> list[str]:
    """The results' lines on what else ran: the 1-minute load average before and after
    ``span``, and ``other``'s CPU time of other processes."""
    return [
        f"- 1-minute load average: {fmt(load_start)} before {span}, {fmt(load_end)} at {its} "
        "end (this includes the benchmark's own threads)",
        other.line(),
    ]


def median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    if n == 0:
        return float("nan")
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def matmul_rate(
    batch: int,
    device: torch.device,
    k: int = 784,
    n: int = 400,
    repeats: int = 31,
    target_seconds: float = 0.02,
) -> float:
    """FLOP/s of ``(batch x k) @ (k x n)`` in float32 on ``device``: the median of ``repeats``
    timings, each of enough back-to-back products to last about ``target_seconds``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(batch, k, generator=g).to(device)
    w = torch.randn(k, n, generator=g).to(device)
    flops = 2.0 * batch * k * n

    def timed(count: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(count):
            torch.matmul(a, w)
        synchronize(device)
        return time.perf_counter() - start

    timed(5)  # warm-up
    count = max(1, math.ceil(target_seconds / max(timed(5) / 5, 1e-7)))
    seconds = median([timed(count) / count for _ in range(repeats)])
    return flops / seconds


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(device: torch.device) -> list[str]:
    """Markdown bullet lines describing the machine and the software."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"- CPU: {cpu_model()}, {cores} cores available to the process "
        f"({os.cpu_count()} logical CPUs on the machine)",
        f"- torch threads: {torch.get_num_threads()} (`torch.set_num_threads`)",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"pyro-ppl {pyro.__version__}, pyro-vae {getattr(pyro_vae, '__version__', '?')}, "
        f"{platform.system()} {platform.release()}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        )
    return lines


def command_line() -> str:
    return "python " + shlex.join(sys.argv)


def today() -> str:
    return dt.date.today().isoformat()


def now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def results_path(out: str | Path, device: torch.device, suffix: str = ".md") -> Path:
    """``OUT/<device>-<YYYY-MM-DD>.md``, device being ``cpu`` or ``cuda``."""
    return Path(out) / f"{device.type}-{today()}{suffix}"


def write_section(path: Path, key: str, text: str, device: torch.device) -> None:
    """Put ``text`` into the markdown file ``path`` as the section ``key``, replacing an earlier
    section of that key; the machine section at the top is rewritten every time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    sections = dict(re.findall(r"<!-- begin (\S+) -->\n(.*?)<!-- end \1 -->\n", old, re.S))
    sections["machine"] = (
        f"# Benchmarks on {device.type}, {today()}\n\n"
        "Written by the scripts in `benchmarks/` (see `benchmarks/README.md`); each section says "
        "which command wrote it.\n\n## Machine\n\n" + "\n".join(machine_lines(device)) + "\n"
    )
    sections[key] = text.rstrip("\n") + "\n"
    order = ["machine", "train", "train-scaling", "iwae"]
    keys = [k for k in order if k in sections] + [k for k in sections if k not in order]
    body = "\n".join(f"<!-- begin {k} -->\n{sections[k]}<!-- end {k} -->\n" for k in keys)
    path.write_text(body)


def write_json(path: Path, key: str, payload: dict) -> None:
    """Merge ``payload`` into the JSON file ``path`` under ``key`` (the raw numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = payload
    path.write_text(json.dumps(_finite_or_none(data), indent=2, allow_nan=False) + "\n")


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
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"

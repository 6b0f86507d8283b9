"""Epoch times of ``pyro_vae.train`` under candidate speed-ups, applied here as temporary
monkeypatches (nothing in ``pyro_vae`` is edited), against the unpatched trainer, the textbook
Pyro loop and the matmul floor of ``bench_train.py``.

    python benchmarks/candidates.py --batch-sizes 256 --rounds 3

Candidates (join several with ``+`` after a variant, e.g. ``svi+fused-adam+torch-bernoulli``):

- ``torch-bernoulli``: the trainer's dynamic binarization ``binarize_afresh(x)`` (``rand < x``,
  adopted after the first measurements here, then named ``rand-binarize``) goes back to
  ``torch.bernoulli(x)``: the same distribution, another random stream;
- ``fused-adam`` / ``foreach-adam``: ``torch.optim.Adam(..., fused=True)`` / ``(foreach=True)``
  in place of the default (on the CPU, a Python loop over the parameters);
- ``no-module``: ``VAE.model`` and ``VAE.guide`` without ``pyro.module("vae", self)`` (the
  trainer never reads Pyro's param store);
- ``no-item``: ``Trace_ELBO.differentiable_loss`` returning the surrogate loss as one tensor,
  without a ``.item()`` per sample site and on the total and without the NaN checks
  (``svi_overhead.SurrogateTrace_ELBO``).

Each round runs every configuration for two epochs and keeps the second (the first has the
validated step and the first allocations); configurations are interleaved round by round so that
a slow spell of a shared machine hits all alike; the table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import bench_train as B  # noqa: E402
from svi_overhead import SurrogateTrace_ELBO  # noqa: E402

import pyro_vae.elbo  # noqa: E402


@contextmanager
def torch_bernoulli():
    trainer = importlib.import_module("pyro_vae.train")  # pyro_vae.train is also the function
    original = trainer.binarize_afresh
    trainer.binarize_afresh = torch.bernoulli
    try:
        yield
    finally:
        trainer.binarize_afresh = original


@contextmanager
def adam(**options):
    original = torch.optim.Adam
    torch.optim.Adam = functools.partial(original, **options)
    try:
        yield
    finally:
        torch.optim.Adam = original


@contextmanager
def no_module():
    original = pyro.module
    pyro.module = lambda name, nn_module, *args, **kwargs: nn_module
    try:
        yield
    finally:
        pyro.module = original


@contextmanager
def no_item():
    objectives = pyro_vae.elbo.OBJECTIVES
    original = objectives["trace"]
    objectives["trace"] = functools.partial(pyro_vae.elbo._pyro_loss, SurrogateTrace_ELBO)
    try:
        yield
    finally:
        objectives["trace"] = original


PATCHES = {
    "torch-bernoulli": torch_bernoulli,
    "fused-adam": functools.partial(adam, fused=True),
    "foreach-adam": functools.partial(adam, foreach=True),
    "no-module": no_module,
    "no-item": no_item,
}
DEFAULT_CONFIGS = (
    "svi,manual,pyro-naive,svi+no-module+no-item,svi+fused-adam,manual+fused-adam,"
    "svi+torch-bernoulli,manual+torch-bernoulli,svi+fused-adam+no-module+no-item"
)


def run_config(config: str, data, batch: int, device, seed: int) -> float:
    """Seconds of the second of two epochs."""
    variant, *patches = config.split("+")
    with ExitStack() as stack:
        for name in patches:
            stack.enter_context(PATCHES[name]())
        if variant == "pyro-naive":
            return B.run_pyro_naive(data, batch, 2, device, seed)[1]
        objective = "trace" if variant == "svi" else "manual"
        return B.run_trainer(objective, data, batch, 2, device, seed)[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Epoch times of pyro_vae.train under candidate speed-ups (monkeypatched).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    C.add_run_flags(
        p,
        seed_help="seeds weights, batch order and noise",
        out_help="folder for candidates-<device>-<YYYY-MM-DD>.md",
    )
    p.add_argument("--batch-sizes", type=C.int_list, default=[256])
    p.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help="comma-separated variant[+candidate...]"
    )
    p.add_argument("--rounds", type=C.positive_int, default=3, help="interleaved rounds")
    p.add_argument("--max-steps", type=C.positive_int, default=None, help="cut every epoch")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        variant, *patches = c.split("+")
        if variant not in B.VARIANTS or any(q not in PATCHES for q in patches):
            p.error(f"unknown configuration {c!r}")
    device = C.setup_device(args.device, args.threads)
    data, data_line = C.load_images(args.data, args.data_dir, args.seed)
    load_start = C.load_average()
    lines = [
        "# Candidate speed-ups of pyro_vae.train, measured by monkeypatch",
        "",
        f"- command: `{C.command_line()}`",
        f"- run: started {C.now()}, device {device}, {torch.get_num_threads()} torch threads",
        f"- data: {data_line}"
        + (f"; epochs cut to {args.max_steps} steps" if args.max_steps else ""),
        *C.machine_lines(device),
        f"- {args.rounds} interleaved rounds; per round and configuration, the second of two "
        "epochs; the median over rounds",
    ]
    body = []
    with C.OtherLoad() as other:
        for batch in args.batch_sizes:
            d = B.bench_data(data, batch, args.max_steps)
            steps = -(-len(d.x_train) // batch)
            flops = 3 * B.forward_flops_per_example(B.build_vae(device, args.seed)) * len(d.x_train)
            times = {c: [] for c in configs}
            floors = []
            for r in range(args.rounds):
                floors.append(flops / C.matmul_rate(batch, device))
                for c in configs:
                    times[c].append(run_config(c, d, batch, device, args.seed))
                    B.log(f"batch {batch} round {r + 1} {c}: {times[c][-1]:.3f} s")
            med = {c: C.median(t) for c, t in times.items()}
            floor = C.median(floors)
            naive = med.get("pyro-naive", float("nan"))
            manual = med.get("manual", float("nan"))
            body += [
                "",
                f"## Batch {batch} ({steps} steps per epoch; matmul floor {floor:.3f} s)",
                "",
                "| configuration | epoch time (s) | rounds (s) | ms/step | vs manual | "
                "pyro-naive/this | this/floor |",
                "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
            ]
            for c in configs:
                body.append(
                    f"| {c} | {med[c]:.3f} | {' '.join(f'{t:.3f}' for t in times[c])} | "
                    f"{1000 * med[c] / steps:.2f} | {C.fmt(med[c] / manual)} | "
                    f"{C.fmt(naive / med[c])} | {med[c] / floor:.2f} |"
                )
    lines += [
        *C.load_lines(load_start, C.load_average(), other),
        *body,
    ]
    out = Path(args.out) / f"candidates-{device.type}-{C.today()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

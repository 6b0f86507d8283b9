"""Where the time of an SVI step goes beyond the hand-written ELBO, and what would remove it.

    python benchmarks/svi_overhead.py                  # writes OUT/svi-overhead-<device>-<date>.md

Times one training step (index a batch, binarize, loss, backward, Adam step, zero the grads: the
body of ``pyro_vae.train``'s loop) for several variants of the step, interleaved in rounds so
that a slow spell of a shared machine hits every variant alike; the median over all rounds is
reported. The variants change the step *here*, by local copies and subclasses; nothing in
``pyro_vae`` is modified.

A variant is a base and options joined by ``+``, e.g. ``svi+no-module+fused-adam``:

- ``manual``: ``make_loss(vae, "manual")``, ``torch.optim.Adam`` (what ``objective="manual"`` runs)
- ``svi``: ``make_loss(vae, "trace")`` (``Trace_ELBO().differentiable_loss``), the same Adam
- ``pyro-naive``: the textbook loop: ``SVI.step`` with ``pyro.optim.Adam``, validation on, a
  shuffling ``DataLoader`` over a ``TensorDataset`` on the CPU

Options: ``validation`` (svi: Pyro's validation on in every step; the trainer has it on the
first step only); ``no-module`` (svi: the model and guide without their
``pyro.module("vae", vae)`` line); ``no-item`` (svi: a ``Trace_ELBO`` whose
``differentiable_loss`` returns the surrogate loss itself: no ``.item()`` per sample site and
on the total, no ``warn_if_nan``, which checks the loss for NaN and hooks the same check on its
gradient); ``foreach-adam`` / ``fused-adam`` (manual, svi: ``torch.optim.Adam(...,
foreach=True)`` / ``(fused=True)``); ``rand-binarize`` (all: ``(torch.rand_like(x) <
x).to(x.dtype)`` in place of ``torch.bernoulli(x)``; ``pyro_vae.train`` has drawn its batches so,
as ``pyro_vae.data.binarize_afresh``, since these probes); ``no-validation`` and ``index``
(pyro-naive: validation off; batches by index from the data on the device instead of the
``DataLoader``).

It also profiles the ``svi`` step with cProfile (Python functions) and counts the torch operators
of each variant with ``torch.profiler``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer import SVI, Trace_ELBO
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.elbo import make_loss  # noqa: E402


class SurrogateTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` whose differentiable loss is the surrogate loss itself, summed as tensors:
    no ``.item()`` per sample site or on the total, no NaN checks. For reparameterized sites the
    value is the negative ELBO (rounded in float32 rather than float64) and the gradient is the
    same graph's."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    elbo = elbo + site["log_prob_sum"]
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    _, score_function_term, entropy_term = site["score_parts"]
                    if not is_identically_zero(score_function_term):  # not reparameterized
                        return super().differentiable_loss(model, guide, *args, **kwargs)
                    if not is_identically_zero(entropy_term):
                        elbo = elbo - entropy_term.sum()
            loss = loss - elbo / self.num_particles
        return loss


def model_without_module(vae, tag=None):
    """``VAE.model`` without ``pyro.module("vae", self)`` (``tag``: with ``pyro.module(tag)``)."""

    def model(x):
        if tag is not None:
            pyro.module(tag, vae)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", vae.prior(x.shape[0], x))
            pyro.sample("x", vae.likelihood_dist(z), obs=x)

    return model


def guide_without_module(vae, tag=None):
    """``VAE.guide`` without ``pyro.module("vae", self)`` (``tag``: with ``pyro.module(tag)``)."""

    def guide(x):
        if tag is not None:
            pyro.module(tag, vae)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", vae.posterior_dist(x))

    return guide


BASES = ("manual", "svi", "pyro-naive")
OPTIONS = {
    "manual": {"foreach-adam", "fused-adam", "rand-binarize"},
    "svi": {"foreach-adam", "fused-adam", "rand-binarize", "no-module", "no-item", "validation"},
    "pyro-naive": {"rand-binarize", "no-validation", "index"},
}


def parse_variant(name: str) -> tuple[str, set[str]]:
    base, *options = name.split("+")
    if base not in BASES or not set(options) <= OPTIONS[base]:
        raise ValueError(f"unknown variant {name!r}")
    return base, set(options)


def make_variant_loss(vae, base: str, options: set[str]):
    if base == "manual":
        return make_loss(vae, "manual")
    if not options & {"no-module", "no-item"}:
        return make_loss(vae, "trace")
    elbo_class = SurrogateTrace_ELBO if "no-item" in options else Trace_ELBO
    elbo = elbo_class(num_particles=1, vectorize_particles=True, max_plate_nesting=1)
    model = model_without_module(vae) if "no-module" in options else vae.model
    guide = guide_without_module(vae) if "no-module" in options else vae.guide
    return functools.partial(elbo.differentiable_loss, model, guide)


def make_optimizer(vae, options: set[str]):
    extra = {}
    if "foreach-adam" in options:
        extra["foreach"] = True
    if "fused-adam" in options:
        extra["fused"] = True
    return torch.optim.Adam(vae.parameters(), lr=1e-3, **extra)


class Stepper:
    """One variant's training step on its own VAE: the body of ``pyro_vae.train``'s loop for
    ``manual`` and ``svi``; for ``pyro-naive``, ``SVI.step`` with ``pyro.optim.Adam``, validation
    on, the next batch of a shuffling ``DataLoader`` on the CPU moved to the device (``+index``:
    batches by index on the device as the trainer does; ``+no-validation``). Each ``pyro-naive``
    stepper registers its VAE under its own ``pyro.module`` name, so that several can be
    interleaved in one param store."""

    count = 0

    def __init__(self, name, x_train, batch, device, seed=0):
        self.name = name
        self.base, self.options = parse_variant(name)
        pyro.set_rng_seed(seed)
        self.vae = pyro_vae.VAE(C.IMAGE_SHAPE, z_dim=50, hidden_dims=(400,)).to(device)
        self.x_train, self.batch, self.device = x_train, batch, device
        self.order = torch.randperm(len(x_train)).to(device).split(batch)
        self.i = 0
        self.binarize = (
            (lambda x: (torch.rand_like(x) < x).to(x.dtype))
            if "rand-binarize" in self.options
            else torch.bernoulli
        )
        if self.base == "pyro-naive":
            Stepper.count += 1
            tag = f"vae{Stepper.count}"
            self.svi = SVI(
                model_without_module(self.vae, tag),
                guide_without_module(self.vae, tag),
                pyro.optim.Adam({"lr": 1e-3}),
                Trace_ELBO(),
            )
            self.validate = "no-validation" not in self.options
            self.loader = DataLoader(
                TensorDataset(x_train.cpu()), batch_size=batch, shuffle=True, drop_last=True
            )
            self.batches = iter(self.loader)
        else:
            self.loss_fn = make_variant_loss(self.vae, self.base, self.options)
            self.optimizer = make_optimizer(self.vae, self.options)
            self.validate = "validation" in self.options

    def _next_index(self):
        index = self.order[self.i % (len(self.order) - 1)]  # skip the short last batch
        self.i += 1
        return index

    def step(self):
        if self.base == "pyro-naive":
            if "index" in self.options:
                x = self.x_train[self._next_index()]
            else:
                try:
                    (x,) = next(self.batches)
                except StopIteration:
                    self.batches = iter(self.loader)
                    (x,) = next(self.batches)
                x = x.to(self.device)
            x = self.binarize(x)
            with pyro.validation_enabled(self.validate):
                return self.svi.step(x)
        x = self.binarize(self.x_train[self._next_index()])
        with pyro.validation_enabled(self.validate):
            loss = self.loss_fn(x)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def time_steps(self, n):
        C.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(n):
            self.step()
        C.synchronize(self.device)
        return (time.perf_counter() - start) / n


def interleaved(variants, x_train, batch, device, rounds, steps):
    steppers = [Stepper(v, x_train, batch, device) for v in variants]
    for s in steppers:  # warm-up, and validation's first step where it applies
        s.time_steps(10)
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for s in steppers:
            times[s.name].append(s.time_steps(steps))
    return {v: C.median(t) for v, t in times.items()}, times


def cprofile_svi(x_train, batch, device, steps=300, top=25) -> str:
    s = Stepper("svi", x_train, batch, device)
    s.time_steps(10)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        s.step()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("pyro", 45)  # pyro's and pyro_vae's functions
    return out.getvalue()


def op_counts(variants, x_train, batch, device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    result = {}
    for v in variants:
        s = Stepper(v, x_train, batch, device)
        s.time_steps(3)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            s.step()
        events = prof.key_averages()
        top_level = sum(e.count for e in events if e.key.startswith("aten::"))
        result[v] = {
            "aten_calls": top_level,
            "item": sum(e.count for e in events if e.key == "aten::item"),
            "isnan": sum(e.count for e in events if e.key == "aten::isnan"),
        }
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    C.add_run_flags(p, seed_help=None, out_help="folder for svi-overhead-<device>-<YYYY-MM-DD>.md")
    p.add_argument("--batch-sizes", type=C.int_list, default=[128, 256])
    p.add_argument(
        "--variants",
        default="manual,svi,svi+validation,svi+no-module,svi+no-item,svi+no-module+no-item,"
        "manual+foreach-adam,svi+foreach-adam,manual+fused-adam,svi+fused-adam,"
        "manual+rand-binarize,svi+rand-binarize,manual+rand-binarize+fused-adam,"
        "svi+rand-binarize+fused-adam,svi+rand-binarize+fused-adam+no-module+no-item,"
        "pyro-naive,pyro-naive+no-validation,pyro-naive+no-validation+index",
        help="comma-separated step variants (see the module doc)",
    )
    p.add_argument("--rounds", type=C.positive_int, default=15, help="interleaved rounds")
    p.add_argument("--steps", type=C.positive_int, default=20, help="steps per variant per round")
    p.add_argument("--no-profile", action="store_true", help="skip cProfile and op counts")
    args = p.parse_args(argv)
    device = C.setup_device(args.device, args.threads)
    data, data_line = C.load_images(args.data, args.data_dir)
    x_train = data.x_train.to(device)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    started = C.now()
    load_start = C.load_average()
    lines = []
    other = C.OtherLoad().start()
    for batch in args.batch_sizes:
        floor = 3 * 2 * 687_200 * batch / C.matmul_rate(batch, device)
        med, _ = interleaved(variants, x_train, batch, device, args.rounds, args.steps)
        base_svi, base_manual = med.get("svi"), med.get("manual")
        lines += [
            f"## Batch {batch} (matmul floor {1000 * floor:.2f} ms/step)",
            "",
            "| variant | ms/step | vs manual | saved vs svi (ms/step) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for v in variants:
            vs_manual = med[v] / base_manual if base_manual else float("nan")
            saved = 1000 * (base_svi - med[v]) if base_svi else float("nan")
            lines.append(
                f"| {v} | {1000 * med[v]:.3f} | {C.fmt(vs_manual, 3)} | {C.fmt(saved, 3)} |"
            )
            print(f"batch {batch} {v}: {1000 * med[v]:.3f} ms/step", file=sys.stderr)
        lines.append("")
    if not args.no_profile:
        counts = op_counts(variants, x_train, 256, device)
        lines += [
            "## torch operators per step (batch 256, torch.profiler)",
            "",
            "| variant | aten calls | aten::item | aten::isnan |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {v} | {c['aten_calls']} | {c['item']} | {c['isnan']} |" for v, c in counts.items()
        ]
        lines += [
            "",
            "## cProfile of 300 svi steps (batch 256)",
            "",
            "```",
            cprofile_svi(x_train, 256, device).strip(),
            "```",
            "",
        ]
    other.stop()
    header = [
        "# Where svi's time goes beyond manual",
        "",
        f"- command: `{C.command_line()}`",
        f"- run: started {started}, device {device}, {torch.get_num_threads()} torch threads",
        f"- data: {data_line}",
        *C.machine_lines(device),
        f"- {args.rounds} interleaved rounds of {args.steps} steps per variant; median of "
        "the rounds' mean step times; the floor is the 784-400-50 network's matmul FLOPs "
        "(3 x forward) over the (batch x 784) @ (784 x 400) rate",
        *C.load_lines(load_start, C.load_average(), other),
        "",
    ]
    lines = header + lines
    out = Path(args.out) / f"svi-overhead-{device.type}-{C.today()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

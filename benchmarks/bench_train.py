"""Training speed: the project's trainer, the same trainer on the hand-written ELBO, the textbook
Pyro loop, two peers written for speed without Pyro (a plain-PyTorch step compiled whole, and
NumPyro's VAE example, jitted) and the matrix-multiply floor, side by side in one run.

    python benchmarks/bench_train.py                     # batch 128 and 256 (and 1024 on a GPU)
    python benchmarks/bench_train.py --scaling           # also sweeps of batch, width and z_dim
    python benchmarks/bench_train.py --no-compile-times  # without the compile probes

Every variant trains a fresh 784-400-50 MLP VAE (Bernoulli likelihood, dynamic binarization, Adam
at lr 1e-3) for one epoch and returns the seconds of its training steps. To add a variant, add its
function to :data:`VARIANTS` (and a ratio to :data:`RATIOS` if one should be reported). ``floor``
is no variant: it is the network's matrix-multiply FLOPs per epoch (3x the forward FLOPs of every
``nn.Linear``, forward and backward) over the rate of a ``(batch x 784) @ (784 x 400)`` float32
product, measured again in every round.

Per batch size, every variant first trains ``--warmup-epochs`` untimed epochs; then, in each of
``--epochs`` rounds, every variant trains one timed epoch in turn, so that a slow spell of a shared
machine falls on all alike. The tables give the median over rounds; the results go to
``OUT/<device>-<date>.md`` and ``.json`` (see ``benchmarks/results/``). The compiled variants'
compile seconds are given as they came in the run and, with ``--compile-times``, cold and warm:
each in a fresh process of this script (``--compile-probe``) whose compile caches live in a new
folder, empty for the cold one, as the cold one left it for the warm one.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.config import training_sections  # noqa: E402
from pyro_vae.data.sources import Dataset  # noqa: E402
from pyro_vae.parts.guides import MIN_SCALE  # noqa: E402
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
    validation on, a ``DataLoader`` on the CPU, each batch moved to the device, made floats
    (8-bit images: ``x.float() / 255``) and binarized by ``torch.bernoulli``."""
    loader = DataLoader(TensorDataset(data.x_train), batch_size=batch, shuffle=True)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    with pyro.validation_enabled(True):
        seconds, total = C.timed(
            lambda: sum(svi.step(tutorial_batch(x, device)) for (x,) in loader), device
        )
    pyro.clear_param_store()
    if not math.isfinite(total):
        raise RuntimeError("pyro-naive: the loss stopped being finite")
    return seconds


def tutorial_batch(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch as the tutorial's user binarizes it: on the device, 8-bit images made floats by
    ``x.float() / 255`` (``torch.bernoulli`` takes no bytes), then ``torch.bernoulli``."""
    x = x.to(device)
    return torch.bernoulli(x.float() / 255 if x.dtype == torch.uint8 else x)


# ----------------------------------------------------------------------------------------------
# manual-compiled: the VAE's step in plain PyTorch, written for speed and compiled whole.

# CPU: the default (max-autotune-no-cudagraphs was no faster); CUDA: CUDA graphs, no launches
PEER_MODES = {"cpu": None, "cuda": "reduce-overhead"}
PEERS: dict[tuple, Callable[[], float]] = {}  # manual-compiled's epochs, by peer_key
COMPILED: dict[tuple, float] = {}  # seconds of compiling, by peer_key, where a variant times it


def peer_key(name: str, vae: pyro_vae.VAE, data: Dataset, batch: int, device) -> tuple:
    """The key of a variant that trains one model on from round to round: its network, batch,
    device and training set size."""
    return (name, batch, vae.x_shape, vae.hidden_dims, vae.z_dim, str(device), len(data.x_train))


class PeerNet(nn.Module):
    """The VAE's MLP networks in plain PyTorch, with the VAE's initial weights: the encoder
    x -> Linear, ReLU -> Linear(2 z_dim), the mean and the raw scale of q(z|x); the decoder
    z -> Linear, ReLU -> Linear(pixels), the Bernoulli logits."""

    def __init__(self, vae: pyro_vae.VAE):
        super().__init__()
        pixels, (hidden,), z_dim = math.prod(vae.x_shape), vae.hidden_dims, vae.z_dim
        self.encoder = nn.Sequential(
            nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim)
        )
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, pixels))
        self.encoder.load_state_dict(vae.encoder.net.state_dict())  # strict: the same layers
        self.decoder.load_state_dict(vae.decoder.net.state_dict())


def peer_loss(net: PeerNet, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The negative ELBO of the binary batch ``x`` (``(B, pixels)``, floats) summed over the batch,
    Trace_ELBO's estimator at z = mu + sigma * eps: -(log p(x|z) + log p(z) - log q(z|x))."""
    loc, raw_scale = net.encoder(x).chunk(2, dim=-1)
    scale = F.softplus(raw_scale) + MIN_SCALE
    z = loc + scale * eps
    log_px = -F.binary_cross_entropy_with_logits(net.decoder(z), x, reduction="sum")
    # log N(z; 0, I) - log N(z; mu, sigma^2): the log(2 pi) / 2 cancel, and (z - mu) / sigma = eps
    log_ratio = (eps.square() - z.square()).sum() / 2 + scale.log().sum()
    return -(log_px + log_ratio)


def peer_step(net: PeerNet, z_dim: int, device: torch.device) -> Callable:
    """``step(x_all, index) -> loss``, compiled: the rows ``index`` of the training set ``x_all``
    made floats and binarized afresh, :func:`peer_loss`, its backward and Adam's step."""
    opt = torch.optim.Adam(net.parameters(), lr=LR)

    def step(x_all: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        x = x_all[index].flatten(1)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        x = (torch.rand_like(x) < x).float()  # dynamic binarization, inside the graph
        eps = torch.randn(x.shape[0], z_dim, device=x.device)
        loss = peer_loss(net, x, eps)
        value = loss.detach()  # before backward: a live loss would be a graph output to keep
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return value

    compiled = torch.compile(step, mode=PEER_MODES.get(device.type), dynamic=False)

    def run(x_all: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed
        # backward traced into the forward's graph (no graph break); a graph per network, batch
        with torch._dynamo.config.patch(trace_autograd_ops=True, recompile_limit=64):
            return compiled(x_all, index)

    return run


def peer_epochs(vae, data: Dataset, batch: int, device: torch.device, seed: int):
    """``epoch() -> seconds`` of :func:`peer_step` on ``data``, which lives on the device as one
    tensor (8-bit images as ``uint8``), its batches drawn by a shuffled index, as the trainer's."""
    torch.manual_seed(seed)
    net = PeerNet(vae).to(device)
    step, x_all = peer_step(net, vae.z_dim, device), data.x_train.to(device)
    torch._dynamo.mark_static_address(x_all)  # else CUDA graphs copy it in at every step
    order = torch.Generator().manual_seed(seed)

    def steps() -> float:
        index = torch.randperm(len(x_all), generator=order).to(device).split(batch)
        total = torch.zeros((), device=device)
        for rows in index:
            total = total + step(x_all, rows)
        return float(total)

    def epoch() -> float:
        seconds, total = C.timed(steps, device)
        if not math.isfinite(total):
            raise RuntimeError("manual-compiled: the loss stopped being finite")
        return seconds

    return epoch


def manual_compiled(vae, data: Dataset, batch: int, device: torch.device, seed: int) -> float:
    """A hand-written plain-PyTorch VAE step under ``torch.compile`` (:func:`peer_step`): the
    same network, estimator, binarization and Adam as ``svi``. One per network, batch and device
    trains on from round to round, so that the warm-up epoch holds the compiling."""
    key = peer_key("manual-compiled", vae, data, batch, device)
    if key not in PEERS:
        PEERS[key] = peer_epochs(vae, data, batch, device, seed)
    return PEERS[key]()


# ----------------------------------------------------------------------------------------------
# numpyro: NumPyro's VAE example (examples/vae.py) set to the same network, data and steps.

NUMPYRO: dict[tuple, Callable[[], float]] = {}  # numpyro's epochs, by peer_key


@functools.cache
def jax_modules(threads: int):
    """``(jax, numpyro)``, imported once, XLA's CPU thread pool sized to ``threads``; ``None``,
    with a line on stderr, where either is not installed."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # else 75% of a GPU is JAX's
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        # XLA's CPU pool takes as many threads as this thread has CPUs, and no flag sets it
        if cpus and len(cpus) > threads:
            os.sched_setaffinity(0, sorted(cpus)[:threads])
        import jax
        import numpyro

        jax.devices()
    except ImportError as error:
        C.log(f"numpyro: skipped ({error}; pip install 'pyro-vae[bench]' installs JAX and NumPyro)")
        return None
    finally:
        if cpus:
            os.sched_setaffinity(0, cpus)
    return jax, numpyro


@functools.cache
def numpyro_device(kind: str):
    """JAX's device of the device type ``kind`` (``"cpu"`` or ``"cuda"``); ``None``, with a line
    on stderr, if there is none (JAX's CPU wheel on a GPU machine) or JAX or NumPyro is missing."""
    modules = jax_modules(torch.get_num_threads())
    if modules is None:
        return None
    platform = "gpu" if kind == "cuda" else "cpu"
    try:
        return modules[0].devices(platform)[0]
    except RuntimeError:
        C.log(f"numpyro: skipped (JAX has no {platform} here; pip install 'jax[cuda12]')")
        return None


def numpyro_programs(numpyro, pixels: int, hidden: int, z_dim: int):
    """NumPyro's ``(model, guide)`` of the VAE, as in its example with stax networks, set to the
    VAE's: ReLU, Bernoulli logits, the diagonal Gaussian guide's softplus scale."""
    from jax import nn as jnn
    from jax import numpy as jnp
    from jax.example_libraries import stax

    dist = numpyro.distributions
    encoder = stax.serial(stax.Dense(hidden), stax.Relu, stax.Dense(2 * z_dim))
    decoder = stax.serial(stax.Dense(hidden), stax.Relu, stax.Dense(pixels))

    def model(x):
        decode = numpyro.module("decoder", decoder, (x.shape[0], z_dim))
        with numpyro.plate("batch", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0, 1).expand([z_dim]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    def guide(x):
        encode = numpyro.module("encoder", encoder, (x.shape[0], pixels))
        loc, raw_scale = jnp.split(encode(x), 2, axis=-1)
        with numpyro.plate("batch", x.shape[0]):
            scale = jnn.softplus(raw_scale) + MIN_SCALE
            numpyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide


def stax_weights(vae: pyro_vae.VAE) -> dict:
    """The VAE's initial weights as the stax networks' parameters: ``(W, b)`` per ``Linear``
    (``W`` transposed: stax computes ``x @ W``), ``()`` per ReLU."""

    def layers(net: nn.Sequential) -> list:
        return [
            (m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy())
            if isinstance(m, nn.Linear)
            else ()
            for m in net
        ]

    return {"encoder$params": layers(vae.encoder.net), "decoder$params": layers(vae.decoder.net)}


def numpyro_epoch(jax, svi, batch: int, state, key, x_all):
    """One epoch, to be jitted whole: a permutation drawn from ``key``, ``lax.fori_loop`` over
    the full batches (each made floats and binarized by ``uniform < x``), then the last one."""
    eight_bit = x_all.dtype == jax.numpy.uint8
    order_key, noise_key = jax.random.split(key)
    order = jax.random.permutation(order_key, x_all.shape[0])

    def update(i, index, carry):
        total, state = carry
        x = x_all[index].astype(jax.numpy.float32) / (255 if eight_bit else 1)
        x = (jax.random.uniform(jax.random.fold_in(noise_key, i), x.shape) < x).astype(x.dtype)
        state, loss = svi.update(state, x)
        return total + loss, state

    def body(i, carry):
        return update(i, jax.lax.dynamic_slice_in_dim(order, i * batch, batch), carry)

    full = x_all.shape[0] // batch
    carry = jax.lax.fori_loop(0, full, body, (jax.numpy.zeros(()), state))
    if x_all.shape[0] % batch:  # the last, smaller batch: a shape of its own, outside the loop
        carry = update(full, order[full * batch :], carry)
    return carry[1], carry[0]


def numpyro_epochs(vae, data: Dataset, batch: int, device: torch.device, seed: int):
    """``epoch() -> seconds`` of :func:`numpyro_epoch`, jitted, on ``data`` kept on JAX's device
    as one array (8-bit images as ``uint8``), from the VAE's initial weights."""
    jax, numpyro = jax_modules(torch.get_num_threads())
    where = numpyro_device(device.type)
    model, guide = numpyro_programs(numpyro, math.prod(vae.x_shape), vae.hidden_dims[0], vae.z_dim)
    svi = numpyro.infer.SVI(model, guide, numpyro.optim.Adam(LR), numpyro.infer.Trace_ELBO())
    x_all = jax.device_put(data.x_train.flatten(1).numpy(), where)
    key = jax.device_put(jax.random.PRNGKey(seed), where)
    with jax.default_device(where):
        weights = jax.device_put(stax_weights(vae), where)
        # jitted: op by op, each of its few dozen operations would be compiled on its own
        init = jax.jit(lambda key, x, weights: svi.init(key, x, init_params=weights))
        state = init(key, jax.numpy.zeros((batch, x_all.shape[1])), weights)
    state = jax.device_put(state, where)  # committed, as the epoch returns it: one compiling
    start = time.perf_counter()
    epoch_fn = jax.jit(functools.partial(numpyro_epoch, jax, svi, batch))
    run = epoch_fn.lower(state, key, x_all).compile()  # ahead of time, to time it alone
    COMPILED[peer_key("numpyro", vae, data, batch, device)] = time.perf_counter() - start
    epochs = iter(range(1, 2**31))

    def epoch() -> float:
        nonlocal state
        start = time.perf_counter()
        state, total = jax.block_until_ready(
            run(state, jax.random.fold_in(key, next(epochs)), x_all)
        )
        seconds = time.perf_counter() - start
        if not math.isfinite(float(total)):
            raise RuntimeError("numpyro: the loss stopped being finite")
        return seconds

    return epoch


def numpyro_variant(vae, data: Dataset, batch: int, device: torch.device, seed: int) -> float:
    """NumPyro's VAE example (``SVI``, ``Trace_ELBO``, ``numpyro.optim.Adam``, an epoch as one
    jitted ``lax.fori_loop`` of ``svi.update``) on the same network, data, batches and
    binarization. One per network, batch and device trains on from round to round; its first
    call, the warm-up epoch, compiles (ahead of the epoch it times)."""
    key = peer_key("numpyro", vae, data, batch, device)
    if key not in NUMPYRO:
        NUMPYRO[key] = numpyro_epochs(vae, data, batch, device, seed)
    return NUMPYRO[key]()


VARIANTS: dict[str, Variant] = {
    "svi": trainer_variant("trace"),  # Trace_ELBO, eager
    "svi-compiled": trainer_variant("trace", compile="on"),  # the step captured and compiled
    "manual": trainer_variant("manual"),  # pyro_vae.infer.elbo.manual_elbo, no pyro.infer
    "pyro-naive": pyro_naive,
    "manual-compiled": manual_compiled,  # plain PyTorch, loss, backward and Adam compiled
    "numpyro": numpyro_variant,  # NumPyro's VAE example, an epoch jitted; needs the bench extra
}
# name -> (numerator, denominator): ratios of median epoch times, reported where both ran.
RATIOS = {
    "svi/manual": ("svi", "manual"),
    "svi-compiled/manual": ("svi-compiled", "manual"),
    "svi-compiled/manual-compiled": ("svi-compiled", "manual-compiled"),
    "svi-compiled/numpyro": ("svi-compiled", "numpyro"),
    "pyro-naive/svi": ("pyro-naive", "svi"),
    "pyro-naive/svi-compiled": ("pyro-naive", "svi-compiled"),
    "svi/floor": ("svi", "floor"),
    "svi-compiled/floor": ("svi-compiled", "floor"),
}
# Issue 28's targets, per device type and data: the batch, and (ratio, comparison, threshold).
TARGETS = {
    ("cpu", "digits"): (128, [("svi-compiled/manual", "<=", 0.5)]),
    ("cpu", "images"): (
        256,
        [
            ("svi-compiled/floor", "<=", 1.5),
            ("svi-compiled/numpyro", "<=", 0.85),
            ("svi-compiled/manual-compiled", "<=", 0.7),
            ("pyro-naive/svi-compiled", ">=", 2.5),
        ],
    ),
    ("cuda", "images"): (
        256,
        [
            ("svi-compiled/floor", "<=", 3.0),
            ("pyro-naive/svi-compiled", ">=", 20.0),
            ("svi-compiled/numpyro", "<=", 0.85),
        ],
    ),
}
COMPILED_VARIANTS = ("svi-compiled", "manual-compiled", "numpyro")
PROBE_STEPS = 10  # full batches of the epochs a compile probe trains (and the last, smaller one)


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
    add("--compile-times", action=argparse.BooleanOptionalAction, default=True,
        help="also time the compiled variants' compiling with empty and with filled caches, "
        "each in a process of its own (about a minute on 2 cores)")  # fmt: skip
    add("--compile-probe", choices=COMPILED_VARIANTS, help=argparse.SUPPRESS)  # a probe's process
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
    ``rounds`` rounds in which each name takes its turn. Seconds and peak memory per round, and
    the seconds of the warm-up epochs."""
    warm = {name: [run(name) for _ in range(warmup)] for name in names}
    rows = {
        n: {"variant": n, "seconds": [], "peak_mib": [], "warmup_seconds": warm[n]} for n in names
    }
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
    if device.type == "cuda" and "numpyro" in rows:
        rows["numpyro"]["peak_mib"] = []  # JAX's allocations are not torch's to count
    return rows


def compile_seconds(name: str, batch: int, row: dict) -> float | None:
    """The seconds variant ``name`` spent compiling at ``batch`` in this process: svi-compiled's
    as its trainer reports them (capturing and compiling), numpyro's ahead-of-time compiling of its
    epoch, and for manual-compiled its first epoch less the median of its other epochs."""
    if name == "svi-compiled":
        trainers = [t for k, t in TRAINERS.items() if k[1] == "on" and k[2] == batch]
        return trainers[0].state.history.compile_seconds if trainers else None
    if name == "numpyro":
        return next((s for k, s in COMPILED.items() if k[0] == name and k[1] == batch), None)
    if name == "manual-compiled" and row["warmup_seconds"]:
        return row["warmup_seconds"][0] - row["median"]
    return None


def probe_data(data: Dataset, batch: int) -> Dataset:
    """``data`` cut to :data:`PROBE_STEPS` full batches and its last, smaller batch: each shape
    the run compiles, in fewer steps."""
    n = len(data.x_train)
    keep = min(n, PROBE_STEPS * batch + n % batch)
    return Dataset(data.name, data.x_train[:keep], data.x_test)


def probe(args, device, data: Dataset) -> float | None:
    """A probe's process: the seconds ``--compile-probe`` spends compiling at the first batch
    size, from two epochs of :func:`probe_data` (the first compiles)."""
    name, batch = args.compile_probe, args.batch_sizes[0]
    d = probe_data(bench_data(data, batch, args.max_steps), batch)
    z_dim = Z_DIMS.get(data.name, Z_DIM)
    first = run_variant(name, d, batch, device, args.seed, HIDDEN, z_dim)
    second = run_variant(name, d, batch, device, args.seed, HIDDEN, z_dim)
    return compile_seconds(name, batch, {"warmup_seconds": [first], "median": second})


def cache_env(folder: str) -> dict[str, str]:
    """The environment that keeps inductor's, Triton's and JAX's compile caches in ``folder``
    (JAX's persistent cache on for every program, which it is not in the main run)."""
    return {
        # NumPyro's Trace_ELBO sums its sites in a set's order, which follows the string hashes:
        # another order is another program to JAX's cache
        "PYTHONHASHSEED": "0",
        "TORCHINDUCTOR_CACHE_DIR": f"{folder}/inductor",
        "TRITON_CACHE_DIR": f"{folder}/triton",
        "JAX_COMPILATION_CACHE_DIR": f"{folder}/jax",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def probe_process(args, device, data: Dataset, name: str, batch: int, folder: str):
    """The compile seconds of ``name`` at ``batch`` in a fresh process of this script whose
    compile caches live in ``folder``; ``None`` (and why, on stderr) if it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--compile-probe", name,
               "--batch-sizes", str(batch), "--device", device.type, "--data", data.name,
               "--threads", str(args.threads), "--seed", str(args.seed)]  # fmt: skip
    command += ["--data-dir", args.data_dir] if args.data_dir else []
    command += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    env = os.environ | cache_env(folder)
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        C.log(f"{name}: the compile probe failed: {result.stderr.strip()[-500:]}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def compile_times(args, device, data: Dataset, by_batch: dict[int, dict]) -> list[dict]:
    """Per batch and compiled variant that ran, its compile seconds in this run; at the targets'
    batch (or the first), with ``--compile-times``, also cold (a fresh process, empty caches in a
    new folder) and warm (another fresh process, the caches the first left)."""
    target = TARGETS.get((device.type, _kind(data)), (None, []))[0]
    probed = target if target in by_batch else next(iter(by_batch))
    table = []
    for batch, rows in by_batch.items():
        for name in (n for n in COMPILED_VARIANTS if n in rows):
            row = dict(variant=name, batch=batch, cold=None, warm=None)
            row["this_run"] = compile_seconds(name, batch, rows[name])
            if args.compile_times and batch == probed:
                with tempfile.TemporaryDirectory(prefix="bench-train-caches-") as folder:
                    for kind in ("cold", "warm"):
                        C.log(f"compile probe: {name}, batch {batch}, {kind}")
                        row[kind] = probe_process(args, device, data, name, batch, folder)
            table.append(row)
    return table


def compile_lines(table: list[dict]) -> list[str]:
    """The markdown table of :func:`compile_times`, with what its columns mean."""
    if not table:
        return []
    lines = [
        "",
        "Compile seconds of the compiled variants' first epoch (svi-compiled: its trainer's "
        "capturing and compiling; numpyro: its epoch's jit, compiled ahead of time; "
        "manual-compiled: its first epoch less its median epoch). This run: the caches as they "
        f"were; cold: a fresh process, empty caches, epochs of {PROBE_STEPS} steps and the last; "
        "warm: another fresh process with the caches the cold one filled (inductor's, Triton's "
        "and JAX's persistent cache, which the main run does not use).",
        "",
        "| batch | variant | this run (s) | cold (s) | warm (s) |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for r in table:
        cells = " | ".join(C.fmt(r[k], 1) for k in ("this_run", "cold", "warm"))
        lines.append(f"| {r['batch']} | {r['variant']} | {cells} |")
    return lines


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


def epoch_lines(by_batch: dict[int, dict]) -> list[str]:
    """The markdown table of every variant's epoch time per batch."""
    lines = [
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
    return lines


def ratio_lines(table: dict[int, tuple]) -> list[str]:
    """The markdown table of :data:`RATIOS` per batch, from :func:`ratios`; n/a where a side did
    not run."""
    lines = ["| batch | " + " | ".join(RATIOS) + " |", "| ---: |" + " ---: |" * len(RATIOS)]
    for batch, (of_medians, per_round) in table.items():
        cells = [
            f"{of_medians[n]:.2f} ({min(per_round[n]):.2f}-{max(per_round[n]):.2f})"
            if n in of_medians
            else "n/a"
            for n in RATIOS
        ]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    return lines


def train_report(
    args, device, data: Dataset, header: list[str], by_batch: dict[int, dict], compiling: list
) -> tuple[str, dict]:
    """The markdown section and the JSON record of the main benchmark, with the compile seconds
    of :func:`compile_times`."""
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
        "- each trainer variant, manual-compiled and numpyro train one model on from round to "
        "round: its warm-up epoch holds the first step (the trainer's with Pyro's validation) "
        "and the compiling (numpyro's before it); pyro-naive a fresh VAE each round",
        "",
        *epoch_lines(by_batch),
        "",
        *ratio_lines(table),
        "",
        "Ratios of median epoch times; in brackets, the lowest and highest of the same",
        "ratio within a round.",
        *compile_lines(compiling),
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
        "compile_seconds": compiling,
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


def load_data(args) -> tuple[Dataset, str]:
    """The data of ``--data`` and a line saying which: random images stored as uint8, as
    Fashion-MNIST's are, so that every variant meets 8-bit images as it would there."""
    data, line = C.load_images(args.data, args.data_dir, args.seed)
    if data.name == "random":
        return C.as_uint8(data), f"{line}, stored as uint8 (k / 255) as Fashion-MNIST's"
    return data, line


def runnable(names: list[str], device: torch.device) -> list[str]:
    """``names`` less numpyro where JAX or NumPyro (or JAX's GPU) is missing: said on stderr."""
    if "numpyro" in names and numpyro_device(device.type) is None:
        return [n for n in names if n != "numpyro"]
    return names


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.setup_device(args.device, args.threads)
    data, data_line = load_data(args)
    if args.compile_probe:
        print(json.dumps({"seconds": probe(args, device, data)}))
        return 0
    args.variants = runnable(args.variants, device)
    args.scaling_variants = runnable(args.scaling_variants, device)
    md = C.results_path(args.out, device)
    batch_sizes = args.batch_sizes or ([128, 256, 1024] if device.type == "cuda" else [128, 256])
    with C.Run(device, data_line) as run:
        by_batch = {batch: measure_batch(args, device, data, batch) for batch in batch_sizes}
    compiling = compile_times(args, device, data, by_batch)
    key = "train" if _kind(data) == "images" else "train-digits"  # each data set a section
    report = train_report(args, device, data, run.lines(), by_batch, compiling)
    C.write_results(md, key, *report, run)
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

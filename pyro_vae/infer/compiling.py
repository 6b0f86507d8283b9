"""Compiled SVI: the Pyro program's loss and gradients, traced once and replayed as one graph.

An SVI step runs Pyro's Python machinery (the guide and the model under poutine's handlers, the
traces, the ELBO's sums) around a few hundred tensor operations, and those operations are the
same at every step: they depend on the shapes, not on the values. So they are recorded once.
``torch.fx.experimental.proxy_tensor.make_fx`` runs the objective (a sync-free ELBO of
:mod:`pyro_vae.infer.sync_free`, or any loss function) and its gradient with respect to the VAE's
parameters on one batch, with the parameters and the batch as inputs, and records every aten
operation: a graph of the Pyro program, backward pass included. Inductor compiles that graph,
and each step replays it on the current parameters and a new batch; Pyro's Python runs only at
capture. :class:`CompiledGraph` is that machinery for any function of tensors: the training
step's graph (:class:`~pyro_vae.training.whole_step.WholeStep`) holds Adam's update too.

Randomness: the guide's noise is drawn inside the graph from torch's global generator, and
inductor's ``fallback_random`` makes it call the aten random operations eager PyTorch calls, so a
compiled step draws the very numbers an eager one would. The compiler fuses and reorders the
arithmetic, so the losses agree with eager ones to float32 rounding, not bit for bit.

What a graph cannot hold is found at capture, and then :class:`CaptureError` says why: a
program that reads a tensor's value into Python (``.item()``, a branch on a value) cannot be
traced; one whose operations change from step to step gives two different graphs for two
batches; an operation whose output's size depends on values (``nonzero``) would wait for the
device at every step.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from torch.func import functional_call
from torch.fx import GraphModule
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae.device import random_state_kept

# A compiled step takes at most this fraction of an eager one, and a first compile this many
# seconds (benchmarks/results/compiled-*.md): what compile="auto" reckons with before it knows.
COMPILED_FRACTION = 0.6
COLD_COMPILE_SECONDS = {"cpu": 30.0, "cuda": 40.0}
MIN_COMPILE_SECONDS = 2.0  # even a compile found in inductor's cache takes this long
# aten operations that read a value back to the host, or whose output's size depends on values
HOST_READS = frozenset(
    f"aten.{name}"
    for name in (
        "_local_scalar_dense",
        "item",
        "is_nonzero",
        "equal",
        "allclose",
        "nonzero",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
    )
)


class CaptureError(Exception):
    """The step cannot be captured as one graph; the message says why, in one line."""


class _Objective(nn.Module):
    """``loss_fn(*inputs)`` as a module that holds the model, so that ``functional_call`` can run
    it on parameters given as inputs."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.vae = model
        self.loss_fn = loss_fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(*inputs)


def loss_and_gradients(
    model: nn.Module, loss_fn: Callable[..., torch.Tensor], gradients: bool = True
) -> Callable:
    """``f(params, *inputs)``: ``loss_fn(*inputs)`` with ``model``'s parameters taken from the
    list ``params``, and (with ``gradients``) the gradient of each, ``None`` for a parameter the
    loss does not use. The function a graph of the loss records.

    :param model: the module whose parameters ``params`` stand for, in ``parameters()`` order.
    :param loss_fn: ``loss_fn(*inputs)``, a 0-dim tensor.
    :param gradients: ``False``: the loss alone, without autograd.
    """
    objective = _Objective(model, loss_fn)
    names = [name for name, _ in objective.named_parameters()]

    def f(params: list[torch.Tensor], *inputs: torch.Tensor) -> Any:
        with torch.set_grad_enabled(gradients):
            named = dict(zip(names, params, strict=True))
            loss = functional_call(objective, named, inputs)
        if not gradients:
            return loss.detach()
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    return f


def zero_filled(params: list[torch.Tensor], grads: Any) -> list[torch.Tensor]:
    """``grads`` with zeros for a parameter the loss does not use (``None``).

    :param params: the parameters.
    :param grads: their gradients, ``None`` where unused.
    """
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def host_reads(graph: GraphModule) -> list[str]:
    """The operations of ``graph`` that would read a value back to the host (see HOST_READS).

    :param graph: a graph that ``make_fx`` traced.
    """
    names = (str(node.target).rsplit(".", 1)[0] for node in graph.graph.nodes)
    return sorted({name for name in names if name in HOST_READS})


def capture_graph(fn: Callable, *calls: tuple) -> GraphModule:
    """``fn`` traced by ``make_fx`` on each argument tuple of ``calls``: the graph of its aten
    operations, which must be the same for every call and read no value back to the host.

    :param fn: a function of tensors (and lists of them).
    :param calls: argument tuples to trace it on, e.g. for two different batches.
    """
    graphs = []
    for args in calls:
        try:
            graphs.append(make_fx(fn)(*args))
        except RuntimeError as e:  # make_fx refuses to read a traced value
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            raise CaptureError(f"the program cannot be traced ({first})") from None
    if any(graph.code != graphs[0].code for graph in graphs[1:]):
        raise CaptureError("the program's operations change from one batch to the next")
    reads = host_reads(graphs[0])
    if reads:
        raise CaptureError(f"the program reads values back to the host ({', '.join(reads)})")
    return graphs[0]


class CompiledGraph:
    """A function of tensors captured as one graph (:func:`capture_graph`) from two batches
    shaped like ``x`` (``x`` and ``x`` reversed), replayed as it is until :meth:`compile`
    compiles it with inductor. Capture and compilation run on ``arguments(x)`` with the global
    random state put back afterwards, so they draw nothing a step would have drawn;
    ``capture_seconds`` and ``compile_seconds`` are the time they took.

    :param fn: the function of tensors.
    :param arguments: ``arguments(x)``, the arguments ``fn`` takes for a batch ``x``; where ``fn``
        writes into tensors, copies of them, so that capture and compilation change nothing.
    :param x: a batch of the shape the graph is for.
    """

    #: whether inductor records the compiled graph's kernels as a CUDA graph
    inductor_cuda_graphs = True

    def __init__(self, fn: Callable, arguments: Callable[[torch.Tensor], tuple], x: torch.Tensor):
        start = time.perf_counter()
        self.shape, self.device, self.arguments = tuple(x.shape), x.device, arguments
        # Pyro's param store and the global random state are as they were before, afterwards
        with random_state_kept(x.device), pyro.get_param_store().scope():
            with pyro.validation_enabled(False):
                self.graph = capture_graph(fn, arguments(x), arguments(x.flip(0)))
        self.fn: Callable = self.graph
        self.capture_seconds, self.compile_seconds = time.perf_counter() - start, 0.0

    def compile(self, x: torch.Tensor) -> None:
        """Compile the graph with inductor now (on ``arguments(x)``), not in the middle of a step.

        :param x: a batch of the captured shape, which the compiled graph runs once.
        """
        start = time.perf_counter()
        options = {"fallback_random": True}  # the same random draws as eager PyTorch
        if self.device.type == "cuda" and self.inductor_cuda_graphs:
            options["triton.cudagraphs"] = True  # static inputs: no launch overhead per kernel
        fn = torch.compile(self.graph, fullgraph=True, dynamic=False, options=options)
        with random_state_kept(self.device), torch.no_grad(), _quiet_cpp_extension():
            fn(*self.arguments(x))
        self.fn = fn
        self.compile_seconds = time.perf_counter() - start
        _remember(self.key, self.compile_seconds)

    @property
    def seconds(self) -> float:
        """Capturing and compiling, all told."""
        return self.capture_seconds + self.compile_seconds

    @property
    def key(self) -> str:
        """What identifies the compiled code: the graph, the device, the versions."""
        text = f"{self.graph.code}|{self.device.type}|{torch.__version__}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def expected_compile_seconds(self) -> float:
        """How long :meth:`compile` will take: as long as last time, when inductor's on-disk cache
        (where that time is kept) has this graph; else a cold compile (see COLD_COMPILE_SECONDS)."""
        return _recorded().get(self.key, COLD_COMPILE_SECONDS[self.device.type])


class CompiledLoss(CompiledGraph):
    """The loss of ``loss_fn`` and its gradients with respect to ``vae``'s parameters (or, with
    ``gradients=False``, its value alone: an estimate such as the test ELBO), for batches shaped
    like ``x``, as a :class:`CompiledGraph`. Further tensor ``inputs`` (a KL weight that changes
    during training, say) are inputs of the graph too, passed on to ``loss_fn(x, *inputs)``.

    :param vae: the model whose parameters the gradients are of.
    :param loss_fn: ``loss_fn(x, *inputs)``, a 0-dim tensor: an objective's loss
        (:func:`~pyro_vae.infer.elbo.make_loss`), say.
    :param x: a batch of the shape the graph is for; the program runs on it at capture.
    :param inputs: further tensors the graph takes and passes on to ``loss_fn``: a KL weight,
        labels.
    :param gradients: ``True``: the loss and each parameter's gradient; ``False``: the value alone.
    """

    def __init__(
        self,
        vae: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        x: torch.Tensor,
        *inputs: torch.Tensor,
        gradients: bool = True,
    ):
        self.parameters, self.inputs = list(vae.parameters()), inputs
        f = loss_and_gradients(vae, loss_fn, gradients)

        def loss_and_grads(params: list[torch.Tensor], *inputs: torch.Tensor) -> Any:
            if not gradients:
                return f(params, *inputs)
            loss, grads = f(params, *inputs)
            return loss, zero_filled(params, grads)

        def arguments(x: torch.Tensor) -> tuple:
            return [p.detach().requires_grad_() for p in self.parameters], x, *inputs

        super().__init__(loss_and_grads, arguments, x)

    def __call__(self, x: torch.Tensor, *inputs: torch.Tensor) -> Any:
        """The loss of batch ``x`` (detached) and the gradient of each parameter, or (without
        gradients) the value alone."""
        with torch.no_grad():
            out = self.fn([p.detach() for p in self.parameters], x, *inputs)
        # CUDA graphs write every replay's outputs into the same buffers: the losses kept for the
        # end of the epoch (and the IWAE chunks) must be copies, or the next step overwrites them
        return _copied(out) if self.device.type == "cuda" else out


def _copied(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    return type(out)(_copied(o) for o in out)


@contextmanager
def _quiet_cpp_extension() -> Iterator[None]:
    # On a machine with CUDA's headers and no GPU, inductor's C++ builder warns that it found no
    # CUDA runtime: true, and of no concern for a CPU graph.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _record_file() -> Path:
    # beside inductor's own cache (its default folder), so that both go when it is cleared
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not folder:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a user id with no name: inductor's own default fails too
            user = "user"
        folder = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    return Path(folder) / "pyro-vae-compile-seconds.json"


def _recorded() -> dict[str, float]:
    try:
        records = json.loads(_record_file().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: every compile counts as cold
        return {}
    return records if isinstance(records, dict) else {}


def _remember(key: str, seconds: float) -> None:
    path = _record_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**_recorded(), key: round(seconds, 3)}))
    except OSError:  # a read-only cache folder costs only the estimate next time
        pass


def compile_saving(eager_seconds: float, calls_ahead: int) -> float:
    """The seconds compiling would save over ``calls_ahead`` calls, each COMPILED_FRACTION of an
    eager one.

    :param eager_seconds: the seconds of one eager call.
    :param calls_ahead: the calls still to make.
    """
    return calls_ahead * eager_seconds * (1 - COMPILED_FRACTION)


def compile_when_it_pays(
    what: str,
    capture: Callable[[], CompiledLoss],
    x: torch.Tensor,
    eager_seconds: float | None = None,
    calls_ahead: int = 0,
    agree: Callable[[bool], bool] = lambda worth: worth,
) -> tuple[CompiledLoss | None, str, float]:
    """Capture ``what`` (``capture()``) and compile it on ``x``: at once when ``eager_seconds`` is
    ``None``, else only if ``calls_ahead`` calls of ``eager_seconds`` each would save more than
    compiling takes.

    :param what: what is compiled, for the message, e.g. ``"the training step"``.
    :param capture: captures it: returns a :class:`CompiledLoss`, or raises :class:`CaptureError`.
    :param x: a batch of the captured shape, to compile on.
    :param eager_seconds: the seconds of one eager call, as timed; ``None``: compile whatever it
        costs.
    :param calls_ahead: the calls still to make, which compiling would speed up.
    :param agree: makes the ranks of a torchrun decide alike.
    :returns: the compiled function or ``None``, one line saying which and why, and the seconds
        spent.
    """
    saving = 0.0 if eager_seconds is None else compile_saving(eager_seconds, calls_ahead)

    def not_worth(compiling: float) -> str:
        return (
            f"{what} stays eager: compiling takes about {compiling:.0f} s and would save about "
            f"{saving:.1f} s over the {calls_ahead} calls ahead ({1e3 * eager_seconds:.2f} ms each)"
        )

    if eager_seconds is not None and not agree(saving > MIN_COMPILE_SECONDS):
        return None, not_worth(MIN_COMPILE_SECONDS), 0.0
    try:
        compiled = capture()
    except CaptureError as e:
        return None, f"{what} stays eager: {e}", 0.0
    expected = compiled.expected_compile_seconds()
    if eager_seconds is not None and not agree(saving > expected):
        return None, not_worth(expected), compiled.seconds
    try:
        compiled.compile(x)
    except Exception as e:  # whatever stops the compiler, the eager function still works
        lines = str(e).strip().splitlines()
        why = f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__
        return None, f"{what} stays eager: it did not compile ({why})", compiled.seconds
    return compiled, f"compiled {what} in {compiled.seconds:.1f} s", compiled.seconds


#: the compile settings: ``"auto"`` (when it pays), ``"on"`` or ``"off"``
COMPILE = ("auto", "on", "off")


class CompilePolicy:
    """The one way pyro-vae decides to compile a computation (the training step, the test ELBO,
    the IWAE bound's chunks): ``"off"`` never; ``"on"`` at the first call of the captured shape;
    ``"auto"`` once ``timed`` eager calls of that shape are timed, if the calls ahead repay the
    compile time (:func:`compile_when_it_pays`).

    Before each eager call of the captured shape ask :meth:`ready`; when it says so, call
    :meth:`decide`, which leaves ``compiled`` (or ``None``), ``message`` and ``seconds``.

    :param what: what is compiled, for the message, e.g. ``"the training step"``.
    :param mode: ``"auto"``, ``"on"`` or ``"off"``.
    :param timed: the eager calls ``"auto"`` times before it decides.
    :param device: where the calls run: the clock waits for a CUDA device before it reads.
    :param agree: makes the ranks of a torchrun decide alike.
    """

    def __init__(
        self,
        what: str,
        mode: str,
        *,
        timed: int = 1,
        device: torch.device | None = None,
        agree: Callable[[bool], bool] = lambda worth: worth,
    ):
        self.what, self.mode, self.timed, self.device, self.agree = what, mode, timed, device, agree
        self.decided = mode == "off"
        self.compiled: CompiledLoss | None = None
        self.message, self.seconds = "off", 0.0
        self._start: float | None = None
        self._calls, self._eager_seconds = 0, None

    def restart(self) -> None:
        """Time afresh from the next call (after work that is not a call, such as an epoch's
        end)."""
        self._start = None

    def ready(self, calls: int = 1) -> bool:
        """Whether the decision is due now, before an eager call of the captured shape; with
        ``"auto"``, the first ask starts the clock and each later one counts ``calls`` calls made
        since the last.

        :param calls: the calls made since the last ask (a whole pass of them, say).
        """
        if self.decided:
            return False
        if self.mode == "on":
            return True
        now = self._clock()
        if self._start is None:
            self._start, self._calls = now, 0
            return False
        self._calls += calls
        if self._calls < self.timed:
            return False
        self._eager_seconds = (now - self._start) / self._calls
        return True

    def decide(
        self, capture: Callable[[], CompiledLoss], x: torch.Tensor, calls_ahead: int
    ) -> CompiledLoss | None:
        """Capture and compile, or not (:func:`compile_when_it_pays`); the result is also kept in
        ``compiled``, with ``message`` and ``seconds``.

        :param capture: captures the computation: returns a :class:`CompiledLoss`.
        :param x: a batch of the captured shape, to compile on.
        :param calls_ahead: the calls still to make, which compiling would speed up.
        """
        self.decided = True
        self.compiled, self.message, self.seconds = compile_when_it_pays(
            self.what, capture, x, self._eager_seconds, calls_ahead, self.agree
        )
        return self.compiled

    def _clock(self) -> float:
        if self.device is not None and self.device.type == "cuda":  # a few times a run
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

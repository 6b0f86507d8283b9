"""Compiled SVI: the Pyro program's step captured as one graph, replayed, and compiled by inductor.

The captured graph, replayed as it is, must give the eager step's loss and gradients bit for bit
(same operations, same random draws); compiled, it must agree to float32 rounding. Compiling is
slow on a CPU, so the tests that compile share one small shape (inductor caches it on disk)."""

import importlib

import pyro
import pytest
import torch
from helpers import covering_combinations, make

from pyro_vae import VAE, train
from pyro_vae.analysis.evaluation import iwae_estimate
from pyro_vae.config import training_sections
from pyro_vae.data.sources import eval_inputs
from pyro_vae.infer.compiling import COLD_COMPILE_SECONDS, CaptureError, CompiledLoss, host_reads
from pyro_vae.infer.elbo import make_loss
from pyro_vae.models import build_model
from pyro_vae.models.labels import one_hot
from pyro_vae.parts.likelihoods import Bernoulli
from pyro_vae.parts.priors import StandardNormal
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint, train_state
from pyro_vae.training.state import TrainingInterrupted
from pyro_vae.training.trainer import Trainer
from pyro_vae.training.whole_step import WholeStep, adam_state, adam_update

compiled_module = importlib.import_module("pyro_vae.infer.compiling")
vae_module = importlib.import_module("pyro_vae.models.vae")
step_module = importlib.import_module("pyro_vae.training.step")
test_set_module = importlib.import_module("pyro_vae.training.test_set")

COMBINATIONS = [pytest.param(*combo, id="-".join(combo)) for combo in covering_combinations()]
SMALL = dict(z_dim=4, hidden_dims=(32,))  # the one shape the compiling tests share


@pytest.mark.parametrize("objective", ["trace", "meanfield"])
@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_the_captured_step_is_the_eager_step_bit_for_bit(
    digits, prior, likelihood, guide, encoder, objective
):
    vae, x = make(digits, prior, likelihood, guide, encoder)
    assert_replays_the_eager_step(vae, make_loss(vae, objective), x)


def assert_replays_the_eager_step(vae, loss_fn, x, *inputs):
    rng = torch.get_rng_state()
    captured = CompiledLoss(vae, loss_fn, x, *inputs)  # the graph, replayed as recorded
    assert torch.equal(torch.get_rng_state(), rng)  # capturing drew nothing a step would draw
    assert host_reads(captured.graph) == []  # nothing in the step waits for the device
    torch.manual_seed(3)
    with pyro.validation_enabled(False):
        loss = loss_fn(x, *inputs)
    grads = torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True)
    torch.manual_seed(3)
    replayed_loss, replayed_grads = captured(x, *inputs)
    assert torch.equal(replayed_loss, loss.detach())
    for eager, replayed in zip(grads, replayed_grads, strict=True):
        assert torch.equal(replayed, torch.zeros_like(replayed) if eager is None else eager)


@pytest.mark.parametrize("model", ["m2", "cvae"])
def test_the_label_models_steps_are_captured_bit_for_bit(digits, model):
    # M2's enumeration keeps no masked_select (an output sized by values), so it is one graph
    vae, x = make(digits, "mog", "bernoulli", "full-rank", "mlp", model=model)
    y = one_hot(digits.y_test[: len(x)], 10, x)
    inputs = (x[:5], y[:5], torch.tensor(0.5)) if model == "m2" else (y, torch.tensor(0.5))
    assert_replays_the_eager_step(vae, make_loss(vae, "trace"), x, *inputs)


@pytest.mark.parametrize("objective", ["iwae", "iwae-dreg"])
@pytest.mark.parametrize(
    "prior,likelihood,guide,encoder",
    [("standard-normal", "bernoulli", "diagonal", "mlp"), ("vamp", "gaussian", "diagonal", "conv")],
)
def test_the_iwae_objectives_are_captured_bit_for_bit_too(
    digits, prior, likelihood, guide, encoder, objective
):
    # iwae-dreg weighs the latents' gradients with a hook: the graph holds that too
    vae, x = make(digits, prior, likelihood, guide, encoder)
    assert_replays_the_eager_step(vae, make_loss(vae, objective, 3), x)


class PriorThatReadsAValue(StandardNormal):
    def forward(self, batch_size, like):
        scale = 1.0 + 0.0 * float(like.mean())  # a read into Python: no graph can hold it
        return super().forward(batch_size, like * scale)


class LikelihoodWithDataDependentShapes(Bernoulli):
    def forward(self, out):
        out = out.clone()
        out[out.isnan().nonzero(as_tuple=True)] = 0.0  # nonzero: its size depends on values
        return super().forward(out)


class PriorThatChangesEachStep(StandardNormal):
    calls = 0

    def forward(self, batch_size, like):
        PriorThatChangesEachStep.calls += 1
        prior = super().forward(batch_size, like)
        return prior if self.calls % 2 else super().forward(batch_size, like * 1.0)


@pytest.mark.parametrize(
    "part, reason",
    [
        ({"prior": PriorThatReadsAValue(4)}, "the program cannot be traced"),
        ({"likelihood": LikelihoodWithDataDependentShapes((1, 8, 8))}, "aten.nonzero"),
        ({"prior": PriorThatChangesEachStep(4)}, "operations change from one batch to the next"),
    ],
)
def test_a_step_no_graph_can_hold_trains_eagerly_and_says_why(digits, part, reason):
    def run(compile):
        pyro.set_rng_seed(0)
        vae = VAE(digits.x_shape, **SMALL, **part)
        history = train(vae, digits, epochs=1, device="cpu", progress=False, compile=compile)
        return history, vae

    with pytest.raises(CaptureError, match=reason):
        vae, x = run("off")[1], digits.x_train[:128].round()
        CompiledLoss(vae, make_loss(vae, "trace"), x)
    history, vae = run("on")
    assert history.compile.startswith("the training step stays eager:")
    assert reason in history.compile
    eager, _ = run("off")
    assert history.step_loss == eager.step_loss  # the eager step, so the very same numbers


def fresh(digits):
    pyro.set_rng_seed(0)
    return VAE(digits.x_shape, **SMALL)


def relative(a, b):
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "objective",
    [{}, {"kl_warmup": 3, "num_particles": 2}],
    ids=["elbo", "warm-up-with-particles"],
)
def test_compiled_training_agrees_with_eager_to_float32_rounding(digits, monkeypatch, objective):
    captured = []  # the training step is captured once: the warm-up's weight is a graph input

    class Counted(WholeStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured.append(True)

    class CountedLoss(CompiledLoss):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured.append(kwargs.get("gradients", True))

    monkeypatch.setattr(step_module, "WholeStep", Counted)
    monkeypatch.setattr(test_set_module, "CompiledLoss", CountedLoss)
    runs = {}
    for mode in ("off", "on"):
        vae = fresh(digits)
        options = dict(epochs=4, lr=3e-3, device="cpu", progress=False, compile=mode)
        runs[mode] = (train(vae, digits, **options, **objective), vae)
    (eager, eager_vae), (compiled, compiled_vae) = runs["off"], runs["on"]
    assert captured.count(True) == 1
    assert compiled.kl_weight == eager.kl_weight
    assert compiled.compile.startswith("compiled the training step in ")
    assert compiled.compile_seconds > 0 and eager.compile == "off"
    # the same draws, the arithmetic fused and reordered: agreement to float32 rounding
    assert relative(compiled.step_loss, eager.step_loss) < 1e-5
    assert relative(compiled.train_elbo, eager.train_elbo) < 1e-5
    assert relative(compiled.test_elbo, eager.test_elbo) < 1e-5
    assert compiled.step_loss != eager.step_loss  # compiled: really another computation
    for a, b in zip(compiled_vae.parameters(), eager_vae.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_compiled_run_resumes_exactly(digits, tmp_path):
    options = dict(epochs=3, lr=3e-3, device="cpu", progress=False, compile="on")
    straight = fresh(digits)
    expected = train(straight, digits, **options)
    vae, path, steps = fresh(digits), tmp_path / "checkpoint.pt", iter(range(1, 1000))
    with pytest.raises(TrainingInterrupted):
        train(
            vae,
            digits,
            checkpoint=lambda state: save_checkpoint(path, vae, state),
            stop=lambda: next(steps) == 17,
            **options,
        )
    saved = load_checkpoint(path)
    resumed = fresh(digits)
    resumed.load_state_dict(saved["model"])
    history = train(resumed, digits, resume=train_state(saved), **options)
    assert history.step_loss == expected.step_loss
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)


def test_auto_compiles_when_the_steps_ahead_repay_it(digits, monkeypatch):
    def history(expected_compile_seconds):
        monkeypatch.setattr(
            compiled_module.CompiledGraph,
            "expected_compile_seconds",
            lambda self: expected_compile_seconds,
        )
        return train(fresh(digits), digits, epochs=2, device="cpu", progress=False, compile="auto")

    eager = "the training step stays eager: compiling takes about"
    # 24 small steps save far less than even a compile found in inductor's cache takes
    assert history(0.0).compile.startswith(f"{eager} 2 s")
    monkeypatch.setattr(compiled_module, "MIN_COMPILE_SECONDS", 0.0)
    assert history(1e9).compile.startswith(f"{eager} 1000000000 s")
    assert history(0.0).compile.startswith("compiled the training step in ")


def test_the_compile_time_is_remembered_with_inductors_cache(digits):
    vae = fresh(digits)
    x = digits.x_train[:128].round()
    captured = CompiledLoss(vae, make_loss(vae, "trace"), x)
    captured.compile(x)
    again = CompiledLoss(vae, make_loss(vae, "trace"), x)  # the same graph: the same key
    assert again.expected_compile_seconds() == round(captured.compile_seconds, 3)
    other = CompiledLoss(vae, make_loss(vae, "trace"), x[:100])  # another shape, never compiled
    assert other.expected_compile_seconds() == COLD_COMPILE_SECONDS["cpu"]


def test_evaluation_compiles_where_it_pays_and_agrees_with_eager(digits, monkeypatch):
    # the test ELBO, timed at the first epoch's end: made to pay here, to check the numbers
    monkeypatch.setattr(compiled_module, "MIN_COMPILE_SECONDS", 0.0)
    monkeypatch.setattr(CompiledLoss, "expected_compile_seconds", lambda self: 0.0)
    histories = {
        mode: train(fresh(digits), digits, epochs=3, device="cpu", progress=False, compile=mode)
        for mode in ("off", "on")
    }
    assert "; compiled the test ELBO in " in histories["on"].compile
    assert relative(histories["on"].test_elbo, histories["off"].test_elbo) < 1e-5
    # the IWAE bound: 2000 particles, in chunks of 730, 730 and 540 for the 359 test images
    eager_chunks = []
    eager_chunk = vae_module.iwae_chunk
    monkeypatch.setattr(
        vae_module, "iwae_chunk", lambda *a: eager_chunks.append(a[2]) or eager_chunk(*a)
    )
    vae = fresh(digits)
    x = eval_inputs(vae.likelihood, digits.x_test)
    eager, status, _, _ = iwae_estimate(vae, x, 2000, seed=1)
    assert status == "off" and eager_chunks == [730, 730, 540]
    replays, replay = [], CompiledLoss.__call__
    monkeypatch.setattr(CompiledLoss, "__call__", lambda s, *a: replays.append(1) or replay(s, *a))
    compiled, compiled_status, seconds, _ = iwae_estimate(vae, x, 2000, seed=1, compile="on")
    assert compiled_status.startswith("compiled the IWAE bound in ") and seconds > 0
    # the two full chunks ran compiled (the 730s after the first three were the capture's), the
    # last one eager
    assert len(replays) == 2 and eager_chunks[3:].count(540) == 1
    assert abs(compiled - eager) < 1e-5 * abs(eager)


def test_the_graphs_adam_is_torchs_adam_to_float32_rounding():
    # 30 steps of gradients of every scale; a parameter without a gradient is left alone
    torch.manual_seed(0)
    params = [torch.randn(40, 30), torch.randn(30), torch.randn(5)]
    mine = [p.clone() for p in params]
    adam = torch.optim.Adam(params, lr=3e-3, betas=(0.8, 0.99), eps=1e-7, foreach=True)
    holder = torch.optim.Adam(mine, lr=3e-3, betas=(0.8, 0.99), eps=1e-7)
    avgs, sqs, steps = adam_state(holder)
    for step in range(30):
        grads = [torch.randn_like(p) * 10.0 ** (step % 5 - 2) for p in params[:2]] + [None]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        adam.step()
        adam_update(mine, grads, avgs, sqs, steps, lr=3e-3, betas=(0.8, 0.99), eps=1e-7)
    for p, q in zip(params, mine, strict=True):
        assert torch.allclose(q, p, rtol=2e-6, atol=1e-7)
    assert torch.equal(mine[2], params[2])  # never had a gradient: unchanged
    torch_state = adam.state_dict()["state"]
    for i in (0, 1):
        assert float(steps[i]) == float(torch_state[i]["step"]) == 30
        assert torch.allclose(avgs[i], torch_state[i]["exp_avg"], rtol=1e-6, atol=1e-9)
        assert torch.allclose(sqs[i], torch_state[i]["exp_avg_sq"], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("model", ["vae", "m2"])
def test_one_call_of_the_captured_step_is_the_whole_eager_step(digits, model):
    # the binarization (and M2's labelled rows, gathered and binarized), the loss, the gradients,
    # their clipping and Adam's update: one call, the eager step's numbers
    def trainer():
        pyro.set_rng_seed(0)
        vae = build_model(model, digits.x_shape, 10, **SMALL)
        settings = dict(batch_size=64, lr=1e-2, device="cpu", seed=0, compile="off", clip_norm=0.5)
        settings.update(labeled=50 if model == "m2" else None, binarization="dynamic")
        return Trainer(vae, digits, *training_sections(None, None, settings))

    eager, graphed = trainer(), trainer()
    raw = next(eager.source.epoch(1, 0))[1]
    assert raw[0].dtype == torch.float32 and not torch.equal(raw[0], raw[0].round())  # grey
    for t in (eager, graphed):  # the first step makes Adam's state
        torch.manual_seed(4)
        t.step(*raw)
    captured = WholeStep(graphed.model, graphed.step.loss, graphed.step.optimizer, 0.5, *raw)
    assert host_reads(captured.graph) == []
    before = [p.detach().clone() for p in graphed.model.parameters()]
    torch.manual_seed(5)
    loss = eager.step(*raw)
    after_eager = torch.get_rng_state()
    torch.manual_seed(5)
    replayed = captured(*raw)
    assert torch.equal(torch.get_rng_state(), after_eager)  # the same draws, inside the graph
    assert torch.equal(replayed, loss)
    pairs = zip(eager.model.parameters(), graphed.model.parameters(), before, strict=True)
    for a, b, old in pairs:
        assert not torch.equal(b, old)  # updated in place by the graph
        assert torch.allclose(b, a, rtol=1e-6, atol=1e-7)
    state = graphed.step.optimizer.state_dict()["state"]  # torch.optim.Adam's format, kept
    assert all(float(s["step"]) == 2 for s in state.values())

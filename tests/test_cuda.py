"""CUDA runs of the same code; skipped cleanly on machines without a GPU (CI has none)."""

import json

import pyro
import pytest
import torch
from helpers import binary_batch
from pyro import poutine

from pyro_vae import VAE, Run, train
from pyro_vae.cli import main
from pyro_vae.config import training_sections
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint, train_state
from pyro_vae.training.state import TrainingInterrupted
from pyro_vae.training.trainer import Trainer
from pyro_vae.training.whole_step import CudaGraphReplay

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]


def test_every_tensor_of_a_step_lives_on_the_gpu():
    vae = VAE((1, 8, 8), z_dim=4, hidden_dims=(16,)).cuda()
    x = binary_batch(8).cuda()
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and name != "data":
                assert site["value"].is_cuda, name
    assert model_trace.nodes["z"]["fn"].base_dist.loc.is_cuda
    assert vae.prior_dist(3).sample().is_cuda and vae.sample(3).is_cuda


def test_training_on_the_gpu_matches_the_cpu_in_quality(digits):
    results = {}
    for device in ("cpu", "cuda"):
        pyro.set_rng_seed(0)
        vae = VAE(digits.x_shape, z_dim=8, hidden_dims=(400,))
        history = train(vae, digits, epochs=34, lr=3e-3, device=device, progress=False,
            compile="off")
        assert all(p.is_cuda == (device == "cuda") for p in vae.parameters())
        results[device] = history.test_elbo[-1]
    assert results["cuda"] == pytest.approx(results["cpu"], abs=0.5)


def test_a_gpu_run_folder_evaluates_the_same_and_loads_on_the_cpu(tmp_path):
    out = tmp_path / "gpu"
    args = ["train", "--epochs", "2", "--device", "cuda", "--out", str(out), "--quiet"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda")
    assert main(["evaluate", str(out)]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["test_elbo"] == pytest.approx(summary["test_elbo"], abs=1e-4)
    vae = Run.open(out, device="cpu").vae
    assert vae.reconstruct(binary_batch(4)).device.type == "cpu"


def test_trace_elbo_equals_the_manual_elbo_on_the_gpu(digits):
    from pyro.infer import Trace_ELBO

    from pyro_vae.data.sources import eval_inputs
    from pyro_vae.infer.elbo import manual_elbo
    vae = VAE(digits.x_shape, z_dim=4, hidden_dims=(32,)).cuda()
    x = eval_inputs(vae.likelihood, digits.x_test[:64]).cuda()
    elbo = Trace_ELBO(vectorize_particles=True, max_plate_nesting=1)
    torch.manual_seed(1)
    pyro_loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    pyro_grads = torch.autograd.grad(pyro_loss, list(vae.parameters()))
    torch.manual_seed(1)
    manual_loss = -manual_elbo(vae, x)
    manual_grads = torch.autograd.grad(manual_loss, list(vae.parameters()))
    assert float(pyro_loss) == pytest.approx(float(manual_loss), rel=1e-5)
    for a, b in zip(pyro_grads, manual_grads, strict=True):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max()))


def test_resumed_gpu_training_takes_the_same_steps(digits, tmp_path):
    def fresh():
        pyro.set_rng_seed(0)
        return VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))

    options = dict(epochs=3, lr=3e-3, device="cuda", progress=False, compile="off")
    straight = fresh()
    expected = train(straight, digits, **options)
    vae, path, calls = fresh(), tmp_path / "checkpoint.pt", iter(range(1, 1000))
    with pytest.raises(TrainingInterrupted):
        train(
            vae,
            digits,
            checkpoint=lambda s: save_checkpoint(path, vae, s, device="cuda"),
            stop=lambda: next(calls) == 17,
            **options,
        )
    saved = load_checkpoint(path)
    resumed = fresh()
    resumed.load_state_dict(saved["model"])
    history = train(resumed, digits, resume=train_state(saved), **options)
    assert history.train_elbo == pytest.approx(expected.train_elbo, rel=1e-5)
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # Adam's step counters on the GPU, capturable: the compiled step's graph updates them there
    settings = dict(batch_size=128, lr=3e-3, device="cuda", seed=0, binarization="dynamic",
        compile="off")
    trainer = Trainer(fresh(), digits, *training_sections(None, "trace", settings))
    trainer.restore(train_state(saved))
    optimizer = trainer.step.optimizer
    assert all(s["step"].is_cuda for s in optimizer.state.values())
    assert optimizer.param_groups[0]["capturable"]
    assert all(s["exp_avg"].is_cuda for s in optimizer.state.values())


def test_compiled_training_on_the_gpu_agrees_with_eager(digits):
    runs = {}
    for mode in ("off", "on"):
        pyro.set_rng_seed(0)
        vae = VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))
        runs[mode] = train(vae, digits, epochs=3, device="cuda", progress=False, compile=mode)
    assert runs["on"].compile.startswith("compiled the training step in ")
    for a, b in zip(runs["on"].step_loss, runs["off"].step_loss, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b)


def test_the_compiled_step_on_the_gpu_is_one_cuda_graph_and_resumes_bit_for_bit(digits, tmp_path):
    options = dict(epochs=3, lr=3e-3, device="cuda", progress=False, compile="on")
    settings = dict(batch_size=128, lr=3e-3, device="cuda", seed=0, binarization="dynamic",
        compile="on")
    pyro.set_rng_seed(0)
    trainer = Trainer(VAE(digits.x_shape, z_dim=4, hidden_dims=(32,)), digits,
        *training_sections(None, "trace", settings))
    expected = trainer.fit(3, progress=False)
    assert isinstance(trainer.step.policy.compiled.fn, CudaGraphReplay)
    pyro.set_rng_seed(0)
    vae, path, calls = VAE(digits.x_shape, z_dim=4, hidden_dims=(32,)), tmp_path / "c.pt", iter(
        range(1, 1000))
    with pytest.raises(TrainingInterrupted):
        train(vae, digits, checkpoint=lambda s: save_checkpoint(path, vae, s, device="cuda"),
            stop=lambda: next(calls) == 17, **options)
    saved = load_checkpoint(path)
    pyro.set_rng_seed(0)
    resumed = VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))
    resumed.load_state_dict(saved["model"])
    history = train(resumed, digits, resume=train_state(saved), **options)
    assert history.step_loss == expected.step_loss
    for a, b in zip(resumed.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_8_bit_images_streamed_to_the_gpu_take_the_steps_kept_ones_do(digits):
    # bytes on the GPU made floats per batch, or gathered by DataLoader workers into pinned memory
    # and copied without blocking: the same batches and draws, the very same numbers
    x8 = (digits.x_train[:600] * 16).round().to(torch.uint8) * 15
    data = type(digits)("digits8", x8, (digits.x_test * 16).round().to(torch.uint8) * 15)
    histories = []
    for stream in (False, True):
        pyro.set_rng_seed(0)
        vae = VAE(data.x_shape, z_dim=4, hidden_dims=(32,), likelihood="discretized-logistic")
        settings = dict(epochs=2, batch_size=100, device="cuda", progress=False, compile="off")
        histories.append(train(vae, data, stream=stream, workers=2, **settings))
    kept, streamed = histories
    assert "kept on cuda" in kept.data and "streamed to cuda" in streamed.data
    assert streamed.step_loss == kept.step_loss and streamed.test_elbo == kept.test_elbo

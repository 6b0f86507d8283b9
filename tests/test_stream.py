"""8-bit data kept as bytes, training sets streamed through a DataLoader, and bits per dimension."""

import importlib
import math

import numpy as np
import pyro
import pytest
import torch
from helpers import metrics

from pyro_vae import VAE, train
from pyro_vae.analysis.evaluation import evaluate, independent_logistic_log_likelihood
from pyro_vae.config import RunConfig, training_sections
from pyro_vae.data.sources import Dataset
from pyro_vae.models import build_model
from pyro_vae.runs.folder import Run

loader = importlib.import_module("pyro_vae.data.streaming")
trainer_module = importlib.import_module("pyro_vae.training.trainer")
batches_module = importlib.import_module("pyro_vae.training.batches")
OPTIONS = dict(
    epochs=2, batch_size=100, lr=3e-3, device="cpu", seed=5, progress=False, compile="off"
)


def bytes_of(digits):
    """600 of the digits as 8-bit images: grey level k of 16 is the byte 15 k, k/17 after / 255."""
    return Dataset(
        "digits8",
        (digits.x_train[:600] * 16).round().to(torch.uint8) * 15,
        (digits.x_test * 16).round().to(torch.uint8) * 15,
        digits.y_train[:600],
        digits.y_test,
    )


def trained(data, model="vae", likelihood="bernoulli", **options):
    pyro.set_rng_seed(0)
    vae = build_model(model, data.x_shape, 10, z_dim=4, hidden_dims=(32,), likelihood=likelihood)
    history = train(vae, data, **OPTIONS, **options)
    return vae, history


@pytest.mark.parametrize("model", ["vae", "cvae"])
def test_a_streamed_training_set_takes_the_very_same_steps(digits, model):
    data = bytes_of(digits)
    kept_vae, kept = trained(data, model)
    streamed_vae, streamed = trained(data, model, stream=True, workers=1)
    assert "kept on cpu" in kept.data and "streamed to cpu by a DataLoader" in streamed.data
    assert "64 bytes (uint8) each" in kept.data
    # the same batches, the same binarization draws, the same steps: the very same numbers
    assert streamed.train_elbo == kept.train_elbo and streamed.test_elbo == kept.test_elbo
    assert streamed.step_loss == kept.step_loss
    for name, value in kept_vae.state_dict().items():
        assert torch.equal(value, streamed_vae.state_dict()[name]), name


def test_8_bit_data_train_as_their_floats_do():
    # bytes made floats a batch at a time are the values k / 255 of a float32 copy, all 256 of them
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (660, 1, 8, 8), generator=g, dtype=torch.uint8)
    data = Dataset("bytes", x[:600], x[600:])
    floats = Dataset("floats", x[:600] / 255, x[600:] / 255)
    # a Gaussian scores the values themselves: one bit off in any of them would show
    first, second = (trained(d, likelihood="gaussian")[1] for d in (data, floats))
    assert first.step_loss == second.step_loss


def test_a_set_over_the_device_budget_is_streamed_with_the_same_metrics(tmp_path, monkeypatch):
    # an 8-bit npz source, trained in memory and then over a budget it exceeds: same metrics.csv
    g = np.random.default_rng(0)
    x_train, x_test = (
        g.integers(0, 256, (300, 1, 4, 4), np.uint8),
        g.integers(0, 256, (60, 1, 4, 4), np.uint8),
    )
    np.savez(tmp_path / "bytes.npz", x_train=x_train, x_test=x_test)
    config = RunConfig(
        dataset="npz",
        data_path=str(tmp_path / "bytes.npz"),
        z_dim=2,
        hidden_dims=(8,),
        epochs=2,
        batch_size=64,
        compile="off",
        workers=0,
    )
    kept = Run.create(tmp_path / "kept", config)
    assert kept.data.x_train.dtype == torch.uint8 and (kept.data.x_train.numpy() == x_train).all()
    kept.train(progress=False)
    monkeypatch.setattr(
        loader, "DEVICE_DATA_SHARE", 300 * 16 / loader.memory_bytes(torch.device("cpu")) / 2
    )
    streamed = Run.create(tmp_path / "streamed", config)
    streamed.train(progress=False)
    assert "streamed" in streamed.summary["data"] and "more than" in streamed.summary["data"]
    assert metrics(streamed.path) == metrics(kept.path) and len(metrics(kept.path)) == 2


def test_each_rank_streams_only_its_shard_of_every_batch(digits, monkeypatch):
    data, fetched = bytes_of(digits), []
    rows = loader.Rows.__getitem__
    monkeypatch.setattr(loader.Rows, "__getitem__", lambda s, i: fetched.append(i) or rows(s, i))
    monkeypatch.setattr(trainer_module.distributed, "rank_and_world", lambda: (1, 2))
    monkeypatch.setattr(trainer_module.distributed, "broadcast_parameters", lambda vae: None)
    pyro.set_rng_seed(0)
    vae = VAE(data.x_shape, z_dim=2, hidden_dims=(8,), likelihood="gaussian")
    settings = dict(objective="trace", binarization="none", stream=True, workers=0)
    settings.update(batch_size=100, lr=1e-3, device="cpu", seed=5)
    t = trainer_module.Trainer(vae, data, *training_sections(None, None, settings))
    batches = [t.source.prepare(*raw)[0] for _, raw in t.source.epoch(1, 0)]
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(5))
    shards = [index.tensor_split(2)[1] for index in order.split(100)]
    assert [len(i) for i in fetched] == [len(s) for s in shards]  # rank 1's rows, no others
    for batch, shard in zip(batches, shards, strict=True):
        assert torch.equal(batch, data.x_train[shard] / 255)


def test_the_independent_logistic_fitted_to_its_own_samples_costs_their_entropy():
    # values drawn from known discretized logistics: a fitted independent model costs, on held-out
    # ones, their entropy -sum_k P(k) log P(k), computed by hand over the 256 levels
    loc, scale = torch.tensor([0.3, 0.5, 0.8]), torch.tensor([0.05, 0.2, 0.01])
    levels = torch.arange(256) / 255
    edges = torch.cat(
        [torch.tensor([-math.inf]), (levels[:-1] + 0.5 / 255), torch.tensor([math.inf])]
    )
    cdf = torch.sigmoid((edges[None, :] - loc[:, None]) / scale[:, None])
    p = (cdf[:, 1:] - cdf[:, :-1]).double()
    entropy = float(-(p * p.clamp(min=1e-300).log()).sum())
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.multinomial(p[d], 20000, True, generator=g) for d in range(3)], 1) / 255
    nats = independent_logistic_log_likelihood(x[:10000], x[10000:])
    assert -nats == pytest.approx(entropy, abs=0.01)


def test_bits_per_dimension_of_a_discrete_likelihood_on_8_bit_data(digits):
    data = bytes_of(digits)
    pyro.set_rng_seed(0)
    vae = VAE(data.x_shape, z_dim=4, hidden_dims=(32,), likelihood="discretized-logistic")
    train(vae, data, **OPTIONS)
    result = evaluate(vae, data, seed=5, iwae_k=20)
    # 64 values of 8 bits each: -log2 p(x) / 64; the bound tightens with k, and after two epochs
    # neither it nor the fitted independent values come near the 8 bits of knowing nothing
    for key, nats in (
        ("test_bits_per_dim", "test_elbo"),
        ("iwae_bits_per_dim", "iwae_log_likelihood"),
    ):
        assert result[key] == pytest.approx(-result[nats] / (64 * math.log(2)), rel=1e-9)
    assert result["iwae_bits_per_dim"] < result["test_bits_per_dim"] < 6
    assert result["baseline_bits_per_dim"] < 5
    gaussian = VAE(data.x_shape, z_dim=4, hidden_dims=(32,), likelihood="gaussian")
    assert "test_bits_per_dim" not in evaluate(gaussian, data, iwae_k=0)  # a density: no bits

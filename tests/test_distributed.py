"""Data-parallel training under torchrun: 2 processes, gloo, on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pyro_vae import VAE, load_dataset
from pyro_vae.config import training_sections
from pyro_vae.data.sources import binarize_afresh
from pyro_vae.infer.elbo import make_loss
from pyro_vae.models import build_model
from pyro_vae.models.importing import find_program
from pyro_vae.models.user import as_program
from pyro_vae.runs.folder import Run
from pyro_vae.runs.layout import BOARD, CHECKPOINT
from pyro_vae.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is missing")

ROOT = Path(__file__).resolve().parents[1]
SEED, LR, BATCH, EPOCHS = 0, 3e-3, 144, 2  # digits: 1438 images, 10 global batches an epoch
MODEL = dict(z_dim=4, hidden_dims=(32,))

# Each rank trains through pyro_vae.train and saves the weights it ends with. Rank 1 alone is asked
# to stop, at step 13: the ranks agree every 10 steps, so both stop after step 20, the end of epoch
# 2 of 3. The stop callback, asked after every step, also counts the live gradient-sized buffers.
RANK_SCRIPT = f"""
import gc, os, sys, time, pyro, torch, torch.distributed as dist
from pyro_vae import VAE, load_dataset, train
from pyro_vae.training.distributed import main_process_first
from pyro_vae.training.state import TrainingInterrupted
dist.init_process_group("gloo")
with main_process_first():  # as a download would be: rank 0, then the others
    entered = time.monotonic()
    data = load_dataset("digits")
    time.sleep(0.3)
    left = time.monotonic()
pyro.set_rng_seed({SEED})
vae = VAE(data.x_shape, z_dim=4, hidden_dims=(32,))
gradient_bytes = 4 * sum(p.numel() for p in vae.parameters())
buffers, steps = [], iter(range(1, 1000))

def stop():
    gc.collect()
    tensors = [t for t in gc.get_objects() if isinstance(t, torch.Tensor)]
    sizes = {{t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}}
    buffers.append(sum(1 for n in sizes.values() if n >= gradient_bytes))
    return next(steps) == 13 and dist.get_rank() == 1

try:
    train(vae, data, epochs={EPOCHS + 1}, batch_size={BATCH}, lr={LR}, seed={SEED},
          device="cpu", compile="off", progress=False, stop=stop)
except TrainingInterrupted as stopped:
    state = stopped.state
torch.save({{"weights": vae.state_dict(), "train_elbo": state.history.train_elbo,
             "stopped_after": [state.epoch, state.step_in_epoch], "buffers": buffers,
             "data_loaded": [entered, left]}},
           os.path.join(sys.argv[1], f"rank{{dist.get_rank()}}.pt"))
dist.destroy_process_group()
"""


def torchrun(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def single_process_reference(
    world=2, objective="trace", num_particles=1, kl_weights=(1.0, 1.0), program=None
):
    """One process, the same global batches, each shard scored with its rank's random stream;
    the gradients of the shards add up before each Adam step. ``kl_weights``: each epoch's;
    ``program``: the class of your own program to train (``program(x_shape)``), not the VAE."""
    data = load_dataset("digits")
    pyro.set_rng_seed(SEED)
    if program is None:
        vae = VAE(data.x_shape, **MODEL)
    else:
        vae = as_program(program(data.x_shape, z_dim=4, hidden=32), data.x_shape)
    loss_fn = make_loss(vae, objective, num_particles)
    optimizer = torch.optim.Adam(vae.parameters(), lr=LR)
    streams = []
    for rank in range(world):
        pyro.set_rng_seed(SEED + rank)
        streams.append(torch.get_rng_state())
    order = torch.Generator().manual_seed(SEED)
    losses = []
    with torch.random.fork_rng():
        for epoch in range(EPOCHS):
            total = 0.0
            for index in torch.randperm(len(data.x_train), generator=order).split(BATCH):
                for rank, shard in enumerate(index.tensor_split(world)):
                    torch.set_rng_state(streams[rank])
                    loss = loss_fn(binarize_afresh(data.x_train[shard]), kl_weights[epoch])
                    loss.backward()
                    total += loss.item()
                    streams[rank] = torch.get_rng_state()
                optimizer.step()
                optimizer.zero_grad()
            losses.append(-total / len(data.x_train))
    return vae.state_dict(), losses


@pytest.fixture(scope="module")
def reference():
    return single_process_reference()


def assert_close(weights, expected):
    assert weights.keys() == expected.keys()
    for k in expected:
        # ranks run with 1 thread (torchrun's default), this process with more: equal to rounding
        assert torch.allclose(weights[k], expected[k], rtol=1e-4, atol=1e-6), k


def test_two_ranks_train_like_one_process_on_the_same_global_batches(tmp_path, reference):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    torchrun(str(script), str(tmp_path), cwd=tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank1["data_loaded"][0] >= rank0["data_loaded"][1]  # rank 0 read the data first
    # one rank asked to stop, and both stopped after the same step: the end of epoch 2
    assert rank0["stopped_after"] == rank1["stopped_after"] == [EPOCHS, 0]
    for k, v in rank0["weights"].items():  # the same all-reduced steps: bitwise the same weights
        assert torch.equal(v, rank1["weights"][k]), k
    assert rank0["train_elbo"] == rank1["train_elbo"]
    expected_weights, expected_elbo = reference
    assert_close(rank0["weights"], expected_weights)  # 20 steps
    assert rank0["train_elbo"] == pytest.approx(expected_elbo, rel=1e-5)
    # memory does not grow with the steps of an epoch: no step's gradient buffer outlives it
    for rank in (rank0, rank1):
        assert len(rank["buffers"]) == 2 * 10 and len(set(rank["buffers"])) == 1, rank["buffers"]


def test_torchrun_cli_writes_one_run_folder_from_rank_0(tmp_path, reference):
    # compiled: each rank replays its graph of the step; the all-reduce sits between the
    # gradients it returns and Adam's update, so the run still equals the one-process reference
    run_dir = tmp_path / "run"
    flags = ["--dataset", "digits", "--z-dim", "4", "--hidden-dims", "32", "--quiet"]
    flags += ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR)]
    flags += ["--compile", "on", "--tensorboard"]
    result = torchrun("-m", "pyro_vae", "train", *flags, "--out", str(run_dir), cwd=tmp_path)
    assert result.stdout.count("run folder:") == 1  # rank 0 alone reports and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert len(list((run_dir / BOARD).iterdir())) == 1  # one event file: rank 0's
    board = EventAccumulator(str(run_dir / BOARD), size_guidance={"scalars": 0}).Reload()
    assert [event.step for event in board.Scalars("train/loss")] == list(range(1, 2 * 10 + 1))
    run = Run.open(run_dir)
    assert run.state.rng is not None and len(run.state.rng["ranks"]) == 2
    assert_close(run.vae.state_dict(), reference[0])
    assert (run_dir / CHECKPOINT).is_file() and (run_dir / "metrics.csv").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["compile"].startswith("compiled the training step in ")


@pytest.mark.parametrize(
    "flags, reference_settings",
    [
        (["--objective", "iwae", "--num-particles", "3"], dict(objective="iwae", num_particles=3)),
        (  # streamed too: each rank's DataLoader reads its own shard of every batch
            ["--num-particles", "2", "--beta", "0.5", "--kl-warmup", "2", "--stream"],
            dict(num_particles=2, kl_weights=(0.25, 0.5)),
        ),
    ],
    ids=["iwae", "warm-up-with-particles-streamed"],
)
def test_torchrun_trains_the_other_objectives_like_one_process(tmp_path, flags, reference_settings):
    run_dir = tmp_path / "run"
    common = ["--dataset", "digits", "--z-dim", "4", "--hidden-dims", "32", "--quiet"]
    common += ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR)]
    torchrun("-m", "pyro_vae", "train", *common, *flags, "--out", str(run_dir), cwd=tmp_path)
    weights, train_elbo = single_process_reference(**reference_settings)
    assert_close(Run.open(run_dir).vae.state_dict(), weights)
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert [float(line.split(",")[1]) for line in metrics[1:]] == pytest.approx(
        train_elbo, rel=1e-5
    )


def m2_single_process_reference(world=2, labeled=50):
    """M2 on the digits (a Gaussian likelihood: no binarization draws), one process: the global
    batches as the trainer draws them, unlabelled and labelled examples alike cut into the
    ranks' shards, each shard scored with its rank's random stream, the gradients added."""
    data = load_dataset("digits")
    pyro.set_rng_seed(SEED)
    m2 = build_model("m2", data.x_shape, 10, likelihood="gaussian", **MODEL)
    settings = dict(batch_size=BATCH, lr=LR, device="cpu", seed=SEED, binarization="dynamic")
    settings.update(objective="trace", labeled=labeled)
    trainer = Trainer(m2, data, *training_sections(None, None, settings))
    loss_fn, optimizer = make_loss(m2, "trace"), torch.optim.Adam(m2.parameters(), lr=LR)
    streams = []
    for rank in range(world):
        pyro.set_rng_seed(SEED + rank)
        streams.append(torch.get_rng_state())
    with torch.random.fork_rng():
        for epoch in range(1, EPOCHS + 1):
            for _, raw in trainer.source.epoch(epoch, 0):
                batch = trainer.source.prepare(*raw)
                for rank in range(world):
                    torch.set_rng_state(streams[rank])
                    loss_fn(*(t.tensor_split(world)[rank] for t in batch)).backward()
                    streams[rank] = torch.get_rng_state()
                optimizer.step()
                optimizer.zero_grad()
    return m2.state_dict()


def test_torchrun_trains_m2_like_one_process(tmp_path):
    run_dir = tmp_path / "run"
    flags = ["--dataset", "digits", "--z-dim", "4", "--hidden-dims", "32", "--quiet"]
    flags += ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR)]
    flags += ["--model", "m2", "--labeled", "50", "--likelihood", "gaussian"]
    torchrun("-m", "pyro_vae", "train", *flags, "--out", str(run_dir), cwd=tmp_path)
    assert_close(Run.open(run_dir).vae.state_dict(), m2_single_process_reference())


def test_torchrun_trains_your_own_program_like_one_process(tmp_path):
    # a from-scratch Pyro program (examples/own_program.py), named on the command line
    run_dir, example = tmp_path / "run", ROOT / "examples" / "own_program.py"
    flags = ["--dataset", "digits", "--program", f"{example}:TutorialVAE", "--quiet"]
    flags += ["--program-options", '{"z_dim": 4, "hidden": 32}', "--compile", "off"]
    flags += ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR)]
    torchrun("-m", "pyro_vae", "train", *flags, "--out", str(run_dir), cwd=tmp_path)
    tutorial = find_program(f"{example}:TutorialVAE").cls
    weights, train_elbo = single_process_reference(program=tutorial)
    assert_close(Run.open(run_dir).vae.state_dict(), weights)
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert [float(line.split(",")[1]) for line in metrics[1:]] == pytest.approx(
        train_elbo, rel=1e-5
    )

"""Training on two nodes: two ``torchrun --nnodes 2`` commands that meet over a c10d rendezvous on
127.0.0.1, one gloo process each, writing one run folder on a file system both see."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_distributed import BATCH, EPOCHS, LR, assert_close, single_process_reference

from pyro_vae.runs.folder import Run

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is missing")

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--dataset", "digits", "--z-dim", "4", "--hidden-dims", "32", "--quiet"]
FLAGS += ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR)]

# `python -m pyro_vae` with two hooks for the tests. OBSERVE: rank 0 writes its checkpoint slowly
# and rank 1 notes, the moment its Run.save returns, what is on disk (without the wait for rank 0
# it would find the epoch before). FREEZE "R:S": rank R stops dead after its step S (the stop
# callback, asked after every step, never returns), saying so in the file FROZEN, to be killed.
NODE_SCRIPT = """
import json, os, sys, time
from pyro_vae.cli import main
from pyro_vae.runs import folder
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.training.signals import StopOnSignals

rank, log, freeze = int(os.environ["RANK"]), os.environ.get("OBSERVE"), os.environ.get("FREEZE")
if log and rank == 0:
    write = folder.save_checkpoint
    def slow_write(*args, **kwargs):
        time.sleep(0.5)
        write(*args, **kwargs)
    folder.save_checkpoint = slow_write
if log and rank == 1:
    save = folder.Run.save
    def observed(self, state):
        save(self, state)
        file, metrics = self.path / "checkpoint.pt", self.path / "metrics.csv"
        seen = [state.epoch, load_checkpoint(file)["epoch"] if file.exists() else None,
                len(metrics.read_text().splitlines()) - 1 if metrics.exists() else None]
        with open(log, "a") as f:
            f.write(json.dumps(seen) + "\\n")
    folder.Run.save = observed
if freeze:
    who, step = map(int, freeze.split(":"))
    steps = iter(range(1, 10**6))
    def requested(self):
        if rank == who and next(steps) == step:
            with open(os.environ["FROZEN"], "w") as f:  # this worker's and its torchrun's ids
                json.dump([os.getpid(), os.getppid()], f)
            time.sleep(600)
        return self.signum is not None
    StopOnSignals.requested = requested
sys.exit(main(sys.argv[1:]))
"""


# Two processes in a gloo group of their own, without torchrun: rank 0 writes a file slowly, then
# fails to write a second; what each rank sees on leaving main_process_writes goes to RANK.json.
WRITES_SCRIPT = """
import json, sys, time, torch.distributed as dist
from pathlib import Path
from pyro_vae.training.distributed import main_process_writes
folder, rank = Path(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("gloo", init_method=sys.argv[3], rank=rank, world_size=2)
seen = {}
with main_process_writes("the file") as writer:
    if writer:
        time.sleep(0.5)
        (folder / "written").write_text("done")
seen["after the write"] = (folder / "written").exists()
try:
    with main_process_writes("the second file") as writer:
        if writer:
            raise OSError("disk full")
except Exception as e:
    seen["after the failed write"] = f"{type(e).__name__}: {e}"
(folder / f"{rank}.json").write_text(json.dumps(seen))
dist.barrier()  # both ranks still reach each other: none was left waiting
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(tmp_path, name, port, nnodes, node_rank, args, env=(), rdzv_conf=None):
    """One node: its own torchrun, in a process group of its own, output in NAME.out/.err."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes)]
    command += ["--node-rank", str(node_rank), "--nproc-per-node", "1", "--max-restarts", "0"]
    command += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    command += ["--rdzv-conf", rdzv_conf] if rdzv_conf else []
    environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **dict(env))
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen(
            [*command, *args], cwd=tmp_path, env=environment, stdout=out, stderr=err,
            start_new_session=True,
        )  # fmt: skip


def finish(nodes, timeout):
    """Each node's exit status, waiting at most ``timeout`` seconds in all; a node still running
    then is stopped and fails the test."""
    deadline, codes = time.monotonic() + timeout, []
    for node in nodes:
        try:
            codes.append(node.wait(max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            stop(nodes)
            pytest.fail(f"a node was still running after {timeout} s")
    return codes


def stop(nodes):
    """End the nodes still running: SIGTERM, which torchrun passes on to its workers (in sessions
    of their own), then SIGKILL."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for node in nodes:
            if node.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            for node in nodes:
                node.wait(5)


def two_nodes(tmp_path, tag, args, env=()):
    """Train with two nodes; assert both succeed; return their stdout."""
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    port = free_port()
    nodes = [
        start_node(tmp_path, f"{tag}{r}", port, 2, r, [str(script), "train", *args], env)
        for r in range(2)
    ]
    codes = finish(nodes, 120)
    errors = [(tmp_path / f"{tag}{r}.err").read_text()[-3000:] for r in range(2)]
    assert codes == [0, 0], errors
    return [(tmp_path / f"{tag}{r}.out").read_text() for r in range(2)]


def wait_until_frozen(frozen, nodes):
    """The frozen worker's id and its torchrun's, once it has written them to ``frozen``."""
    deadline = time.monotonic() + 90
    while not frozen.exists() or not frozen.read_text():
        assert time.monotonic() < deadline and all(n.poll() is None for n in nodes)
        time.sleep(0.1)
    return json.loads(frozen.read_text())


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory):
    """A run of two nodes, rank 1 noting what it saw on disk after each checkpoint."""
    tmp_path = tmp_path_factory.mktemp("nodes")
    run_dir, log = tmp_path / "run", tmp_path / "seen.jsonl"
    outputs = two_nodes(tmp_path, "node", [*FLAGS, "--out", str(run_dir)], {"OBSERVE": str(log)})
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    return run_dir, outputs, seen


def metrics(run_dir):
    """The run's ``epoch,train_elbo,test_elbo`` rows (the seconds differ from run to run)."""
    return [line.split(",")[:3] for line in (run_dir / "metrics.csv").read_text().splitlines()]


def test_two_nodes_train_like_one_process_on_the_same_global_batches(two_node_run):
    run_dir, outputs, _ = two_node_run
    assert sum(out.count("run folder:") for out in outputs) == 1  # rank 0 alone reports
    run = Run.open(run_dir)
    assert run.state.epoch == EPOCHS and len(run.state.rng["ranks"]) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run, and 20 times faster here than 2 threads
    try:
        weights, train_elbo = single_process_reference()
    finally:
        torch.set_num_threads(threads)
    assert_close(run.vae.state_dict(), weights)
    assert [float(row[1]) for row in metrics(run_dir)[1:]] == pytest.approx(train_elbo, rel=1e-5)


def test_every_rank_waits_for_rank_0s_checkpoint(two_node_run):
    # rank 0 took 0.5 s longer to write, yet when rank 1's save returned, the checkpoint and
    # metrics.csv of the epoch it had just finished were on disk: [epoch, checkpoint's, rows]
    assert two_node_run[2] == [[epoch, epoch, epoch] for epoch in range(1, EPOCHS + 1)]


def test_a_node_killed_mid_epoch_leaves_its_checkpoint_and_the_run_resumes(tmp_path, two_node_run):
    run_dir, frozen, script = tmp_path / "run", tmp_path / "frozen.json", tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    port, args = free_port(), [str(script), "train", *FLAGS, "--out", str(run_dir)]
    env = {"FREEZE": "0:13", "FROZEN": str(frozen)}  # rank 0, the writer, at step 3 of epoch 2
    nodes = [start_node(tmp_path, f"node{r}", port, 2, r, args, env) for r in range(2)]
    try:
        worker, launcher = wait_until_frozen(frozen, nodes)
    except BaseException:
        stop(nodes)
        raise
    killed_at = time.monotonic()
    for pid in (launcher, worker):  # the node dies: its torchrun and its worker (a session apart)
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    (survivor,) = [r for r, n in enumerate(nodes) if n.pid != launcher]
    assert finish([nodes[survivor]], 30) == [1]
    took = time.monotonic() - killed_at
    print(f"the other node ended {took:.1f} s after the kill")
    assert took < 15
    # its all-reduce failed, and torchrun (--max-restarts 0) gave up at once
    assert "Connection closed by peer" in (tmp_path / f"node{survivor}.err").read_text()
    run = Run.open(run_dir)  # the checkpoint of epoch 1, whole, and metrics.csv with it
    assert (run.state.epoch, run.state.step_in_epoch) == (1, 0)
    assert len(metrics(run_dir)) == 1 + 1
    two_nodes(tmp_path, "resumed", ["--out", str(run_dir), "--resume", "--quiet"])
    # bitwise the run that was never interrupted, to its last figure
    resumed, uninterrupted = Run.open(run_dir), Run.open(two_node_run[0])
    assert resumed.state.epoch == EPOCHS
    for k, v in uninterrupted.vae.state_dict().items():
        assert torch.equal(resumed.vae.state_dict()[k], v), k
    assert metrics(run_dir) == metrics(two_node_run[0])


def test_nodes_that_disagree_on_nnodes_fail_at_the_rendezvous_timeout(tmp_path):
    # the first node (--nnodes 2) hosts the rendezvous; the second says 3: the one waits for a
    # second node of its own count, the other for a third, until join_timeout, and both end
    port, args = free_port(), ["-m", "pyro_vae", "train", *FLAGS, "--out", str(tmp_path / "run")]
    started, conf = time.monotonic(), "join_timeout=5"
    first = start_node(tmp_path, "first", port, 2, 0, args, rdzv_conf=conf)
    while not listening(port):  # its rendezvous store is up
        assert first.poll() is None and time.monotonic() - started < 30
        time.sleep(0.1)
    second = start_node(tmp_path, "second", port, 3, 1, args, rdzv_conf=conf)
    assert finish([first, second], 60) == [1, 1]
    took = time.monotonic() - started
    print(f"both nodes ended {took:.1f} s after the first started")
    assert took < 40  # 5 s of join_timeout after the agents start, not torchrun's default 600 s
    last = [
        (tmp_path / f"{name}.err").read_text().strip().splitlines()[-1]
        for name in ("first", "second")
    ]
    assert last[0] == "torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError", last
    # the second finds the rendezvous closed, or its store gone with the first node's torchrun
    error = r"torch\.distributed\.elastic\.rendezvous\.api\.Rendezvous(Closed|Connection)Error"
    assert re.match(error, last[1]), last
    assert not (tmp_path / "run").exists()  # no worker ever started


def test_every_rank_learns_that_rank_0s_write_failed_rather_than_wait(tmp_path):
    script, url = tmp_path / "writes.py", f"tcp://127.0.0.1:{free_port()}"
    script.write_text(WRITES_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), str(r), url],
            env=env,
            start_new_session=True,  # finish() kills its process group should it hang
        )
        for r in range(2)
    ]
    assert finish(ranks, 60) == [0, 0]
    seen = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert seen[0] == {"after the write": True, "after the failed write": "OSError: disk full"}
    assert seen[1] == {
        "after the write": True,  # rank 1 left only once rank 0 had written, 0.5 s later
        "after the failed write": "PyroVAEError: rank 0 could not write the second file; "
        "its own error says why",
    }

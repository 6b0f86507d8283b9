"""The README's Python snippets run as written, in the order a reader meets them, on the digits
and, for "From Python", on an 8-bit source stored as uint8 (issue 25: ``vae.encode`` crashed on
Fashion-MNIST's bytes).

Each runs in a fresh process, in a scratch folder, with what the README leaves to its reader:
``MyPrior`` (the Cauchy prior of ``examples/custom_prior.py``) and ``runs/demo`` (what
``make demo`` writes; here the run the snippets themselves trained). The digits are cut to their
first 256 training and 64 test examples, so that the README's epochs and particles run in
seconds: the code is the README's, character for character.
"""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)

PREAMBLE = f"""
import dataclasses, os, sys
import pyro_vae, pyro_vae.data

load_digits = pyro_vae.data.sources._load_digits  # the loader load_dataset("digits") calls
def fewer_digits():
    d = load_digits()
    return dataclasses.replace(d, x_train=d.x_train[:256], y_train=d.y_train[:256],
                               x_test=d.x_test[:64], y_test=d.y_test[:64])
pyro_vae.data.sources._load_digits = fewer_digits

sys.path.insert(0, {str(ROOT / "examples")!r})
from custom_prior import CauchyPrior as MyPrior
"""

# After the run folder of "From Python": the folder the evaluation snippet opens.
DEMO = "os.symlink('digits', 'runs/demo')\n"


def run_snippets(snippets, cwd):
    script = PREAMBLE
    for i, code in enumerate(snippets):
        script += f"exec(compile({code!r}, 'README.md python snippet {i + 1}', 'exec'))\n"
        if "Run.create" in code:
            script += DEMO
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def printed_evaluation(stdout):
    """The dict that ``print(pyro_vae.evaluate(...))`` printed."""
    line = next(line for line in stdout.splitlines() if line.startswith("{'test_elbo'"))
    return ast.literal_eval(line)


def test_the_readmes_python_snippets_run_as_written(tmp_path):
    assert len(SNIPPETS) >= 6 and "vae.encode(data.x_test[:5])" in SNIPPETS[0]
    stdout = run_snippets(SNIPPETS, tmp_path)
    figures = printed_evaluation(stdout)
    assert figures["iwae_k"] == 1000 and figures["num_test"] == 64
    assert figures["test_elbo"] < figures["iwae_log_likelihood"] < 0  # log p(x) >= IWAE >= ELBO
    run = tmp_path / "runs" / "digits"
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["iwae_k"] == 5000 and evaluation["epoch"] == 80
    written = {p.name for p in run.iterdir()}
    assert {"samples.png", "reconstructions.png", "checkpoint.pt"} <= written


@pytest.fixture
def digits_as_bytes(digits, tmp_path):
    """The digits as an 8-bit source stores them: uint8, 0-255."""
    path = tmp_path / "digits8.npz"
    as_bytes = {"x_train": digits.x_train[:256], "x_test": digits.x_test[:64]}
    arrays = {k: np.round(v.numpy() * 255).astype(np.uint8) for k, v in as_bytes.items()}
    labels = {"y_train": digits.y_train[:256].numpy(), "y_test": digits.y_test[:64].numpy()}
    np.savez(path, **arrays, **labels)
    return path


def test_from_python_runs_as_written_on_a_source_of_bytes(digits_as_bytes, tmp_path):
    source = 'pyro_vae.load_dataset("digits")'
    assert source in SNIPPETS[0]
    bytes_source = f'pyro_vae.load_dataset("npz", data_path={str(digits_as_bytes)!r})'
    snippet = SNIPPETS[0].replace(source, bytes_source)
    check = "\nassert data.x_test.dtype == torch.uint8 and loc.shape == (5, 8)\n"
    stdout = run_snippets([snippet + "import torch" + check], tmp_path)
    figures = printed_evaluation(stdout)
    assert figures["test_elbo"] < figures["iwae_log_likelihood"] < 0

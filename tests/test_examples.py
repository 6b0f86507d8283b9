"""Every example script runs, for a few steps, as its README says."""

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script, *args, cwd=None):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# Each script's --help, run as a script (runpy) in one process: a process each would import torch
# and Pyro ten times over; one of its own keeps the scripts' registrations out of this one.
HELP_ALL = """
import contextlib, io, runpy, sys
for path in sys.argv[1:]:
    sys.argv, out = [path, "--help"], io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_path(path, run_name="__main__")
    print(path, "usage:" in out.getvalue())
"""


def test_every_example_has_help():
    scripts = sorted(str(p) for p in EXAMPLES.glob("*.py"))
    result = subprocess.run(
        [sys.executable, "-c", HELP_ALL, *scripts], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [word for path in scripts for word in (path, "True")]


def test_train_digits(tmp_path):
    out = run("train_digits.py", "--epochs", "2", "--out", tmp_path)
    assert "test ELBO -" in out
    assert {p.name for p in tmp_path.iterdir()} == {
        "elbo.png",
        "reconstructions.png",
        "samples.png",
    }


def test_own_program_trains_a_tutorial_vae_and_equals_plain_svi():
    out = run("own_program.py", "--epochs", "1", "--iwae-k", "10", "--check-epochs", "1",
              "--compile", "off")  # fmt: skip
    assert "trained: test ELBO -" in out and "IWAE estimate of log p(x), k = 10: -" in out
    assert "compile off: 12 of 12 steps' losses equal to the last bit" in out


def write_idx_folder(folder: Path) -> None:
    """Four tiny gzipped IDX files, as the MNIST family ships them."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            header = np.array([magic, *array.shape], dtype=">i4").tobytes()
            path = folder / f"{prefix}-{kind}-ubyte.gz"
            path.write_bytes(gzip.compress(header + array.tobytes()))


def test_train_mnist_from_a_folder_of_idx_files(tmp_path):
    write_idx_folder(tmp_path / "fashion")
    out = run(
        "train_mnist.py",
        "--data-dir",
        tmp_path / "fashion",
        "--epochs",
        "1",
        "--iwae-k",
        "2",
        "--z-dim",
        "4",
        "--out",
        tmp_path / "pictures",
    )
    assert "fashion-mnist: test ELBO -" in out
    assert (tmp_path / "pictures" / "samples.png").exists()


def test_swap_prior_and_likelihood(tmp_path):
    out = run("swap_prior.py", "--prior", "mog", "--epochs", "1", "--out", tmp_path)
    assert "standard-normal: test ELBO" in out and "mog: test ELBO" in out
    out = run(
        "swap_likelihood.py",
        "--likelihood",
        "discretized-logistic",
        "--epochs",
        "1",
        "--out",
        tmp_path,
    )
    assert "discretized-logistic: test ELBO" in out
    assert (tmp_path / "reconstructions-discretized-logistic.png").exists()


def test_check_elbo_example():
    out = run("check_elbo.py", "--prior", "mog", "--guide", "full-rank", "--epochs", "1")
    assert "all equalities hold" in out


def test_inspect_posterior_example(tmp_path):
    out = run(
        "inspect_posterior.py",
        "--epochs",
        "2",
        "--inputs",
        "2",
        "--nuts-samples",
        "60",
        "--out",
        tmp_path,
    )
    assert "NUTS r-hat <=" in out and "amortization gap" in out
    assert {p.name for p in tmp_path.iterdir()} == {"latent.png", "khat.png", "guide-vs-nuts.png"}


def test_semi_supervised_example_learns_the_classes():
    # the textbook SVI loop, TraceEnum_ELBO and the auxiliary SVI, on the digits' 50 labels
    out = run("semi_supervised.py", "--epochs", "10")
    accuracies = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "accuracy" in line]
    assert len(accuracies) == 5 and accuracies[-1] > 0.5  # chance: 0.1


def test_colour_images_on_the_photos(tmp_path):
    out = run(
        "colour_images.py", "--epochs", "1", "--limit", "128", "--iwae-k", "2", "--out", tmp_path
    )
    assert "photos: 128 training and 128 test examples of shape (3, 32, 32)" in out
    assert "test bits per dimension: " in out and "independent pixels: " in out
    assert {p.name for p in tmp_path.iterdir()} == {"reconstructions.png", "samples.png"}

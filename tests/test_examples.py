import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_train_digits_example_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "train_digits.py"),
            "--epochs",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "test ELBO -" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} == {
        "elbo.png",
        "reconstructions.png",
        "samples.png",
    }

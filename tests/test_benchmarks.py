"""Smoke tests of the benchmark scripts: a handful of steps on random data, into a temporary
folder. They check that the scripts run and write complete tables, not how fast anything is."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str, cwd: Path) -> Path:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--device", "cpu", "--data", "random", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.fixture(scope="module")
def train_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    md = run_script(
        "bench_train.py",
        "--max-steps", "3",
        "--epochs", "1",
        "--batch-sizes", "64,256",
        "--out", str(out),
        "--scaling",
        "--scaling-steps", "2",
        "--scaling-epochs", "1",
        "--scaling-batch-sizes", "32,64",
        "--scaling-hidden", "16,32",
        "--scaling-z-dims", "2,4",
        cwd=out,
    )  # fmt: skip
    return out, md


def test_bench_train_writes_every_variant_and_finite_ratios(train_results):
    out, md = train_results
    assert md.parent == out and md.name.startswith("cpu-") and md.suffix == ".md"
    text = md.read_text()
    for variant in ("svi", "manual", "pyro-naive", "floor"):
        for batch in (64, 256):
            assert f"| {batch} | {variant} |" in text
    assert "## Machine" in text and "python " in text and "load average" in text
    assert "svi/manual <= 1.1" in text  # the CPU targets, checked at batch 256
    results = json.loads(md.with_suffix(".json").read_text())["train"]
    assert {(r["batch"], r["variant"]) for r in results["results"]} == {
        (b, v) for b in (64, 256) for v in ("svi", "manual", "pyro-naive")
    }
    for r in results["results"]:
        assert r["steps"] == 3 and len(r["seconds"]) == 1 and r["median"] > 0
    for ratios in results["ratios"].values():
        assert set(ratios) == {"svi/manual", "pyro-naive/svi", "svi/floor"}
        assert all(finite(v) and v > 0 for v in ratios.values())
    assert len(results["targets"]) == 3


def test_bench_train_scaling_writes_a_plot_and_table(train_results):
    out, md = train_results
    scaling = json.loads(md.with_suffix(".json").read_text())["train-scaling"]
    assert len(scaling["points"]) == 6
    assert all(finite(p["svi"]) and finite(p["manual"]) for p in scaling["points"])
    assert (out / scaling["plot"]).stat().st_size > 10_000
    assert "## Scaling of the epoch time" in md.read_text()


def test_bench_iwae_writes_both_variants_and_the_sweep(tmp_path):
    md = run_script(
        "bench_iwae.py",
        "--num-images", "20",
        "--k", "10",
        "--scaling-k", "1,5",
        "--scaling-images", "20",
        "--repeats", "1",
        "--out", str(tmp_path),
        cwd=tmp_path,
    )  # fmt: skip
    text = md.read_text()
    assert "## IWAE evaluation" in text and "| manual | 10 | 20 |" in text
    assert "| pyro | 10 | 20 |" in text
    results = json.loads(md.with_suffix(".json").read_text())["iwae"]
    manual, pyro_row = results["main"]
    assert finite(manual["seconds_10000"]) and finite(pyro_row["seconds_10000"])
    # Same seed, same draws: Pyro's traces and the hand-written bound agree.
    assert manual["iwae"] == pytest.approx(pyro_row["iwae"], rel=1e-5)
    assert {(r["variant"], r["k"]) for r in results["sweep"]} == {
        (v, k) for v in ("manual", "pyro") for k in (1, 5)
    }
    assert (tmp_path / results["plot"]).exists()


def test_bench_train_refuses_an_unknown_variant(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_train.py"), "--variants", "svi,fast"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "--variants" in result.stderr


def test_the_overhead_probes_run_every_variant(tmp_path):
    candidates = run_script(
        "candidates.py", "--max-steps", "3", "--rounds", "1", "--out", str(tmp_path), cwd=tmp_path
    )
    text = candidates.read_text()
    for config in ("svi+torch-bernoulli", "manual+fused-adam", "svi+fused-adam+no-module+no-item"):
        assert f"| {config} |" in text
    overhead = run_script(
        "svi_overhead.py", "--rounds", "1", "--steps", "2", "--batch-sizes", "64",
        "--no-profile", "--out", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert "| svi+no-module+no-item |" in overhead.read_text()

"""The IWAE estimate's k and time (issue 28): ``iwae_k="auto"`` picks k from the job's size and
the device type, never a clock; the estimate says how long it will take before the pass goes on;
a k that is given is kept; M2's chunks, every label at once, compile to the eager numbers."""

import json
import re

import pytest
import torch

from pyro_vae import VAE, evaluate
from pyro_vae.analysis import evaluation
from pyro_vae.analysis.evaluation import (
    AUTO_K,
    AUTO_K_SECONDS,
    choose_iwae_k,
    iwae_estimate,
    reckoned_iwae_seconds,
)
from pyro_vae.cli import main
from pyro_vae.data.sources import eval_inputs
from pyro_vae.errors import ConfigError
from pyro_vae.infer.compiling import CompiledLoss
from pyro_vae.models import build_model

LINE = r"pyro-vae: IWAE k={k}{auto}: about \d+ (s|min|h) on cpu for {n} examples"


def small(digits, seed=0):
    torch.manual_seed(seed)
    return VAE(digits.x_shape, z_dim=4, hidden_dims=(32,))


def test_auto_k_is_the_largest_that_fits_and_shrinks_as_the_job_grows(digits):
    vae = small(digits)
    x = eval_inputs(vae.likelihood, digits.x_test)
    assert choose_iwae_k(vae, x) == (1000, True) == choose_iwae_k(vae, x, "auto")
    chosen = []
    for n in (10**5, 10**6, 10**7):  # the digits' first image, n times (a view: no memory)
        many = x[:1].expand(n, -1, -1, -1)
        k, auto = choose_iwae_k(vae, many)
        assert auto and choose_iwae_k(vae, many) == (k, True)  # the same k every time
        seconds = {c: reckoned_iwae_seconds(vae, many, c) for c in AUTO_K}
        assert seconds[k] <= AUTO_K_SECONDS or k == AUTO_K[-1]
        assert all(seconds[c] > AUTO_K_SECONDS for c in AUTO_K if c > k)  # the largest that fits
        chosen.append(k)
    assert chosen[0] > chosen[1] > chosen[2]
    assert choose_iwae_k(vae, x, 7) == (7, False)  # a number is kept, whatever the job


def test_auto_k_for_the_issues_fashion_mnist_models_on_a_cpu():
    # 10,000 test images of 28x28: a 784-400-50 VAE gets k = 1000, an M2 summing ten labels 200,
    # about 4 minutes of its reckoned 21 at k = 1000 (on 2 cores: 19.6 min measured, compiled)
    x = torch.zeros(1, 1, 28, 28).expand(10_000, -1, -1, -1)
    labels = torch.zeros(10_000, dtype=torch.long)
    expected = {"vae": (1000, 60, 180), "cvae": (1000, 60, 180), "m2": (200, 180, 300)}
    for name, (k, low, high) in expected.items():
        model = build_model(name, (1, 28, 28), 10, z_dim=50, hidden_dims=(400,))
        assert choose_iwae_k(model, x, labels=labels) == (k, True), name
        assert low < reckoned_iwae_seconds(model, x, k, labels=labels) < high, name
        at_1000 = reckoned_iwae_seconds(model, x, 1000, labels=labels)
        assert at_1000 > 15 * 60 if name == "m2" else at_1000 < AUTO_K_SECONDS


def test_the_time_is_said_before_the_pass_goes_on(digits, capsys, monkeypatch):
    vae = small(digits)
    x = eval_inputs(vae.likelihood, digits.x_test)
    seen, chunk = [], vae.iwae_chunk

    def recording(x, particles, *cond):  # stderr so far, at each chunk
        seen.append((particles, capsys.readouterr().err))
        return chunk(x, particles, *cond)

    monkeypatch.setattr(vae, "iwae_chunk", recording)
    iwae_estimate(vae, x, 2000, seed=0)  # chunks of 730, 730 and 540 particles
    said = re.compile(LINE.format(k=2000, auto="", n=359))
    assert [p for p, _ in seen] == [730, 730, 540]
    # said once the first two chunks are timed, before the third (here the last) runs
    assert not said.search(seen[0][1] + seen[1][1]) and said.search(seen[2][1])
    assert "100%" in capsys.readouterr().err  # and the bar ends after it
    iwae_estimate(vae, x, 2000, seed=0, progress=False)
    assert capsys.readouterr().err == ""


def test_evaluate_records_the_k_it_used_and_says_whether_it_chose_it(digits, capsys, monkeypatch):
    vae = small(digits)
    result = evaluate(vae, digits, seed=1)
    assert result["iwae_k"] == 1000 and result["iwae_k_auto"] is True
    assert re.search(LINE.format(k=1000, auto=r" \(auto\)", n=359), capsys.readouterr().err)
    given = evaluate(vae, digits, seed=1, iwae_k=7)
    assert given["iwae_k"] == 7 and given["iwae_k_auto"] is False
    assert re.search(LINE.format(k=7, auto="", n=359) + "\n", capsys.readouterr().err)
    assert evaluate(vae, digits, iwae_k=0, progress=False)["iwae_log_likelihood"] is None
    # a budget the digits' k = 1000 does not fit: a smaller k, and what 1000 would have taken
    budget = reckoned_iwae_seconds(vae, eval_inputs(vae.likelihood, digits.x_test), 300)
    monkeypatch.setattr(evaluation, "AUTO_K_SECONDS", budget)
    tight = evaluate(vae, digits, seed=1)
    assert tight["iwae_k"] == 200 and tight["iwae_k_auto"] is True
    line = LINE.format(k=200, auto=r" \(auto\)", n=359) + r"; k=1000 would take about \d+ s"
    assert re.search(line, capsys.readouterr().err)
    again = evaluate(vae, digits, seed=1, progress=False)
    assert again["iwae_log_likelihood"] == tight["iwae_log_likelihood"]  # seeded, and k too
    with pytest.raises(ConfigError, match="iwae_k must be 'auto' or a whole number, got 'all'"):
        evaluate(vae, digits, iwae_k="all")


def test_m2s_compiled_iwae_bound_equals_its_eager_one(digits, monkeypatch):
    m2 = build_model("m2", digits.x_shape, 10, z_dim=2, hidden_dims=(8,))
    x = eval_inputs(m2.likelihood, digits.x_test)
    # 150 particles of ten labels each: chunks of 73, 73 and 4 (2**24 numbers at most)
    assert m2.iwae_chunk_size(x, 150) == 73
    eager = iwae_estimate(m2, x, 150, seed=2, progress=False)
    replays, replay = [], CompiledLoss.__call__
    monkeypatch.setattr(CompiledLoss, "__call__", lambda s, *a: replays.append(1) or replay(s, *a))
    compiled = iwae_estimate(m2, x, 150, seed=2, progress=False, compile="on")
    assert eager.compile == "off" and compiled.compile.startswith("compiled the IWAE bound in ")
    assert len(replays) == 2  # the two full chunks, every label in one graph; the last eager
    assert compiled.value == pytest.approx(eager.value, rel=1e-6)
    torch.testing.assert_close(compiled.per_example, eager.per_example, rtol=1e-5, atol=1e-4)


def test_auto_compile_decides_after_the_first_chunk_of_a_pass_of_batches(digits):
    vae = small(digits)
    x = eval_inputs(vae.likelihood, torch.cat([digits.x_train] * 2))  # 2876: 2 full batches
    estimate = iwae_estimate(vae, x, 20, progress=False, compile="auto")
    # a chunk of 20 particles a full batch, the first timed: the one ahead cannot repay a compile
    assert re.match(r"the IWAE bound stays eager: .* over the 1 calls ahead", estimate.compile)
    one = iwae_estimate(vae, x[:1438], 20, progress=False, compile="auto")  # 1 full batch
    assert one.compile == "the IWAE bound stayed eager: too few batches to decide"


def test_the_command_line_takes_auto_and_says_the_time(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--epochs", "1", "--z-dim", "2", "--hidden-dims", "16", "--quiet"]
    assert main(["train", *flags, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    evaluation_json = json.loads((out / "evaluation.json").read_text())
    assert evaluation_json["iwae_k"] == 1000 and evaluation_json["iwae_k_auto"] is True
    printed = capsys.readouterr()
    assert re.search(LINE.format(k=1000, auto=r" \(auto\)", n=359), printed.err)
    assert "iwae_k: 1000\niwae_k_auto: True\n" in printed.out
    assert main(["evaluate", str(out), "--iwae-k", "auto", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["score", str(out), "--quiet"]) == 0
    assert "examples of digits (IWAE k=1000); means:" in capsys.readouterr().out

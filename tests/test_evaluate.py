import json

import pyro
import pytest
import torch

from pyro_vae import VAE, evaluate, score
from pyro_vae.analysis.evaluation import iwae_log_likelihood, kl_per_dim
from pyro_vae.cli import main
from pyro_vae.data.sources import eval_inputs
from pyro_vae.infer.elbo import iwae_bound, manual_elbo


def test_evaluation_has_every_figure_and_repeats_with_its_seed(digits, trained_vae):
    first = evaluate(trained_vae, digits, seed=3, iwae_k=50)
    assert set(first) >= {
        "test_elbo",
        "iwae_log_likelihood",
        "iwae_k",
        "kl_per_dim",
        "active_units",
        "seed",
    }
    assert first == evaluate(trained_vae, digits, seed=3, iwae_k=50)
    other = evaluate(trained_vae, digits, seed=4, iwae_k=50)
    assert other["iwae_log_likelihood"] != first["iwae_log_likelihood"]
    assert first["iwae_k"] == 50 and first["seed"] == 3
    assert 0 <= first["active_units"] <= 6 and len(first["kl_per_dim"]) == 6
    # a lower bound on log p(x) tighter than the ELBO
    assert first["test_elbo"] < first["iwae_log_likelihood"]


def test_long_work_shows_progress_from_python_unless_told_not_to(digits, trained_vae, capsys):
    # issue 25: evaluate ran for minutes in silence from Python while the CLI showed a bar
    x = eval_inputs(trained_vae.likelihood, digits.x_test[:50])
    for long_work in (
        lambda **kw: evaluate(trained_vae, digits, iwae_k=10, **kw),
        lambda **kw: score(trained_vae, x, 10, **kw),
        lambda **kw: iwae_log_likelihood(trained_vae, x, 10, **kw),
    ):
        long_work()
        assert "IWAE k=10: 100%" in capsys.readouterr().err
        long_work(progress=False)
        assert capsys.readouterr().err == ""


def test_iwae_log_likelihood_rises_with_k_and_batches_do_not_matter(digits, trained_vae):
    x = eval_inputs(trained_vae.likelihood, digits.x_test)
    estimates = [iwae_log_likelihood(trained_vae, x, k, seed=0) for k in (1, 10, 100)]
    assert estimates[0] < estimates[1] < estimates[2]
    torch.manual_seed(0)
    direct = iwae_bound(trained_vae, x, 10).mean().item()
    assert estimates[1] == pytest.approx(direct, rel=1e-6)  # one batch: the same draws
    state = torch.get_rng_state()
    iwae_log_likelihood(trained_vae, x, 10, seed=0)
    assert torch.equal(state, torch.get_rng_state())


def test_kl_per_dim_adds_up_to_the_elbos_kl_term(digits, trained_vae):
    x = eval_inputs(trained_vae.likelihood, digits.x_test)
    per_dim = kl_per_dim(trained_vae, x)
    # By hand: KL(N(mu, sigma^2) || N(0, 1)) = (mu^2 + sigma^2 - 1) / 2 - log sigma, each
    # dimension alone, averaged over the examples (in float64, from the guide's loc and scale)
    with torch.no_grad():
        mu, sigma = (t.double() for t in trained_vae.encode(x))
    by_hand = ((mu**2 + sigma**2 - 1) / 2 - sigma.log()).mean(0)
    assert per_dim == pytest.approx(by_hand.tolist(), rel=1e-5, abs=1e-6)
    assert sum(per_dim) > 0.5  # KLs that matter, so that the comparison above can fail
    # and together they are the KL term of the ELBO: the ELBO at KL weight 0 less that at 1
    with torch.no_grad():
        elbo = {}
        for w in (0.0, 1.0):
            torch.manual_seed(0)
            elbo[w] = float(manual_elbo(trained_vae, x, analytic_kl=True, kl_weight=w))
    assert len(x) * sum(per_dim) == pytest.approx(elbo[0.0] - elbo[1.0], rel=1e-5)


def test_kl_per_dim_by_sampling_and_where_undefined(digits):
    pyro.set_rng_seed(0)
    student = VAE(digits.x_shape, z_dim=3, hidden_dims=(16,), prior="student-t")
    x = eval_inputs(student.likelihood, digits.x_test[:50])
    sampled = kl_per_dim(student, x, num_samples=4000)
    with torch.no_grad():  # the same KL from a single large Monte Carlo average over all dims
        q, p = student.posterior_dist(x), student.prior(len(x), x)
        z = q.rsample((4000,))
        total = float((q.log_prob(z) - p.log_prob(z)).mean())
    assert sum(sampled) == pytest.approx(total, rel=0.02)
    assert kl_per_dim(VAE(digits.x_shape, z_dim=3, prior="mog"), x) is None
    assert kl_per_dim(VAE(digits.x_shape, z_dim=3, guide="full-rank"), x) is None


def test_cli_evaluate_writes_evaluation_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--z-dim", "4", "--out", str(out), "--quiet"]) == 0
    assert main(["evaluate", str(out), "--iwae-k", "20", "--quiet"]) == 0
    first = json.loads((out / "evaluation.json").read_text())
    assert first["iwae_k"] == 20 and len(first["kl_per_dim"]) == 4
    assert first["iwae_log_likelihood"] > first["test_elbo"]
    printed = capsys.readouterr().out
    assert "iwae_log_likelihood: " in printed and "kl_per_dim: [" in printed
    assert main(["evaluate", str(out), "--iwae-k", "20", "--quiet"]) == 0
    assert json.loads((out / "evaluation.json").read_text()) == first

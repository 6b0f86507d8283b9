"""Pyro's objectives against the hand-written ELBO: the proof that the Pyro program computes the
maths. Every registered prior x likelihood x guide is checked, so a part added later is too."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import covering_combinations, loss_and_grads, make, renyi_loss_and_grads
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, ConfigError, train
from pyro_vae.analysis.evaluation import kl_per_dim
from pyro_vae.cli import main
from pyro_vae.data.sources import eval_inputs
from pyro_vae.infer.elbo import (
    dataset_elbo,
    elbo_terms,
    iwae_bound,
    iwae_dreg_gradients,
    log_weight_terms,
    make_loss,
    manual_elbo,
)
from pyro_vae.parts.guides import DiagonalNormal

COMBINATIONS = [pytest.param(*combo, id="-".join(combo)) for combo in covering_combinations()]
TOLERANCE = 1e-5
IWAE_TOLERANCE = 1e-4  # the weights exp(log w - logsumexp) carry the rounding of log w (check.py)


def assert_equal_to_float32_rounding(vae, pyro_loss_fn, manual_loss_fn, x, bitwise):
    pyro_loss, pyro_grads = loss_and_grads(vae, pyro_loss_fn, x)
    manual_loss, manual_grads = loss_and_grads(vae, manual_loss_fn, x)
    assert abs(pyro_loss - manual_loss) <= TOLERANCE * abs(pyro_loss)
    for a, b in zip(pyro_grads, manual_grads, strict=True):
        assert (a - b).abs().max() <= TOLERANCE * max(1.0, float(a.abs().max()))
    if bitwise:
        # One particle, the explicit-eps path: the very same float32 operations, so the very
        # same gradients. The values may still differ in the last bit: Pyro adds up the sites'
        # sums as Python floats (float64), the manual ELBO in float32.
        assert all(torch.equal(a, b) for a, b in zip(pyro_grads, manual_grads, strict=True))
        assert abs(pyro_loss - manual_loss) <= 2 * torch.finfo(torch.float32).eps * abs(pyro_loss)


def make_with_closed_form_kl(digits, prior, likelihood, guide, encoder):
    """``make``'s VAE and batch; the test is skipped where no closed-form KL exists."""
    vae, x = make(digits, prior, likelihood, guide, encoder)
    try:
        manual_elbo(vae, x, analytic_kl=True)
    except ConfigError:
        pytest.skip(f"no closed-form KL between guide {guide} and prior {prior}")
    return vae, x


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_trace_elbo_equals_the_manual_elbo(
    digits, prior, likelihood, guide, encoder, num_particles
):
    vae, x = make(digits, prior, likelihood, guide, encoder)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    assert_equal_to_float32_rounding(
        vae,
        lambda b: elbo.differentiable_loss(vae.model, vae.guide, b),
        lambda b: -manual_elbo(vae, b, num_particles),
        x,
        bitwise=num_particles == 1 and isinstance(vae.posterior, DiagonalNormal),
    )


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_meanfield_elbo_equals_the_analytic_kl_elbo(
    digits, prior, likelihood, guide, encoder, num_particles
):
    vae, x = make_with_closed_form_kl(digits, prior, likelihood, guide, encoder)
    elbo = TraceMeanField_ELBO(
        num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
    )
    assert_equal_to_float32_rounding(
        vae,
        lambda b: elbo.differentiable_loss(vae.model, vae.guide, b),
        lambda b: -manual_elbo(vae, b, num_particles, analytic_kl=True),
        x,
        bitwise=num_particles == 1 and isinstance(vae.posterior, DiagonalNormal),
    )


# A beta, and a warm-up's weight as the trainer passes it: a 0-dim tensor, an input of the graph
KL_WEIGHTS = [pytest.param(0.5, id="beta-0.5"), pytest.param(torch.tensor(0.3), id="tensor-0.3")]


@pytest.mark.parametrize("kl_weight", KL_WEIGHTS)
@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_weighted_trace_elbo_equals_the_weighted_manual_elbo(
    digits, prior, likelihood, guide, encoder, num_particles, kl_weight
):
    # Pyro's own Trace_ELBO on the model and guide whose z site poutine.scale weighs
    vae, x = make(digits, prior, likelihood, guide, encoder)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    assert_equal_to_float32_rounding(
        vae,
        lambda b: elbo.differentiable_loss(vae.model, vae.guide, b, kl_weight),
        lambda b: -manual_elbo(vae, b, num_particles, kl_weight=kl_weight),
        x,
        bitwise=False,
    )


@pytest.mark.parametrize("kl_weight", KL_WEIGHTS)
@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_weighted_meanfield_elbo_equals_the_weighted_analytic_kl_elbo(
    digits, prior, likelihood, guide, encoder, kl_weight
):
    vae, x = make_with_closed_form_kl(digits, prior, likelihood, guide, encoder)
    elbo = TraceMeanField_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    assert_equal_to_float32_rounding(
        vae,
        lambda b: elbo.differentiable_loss(vae.model, vae.guide, b, kl_weight),
        lambda b: -manual_elbo(vae, b, 2, analytic_kl=True, kl_weight=kl_weight),
        x,
        bitwise=False,
    )


def test_beta_weighs_exactly_the_kl_term(digits):
    # By hand: KL(N(mu, sigma^2) || N(0, 1)) = (mu^2 + sigma^2 - 1) / 2 - log sigma per dimension.
    # With the same draw, ELBO_beta - ELBO_1 = (1 - beta) KL, whatever log p(x|z) is.
    vae, x = make(digits, "standard-normal", "bernoulli", "diagonal", "mlp")
    with torch.no_grad():
        mu, sigma = vae.encode(x)
        kl = ((mu**2 + sigma**2 - 1) / 2 - sigma.log()).sum()
        values = {}
        for beta in (1.0, 0.25, 3.0):
            torch.manual_seed(0)
            values[beta] = manual_elbo(vae, x, analytic_kl=True, kl_weight=beta)
    for beta in (0.25, 3.0):
        assert float(values[beta] - values[1.0]) == pytest.approx((1 - beta) * float(kl), rel=1e-5)
    assert float(kl) > 1.0  # a KL term that matters, so the check above can fail


@pytest.mark.parametrize("num_particles", [2, 5])
@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_pyros_iwae_objective_equals_the_iwae_bound(
    digits, prior, likelihood, guide, encoder, num_particles
):
    vae, x = make(digits, prior, likelihood, guide, encoder)
    pyro_loss, pyro_grads = renyi_loss_and_grads(vae, x, num_particles)
    manual_loss, manual_grads = loss_and_grads(
        vae, lambda b: -iwae_bound(vae, b, num_particles).sum(), x
    )
    assert float(manual_loss) == pytest.approx(pyro_loss, rel=TOLERANCE)
    for a, b in zip(pyro_grads, manual_grads, strict=True):
        assert (a - b).abs().max() <= IWAE_TOLERANCE * max(1.0, float(a.abs().max()))


@pytest.mark.parametrize("num_particles", [1, 5])
@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_pyros_dreg_gradient_equals_the_hand_written_estimator(
    digits, prior, likelihood, guide, encoder, num_particles
):
    if guide != "diagonal":
        pytest.skip("the doubly reparameterized gradient is for the diagonal guide")
    vae, x = make(digits, prior, likelihood, guide, encoder)
    pyro_loss, pyro_grads = loss_and_grads(vae, make_loss(vae, "iwae-dreg", num_particles), x)
    torch.manual_seed(1)
    bound, grads = iwae_dreg_gradients(vae, x, num_particles, list(vae.parameters()))
    assert float(pyro_loss) == pytest.approx(-float(bound), rel=TOLERANCE)
    for a, b in zip(pyro_grads, grads, strict=True):
        assert (a + b).abs().max() <= IWAE_TOLERANCE * max(1.0, float(a.abs().max()))


def test_dreg_changes_the_guides_gradient_and_keeps_the_models(digits):
    # The decoder's gradient is IWAE's; the encoder's drops the score term, which IWAE has.
    vae, x = make(digits, "standard-normal", "bernoulli", "diagonal", "mlp")
    _, iwae = loss_and_grads(vae, make_loss(vae, "iwae", 5), x)
    _, dreg = loss_and_grads(vae, make_loss(vae, "iwae-dreg", 5), x)
    names = [name for name, _ in vae.named_parameters()]
    for name, a, b in zip(names, iwae, dreg, strict=True):
        if name.startswith("decoder"):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
        else:
            assert (a - b).abs().max() > 0.01 * a.abs().max(), name


def pyro_single_sample_elbos(vae, x, n):
    """n single-sample ELBOs of the batch from Pyro's traces, drawn at once in a particle plate,
    as Trace_ELBO(vectorize_particles=True) draws them."""
    with pyro.plate("particles", n, dim=-2):
        guide_trace = poutine.trace(vae.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    log_weight = 0.0
    for trace, sign in ((model_trace, 1), (guide_trace, -1)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample" and site["name"] not in ("data", "particles"):
                log_weight = log_weight + sign * site["log_prob"]
    return log_weight.sum(-1)


def mean_and_standard_error(values):
    values = torch.as_tensor(values, dtype=torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_independent_draws_agree_within_four_standard_errors(
    digits, prior, likelihood, guide, encoder
):
    # No shared random numbers: the agreement is that of two estimators of one quantity.
    vae, x = make(digits, prior, likelihood, guide, encoder, n=8)
    with torch.no_grad():
        torch.manual_seed(10_000)
        pyro_draws = pyro_single_sample_elbos(vae, x, 2000)
        torch.manual_seed(7)
        log_p_x, log_p_z, log_q, _, _ = log_weight_terms(vae, x, 2000)
        manual_draws = (log_p_x + log_p_z - log_q).sum(-1)
    (m1, s1), (m2, s2) = mean_and_standard_error(pyro_draws), mean_and_standard_error(manual_draws)
    assert abs(m1 - m2) < 4 * math.hypot(s1, s2)
    assert s1 > 0 and s2 > 0  # the draws really are random


def elbo_terms_from_pyro_traces(vae, x):
    """log p(x|z) + log p(z) - log q(z|x) per example, for one draw z of Pyro's guide, scored by
    the distributions of Pyro's guide trace and of the model replayed with the guide's z."""
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z = guide_trace.nodes["z"]["value"]
    assert model_trace.nodes["z"]["value"] is z
    return (
        model_trace.nodes["x"]["fn"].log_prob(x)
        + model_trace.nodes["z"]["fn"].log_prob(z)
        - guide_trace.nodes["z"]["fn"].log_prob(z)
    )


@pytest.mark.parametrize("prior,likelihood,guide,encoder", COMBINATIONS)
def test_iwae_with_one_particle_is_pyros_single_sample_elbo(
    digits, prior, likelihood, guide, encoder
):
    # iwae_bound draws its one particle as Pyro's guide draws z, so under the same seed the two
    # score the same z: equal example by example, to float32 rounding.
    vae, x = make(digits, prior, likelihood, guide, encoder, n=16)
    with torch.no_grad():
        torch.manual_seed(3)
        bound = iwae_bound(vae, x, 1)
        torch.manual_seed(3)
        pyro_elbo = elbo_terms_from_pyro_traces(vae, x)
        torch.manual_seed(4)
        other_draw = elbo_terms_from_pyro_traces(vae, x)
    assert bound.shape == pyro_elbo.shape == (len(x),)
    assert torch.allclose(bound, pyro_elbo, rtol=1e-6, atol=1e-5)
    # Another z gives other values: the agreement above is that of the same draw, scored twice.
    assert (bound - other_draw).abs().max() > 0.1


def test_iwae_bound_rises_with_k(trained_vae, digits):
    vae, x = trained_vae, eval_inputs(trained_vae.likelihood, digits.x_test)
    bounds = []
    for k in (1, 10, 100):
        torch.manual_seed(0)
        bounds.append(float(iwae_bound(vae, x, k).mean().detach()))
    assert bounds[0] < bounds[1] < bounds[2]
    assert bounds[2] - bounds[0] > 0.2  # nats per example: a real gap, not rounding


def test_iwae_bound_is_chunked_over_particles(trained_vae, digits, monkeypatch):
    vae, x = trained_vae, eval_inputs(trained_vae.likelihood, digits.x_test)
    import pyro_vae.infer.elbo

    torch.manual_seed(0)
    whole = iwae_bound(vae, x, 64)
    monkeypatch.setattr(pyro_vae.infer.elbo, "IWAE_CHUNK_ELEMENTS", 7 * len(x) * 64)
    torch.manual_seed(0)
    chunked = iwae_bound(vae, x, 64)  # 7 particles at a time: other draws, same quantity
    assert not torch.equal(whole, chunked)
    assert chunked.mean().item() == pytest.approx(whole.mean().item(), abs=0.05)


@pytest.mark.parametrize("k", [1, 10, 100])
def test_iwae_bound_matches_pyros_renyi_elbo_with_alpha_zero(trained_vae, digits, k):
    # RenyiELBO(alpha=0) log-mean-exps over the particles of each example (the data plate is
    # shared by every site, so it is not summed first): the IWAE bound, summed over the batch.
    vae, x = trained_vae, eval_inputs(trained_vae.likelihood, digits.x_test)
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    for i in range(3):
        torch.manual_seed(i)
        pyro_bound = -renyi.loss(vae.model, vae.guide, x)
        torch.manual_seed(i)
        assert iwae_bound(vae, x, k).sum().item() == pytest.approx(pyro_bound, rel=1e-6)
        # were the batch one joint example, the log-mean-exp of the summed weights: lower
        torch.manual_seed(i)
        with torch.no_grad():
            log_p_x, log_p_z, log_q, _, _ = log_weight_terms(vae, x, k)
        joint = torch.logsumexp((log_p_x + log_p_z - log_q).sum(1), 0) - math.log(k)
        assert k == 1 or float(joint) < pyro_bound - 1.0


class StudentTPrior(torch.nn.Module):
    name = "student-t-test"

    def __init__(self, z_dim):
        super().__init__()
        self.z_dim = z_dim

    def forward(self, batch_size, like):
        loc = like.new_zeros(batch_size, self.z_dim)
        return dist.StudentT(3.0, loc, torch.ones_like(loc)).to_event(1)


@pytest.mark.parametrize(
    "model, prior, guide, objective",
    [
        ("vae", "standard-normal", "diagonal", "trace"),
        ("vae", "standard-normal", "diagonal", "meanfield"),
        ("vae", "mog", "iaf", "trace"),
        ("cvae", "standard-normal", "diagonal", "meanfield"),
        ("m2", "standard-normal", "diagonal", "trace"),
    ],
)
def test_the_elbo_terms_add_up_to_the_dataset_elbo_by_its_own_draws(
    digits, model, prior, guide, objective
):
    vae, _ = make(digits, prior, "bernoulli", guide, "mlp", model=model)
    x = eval_inputs(vae.likelihood, digits.x_train)  # 1,438 examples: two batches of the estimate
    given = digits.y_train if model == "cvae" else None
    state = torch.get_rng_state()
    terms = elbo_terms(vae, x, seed=3, objective=objective, labels=given)
    assert torch.equal(state, torch.get_rng_state())
    # Pyro's ELBO (TraceEnum_ELBO for M2, its label summed out) with the same seed: the same draws
    elbo = dataset_elbo(vae, x, seed=3, objective=objective, labels=given)
    assert terms.reconstruction - terms.kl == pytest.approx(elbo, rel=1e-6)
    assert terms != elbo_terms(vae, x, seed=4, objective=objective, labels=given)
    if objective == "meanfield":  # the KL in closed form: the per-dimension KLs add up to it
        labels = digits.y_train if model == "cvae" else None
        assert terms.kl == pytest.approx(sum(kl_per_dim(vae, x, labels=labels)), rel=1e-5)


def test_analytic_kl_without_a_closed_form_is_a_clear_error(digits):
    vae = VAE(digits.x_shape, z_dim=3, hidden_dims=(8,), prior=StudentTPrior(3))
    x = eval_inputs(vae.likelihood, digits.x_test[:4])
    with pytest.raises(
        ConfigError,
        match="no closed-form KL between the 'diagonal' guide and the 'student-t-test' prior",
    ):
        manual_elbo(vae, x, analytic_kl=True)
    assert torch.isfinite(manual_elbo(vae, x))  # the sampled KL still works
    with pytest.raises(ConfigError, match="objective 'meanfield' .* cannot be used"):
        train(vae, digits, epochs=1, objective="meanfield", device="cpu", progress=False,
            compile="off")


def test_svi_and_manual_trainers_take_the_same_steps(digits):
    # Same seed, initial weights, Adam settings and batch order: 17 epochs x 12 batches.
    runs = {}
    for objective in ("trace", "manual"):
        pyro.set_rng_seed(0)
        vae = VAE(digits.x_shape, z_dim=8, hidden_dims=(64,))
        history = train(vae, digits, epochs=17, objective=objective, device="cpu",
            progress=False, compile="off")
        runs[objective] = (history.step_loss, list(vae.parameters()))
    (svi_losses, svi_weights), (manual_losses, manual_weights) = runs["trace"], runs["manual"]
    assert len(svi_losses) == len(manual_losses) == 204
    # The weights after 204 steps are bitwise equal: every gradient was.
    assert all(torch.equal(a, b) for a, b in zip(svi_weights, manual_weights, strict=True))
    # Pyro adds up the loss's terms as Python floats (float64), the manual ELBO in float32:
    # the reported values may differ in their last bits, never more.
    for a, b in zip(svi_losses, manual_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_check_elbo_command(capsys, monkeypatch):
    assert main(["check-elbo", "--dataset", "digits", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    rows = ["Trace_ELBO vs manual (K=1)", "TraceMeanField vs analytic KL (K=1, KL weight 0.5)"]
    rows += ["IWAE (RenyiELBO a=0) vs iwae_bound (K=5)", "IWAE-DReG vs iwae_dreg_gradients (K=5)"]
    assert all(row in out for row in rows) and "all equalities hold" in out
    assert "k=100" in out

    import pyro_vae.infer.elbo_check

    def off_by_a_little(vae, x, num_particles=1, analytic_kl=False, kl_weight=1.0):
        return manual_elbo(vae, x, num_particles, analytic_kl, kl_weight=kl_weight) * 1.001

    def deaf_to_the_weight(vae, x, num_particles=1, analytic_kl=False, kl_weight=1.0):
        return manual_elbo(vae, x, num_particles, analytic_kl)

    for fake, row in [
        (off_by_a_little, "Trace_ELBO vs manual (K=1)"),
        (deaf_to_the_weight, "Trace_ELBO vs manual (K=1, KL weight 0.5)"),
    ]:
        monkeypatch.setattr(pyro_vae.infer.elbo_check, "manual_elbo", fake)
        assert main(["check-elbo", "--batch-size", "16"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"pyro-vae: check failed: {row}:"), err
        monkeypatch.undo()

    def shifted_when_k_is_five(vae, x, k, full_chunk=None):
        return iwae_bound(vae, x, k) + (1e-2 if k == 5 else 0.0)

    monkeypatch.setattr(pyro_vae.infer.elbo_check, "iwae_bound", shifted_when_k_is_five)
    assert main(["check-elbo", "--batch-size", "16"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae: check failed: IWAE (RenyiELBO a=0) vs iwae_bound (K=5)")
    monkeypatch.undo()

    # The k = 1 line compares iwae_bound with Pyro's own traces: shifting the one fails it.
    def shifted_when_k_is_one(vae, x, k, full_chunk=None):
        return iwae_bound(vae, x, k) + (1e-3 if k == 1 else 0.0)

    monkeypatch.setattr(pyro_vae.infer.elbo_check, "iwae_bound", shifted_when_k_is_one)
    assert main(["check-elbo", "--batch-size", "16"]) == 1
    captured = capsys.readouterr()
    line = "IWAE k=1 against Pyro's single-sample ELBO, largest |difference|: "
    assert float(captured.out.split(line)[1].split()[0]) == pytest.approx(1e-3, rel=0.01)
    failure = "check failed: the IWAE bound with k=1 differs from Pyro's single-sample ELBO by "
    assert float(captured.err.split(failure)[1]) == pytest.approx(1e-3, rel=0.01)


def test_cli_trains_with_the_manual_objective(tmp_path, capsys):
    out = tmp_path / "manual"
    args = ["train", "--objective", "manual", "--epochs", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "test ELBO: -" in capsys.readouterr().out


def test_check_elbo_is_not_fooled_by_float32_rounding_on_a_colour_image():
    from pyro_vae.infer.elbo_check import check_elbo, compare

    # a 3x32x32 image scores thousands of nats: in float32 the DReG gradients' rounding alone
    # exceeds the tolerance; the check runs in float64, passes, and leaves the model as it was
    pyro.set_rng_seed(0)
    vae = VAE((3, 32, 32), z_dim=4, hidden_dims=(32,), likelihood="discretized-logistic")
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0)) / 255
    assert not compare(vae, x, "iwae-dreg", seed=0, num_particles=5).ok
    report = check_elbo(vae, x)
    assert report.failures == [] and len(report.comparisons) == 6  # every row compared
    assert all(p.dtype == torch.float32 for p in vae.parameters())

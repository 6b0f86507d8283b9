"""The label models: the conditional VAE and the semi-supervised M2, their hand-written objectives
against Pyro's, their labelled batches, training, and what they give back."""

import json
import math

import pyro
import pytest
import torch
from helpers import HostReads, covering_combinations, loss_and_grads, make
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pyro_vae.analysis.inspection import log_importance_weights, posterior_samples
from pyro_vae.cli import main
from pyro_vae.config import training_sections
from pyro_vae.data.sources import labeled_split
from pyro_vae.errors import ConfigError
from pyro_vae.infer.elbo import make_loss, manual_elbo
from pyro_vae.infer.sync_free import SyncFreeTraceEnum_ELBO
from pyro_vae.models import build_model
from pyro_vae.models.labels import one_hot
from pyro_vae.models.m2 import M2, accuracy, m2_aux_term, m2_elbo
from pyro_vae.runs.folder import Run
from pyro_vae.training.trainer import Trainer, train

TOLERANCE = 1e-5
LABEL_COMBINATIONS = [c for c in covering_combinations() if c[0] != "vamp"]


def assert_equal_objectives(model, pyro_fn, manual_fn, *args):
    with pyro.validation_enabled(False):
        pyro_loss, pyro_grads = loss_and_grads(model, pyro_fn, *args)
        manual_loss, manual_grads = loss_and_grads(model, lambda *a: -manual_fn(*a), *args)
    assert abs(float(pyro_loss - manual_loss)) <= TOLERANCE * max(1.0, abs(float(pyro_loss)))
    compared = [(a, b) for a, b in zip(pyro_grads, manual_grads, strict=True) if a is not None]
    assert len(compared) == sum(g is not None for g in manual_grads) > 0
    largest = max(float(a.abs().max()) for a, _ in compared)
    for a, b in compared:
        assert float((a - b).abs().max()) <= TOLERANCE * max(1.0, largest)


@pytest.mark.parametrize("prior,likelihood,guide,encoder", LABEL_COMBINATIONS)
def test_m2_by_hand_equals_pyros_traceenum_elbo(digits, prior, likelihood, guide, encoder):
    m2, x = make(digits, prior, likelihood, guide, encoder, n=24, model="m2")
    y = one_hot(digits.y_test[:24], 10, x)
    enum = TraceEnum_ELBO(max_plate_nesting=1)
    for w in (1.0, 0.5):
        # unlabelled: y summed out by enumeration; labelled: the ELBO at the observed y
        pyro_fn = lambda *a: enum.differentiable_loss(m2.model, m2.guide, *a)  # noqa: E731
        assert_equal_objectives(m2, pyro_fn, lambda *a: m2_elbo(m2, *a), x, None, w)
        pyro_fn = lambda *a: Trace_ELBO().differentiable_loss(m2.model, m2.guide, *a)  # noqa: E731
        assert_equal_objectives(m2, pyro_fn, lambda *a: m2_elbo(m2, *a), x, y, w)
    aux = lambda *a: Trace_ELBO().differentiable_loss(m2.classify_model, m2.classify_guide, *a)  # noqa: E731
    assert_equal_objectives(m2, aux, lambda *a: m2_aux_term(m2, *a), x, y)


@pytest.mark.parametrize("prior,likelihood,guide,encoder", LABEL_COMBINATIONS[:6])
def test_m2s_training_objective_equals_its_twin_and_never_waits_for_the_device(
    digits, prior, likelihood, guide, encoder
):
    m2, x = make(digits, prior, likelihood, guide, encoder, n=24, model="m2")
    y = one_hot(digits.y_test[:24], 10, x)
    batch = (x, x[:5], y[:5], torch.tensor(0.7))
    assert_equal_objectives(m2, make_loss(m2, "trace"), lambda *a: -make_loss(m2, "manual")(*a),
                            *batch)  # fmt: skip
    with HostReads() as reads, pyro.validation_enabled(False):
        make_loss(m2, "trace")(*batch)
    assert reads.reads == []


def test_the_sync_free_enumeration_is_pyros_traceenum_elbo(digits):
    # it reads Pyro's private "_enumerate_dim" of the enumerated site: a change fails here
    m2, x = make(digits, "mog", "bernoulli", "full-rank", "mlp", n=24, model="m2")
    with pyro.validation_enabled(False):
        (loss, grads), (pyro_loss, pyro_grads) = [
            loss_and_grads(m2, elbo(max_plate_nesting=1).differentiable_loss, m2.model, m2.guide,
                           x, None, 0.3)
            for elbo in (SyncFreeTraceEnum_ELBO, TraceEnum_ELBO)
        ]  # fmt: skip
    assert torch.allclose(loss, pyro_loss, rtol=1e-6)
    for a, b in zip(grads, pyro_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prior,likelihood,guide,encoder", LABEL_COMBINATIONS[:8])
def test_the_cvae_by_hand_equals_pyros_elbos(digits, prior, likelihood, guide, encoder):
    cvae, x = make(digits, prior, likelihood, guide, encoder, n=24, model="cvae")
    y = one_hot(digits.y_test[:24], 10, x)
    for w in (1.0, 0.5):
        trace = lambda *a: Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, *a)  # noqa: E731
        by_hand = lambda x, y, w: manual_elbo(cvae, x, 1, kl_weight=w, cond=(y,))  # noqa: E731
        assert_equal_objectives(cvae, trace, by_hand, x, y, w)
    if (prior, guide) == ("standard-normal", "diagonal"):
        field = lambda *a: TraceMeanField_ELBO().differentiable_loss(cvae.model, cvae.guide, *a)  # noqa: E731
        exact = lambda x, y: manual_elbo(cvae, x, 1, analytic_kl=True, cond=(y,))  # noqa: E731
        assert_equal_objectives(cvae, field, exact, x, y)


def test_m2s_iwae_bound_reaches_log_px_computed_by_quadrature(digits):
    # z_dim 1: log p(x) = log sum_y p(y) \int p(z) p(x|y,z) dz, the integral on a fine grid
    pyro.set_rng_seed(0)
    m2 = build_model("m2", digits.x_shape, 10, z_dim=1, hidden_dims=(16,))
    x = (digits.x_test[:8] > 0.5).float()
    z = torch.linspace(-9, 9, 4001).unsqueeze(-1)
    with torch.no_grad():
        per_label = []
        for k in range(10):
            y = one_hot(torch.full((1,), k), 10, x)
            log_p_x = m2.likelihood_dist(z.unsqueeze(1), y).log_prob(x)  # (grid, B)
            log_p_z = torch.distributions.Normal(0.0, 1.0).log_prob(z)
            integral = torch.logsumexp(log_p_x + log_p_z, 0) + math.log(float(z[1] - z[0]))
            per_label.append(integral - math.log(10))
        exact = torch.logsumexp(torch.stack(per_label), 0)
        torch.manual_seed(0)
        bound = m2.iwae_bound(x, 3000)
        elbo = m2_elbo(m2, x) / len(x)
    assert torch.allclose(bound, exact, atol=0.05)
    assert float(exact.mean()) > float(elbo) + 0.1  # the ELBO lies below, as it must


def test_labelled_examples_are_balanced_seeded_and_apart_from_the_rest(digits):
    y = digits.y_train
    labeled, rest = labeled_split(y, 53, 10, seed=4)
    counts = torch.bincount(y[labeled], minlength=10)
    assert sorted(counts.tolist()) == [5] * 7 + [6] * 3  # 53 = 10 * 5 + 3
    assert len(set(labeled.tolist()) | set(rest.tolist())) == len(y) == len(labeled) + len(rest)
    assert torch.equal(labeled_split(y, 53, 10, seed=4)[0], labeled)
    assert not torch.equal(labeled_split(y, 53, 10, seed=5)[0], labeled)


def test_each_m2_step_takes_the_next_labelled_examples_of_the_stream(digits):
    pyro.set_rng_seed(0)
    m2 = build_model("m2", digits.x_shape, 10, z_dim=2, hidden_dims=(8,))
    settings = dict(batch_size=100, lr=1e-3, device="cpu", seed=0, objective="trace")
    settings.update(binarization="dynamic", labeled=150)
    trainer = Trainer(m2, digits, *training_sections(None, None, settings))
    source = trainer.source
    assert len(source.x) == len(digits.x_train) - 150
    assert source.pool_per_step == 100  # as many as unlabelled ones
    stream = torch.cat([source._pool_index(step) for step in range(6)])
    # one permutation of the 150 labelled examples after another, steps crossing from one to
    # the next (step 1 ends the first and begins the second)
    for start in (0, 150, 300):
        assert sorted(stream[start : start + 150].tolist()) == list(range(150))
    assert not torch.equal(stream[:150], stream[150:300])  # each a fresh draw
    # a function of the step alone: asked again in another order, the same examples
    assert torch.equal(source._pool_index(4), stream[400:500])
    assert torch.equal(source._pool_index(1), stream[100:200])
    batch = source.prepare(*next(source.epoch(epoch=1, start=0))[1])
    assert [len(t) for t in batch] == [100, 100, 100]
    y_labeled = source.pool[1]
    assert torch.equal(batch[2].argmax(-1), y_labeled[stream[:100]].argmax(-1))
    # epoch 2 goes on where epoch 1 (13 steps) left the stream
    second = source.prepare(*next(source.epoch(epoch=2, start=0))[1])
    assert torch.equal(second[2], y_labeled[source._pool_index(13)])


def test_m2_learns_to_classify_the_digits_from_fifty_labels(digits):
    pyro.set_rng_seed(0)
    m2 = build_model("m2", digits.x_shape, 10, z_dim=8, hidden_dims=(128,))
    x_test = (digits.x_test > 0.5).float()
    untrained = accuracy(m2, x_test, digits.y_test)
    history = train(m2, digits, epochs=15, lr=3e-3, labeled=50, progress=False, compile="off")
    assert len(history.test_accuracy) == 15
    assert untrained < 0.25 and history.test_accuracy[-1] > 0.6  # chance: 0.1


def test_the_cvae_uses_the_label(digits):
    pyro.set_rng_seed(0)
    cvae = build_model("cvae", digits.x_shape, 10, z_dim=4, hidden_dims=(64,))
    train(cvae, digits, epochs=15, lr=3e-3, progress=False, compile="off")
    x = (digits.x_test > 0.5).float()
    elbo = {}
    for name, labels in (("true", digits.y_test), ("shifted", (digits.y_test + 1) % 10)):
        torch.manual_seed(0)
        with torch.no_grad():
            elbo[name] = manual_elbo(cvae, x, 1, cond=(one_hot(labels, 10, x),)).item() / len(x)
    assert elbo["true"] > elbo["shifted"] + 2.0  # nats per example
    images = cvae.sample(4, label=7)
    assert images.shape == (4, 1, 8, 8)


def test_m2_refuses_particles_and_objectives_it_does_not_have(digits):
    m2 = M2(digits.x_shape, 10, z_dim=2, hidden_dims=(8,))
    with pytest.raises(ConfigError, match="num_particles must be 1"):
        train(m2, digits, epochs=1, labeled=20, num_particles=2, progress=False, compile="off")
    with pytest.raises(ConfigError, match="'iwae' is not one of: trace, manual"):
        train(m2, digits, epochs=1, labeled=20, objective="iwae", progress=False, compile="off")


M2_FLAGS = ["--model", "m2", "--labeled", "50", "--z-dim", "4", "--hidden-dims", "32", "--quiet"]


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("m2") / "run"
    assert main(["train", *M2_FLAGS, "--epochs", "4", "--compile", "off", "--out", str(out)]) == 0
    return out


def test_m2_from_the_command_line_classifies_and_checks_its_elbo(m2_run, capsys):
    summary = json.loads((m2_run / "summary.json").read_text())
    metrics = (m2_run / "metrics.csv").read_text().splitlines()
    assert metrics[0].endswith(",test_accuracy")
    assert float(metrics[-1].rsplit(",", 1)[1]) == summary["test_accuracy"]
    capsys.readouterr()
    assert main(["classify", str(m2_run)]) == 0
    assert (
        f"test accuracy: {summary['test_accuracy']:.4f} (359 test images)"
        in capsys.readouterr().out
    )
    assert (m2_run / "confusion.png").stat().st_size > 0
    confusion = Run.open(m2_run).classify()["confusion"]
    assert int(confusion.sum()) == 359
    assert float(confusion.trace()) / 359 == pytest.approx(summary["test_accuracy"])
    assert main(["evaluate", str(m2_run), "--iwae-k", "5", "--quiet"]) == 0
    evaluation = json.loads((m2_run / "evaluation.json").read_text())
    assert evaluation["test_accuracy"] == summary["test_accuracy"]
    assert evaluation["test_elbo"] == pytest.approx(summary["test_elbo"], rel=1e-6)
    capsys.readouterr()
    assert main(["check-elbo", str(m2_run), "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "M2 TraceEnum_ELBO vs manual (y summed out)" in out and "all equalities hold" in out


def test_an_m2_run_resumes_to_the_same_metrics(m2_run, tmp_path, capsys):
    out = tmp_path / "resumed"
    assert main(["train", *M2_FLAGS, "--epochs", "2", "--compile", "off", "--out", str(out)]) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "4", "--quiet"]) == 0
    resumed = (out / "metrics.csv").read_text().splitlines()
    straight = (m2_run / "metrics.csv").read_text().splitlines()

    def without_seconds(rows):
        return [row.split(",")[:3] + row.split(",")[4:] for row in rows]

    assert without_seconds(resumed) == without_seconds(straight)


def test_a_cvae_draws_each_class_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "cvae"
    flags = ["--model", "cvae", "--z-dim", "4", "--hidden-dims", "32", "--epochs", "2", "--quiet"]
    assert main(["train", *flags, "--out", str(out)]) == 0
    assert (out / "classes.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["sample", str(out), "--label", "7", "-n", "8"]) == 0
    assert "wrote 8 samples of class 7" in capsys.readouterr().out
    assert (out / "sample-class7-seed0-n8.png").stat().st_size > 0


def test_posterior_inspection_refuses_a_label_model_in_one_line(digits):
    cvae = build_model("cvae", digits.x_shape, 10, z_dim=2, hidden_dims=(8,))
    for inspect in (posterior_samples, log_importance_weights):
        with pytest.raises(ConfigError, match="model 'cvae' conditions them on a label"):
            inspect(cvae, digits.x_test[:4])

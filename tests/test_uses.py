"""What a trained VAE is for: codes (pyro-vae encode), scores (pyro-vae score) and walks through
the latent space (pyro-vae interpolate), each checked against an independent computation on a
VAE trained on the embedded digits."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from helpers import make
from sklearn.metrics import roc_auc_score

from pyro_vae.analysis.codes import Codes, encode, linear_probe
from pyro_vae.analysis.scores import auroc, compressed_bits, most_and_least_typical, score
from pyro_vae.analysis.walks import interpolate, linear, spherical
from pyro_vae.cli import main
from pyro_vae.config import RunConfig
from pyro_vae.infer.elbo import iwae_bound, manual_elbo
from pyro_vae.runs.folder import Run
from pyro_vae.runs.layout import EVALUATION

SEED = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A VAE trained for 10 epochs on the digits (about 5 s), and its folder."""
    path = tmp_path_factory.mktemp("uses") / "digits"
    run = Run.create(path, RunConfig(dataset="digits", epochs=10, lr=0.003, compile="off"))
    run.train(progress=False)
    return Run.open(path)


def test_the_codes_file_holds_the_guides_loc_scale_and_the_labels(trained, tmp_path):
    out = tmp_path / "codes.npz"
    assert main(["encode", str(trained.path), "--out", str(out), "--no-probe", "--quiet"]) == 0
    codes = np.load(out)
    x, labels = trained.inputs("test")
    with torch.no_grad():
        loc, scale = trained.vae.encode(x)
    assert codes["mean"].shape == codes["scale"].shape == (len(trained.data.x_test), 16)
    np.testing.assert_array_equal(codes["mean"], loc.numpy())
    np.testing.assert_array_equal(codes["scale"], scale.numpy())
    np.testing.assert_array_equal(codes["labels"], trained.data.y_test.numpy())


def test_a_flow_guides_codes_are_the_mean_and_spread_of_its_draws(digits):
    """An IAF guide has no closed-form mean: encode estimates it from draws, which must agree
    with many more draws of q(z|x) to within their Monte Carlo error."""
    vae, x = make(digits, "standard-normal", "bernoulli", "iaf", "mlp", n=4)
    codes = encode(vae, x, num_samples=4096, seed=1)
    draws = vae.posterior_dist(x).sample((40_000,))
    tolerance = 5 * draws.std(0) / math.sqrt(4096)
    assert (codes.mean - draws.mean(0)).abs().le(tolerance).all()
    assert torch.allclose(codes.scale, draws.std(0), rtol=0.1)


def test_the_linear_probe_of_trained_codes_beats_chance_and_untrained_codes(trained, digits):
    probe = trained.linear_probe()
    assert probe.chance < 0.15 and probe.accuracy > 0.65, probe
    untrained = Run.create(trained.path.parent / "untrained", trained.config)
    assert probe.accuracy > untrained.linear_probe().accuracy + 0.1
    kept = json.loads((trained.path / EVALUATION).read_text())
    assert kept["linear_probe_accuracy"] == probe.accuracy and kept["epoch"] == 10


def test_a_probe_is_exact_on_separable_codes_and_at_chance_on_unrelated_ones():
    generator = torch.Generator().manual_seed(0)
    labels = (torch.arange(400) % 5).clamp(max=3)  # label 3 twice as common as the others
    centres = torch.randn(4, 6, generator=generator) * 10
    separable = centres[labels] + torch.randn(400, 6, generator=generator)
    train = Codes(separable[:300], separable[:300], labels[:300])
    test = Codes(separable[300:], separable[300:], labels[300:])
    assert linear_probe(train, test).accuracy == 1.0
    noise = torch.randn(400, 6, generator=generator)
    unrelated = linear_probe(Codes(noise[:300], noise[:300], labels[:300]),
                             Codes(noise[300:], noise[300:], labels[300:]))  # fmt: skip
    assert unrelated.chance == 0.4 and unrelated.accuracy < 0.55


def test_evaluate_keeps_the_probe_of_the_same_epoch(trained):
    trained.record({"linear_probe_accuracy": 0.5})
    trained.evaluate(iwae_k=0)
    assert json.loads((trained.path / EVALUATION).read_text())["linear_probe_accuracy"] == 0.5
    trained.state.epoch += 1  # a later epoch: the earlier figures go
    try:
        assert "linear_probe_accuracy" not in trained.record({"test_elbo": 1.0})
    finally:
        trained.state.epoch -= 1


def test_scores_equal_the_iwae_bound_and_the_elbo_on_the_same_seed(trained):
    vae = trained.vae
    x, labels = trained.inputs("test")
    scores = score(vae, x, 20, labels=labels, seed=SEED)
    with torch.no_grad():
        torch.manual_seed(SEED)
        expected = iwae_bound(vae, x, 20)
        torch.manual_seed(SEED)
        elbo = manual_elbo(vae, x)  # summed over the examples
    assert torch.equal(scores["log_px"], expected.double())
    assert torch.allclose(scores["elbo"].sum(), elbo.double(), rtol=1e-6)
    bits = -scores["log_px"] / (64 * math.log(2))
    assert torch.allclose(scores["bits_per_dim"], bits)
    assert torch.equal(scores["complexity_bits"], compressed_bits(x, levels=2))  # binary digits
    corrected = scores["log_px"] / math.log(2) + scores["complexity_bits"]
    assert torch.allclose(scores["corrected"], corrected)


def test_the_scores_file_round_trips_and_the_picture_is_written(trained, tmp_path):
    out, picture = tmp_path / "scores.csv", tmp_path / "typical.png"
    argv = ["score", str(trained.path), "--iwae-k", "5", "--out", str(out), "--quiet"]
    assert main([*argv, "--picture", str(picture), "--seed", str(SEED)]) == 0
    x, labels = trained.inputs("test")
    scores = score(trained.vae, x, 5, labels=labels, seed=SEED)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["label"]) for r in rows] == labels.tolist()
    for name, values in scores.items():
        assert [float(r[name]) for r in rows] == values.tolist(), name
    assert picture.stat().st_size > 1000


def test_the_compressed_length_grows_with_the_images_complexity():
    flat, noise = torch.zeros(1, 1, 28, 28), torch.rand(1, 1, 28, 28)
    stripes = (torch.arange(28) % 2).float().expand(1, 1, 28, 28)
    bits = compressed_bits(torch.cat([flat, stripes, noise]))
    assert bits[0] < bits[1] < bits[2]
    assert bits[2] > 28 * 28 * 8  # noise does not compress
    colour = compressed_bits(torch.rand(2, 3, 8, 8))
    assert (colour > 3 * 8 * 8 * 8).all()
    # binary images at 1 bit a pixel: coin flips cost at least their 784 bits of entropy more than
    # a blank image, and less than as 8-bit pixels
    coins = torch.bernoulli(
        torch.full((1, 1, 28, 28), 0.5), generator=torch.Generator().manual_seed(0)
    )
    one_bit = compressed_bits(torch.cat([flat, coins]), levels=2)
    assert one_bit[1] - one_bit[0] > 784 and one_bit[1] < compressed_bits(coins)[0]
    ten_bit = compressed_bits(torch.rand(1, 1, 28, 28).mul(1023).round().div(1023), levels=1024)
    assert ten_bit[0] > bits[2]  # 16 bits a value hold the 10


def test_auroc_and_the_most_and_least_typical_by_hand():
    assert auroc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.5])) == 0.75
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    generator = torch.Generator().manual_seed(0)  # many ties: scores of 20 distinct values
    inliers = torch.randint(0, 20, (300,), generator=generator).double()
    outliers = torch.randint(0, 20, (200,), generator=generator).double() - 3
    truth = [1] * 300 + [0] * 200
    expected = roc_auc_score(truth, torch.cat([inliers, outliers]).numpy())
    assert auroc(inliers, outliers) == pytest.approx(expected, abs=1e-12)
    most, least = most_and_least_typical(torch.tensor([0.5, 3.0, -1.0, 2.0]), 2)
    assert most.tolist() == [1, 3] and least.tolist() == [2, 0]


def test_an_interpolations_ends_are_the_reconstructions_of_its_examples(trained, tmp_path):
    x = trained.test_images(torch.tensor([4, 17]), "cpu")
    ends = trained.vae.reconstruct(x)
    for path in ("linear", "spherical"):
        images = interpolate(trained.vae, x[0], x[1], steps=7, path=path)
        assert images.shape == (7, 1, 8, 8)
        torch.testing.assert_close(images[[0, -1]], ends, rtol=0, atol=1e-6)
        assert (images[3] - ends).abs().amax() > 0.05  # the middle is neither end
    out = tmp_path / "walk.png"
    argv = ["interpolate", str(trained.path), "--from", "4", "--to", "17", "--out", str(out)]
    assert main(argv) == 0 and out.stat().st_size > 1000


def test_the_paths_by_hand():
    a, b, t = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(linear(a, b, t), torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
    arc = spherical(a, b, t)  # a quarter circle of radius 2: the middle at 45 degrees
    torch.testing.assert_close(arc[1], torch.tensor([math.sqrt(2), math.sqrt(2)]))
    assert torch.equal(arc[[0, 2]], torch.stack([a, b]))
    assert torch.equal(spherical(a, 3 * a, t), linear(a, 3 * a, t))  # parallel: a straight line

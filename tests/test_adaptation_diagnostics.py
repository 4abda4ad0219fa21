"""Domain-adaptation diagnostics, on drawn features (no training): DEV reweights source
validation losses toward the target and so follows a shift the plain mean misses; the proxy
A-distance is ~0 for one distribution, ~2 for separated ones and grows with the shift; the
before/after plot is a real PNG."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread

from transferlab.adaptation.diagnostics import plot_domain_features, proxy_a_distance
from transferlab.adaptation.selection import dev_risk


def sample(n: int, seed: int, shift: float = 0.0, dims: int = 4) -> torch.Tensor:
    """n draws of N(0, I), the first coordinate moved by `shift`."""
    features = torch.randn(n, dims, generator=torch.Generator().manual_seed(seed))
    features[:, 0] += shift
    return features


def rising(features: torch.Tensor) -> torch.Tensor:
    """A per-example loss that is high where the first coordinate is high."""
    return F.softplus(2 * features[:, 0])


def falling(features: torch.Tensor) -> torch.Tensor:
    return F.softplus(-2 * features[:, 0])


@pytest.mark.parametrize("loss", [rising, falling])
@pytest.mark.parametrize("targets", [1000, 250])
def test_dev_is_the_plain_mean_without_a_shift(loss, targets):
    """Only the domain classifier's fitting noise moves the weights off 1 (within 7% of
    the mean over 40 seeds tried); with 4 times fewer target examples too, which the prior
    ratio n_s / n_t undoes (without it DEV gives 5.1 and -2.7 here)."""
    validation = sample(300, seed=3)
    losses = loss(validation)
    risk = dev_risk(sample(1000, seed=1), sample(targets, seed=2), validation, losses)
    assert risk == pytest.approx(losses.mean().item(), rel=0.1)


@pytest.mark.parametrize("loss, direction", [(rising, 1), (falling, -1)])
def test_dev_follows_the_shift_toward_the_target_risk(loss, direction):
    """The target lies where the first coordinate is high: where losses rise, DEV is well
    above the plain source mean (below it where they fall), and nearer the true target risk
    (the loss averaged over a large target sample) than the plain mean is."""
    validation = sample(300, seed=3)
    losses = loss(validation)
    plain = losses.mean().item()
    risk = dev_risk(sample(1000, seed=1), sample(250, seed=2, shift=1.5), validation, losses)
    truth = loss(sample(20_000, seed=4, shift=1.5)).mean().item()
    assert direction * (risk - plain) > 0.5
    assert abs(risk - truth) < abs(plain - truth) / 2


def test_dev_control_variate_makes_a_constant_loss_exact():
    """With l = c, L = c w, so eta = -c and the risk is c whatever the (shifted) weights."""
    validation = sample(50, seed=3)
    losses = torch.full((50,), 0.75, dtype=torch.float64)
    risk = dev_risk(sample(100, seed=1), sample(80, seed=2, shift=2.0), validation, losses)
    assert risk == pytest.approx(0.75, abs=1e-9)


def test_dev_same_seed_same_value():
    inputs = sample(200, seed=1), sample(150, seed=2, shift=1.0), sample(100, seed=3)
    losses = rising(inputs[2])
    assert dev_risk(*inputs, losses, seed=5) == dev_risk(*inputs, losses, seed=5)


GOOD = {
    "source_features": sample(20, seed=1),
    "target_features": sample(20, seed=2),
    "validation_features": sample(10, seed=3),
    "validation_losses": torch.ones(10),
}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"source_features": torch.ones(20)}, r"source_features must be 2-D .* shape \(20,\)"),
        ({"target_features": torch.ones(20, 3)}, "target_features has 3 features .* has 4"),
        ({"target_features": torch.ones(1, 4)}, "target_features needs at least 2 examples"),
        ({"validation_features": torch.ones(10, 5)}, "validation_features has 5 features"),
        ({"validation_losses": torch.ones(9)}, "validation_losses has 9 values .* 10 examples"),
        ({"validation_losses": torch.ones(10, 1)}, "validation_losses must be 1-D"),
        ({"validation_losses": torch.tensor([float("nan")] * 10)}, "validation_losses has 10 non"),
    ],
)
def test_dev_refuses_bad_inputs_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        dev_risk(**{**GOOD, **bad})


def test_a_distance_is_near_zero_for_one_distribution():
    """Also with 4 times more source than target: equal subsampling keeps chance at 0.5."""
    assert proxy_a_distance(sample(400, seed=1, dims=8), sample(400, seed=2, dims=8)) < 0.3
    assert proxy_a_distance(sample(400, seed=1, dims=8), sample(100, seed=2, dims=8)) < 0.3


def test_a_distance_is_near_two_for_separated_domains():
    separated = sample(400, seed=2, shift=6.0, dims=8)
    assert proxy_a_distance(sample(400, seed=1, dims=8), separated) > 1.5


def test_a_distance_grows_with_the_shift():
    source = sample(400, seed=1, dims=8)
    distances = [
        proxy_a_distance(source, sample(400, seed=2, shift=shift, dims=8))
        for shift in (0.5, 1.5, 3.0)
    ]
    assert distances == sorted(distances) and len(set(distances)) == 3, distances


def test_a_distance_refuses_bad_inputs_by_name():
    with pytest.raises(ValueError, match="target_features has 3 features"):
        proxy_a_distance(sample(20, seed=1), torch.ones(20, 3))
    with pytest.raises(ValueError, match="source_features has 1 non-finite"):
        proxy_a_distance(torch.tensor([[1.0, float("inf")], [0.0, 0.0]]), torch.ones(5, 2))


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_plot_writes_a_two_panel_png(tmp_path, method):
    before = sample(50, seed=1, dims=6), sample(40, seed=2, shift=3.0, dims=6)
    after = sample(50, seed=3, dims=6), sample(40, seed=4, shift=0.3, dims=6)
    labels = torch.arange(50) % 10, torch.arange(40) % 10
    path = plot_domain_features(before, after, tmp_path / "features.png", method, labels=labels)
    image = imread(path)
    assert path == tmp_path / "features.png"
    height, width, channels = image.shape
    assert 600 <= height <= 800 and 1300 <= width <= 1700 and channels in (3, 4)  # 11 x 5 in
    # at 150 dpi, trimmed to what is drawn (bbox_inches="tight")
    assert image[..., :3].std() > 0.05  # something drawn, not a blank page


def test_plot_refuses_bad_method_and_labels(tmp_path):
    pair = sample(20, seed=1), sample(20, seed=2)
    with pytest.raises(ValueError, match="method='umap' must be one of pca, tsne"):
        plot_domain_features(pair, pair, tmp_path / "x.png", method="umap")
    with pytest.raises(
        ValueError, match=r"target labels have shape .* before target_features has 20 examples"
    ):
        plot_domain_features(pair, pair, tmp_path / "x.png", labels=(range(20), range(19)))
    assert not (tmp_path / "x.png").exists()

"""Domain-adaptation losses (`adapt=dann|cdan|mcc|mmd`), checked against their formulas on
small tensors: gradient reversal hands the feature extractor the negated, scaled gradient;
MMD is ~0 within a distribution and grows with a shift; MCC matches the paper's formula
computed here in numpy; CDAN is conditioned on the predictions; DANN's discriminator sits at
log 2 when the domains cannot be told apart; each config builds and bad options are one
line."""

from __future__ import annotations

import importlib.resources
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from transferlab.adaptation.base import DomainAdaptation, build_adaptation
from transferlab.adaptation.cdan import CDAN
from transferlab.adaptation.dann import DANN
from transferlab.adaptation.gradient_reversal import reversal_coefficient, reverse_gradient
from transferlab.adaptation.mcc import MinimumClassConfusion
from transferlab.adaptation.mmd import MultiKernelMMD
from transferlab.components import OptionError, locate
from transferlab.config_targets import check_target
from transferlab.errors import UserError

ADAPT = importlib.resources.files("transferlab.conf") / "adapt"
SIZES = {"feature_dim": 8, "num_classes": 3}


def domain_bce(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss written out: -log sigmoid(d) on source, -log(1 - sigmoid(d))
    on target, the mean of the two domains' means."""
    return (F.softplus(-source).mean() + F.softplus(target).mean()) / 2


def test_the_reversal_schedule_is_danns():
    assert reversal_coefficient(0.0) == 0.0
    assert reversal_coefficient(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)  # 0.462
    assert reversal_coefficient(1.0) == pytest.approx(1.0, abs=1e-4)


def test_the_feature_extractor_gets_the_negated_scaled_gradient_of_the_domain_loss():
    torch.manual_seed(0)
    extractor, discriminator = nn.Linear(5, 4), nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    classifier = nn.Linear(6, 1)
    source, target = torch.randn(7, 5), torch.randn(9, 5) + 1

    def gradients(coefficient: float | None) -> list[torch.Tensor]:
        for module in (extractor, discriminator, classifier):
            module.zero_grad()
        features = [extractor(source), extractor(target)]
        if coefficient is not None:
            features = [reverse_gradient(f, coefficient) for f in features]
        s, t = (classifier(discriminator(f)).squeeze(1) for f in features)
        domain_bce(s, t).backward()
        params = [*extractor.parameters(), *discriminator.parameters()]
        return [p.grad.clone() for p in params]

    plain, reversed_ = gradients(None), gradients(0.3)
    assert all(g.abs().sum() > 0 for g in plain)
    for p, r in zip(plain[:2], reversed_[:2], strict=True):  # the extractor's weight, bias
        torch.testing.assert_close(r, -0.3 * p)
    for p, r in zip(plain[2:], reversed_[2:], strict=True):  # the discriminator: unchanged
        torch.testing.assert_close(r, p)


def test_dann_reverses_by_the_scheduled_coefficient_and_its_loss_is_the_domain_bce():
    torch.manual_seed(0)
    dann = DANN(**SIZES, dropout=0.0)
    source = torch.randn(6, 8, requires_grad=True)
    target = (torch.randn(4, 8) + 1).requires_grad_()
    loss = dann(source, target, torch.randn(6, 3), torch.randn(4, 3), progress=0.1)
    loss.backward()
    plain = domain_bce(dann.discriminator(source).squeeze(1), dann.discriminator(target).squeeze(1))
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    expected = torch.autograd.grad(plain, [source, target])
    lambda_p = 2 / (1 + math.exp(-1)) - 1
    torch.testing.assert_close(source.grad, -lambda_p * expected[0])
    torch.testing.assert_close(target.grad, -lambda_p * expected[1])


def test_dann_loss_is_log_2_at_chance_and_its_discriminator_learns_only_a_real_shift():
    torch.manual_seed(0)
    at_chance = DANN(**SIZES, hidden=16, dropout=0.0)
    nn.init.zeros_(at_chance.discriminator[-1].weight)
    nn.init.zeros_(at_chance.discriminator[-1].bias)
    features = torch.randn(5, 8), torch.randn(7, 8) + 3
    logits = torch.randn(5, 3), torch.randn(7, 3)
    assert at_chance(*features, *logits, 0.5).item() == pytest.approx(math.log(2))

    def trained_loss(shift: float) -> float:
        """Only the discriminator trains (on fresh samples each step); the loss on new
        samples after 40 steps."""
        torch.manual_seed(1)
        dann = DANN(**SIZES, hidden=16, dropout=0.0)
        optimizer = torch.optim.Adam(dann.parameters(), lr=3e-2)
        for _ in range(41):
            source, target = torch.randn(64, 8), torch.randn(64, 8) + shift
            loss = dann(source, target, torch.zeros(64, 3), torch.zeros(64, 3), 1.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.item()

    same, shifted = trained_loss(0.0), trained_loss(1.5)
    assert same > 0.64  # log 2 = 0.693: the same distribution cannot be told apart
    assert shifted < 0.1


def gaussian(n: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed)) + shift


def mmd(source: torch.Tensor, target: torch.Tensor, **options) -> float:
    return MultiKernelMMD(6, 2, **options)(source, target, None, None, 0.0).item()


@pytest.mark.parametrize("bandwidth", ["mean", "median"])
def test_mmd_is_zero_within_a_distribution_and_grows_with_a_mean_shift(bandwidth):
    source = gaussian(200, seed=0)
    same = mmd(source, gaussian(200, seed=1), bandwidth=bandwidth)
    shifts = [0.25, 0.5, 1.0, 2.0, 4.0]
    grown = [mmd(source, gaussian(200, shift, seed=1), bandwidth=bandwidth) for shift in shifts]
    assert abs(same) < 0.1 * grown[0] and abs(same) < 0.01 * grown[2]  # shifts 0.25, 1
    assert all(a < b for a, b in itertools.pairwise(grown)), grown


def test_minimising_mmd_moves_the_target_onto_the_source():
    source, target = gaussian(64, seed=0), gaussian(64, seed=1)
    offset = torch.full((6,), 2.0, requires_grad=True)
    loss_fn = MultiKernelMMD(6, 2)
    optimizer = torch.optim.Adam([offset], lr=0.06)
    for _ in range(50):
        loss = loss_fn(source, target + offset, None, None, 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert offset.abs().max() < 0.5  # from 2.0 (64-sample means differ by ~0.2 anyway)


def mcc_by_the_formula(logits: np.ndarray, temperature: float) -> float:
    """Jin et al. 2020, eqs. 1-6, in numpy."""
    scaled = np.exp(logits / temperature)
    y = scaled / scaled.sum(1, keepdims=True)
    entropy = -(y * np.log(y)).sum(1)
    w = len(y) * (1 + np.exp(-entropy)) / (1 + np.exp(-entropy)).sum()
    c = y.T @ np.diag(w) @ y
    c = c / c.sum(0, keepdims=True)
    classes = len(c)
    off_diagonal = sum(abs(c[j, k]) for j in range(classes) for k in range(classes) if j != k)
    return float(off_diagonal) / classes


def test_mcc_matches_its_formula():
    logits = np.array([[4.0, 0.5, -1.0], [0.2, 3.0, 0.1], [1.0, 1.2, 0.9], [-2.0, 0.0, 5.0]])
    expected = mcc_by_the_formula(logits, 2.5)
    loss = MinimumClassConfusion(8, 3, temperature=2.5)
    target_logits = torch.tensor(logits, dtype=torch.float32)
    assert loss(None, None, None, target_logits, 0.0).item() == pytest.approx(expected, rel=1e-5)
    # by hand: equal logits give uniform predictions, every entry of C~ is 1/3, L = 2/3
    assert loss(None, None, None, torch.zeros(5, 3), 0.0).item() == pytest.approx(2 / 3)
    sharper = MinimumClassConfusion(8, 3, temperature=1.0)(None, None, None, target_logits, 0)
    assert sharper.item() == pytest.approx(mcc_by_the_formula(logits, 1.0), rel=1e-5)
    assert sharper.item() < expected  # confident, distinct predictions confuse less


@pytest.mark.parametrize("feature_dim", [8, 2048])  # 8 x 3: the full map; 2048 x 3: randomized
def test_cdan_is_conditioned_on_the_classifier_predictions(feature_dim):
    torch.manual_seed(0)
    cdan = CDAN(feature_dim, 3, dropout=0.0).eval()
    assert cdan.randomized == (feature_dim > 8)
    source, target = torch.randn(6, feature_dim), torch.randn(6, feature_dim)
    source_logits = torch.randn(6, 3)
    first = cdan(source, target, source_logits, torch.randn(6, 3), 0.5).item()
    second = cdan(source, target, source_logits, torch.randn(6, 3) * 3, 0.5).item()
    assert abs(first - second) > 1e-4


def test_cdan_full_map_is_the_outer_product_and_the_randomized_one_keeps_inner_products():
    torch.manual_seed(0)
    full = CDAN(4, 3)
    h, g = torch.randn(2, 4), torch.softmax(torch.randn(2, 3), 1)
    torch.testing.assert_close(full.multilinear_map(h, g)[1].view(4, 3), torch.outer(h[1], g[1]))

    randomized = CDAN(100, 50, random_dim=20000)  # 5000 > 4096
    h, g = torch.randn(2, 100), torch.softmax(torch.randn(2, 50) * 3, 1)
    mapped = randomized.multilinear_map(h, g)
    assert mapped.shape == (2, 20000)
    exact = (h[0] @ h[1]) * (g[0] @ g[1])
    scale = h[0].norm() * h[1].norm() * g[0].norm() * g[1].norm()
    assert abs((mapped[0] @ mapped[1]).item() - exact.item()) < 0.05 * scale.item()


def test_cdan_entropy_conditioning_weights_each_example_by_its_confidence():
    """One confident and one uniform prediction per domain: CDAN+E's loss is the domain
    cross-entropy with weights 1 + exp(-H(p)) (mean 1 in each domain), computed here in
    numpy from the discriminator's outputs; plain CDAN's is the unweighted one."""
    torch.manual_seed(0)
    cdan = CDAN(4, 3, dropout=0.0).eval()
    plain = CDAN(4, 3, dropout=0.0, entropy=False).eval()
    plain.load_state_dict(cdan.state_dict())
    source, target = torch.randn(2, 4), torch.randn(2, 4)
    logits = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    weights = 1 + np.exp((p * np.log(p)).sum(1))
    weights = weights / weights.mean()
    assert weights[0] > 1.1 and weights[1] < 0.9  # confident: more than its share
    with torch.no_grad():
        mapped = [cdan.multilinear_map(f, logits.softmax(1)) for f in (source, target)]
        d_source, d_target = (cdan.discriminator(m).squeeze(1).double().numpy() for m in mapped)
    source_terms, target_terms = np.log1p(np.exp(-d_source)), np.log1p(np.exp(d_target))
    weighted = ((source_terms * weights).mean() + (target_terms * weights).mean()) / 2
    unweighted = (source_terms.mean() + target_terms.mean()) / 2
    assert cdan(source, target, logits, logits, 0.0).item() == pytest.approx(weighted, rel=1e-5)
    assert plain(source, target, logits, logits, 0.0).item() == pytest.approx(unweighted, rel=1e-5)
    assert weighted != pytest.approx(unweighted, rel=1e-3)


FEATURES_ONLY = [True, True, False, False]  # which inputs get a gradient: source and target
# features, source and target logits


@pytest.mark.parametrize(
    ("method", "reached"),
    [
        (DANN, FEATURES_ONLY),
        (CDAN, FEATURES_ONLY),  # the predictions condition it, detached
        (MinimumClassConfusion, [False, False, False, True]),  # the target's predictions only
        (MultiKernelMMD, FEATURES_ONLY),
    ],
)
def test_each_loss_is_finite_float32_under_bf16_autocast_with_gradients_where_it_acts(
    method, reached
):
    torch.manual_seed(0)
    inputs = [torch.randn(5, 8), torch.randn(4, 8) + 1, torch.randn(5, 3), torch.randn(4, 3)]
    inputs = [x.requires_grad_() for x in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method(**SIZES)(*inputs, 0.5)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(x.grad is None or torch.isfinite(x.grad).all() for x in inputs)
    assert [x.grad is not None and x.grad.abs().sum().item() > 0 for x in inputs] == reached


@pytest.mark.parametrize("name", ["dann", "cdan", "mcc", "mmd"])
def test_each_config_passes_validation_and_builds_its_method(name):
    node = OmegaConf.load(ADAPT / f"{name}.yaml")
    check_target(node, "adapt", filled=tuple(SIZES), own_keys=("selection",))
    method = build_adaptation(node, **SIZES)
    assert isinstance(method, DomainAdaptation) and method.weight == 1.0
    trains = sum(p.numel() for p in method.parameters())
    assert (trains > 0) == (name in ("dann", "cdan"))  # only the adversarial ones train
    assert build_adaptation(OmegaConf.load(ADAPT / "none.yaml"), **SIZES) is None


@pytest.mark.parametrize(
    ("name", "option", "value", "message"),
    [
        ("dann", "weight", -1.0, "adapt.weight=-1.0 must be >= 0"),
        ("dann", "hidden", 0, "adapt.hidden=0 must be a whole number >= 1"),
        ("cdan", "dropout", 1.0, "adapt.dropout=1.0 must be in [0, 1)"),
        ("cdan", "random_dim", 0, "adapt.random_dim=0 must be a whole number >= 1"),
        ("cdan", "entropy", "yes", "adapt.entropy='yes' must be true (CDAN+E) or false (CDAN)"),
        ("mcc", "temperature", 0.0, "adapt.temperature=0.0 must be > 0"),
        ("mmd", "kernels", 0, "adapt.kernels=0 must be a whole number >= 1"),
        ("mmd", "multiplier", 1.0, "adapt.multiplier=1.0 must be > 1"),
        ("mmd", "bandwidth", "max", "adapt.bandwidth='max' is unknown; use "),
    ],
)
def test_check_options_refuses_a_bad_value_in_one_line(name, option, value, message):
    node = OmegaConf.load(ADAPT / f"{name}.yaml")
    node[option] = value
    for attempt in (
        lambda: check_target(node, "adapt", filled=tuple(SIZES), own_keys=("selection",)),
        lambda: build_adaptation(node, **SIZES),
    ):
        with pytest.raises(UserError) as refused:
            attempt()
        assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    options = {k: v for k, v in node.items() if k not in ("_target_", "selection")}
    with pytest.raises(OptionError):  # the class's own check, as validation calls it
        locate(node._target_, "adapt").check_options(**options)

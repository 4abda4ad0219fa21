"""Every transferability score against an independent, plainly written computation of its
paper's formula on small random data (to 1e-6), its known properties, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
import torch
from sklearn.covariance import ledoit_wolf

from transferlab.errors import UserError
from transferlab.transferability import NEEDS_SOURCE, SCORES
from transferlab.transferability.checks import CHUNK_ROWS, GRAM_BLOCK
from transferlab.transferability.transrate import EPS

FEATURE_SCORES = sorted(set(SCORES) - NEEDS_SOURCE)


def random_task(samples: int, dim: int, classes: int, seed: int = 0, rank: int | None = None):
    """Gaussian features (of `rank` when given) and uniformly drawn labels, as numpy."""
    rng = np.random.default_rng(seed)
    rank = rank or dim
    features = rng.normal(size=(samples, rank)) @ rng.normal(size=(rank, dim))
    return features + rng.normal(size=dim), rng.integers(0, classes, samples)


def source_outputs(samples: int, sources: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(samples, sources)) * 2
    return scipy.special.softmax(logits, axis=1)


def score(name: str, features: np.ndarray, labels: np.ndarray, probs=None) -> float:
    probs = None if probs is None else torch.tensor(probs)
    return SCORES[name](torch.tensor(features), torch.tensor(labels), probs)


# --- the naive computations: each formula as its paper writes it, loops and all ---


def naive_logme(features: np.ndarray, labels: np.ndarray) -> float:
    """Per class, the Gaussian marginal likelihood y ~ N(0, F F^T / alpha + I / beta)
    maximised over (log alpha, log beta) by a direct search from several starts."""
    samples = len(features)
    evidences = []
    for c in np.unique(labels):
        target = (labels == c).astype(float)

        def negative_log_evidence(log_params, target=target):
            alpha, beta = np.exp(log_params)
            covariance = features @ features.T / alpha + np.eye(samples) / beta
            return -scipy.stats.multivariate_normal.logpdf(target, np.zeros(samples), covariance)

        best = min(
            (
                scipy.optimize.minimize(
                    negative_log_evidence,
                    start,
                    method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 5000},
                )
                for start in ([0.0, 0.0], [3.0, 2.0], [-3.0, 1.0])
            ),
            key=lambda result: result.fun,
        )
        evidences.append(-best.fun / samples)
    return float(np.mean(evidences))


def between_class_covariance(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """cov(E[f | y]): every row replaced by its class mean."""
    expected = np.zeros_like(features)
    for c in np.unique(labels):
        expected[labels == c] = features[labels == c].mean(axis=0)
    return np.cov(expected, rowvar=False)


def naive_hscore(features: np.ndarray, labels: np.ndarray) -> float:
    covariance = np.cov(features, rowvar=False)
    return float(np.trace(np.linalg.pinv(covariance) @ between_class_covariance(features, labels)))


def naive_shrinkage_hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn's Ledoit-Wolf; both covariances normalised by N."""
    shrunk, shrinkage = ledoit_wolf(features)
    samples = len(features)
    between = between_class_covariance(features, labels) * (samples - 1) / samples
    return float(np.trace(np.linalg.pinv(shrunk) @ ((1 - shrinkage) * between)))


def naive_nce(labels: np.ndarray, probs: np.ndarray) -> float:
    predicted = probs.argmax(axis=1)
    samples, total = len(labels), 0.0
    for y in np.unique(labels):
        for z in np.unique(predicted):
            joint = np.sum((labels == y) & (predicted == z)) / samples
            if joint > 0:
                total += joint * np.log(joint / (np.sum(predicted == z) / samples))
    return total


def naive_leep(labels: np.ndarray, probs: np.ndarray) -> float:
    samples, sources = probs.shape
    classes = labels.max() + 1
    joint = np.zeros((classes, sources))
    for i in range(samples):
        for z in range(sources):
            joint[labels[i], z] += probs[i, z] / samples
    conditional = joint / joint.sum(axis=0)
    total = 0.0
    for i in range(samples):
        total += np.log(sum(conditional[labels[i], z] * probs[i, z] for z in range(sources)))
    return total / samples


def naive_transrate(features: np.ndarray, labels: np.ndarray) -> float:
    def rate(z: np.ndarray) -> float:
        n, d = z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + z.T @ z / (n * EPS))[1]

    centred = features - features.mean(axis=0)
    classes = np.unique(labels)
    return rate(centred) - sum(rate(centred[labels == c]) for c in classes) / len(classes)


# --- against the naive computations ---


@pytest.mark.parametrize(
    ("samples", "dim", "rank"),
    [(60, 8, None), (40, 60, 10)],
    ids=["D<N", "D>N low-rank"],
)
def test_logme_is_the_maximum_evidence_of_a_direct_search(samples, dim, rank):
    features, labels = random_task(samples, dim, 3, rank=rank)
    assert score("logme", features, labels) == pytest.approx(
        naive_logme(features, labels), abs=1e-6
    )


@pytest.mark.parametrize(
    ("samples", "dim"),
    [(80, 6), (30, 40), (CHUNK_ROWS + 100, GRAM_BLOCK + 100)],
    ids=["D<N", "D>N", "several row chunks and Gram blocks"],
)
def test_hscore_is_the_textbook_formula(samples, dim):
    features, labels = random_task(samples, dim, 4, seed=1)
    assert score("hscore", features, labels) == pytest.approx(
        naive_hscore(features, labels), abs=1e-6
    )


@pytest.mark.parametrize(("samples", "dim"), [(40, 30), (200, 5)], ids=["D~N", "D<<N"])
def test_shrinkage_hscore_uses_ledoit_wolf(samples, dim):
    features, labels = random_task(samples, dim, 4, seed=2)
    assert ledoit_wolf(features)[1] > 0  # the shrinkage is exercised
    assert score("shrinkage_hscore", features, labels) == pytest.approx(
        naive_shrinkage_hscore(features, labels), abs=1e-6
    )


def test_nce_is_the_textbook_formula():
    _, labels = random_task(120, 2, 4, seed=3)
    probs = source_outputs(120, 6, seed=3)
    assert score("nce", np.zeros((120, 2)), labels, probs) == pytest.approx(
        naive_nce(labels, probs), abs=1e-6
    )


def test_leep_is_the_textbook_formula():
    _, labels = random_task(120, 2, 4, seed=4)
    probs = source_outputs(120, 6, seed=4)
    assert score("leep", np.zeros((120, 2)), labels, probs) == pytest.approx(
        naive_leep(labels, probs), abs=1e-6
    )


@pytest.mark.parametrize(("samples", "dim"), [(90, 5), (30, 40)], ids=["D<N", "D>N"])
def test_transrate_is_the_textbook_formula(samples, dim):
    features, labels = random_task(samples, dim, 3, seed=5)
    assert score("transrate", features, labels) == pytest.approx(
        naive_transrate(features, labels), abs=1e-6
    )


# --- known properties ---


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_labels_linear_in_the_features_score_higher_than_shuffled(name):
    """Anisotropic features: for isotropic ones Ledoit-Wolf shrinks all the way (a = 1) and the
    shrinkage H-score, scaled by 1 - a, is 0 whatever the labels."""
    rng = np.random.default_rng(6)
    features = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10))
    labels = (features @ rng.normal(size=(10, 4))).argmax(axis=1)
    shuffled = rng.permutation(labels)
    assert score(name, features, labels) > score(name, features, shuffled)


@pytest.mark.parametrize("name", sorted(NEEDS_SOURCE))
def test_source_predictions_that_determine_the_labels_score_higher(name):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 200)
    telling = np.full((200, 5), 0.05)
    telling[np.arange(200), labels + 2] = 0.8  # source class y + 2 <=> target class y
    unrelated = source_outputs(200, 5, seed=7)
    features = np.zeros((200, 1))
    assert score(name, features, labels, telling) > score(name, features, labels, unrelated)


@pytest.mark.parametrize("name", sorted(SCORES))
def test_class_numbers_and_float32_do_not_change_a_score(name):
    """Labels {3, 7, 9} score as {0, 1, 2}; float32 features as the same values in float64."""
    features, labels = random_task(50, 6, 3, seed=8)
    features = features.astype(np.float32)
    probs = source_outputs(50, 4, seed=8) if name in NEEDS_SOURCE else None
    renumbered = np.array([3, 7, 9])[labels]
    expected = score(name, features.astype(np.float64), labels, probs)
    assert np.isfinite(expected)
    assert score(name, features, renumbered, probs) == pytest.approx(expected, abs=1e-9)


# --- bad input ---


def test_needs_source_names_the_scores_that_read_source_outputs():
    assert set(SCORES) == {"logme", "hscore", "shrinkage_hscore", "nce", "leep", "transrate"}
    assert set(NEEDS_SOURCE) == {"nce", "leep"}


BAD_INPUTS = {
    "NaN features": (np.array([[0.0], [np.nan], [1.0]]), np.array([0, 1, 1]), "NaN or inf"),
    "one class": (np.ones((4, 2)), np.array([2, 2, 2, 2]), r"one class \(2\)"),
    "one sample": (np.ones((1, 2)), np.array([0]), "at least 2 samples"),
    "lengths differ": (np.ones((4, 2)), np.array([0, 1, 0]), "4 feature rows but 3 labels"),
    "float labels": (np.ones((3, 2)), np.array([0.0, 1.0, 0.0]), "integer class"),
}


@pytest.mark.parametrize("name", sorted(SCORES))
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_in_one_line(name, case):
    features, labels, message = BAD_INPUTS[case]
    probs = np.full((len(features), 2), 0.5)
    with pytest.raises(UserError, match=message) as raised:
        score(name, features, labels, probs)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("name", sorted(NEEDS_SOURCE))
def test_bad_source_outputs_are_refused(name):
    features, labels = np.zeros((4, 1)), np.array([0, 1, 0, 1])
    with pytest.raises(UserError, match=f"{name} needs source_probs"):
        score(name, features, labels)
    for logits in ([2.0, -1.0], [2.0, 1.0]):
        with pytest.raises(UserError, match="not logits"):
            score(name, features, labels, np.array([logits] * 4))
    with pytest.raises(UserError, match=r"accepted is \[4, source classes\]"):
        score(name, features, labels, np.full((3, 2), 0.5))

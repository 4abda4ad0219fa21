"""H-score and its shrinkage form: how much of the features' variance separates the classes.

H-score: Bao, Li, Huang, Huang, Zheng & Tong, "An Information-theoretic Approach to
Transferability in Task Transfer Learning" (ICIP 2019):

    tr(cov(f)^+ cov(E[f | y]))      (pseudo-inverse: features may be rank-deficient)

Shrinkage H-score: Ibrahim, Ponomareva & Mazumder, "Newer is not always better: Rethinking
transferability metrics, their peculiarities, stability and performance" (ECML PKDD 2022).
With D large against N the sample covariance is badly conditioned and H-score is dominated by
its smallest eigenvalues; they replace cov(f) by its Ledoit-Wolf shrinkage towards a scaled
identity, cov_a = (1 - a) cov(f) + a tr(cov(f)) / D I, with the Ledoit-Wolf (2004)
coefficient a, and score tr(cov_a^+ (1 - a) cov(E[f | y])). Both covariances are normalised
by N here (Ledoit-Wolf's convention), so with a = 0 the two scores agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transferlab.transferability.checks import (
    CHUNK_ROWS,
    class_means,
    column_means,
    gram,
    target_labels,
)


def hscore(features: Tensor, labels: Tensor, source_probs: Tensor | None = None) -> float:
    """tr(cov(f)^+ cov(E[f | y])); `source_probs` is not used."""
    _, covariance, between = covariances(features, labels)
    return trace_of_solve(covariance, between)


def shrinkage_hscore(features: Tensor, labels: Tensor, source_probs: Tensor | None = None) -> float:
    """H-score with cov(f) shrunk by Ledoit-Wolf; `source_probs` is not used."""
    mean, covariance, between = covariances(features, labels)
    shrinkage = ledoit_wolf_shrinkage(features, mean, covariance)
    target = covariance.trace() / covariance.shape[0]
    shrunk = (1 - shrinkage) * covariance
    shrunk.diagonal().add_(shrinkage * target)
    return (1 - shrinkage) * trace_of_solve(shrunk, between)


def covariances(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """The mean row, cov(f) [D, D] and the between-class covariance cov(E[f | y]) as
    (factor [C, D], weights [C]) with cov(E[f | y]) = factor^T diag(weights) factor; both
    covariances normalised by N."""
    labels = target_labels(features, labels)
    mean = column_means(features)
    covariance = gram(features, mean) / len(features)
    means, counts = class_means(features, labels, int(labels.max()) + 1)
    return mean, covariance, (means - mean, counts / len(features))


def trace_of_solve(covariance: Tensor, between: tuple[Tensor, Tensor]) -> float:
    """tr(covariance^+ factor^T diag(weights) factor) = sum_c weight_c factor_c^T cov^+
    factor_c: no D x D product of the two."""
    factor, weights = between
    inverse = torch.linalg.pinv(covariance, hermitian=True)
    return (weights * ((factor @ inverse) * factor).sum(dim=1)).sum().item()


def ledoit_wolf_shrinkage(features: Tensor, mean: Tensor, covariance: Tensor) -> float:
    """Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional covariance
    matrices": min(b^2, d^2) / d^2 with d^2 = |S - mu I|_F^2 / D (mu = tr(S) / D) and
    b^2 = sum_k |x_k x_k^T - S|_F^2 / (N^2 D) = (mean_k |x_k|^4 - |S|_F^2) / (N D),
    x_k the centred rows, S their covariance normalised by N."""
    samples, dim = features.shape
    fourth = sum(
        ((chunk.to(torch.float64) - mean).square().sum(dim=1).square()).sum()
        for chunk in features.split(CHUNK_ROWS)
    )
    mu = covariance.trace() / dim
    frobenius = covariance.square().sum()
    spread = (frobenius - 2 * mu * covariance.trace() + dim * mu**2) / dim
    noise = (fourth / samples - frobenius) / (samples * dim)
    if spread <= 0:
        return 0.0
    return (torch.minimum(noise, spread) / spread).item()

"""TransRate: the coding rate of the features minus the mean coding rate within a class.

Huang, Huang, Rong, Yang & Wei, "Frustratingly Easy Transferability Estimation" (ICML 2022).
The coding rate R(Z, eps) = 1/2 log det(I + Z^T Z / (n eps)) of the centred features Z
(n rows) approximates their entropy at distortion eps; TransRate estimates the mutual
information between features and labels as

    R(Z, eps) - 1/C sum_c R(Z_c, eps)

Z_c the rows of class c (centred with the whole set, not per class). eps = 1e-4 and this
form of the rate (1 / (n eps), the paper's d / (n eps^2) with the constants folded in) are
those of the paper's own code listing. Not scale-invariant: features scaled up score higher.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transferlab.transferability.checks import column_means, gram, target_labels

EPS = 1e-4


def transrate(features: Tensor, labels: Tensor, source_probs: Tensor | None = None) -> float:
    """R(Z, eps) - mean_c R(Z_c, eps); `source_probs` is not used."""
    labels = target_labels(features, labels)
    mean = column_means(features)
    whole = coding_rate(features, mean)
    per_class = [coding_rate(features[labels == c], mean) for c in range(int(labels.max()) + 1)]
    return whole - sum(per_class) / len(per_class)


def coding_rate(rows: Tensor, mean: Tensor) -> float:
    """1/2 log det(I + Z^T Z / (n eps)) with Z = rows - mean, from the eigenvalues of the
    smaller of Z^T Z and Z Z^T (they share the nonzero ones)."""
    samples, dim = rows.shape
    if dim <= samples:
        eigenvalues = torch.linalg.eigvalsh(gram(rows, mean))
    else:
        centred = rows.to(torch.float64) - mean
        eigenvalues = torch.linalg.eigvalsh(centred @ centred.T)
    return torch.log1p(eigenvalues.clamp_min(0) / (samples * EPS)).sum().item() / 2

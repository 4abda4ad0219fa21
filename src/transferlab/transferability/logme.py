"""LogME: the log of the maximum evidence of a Bayesian linear model from features to labels.

You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning" (ICML 2021), with the fixed-point iteration of You, Liu, Wang, Jordan & Long,
"Ranking and Tuning Pre-trained Models: A New Paradigm for Exploiting Model Hubs" (JMLR 2022).

Per class, the one-hot target y is modelled as y = F w + noise, w ~ N(0, I / alpha), noise
~ N(0, I / beta); the evidence p(y | F, alpha, beta) is maximised over alpha and beta, and
the score is its log divided by N, averaged over classes (higher: the features explain the
labels better, with a simpler model). Everything per class lives in the eigenbasis of the
Gram matrix, computed once: F^T F when D < N, else F F^T (the SVD of F either way), so the
whole score costs O(min(N, D)^2 max(N, D)) and each fixed-point step O(min(N, D) C).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from transferlab.transferability.checks import class_means, gram, target_labels

MAX_STEPS = 1000  # the iteration usually settles in a few dozen steps
TOLERANCE = 1e-12  # relative change of alpha and beta that counts as converged


def logme(features: Tensor, labels: Tensor, source_probs: Tensor | None = None) -> float:
    """Mean over classes of the maximum log evidence / N. `source_probs` is not used."""
    labels = target_labels(features, labels)
    classes = int(labels.max()) + 1
    sigma, z = spectrum(features, labels, classes)
    counts = torch.bincount(labels, minlength=classes).to(torch.float64)
    samples, dim = features.shape
    return evidence(sigma, z, counts, samples, dim).mean().item() / samples


def spectrum(features: Tensor, labels: Tensor, classes: int) -> tuple[Tensor, Tensor]:
    """The squared singular values sigma [k] of F and z [k, C] = V^T F^T Y, the one-hot
    targets' projections on F's right singular vectors, from one eigendecomposition."""
    samples, dim = features.shape
    if dim < samples:
        sigma, vectors = torch.linalg.eigh(gram(features))
        means, counts = class_means(features, labels, classes)
        return sigma.clamp_min(0), vectors.T @ (means * counts[:, None]).T
    rows = features.to(torch.float64)
    sigma, left = torch.linalg.eigh(rows @ rows.T)
    sigma = sigma.clamp_min(0)
    per_class = torch.zeros(classes, samples, dtype=torch.float64, device=features.device)
    per_class.index_add_(0, labels, left)  # U^T Y, transposed
    return sigma, sigma.sqrt()[:, None] * per_class.T


def evidence(sigma: Tensor, z: Tensor, counts: Tensor, samples: int, dim: int) -> Tensor:
    """The maximised log evidence per class [C], by the fixed point of the JMLR 2022 paper
    (MacKay's updates alpha = gamma / |m|^2, beta = (N - gamma) / |F m - y|^2), all classes
    at once; |y|^2 is the class count for a one-hot target."""
    sigma = sigma[:, None]
    alpha = torch.ones_like(counts)
    beta = torch.ones_like(counts)
    tiny = torch.finfo(torch.float64).tiny
    for _ in range(MAX_STEPS):
        scale = alpha + beta * sigma
        gamma = (beta * sigma / scale).sum(dim=0)
        m = beta * z / scale  # the posterior mean in the eigenbasis
        weight_norm = (m * m).sum(dim=0).clamp_min(tiny)
        residual = (counts - 2 * (m * z).sum(dim=0) + (sigma * m * m).sum(dim=0)).clamp_min(tiny)
        new_alpha = gamma / weight_norm
        new_beta = (samples - gamma).clamp_min(tiny) / residual
        change = torch.maximum((new_alpha / alpha - 1).abs(), (new_beta / beta - 1).abs())
        alpha, beta = new_alpha, new_beta
        if change.max() < TOLERANCE:
            break
    scale = alpha + beta * sigma
    m = beta * z / scale
    weight_norm = (m * m).sum(dim=0)
    residual = (counts - 2 * (m * z).sum(dim=0) + (sigma * m * m).sum(dim=0)).clamp_min(0)
    log_det = torch.log(scale).sum(dim=0) + (dim - sigma.shape[0]) * torch.log(alpha)
    return (
        dim / 2 * torch.log(alpha)
        + samples / 2 * torch.log(beta)
        - log_det / 2
        - beta / 2 * residual
        - alpha / 2 * weight_norm
        - samples / 2 * math.log(2 * math.pi)
    )

"""CDAN+E: conditional domain-adversarial training with entropy conditioning.

Long, Cao, Wang & Jordan 2018, "Conditional Adversarial Domain Adaptation" (NeurIPS). As in
DANN, a discriminator is trained against the feature extractor through gradient reversal,
but it sees the features h conditioned on the classifier's predictions g = softmax(logits):
the multilinear map h (x) g (their outer product, d x C values), so that it aligns the
joint distribution of features and classes, not only the features. When d x C exceeds 4096
the map is randomized: (R_h h) * (R_g g) / sqrt(n), R_h and R_g fixed Gaussian matrices
with n rows, whose inner products approximate those of h (x) g. Entropy conditioning (the
"+E") weights each example by 1 + exp(-H(g)), so confident predictions count more than
uncertain ones. The reversal follows DANN's schedule.
"""

from __future__ import annotations

import math

import torch

from transferlab.adaptation.base import (
    DomainAdaptation,
    DomainDiscriminator,
    check_discriminator,
    domain_loss,
    entropy_weights,
)
from transferlab.adaptation.gradient_reversal import reversal_coefficient, reverse_gradient
from transferlab.components import OptionError, whole_number

FULL_MAP_LIMIT = 4096  # the paper's threshold on d x C for the randomized map


class CDAN(DomainAdaptation):
    """`adapt=cdan`: the discriminator's (entropy-weighted, with `entropy`) cross-entropy on
    the multilinear map of reversed features and the predictions. The predictions condition
    the discriminator but are not trained by it (detached): the adversarial gradient reaches
    the features only. The discriminator's parameters are this module's: the optimizer must
    include them. `random_dim`: the randomized map's width, used when feature_dim x
    num_classes > 4096."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        weight: float = 1.0,
        hidden: int = 1024,
        dropout: float = 0.5,
        entropy: bool = True,
        random_dim: int = 1024,
    ):
        self.check_options(
            weight=weight, hidden=hidden, dropout=dropout, entropy=entropy, random_dim=random_dim
        )
        super().__init__(feature_dim, num_classes, weight)
        self.entropy = entropy
        self.randomized = feature_dim * num_classes > FULL_MAP_LIMIT
        if self.randomized:  # buffers: fixed, saved in checkpoints so a resume is exact
            self.register_buffer("random_features", torch.randn(random_dim, feature_dim))
            self.register_buffer("random_classes", torch.randn(random_dim, num_classes))
        width = random_dim if self.randomized else feature_dim * num_classes
        self.discriminator = DomainDiscriminator(width, hidden, dropout)

    @staticmethod
    def check_options(
        weight: float, hidden: int, dropout: float, entropy: bool, random_dim: int
    ) -> None:
        DomainAdaptation.check_options(weight)
        check_discriminator(hidden, dropout)
        if not isinstance(entropy, bool):
            raise OptionError("entropy", entropy, "must be true (CDAN+E) or false (CDAN)")
        whole_number("random_dim", random_dim, 1)

    def multilinear_map(self, features: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """h (x) g, flattened per example, or its randomized estimate."""
        probabilities = probabilities.to(features.dtype)
        if self.randomized:
            projected = (features @ self.random_features.T) * (
                probabilities @ self.random_classes.T
            )
            return projected / math.sqrt(self.random_features.shape[0])
        return torch.einsum("bd,bc->bdc", features, probabilities).flatten(1)

    def forward(
        self,
        source_features: torch.Tensor,
        target_features: torch.Tensor,
        source_logits: torch.Tensor,
        target_logits: torch.Tensor,
        progress: float,
    ) -> torch.Tensor:
        coefficient = reversal_coefficient(progress)
        domains = []
        for features, logits in (
            (source_features, source_logits),
            (target_features, target_logits),
        ):
            probabilities = logits.detach().float().softmax(1)
            reversed_features = reverse_gradient(features, coefficient)
            domains.append(
                (
                    self.discriminator(self.multilinear_map(reversed_features, probabilities)),
                    entropy_weights(probabilities) if self.entropy else None,
                )
            )
        (source, source_weights), (target, target_weights) = domains
        return domain_loss(source, target, source_weights, target_weights)

"""DANN: domain-adversarial training.

Ganin, Ustinova, Ajakan, Germain, Larochelle, Laviolette, Marchand & Lempitsky 2016,
"Domain-Adversarial Training of Neural Networks" (JMLR 17). A domain discriminator learns to
tell source features from target features; the same loss, passed back through a gradient
reversal layer, trains the feature extractor to fool it, so features that predict the label
on the source carry no trace of the domain. The reversal's coefficient follows the paper's
schedule lambda_p = 2 / (1 + exp(-10 p)) - 1, p the share of training done.
"""

from __future__ import annotations

import torch

from transferlab.adaptation.base import (
    DomainAdaptation,
    DomainDiscriminator,
    check_discriminator,
    domain_loss,
)
from transferlab.adaptation.gradient_reversal import reversal_coefficient, reverse_gradient


class DANN(DomainAdaptation):
    """`adapt=dann`: the discriminator's cross-entropy on reversed features (log 2 when it
    is at chance). The discriminator's parameters are this module's: the optimizer must
    include them. The discriminator gets weight x the gradient of the loss, the feature
    extractor -weight x lambda_p x it."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        weight: float = 1.0,
        hidden: int = 1024,
        dropout: float = 0.5,
    ):
        self.check_options(weight=weight, hidden=hidden, dropout=dropout)
        super().__init__(feature_dim, num_classes, weight)
        self.discriminator = DomainDiscriminator(feature_dim, hidden, dropout)

    @staticmethod
    def check_options(weight: float, hidden: int, dropout: float) -> None:
        DomainAdaptation.check_options(weight)
        check_discriminator(hidden, dropout)

    def forward(
        self,
        source_features: torch.Tensor,
        target_features: torch.Tensor,
        source_logits: torch.Tensor,
        target_logits: torch.Tensor,
        progress: float,
    ) -> torch.Tensor:
        coefficient = reversal_coefficient(progress)
        return domain_loss(
            self.discriminator(reverse_gradient(source_features, coefficient)),
            self.discriminator(reverse_gradient(target_features, coefficient)),
        )

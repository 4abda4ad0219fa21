"""MCC: minimum class confusion, a non-adversarial adaptation loss on the target alone.

Jin, Wang, Long & Wang 2020, "Minimum Class Confusion for Versatile Domain Adaptation"
(ECCV). On a target batch of logits Z (B x C):

    Y   = softmax(Z / T)                       temperature rescaling (T = 2.5 in the paper)
    w_i = B (1 + exp(-H(Y_i))) / sum_k (1 + exp(-H(Y_k)))     uncertainty reweighting
    C   = Y^T diag(w) Y                        class correlation, C x C
    C~_jk = C_jk / sum_l C_lk                  category normalization
    L   = (1 / C) sum_j sum_{k != j} |C~_jk|   the confusion between different classes

Minimising L makes the classifier commit each target example to one class; the source
batch plays no part (the classification loss keeps the classes right).
"""

from __future__ import annotations

import torch

from transferlab.adaptation.base import DomainAdaptation, entropy_weights
from transferlab.components import number


class MinimumClassConfusion(DomainAdaptation):
    """`adapt=mcc`: the class confusion of the target predictions. No parameters.
    `temperature`: T, > 0 (larger softens the predictions before their correlation)."""

    def __init__(
        self, feature_dim: int, num_classes: int, weight: float = 1.0, temperature: float = 2.5
    ):
        self.check_options(weight=weight, temperature=temperature)
        super().__init__(feature_dim, num_classes, weight)
        self.temperature = temperature

    @staticmethod
    def check_options(weight: float, temperature: float) -> None:
        DomainAdaptation.check_options(weight)
        number("temperature", temperature, 0, strict=True)

    def forward(
        self,
        source_features: torch.Tensor,
        target_features: torch.Tensor,
        source_logits: torch.Tensor,
        target_logits: torch.Tensor,
        progress: float,
    ) -> torch.Tensor:
        probabilities = (target_logits.float() / self.temperature).softmax(1)
        weighted = probabilities * entropy_weights(probabilities).unsqueeze(1)
        confusion = weighted.T @ probabilities
        confusion = confusion / confusion.sum(0, keepdim=True)
        return (confusion.sum() - confusion.trace()) / self.num_classes

"""The shape every domain-adaptation method shares (`adapt._target_`), and the domain
discriminator the adversarial ones (DANN, CDAN) train against the feature extractor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.components import build, fraction, number, whole_number


class DomainAdaptation(nn.Module):
    """An adaptation loss between a labelled source batch and an unlabelled target batch.

    Built with its options (typed keyword arguments, checked by the subclass's
    `check_options`, which calls this class's for `weight`) and the sizes the code fills in:
    `feature_dim` (the backbone's feature width) and `num_classes`. `forward` returns the
    unweighted loss, so it can be logged as it is; the training step adds `weight` times it
    to the classification loss. A method with parameters (a discriminator) trains them
    through that same loss: the optimizer must include this module's parameters.
    """

    def __init__(self, feature_dim: int, num_classes: int, weight: float = 1.0):
        super().__init__()
        whole_number("feature_dim", feature_dim, 1)
        whole_number("num_classes", num_classes, 1)
        self.feature_dim, self.num_classes, self.weight = feature_dim, num_classes, weight

    @staticmethod
    def check_options(weight: float) -> None:
        number("weight", weight)

    def forward(
        self,
        source_features: torch.Tensor,
        target_features: torch.Tensor,
        source_logits: torch.Tensor,
        target_logits: torch.Tensor,
        progress: float,
    ) -> torch.Tensor:
        """The unweighted adaptation loss (a scalar) of one pair of batches. `progress`, in
        [0, 1], is the share of training done (DANN and CDAN schedule their reversal by it)."""
        raise NotImplementedError


def build_adaptation(node: Mapping[str, Any], feature_dim: int, num_classes: int):
    """`adapt`'s method (None for adapt=none), less `selection`, which is the run's to read."""
    options = {key: value for key, value in node.items() if key != "selection"}
    return build(options, "adapt", feature_dim=feature_dim, num_classes=num_classes)


class DomainDiscriminator(nn.Sequential):
    """Tells source (logit > 0) from target (logit < 0): two hidden layers of `hidden`
    units with ReLU and dropout, as in DANN's and CDAN's experiments."""

    def __init__(self, in_features: int, hidden: int, dropout: float):
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )


def check_discriminator(hidden: int, dropout: float) -> None:
    whole_number("hidden", hidden, 1)
    fraction("dropout", dropout)


def domain_loss(
    source_logits: torch.Tensor,
    target_logits: torch.Tensor,
    source_weights: torch.Tensor | None = None,
    target_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The discriminator's binary cross-entropy (source = 1, target = 0), the mean of the two
    domains' means so that unequal batch sizes do not tilt it; log(2) at chance. Optional
    per-example weights (CDAN+E) should have mean 1 in each domain."""
    source = F.binary_cross_entropy_with_logits(
        source_logits.squeeze(1).float(),
        torch.ones(len(source_logits), device=source_logits.device),
        weight=source_weights,
    )
    target = F.binary_cross_entropy_with_logits(
        target_logits.squeeze(1).float(),
        torch.zeros(len(target_logits), device=target_logits.device),
        weight=target_weights,
    )
    return (source + target) / 2


def entropy_weights(probabilities: torch.Tensor) -> torch.Tensor:
    """1 + exp(-H(p)) for each row of probabilities, scaled to mean 1 over the batch: CDAN+E
    and MCC count confident predictions more. A weight on examples, not something to
    optimise: no gradient flows through it."""
    weights = 1 + torch.exp(-prediction_entropy(probabilities.detach()))
    return weights / weights.mean()


def prediction_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """-sum p log p of each row (nats): 0 for a certain prediction, log(classes) at most."""
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(1)

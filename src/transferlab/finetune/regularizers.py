"""Fine-tuning regularised toward the source model.

Each regulariser is a small nn.Module (`regularizer._target_`, built with `backbone` and
`head` filled in) whose forward returns the penalty added to the loss (logged as
`train/reg`); each checks its own options. Whatever it keeps of the source is a frozen
buffer or a frozen copy: saved in checkpoints, never trained.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.components import choice, number
from transferlab.models.backbone import Backbone


class L2SP(nn.Module):
    """L2-SP (Li, Grandvalet & Davoine 2018, "Explicit inductive bias for transfer learning
    with convolutional networks"):

        alpha/2 * ||w - w0||^2 over the backbone  +  beta/2 * ||w||^2 over the head

    w0 are the source weights, so the backbone is pulled back toward what it was
    pretrained to be, while the new head gets plain weight decay.
    """

    def __init__(
        self, backbone: Backbone, head: nn.Module, alpha: float = 0.01, beta: float = 0.01
    ):
        super().__init__()
        self.check_options(alpha=alpha, beta=beta)
        self.alpha, self.beta = alpha, beta
        self.backbone_params = [p for p in backbone.network.parameters()]
        self.head_params = list(head.parameters())
        for i, p in enumerate(self.backbone_params):
            self.register_buffer(f"source_{i}", p.detach().clone())

    @staticmethod
    def check_options(alpha: float, beta: float) -> None:
        number("alpha", alpha)
        number("beta", beta)

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        to_source = sum(
            (p - getattr(self, f"source_{i}")).pow(2).sum()
            for i, p in enumerate(self.backbone_params)
        )
        head = sum(p.pow(2).sum() for p in self.head_params)
        return self.alpha / 2 * to_source + self.beta / 2 * head


KL_CHOICES = {"target": ("logits", "features"), "distance": ("l2", "cosine")}


class KLSource(nn.Module):
    """Distillation toward the source network (Learning without Forgetting, Li & Hoiem 2016).

    `target: logits`: KL(source || fine-tuned) between temperature-softened outputs of the
    source's own classifier, applied to the frozen source network and to the fine-tuned
    backbone (T^2 keeps gradient sizes independent of T). `target: features`: the
    distance between the two backbones' features (`l2`: mean squared, `cosine`: 1 - cos),
    for sources without a meaningful classifier.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        weight: float = 1.0,
        temperature: float = 2.0,
        target: str = "logits",
        distance: str = "l2",
    ):
        super().__init__()
        self.check_options(weight=weight, temperature=temperature, target=target, distance=distance)
        self.weight, self.temperature, self.target, self.distance = (
            weight,
            temperature,
            target,
            distance,
        )
        self.source = copy.deepcopy(backbone).requires_grad_(False).eval()
        self.source_head = backbone.source_head  # frozen; shared, not copied

    @staticmethod
    def check_options(weight: float, temperature: float, target: str, distance: str) -> None:
        number("weight", weight)
        number("temperature", temperature, strict=True)
        choice("target", target, KL_CHOICES["target"])
        choice("distance", distance, KL_CHOICES["distance"])

    def train(self, mode: bool = True):
        super().train(mode)
        self.source.eval()  # the source's BatchNorm statistics never move
        return self

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            source_features = self.source(images)
        if self.target == "features":
            return self.weight * self._feature_distance(features, source_features)
        t = self.temperature
        student = F.log_softmax(self.source_head(features) / t, dim=1)
        teacher = F.log_softmax(self.source_head(source_features) / t, dim=1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return self.weight * t * t * kl

    def _feature_distance(self, features: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        if self.distance == "cosine":
            return (1 - F.cosine_similarity(features, source, dim=1)).mean()
        return F.mse_loss(features, source)

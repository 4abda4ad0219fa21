"""Batch spectral shrinkage: a regulariser that needs nothing of the source network.

Chen, Wang, Fu, Long & Wang 2019, "Catastrophic Forgetting Meets Negative Transfer: Batch
Spectral Shrinkage for Safe Transfer Learning" (NeurIPS). Fine-tuning on little data lets
the backbone keep or grow feature directions the target task does not need, and those carry
negative transfer; they show up as the smallest singular values of a batch's feature
matrix, so BSS shrinks them:

    weight * sum of the k smallest squared singular values of the (batch x dim) features

The paper's defaults: eta (`weight`) 0.001 and k 1.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.components import number, whole_number
from transferlab.models.backbone import Backbone


class BatchSpectralShrinkage(nn.Module):
    """`regularizer=bss`: penalises the batch features' k smallest singular values. Keeps no
    copy of the source, so it costs one SVD of a (batch x dim) matrix per step. A batch with
    fewer than k singular values (a short last batch) is penalised on all it has."""

    def __init__(self, backbone: Backbone, head: nn.Module, weight: float = 1e-3, k: int = 1):
        super().__init__()
        self.check_options(weight=weight, k=k)
        self.weight, self.k = weight, k

    @staticmethod
    def check_options(weight: float, k: int) -> None:
        number("weight", weight)
        whole_number("k", k, 1)

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        # float32 outside autocast: the SVD has no bf16 / fp16 kernels
        with torch.autocast(features.device.type, enabled=False):
            values = torch.linalg.svdvals(features.float())  # descending
        return self.weight * values[-self.k :].pow(2).sum()

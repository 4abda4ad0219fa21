"""Gradient reversal (Ganin & Lempitsky 2015; Ganin et al. 2016, "Domain-Adversarial
Training of Neural Networks", JMLR 17): the identity going forward, -coefficient times the
gradient going back. Placed between the features and a domain discriminator, one backward
pass trains the discriminator to tell the domains apart and the feature extractor to make
them indistinguishable."""

from __future__ import annotations

import math

import torch


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad, None


def reverse_gradient(inputs: torch.Tensor, coefficient: float) -> torch.Tensor:
    """`inputs` unchanged; the gradient flowing back through it is multiplied by
    -coefficient."""
    return _ReverseGradient.apply(inputs, coefficient)


def reversal_coefficient(progress: float) -> float:
    """DANN's schedule lambda_p = 2 / (1 + exp(-10 p)) - 1, p the share of training done:
    0 at the start, while the discriminator's signal is noise, rising to ~1 (0.987 at 1/2)."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0

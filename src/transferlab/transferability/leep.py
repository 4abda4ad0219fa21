"""LEEP: the log expected empirical prediction of the target labels from the source outputs.

Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of
Learned Representations" (ICML 2020). With theta_i the source classifier's softmax output
for target sample i, the empirical joint P(y, z) = 1/N sum_{i: y_i = y} theta_i[z] gives a
"dummy" classifier P(y | x_i) = sum_z P(y | z) theta_i[z], and

    LEEP = 1/N sum_i log sum_z P(y_i | z) theta_i[z]

the mean log-likelihood of that classifier on the target labels (<= 0, higher is better).
"""

from __future__ import annotations

import torch
from torch import Tensor

from transferlab.transferability.checks import source_outputs, target_labels


def leep(features: Tensor, labels: Tensor, source_probs: Tensor | None = None) -> float:
    """Mean log expected empirical prediction; `features` are only checked against the
    labels."""
    labels = target_labels(features, labels)
    probs = source_outputs(source_probs, len(labels), "leep")
    labels = labels.to(probs.device)
    joint = torch.zeros(int(labels.max()) + 1, probs.shape[1], dtype=torch.float64)
    joint = joint.to(probs.device).index_add_(0, labels, probs) / len(labels)
    marginal = joint.sum(dim=0)
    conditional = torch.where(marginal > 0, joint / marginal.clamp_min(1e-300), 0)
    expected = (probs * conditional[labels]).sum(dim=1)
    return torch.log(expected).mean().item()

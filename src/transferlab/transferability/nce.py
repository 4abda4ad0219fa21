"""NCE: the negative conditional entropy of the target labels given the source's predictions.

Tran, Nguyen & Hassner, "Transferability and Hardness of Supervised Classification Tasks"
(ICCV 2019). Each target sample gets the source classifier's hard prediction
z = argmax source_probs; from the empirical joint P(y, z),

    NCE = -H(Y | Z) = sum_{y, z} P(y, z) log P(y | z)

0 when the source's predictions determine the target label, lower the less they tell.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transferlab.transferability.checks import source_outputs, target_labels


def nce(features: Tensor, labels: Tensor, source_probs: Tensor | None = None) -> float:
    """-H(Y | argmax source_probs); `features` are only checked against the labels."""
    labels = target_labels(features, labels)
    probs = source_outputs(source_probs, len(labels), "nce")
    predicted = probs.argmax(dim=1)
    sources = probs.shape[1]
    pairs = labels.to(predicted.device) * sources + predicted
    joint = torch.bincount(pairs, minlength=(int(labels.max()) + 1) * sources)
    joint = joint.reshape(-1, sources).to(torch.float64) / len(labels)
    marginal = joint.sum(dim=0, keepdim=True).expand_as(joint)
    seen = joint > 0
    return (joint[seen] * torch.log(joint[seen] / marginal[seen])).sum().item()

"""The input checks every score shares, and the float64 statistics several of them need.

A score of broken input is a number that ranks a candidate for no reason, so bad input is
refused with one line saying what is wrong. The statistics are accumulated over row chunks
in float64: 50,000 x 2,048 features never exist as one float64 copy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transferlab.errors import UserError

CHUNK_ROWS = 8192  # rows converted to float64 at a time
GRAM_BLOCK = 512  # columns per block of the Gram matrix
SOFTMAX = "accepted are softmax outputs (non-negative rows summing to 1), not logits"


def target_labels(features: Tensor, labels: Tensor) -> Tensor:
    """Checks features [N, D] (finite) against labels [N] (integers, >= 2 classes, N >= 2)
    and returns the labels renumbered 0..C-1 in order, so a class absent from the split
    takes no slot."""
    if features.ndim != 2:
        raise UserError(
            f"transferability: features have shape {tuple(features.shape)}: accepted is "
            "[samples, dimension]"
        )
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise UserError(
            f"transferability: labels are {labels.dtype} of shape {tuple(labels.shape)}: "
            "accepted is one integer class per sample, shape [samples]"
        )
    if len(labels) != len(features):
        raise UserError(
            f"transferability: {len(features)} feature rows but {len(labels)} labels: "
            "accepted is one label per row"
        )
    if len(labels) < 2:
        raise UserError(
            f"transferability: {len(labels)} sample(s): a score needs at least 2 samples"
        )
    # one float64 sum first: finite unless a value is NaN or inf (or float64 values near
    # its limit overflow it, hence the count)
    bad = 0
    if not torch.isfinite(features.sum(dtype=torch.float64)):
        bad = (~torch.isfinite(features)).sum().item()
    if bad:
        raise UserError(
            f"transferability: features hold {bad} NaN or inf value(s) of {features.numel()}:"
            " accepted are finite features"
        )
    classes, renumbered = torch.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise UserError(
            f"transferability: labels hold one class ({classes[0].item()}): a score needs "
            "at least 2 classes"
        )
    return renumbered


def source_outputs(source_probs: Tensor | None, samples: int, score: str) -> Tensor:
    """The source classifier's softmax outputs [N, K] as float64, checked: a score that needs
    them must not silently read logits or another split's outputs."""
    if source_probs is None:
        raise UserError(
            f"transferability: {score} needs source_probs, the source classifier's softmax "
            "outputs [samples, source classes]: none were given"
        )
    if source_probs.ndim != 2 or len(source_probs) != samples:
        raise UserError(
            f"transferability: source_probs have shape {tuple(source_probs.shape)}: accepted "
            f"is [{samples}, source classes], one row per labelled sample"
        )
    probs = source_probs.to(torch.float64)
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise UserError(
            f"transferability: source_probs hold NaN, inf or negative values: {SOFTMAX}"
        )
    worst = (probs.sum(dim=1) - 1).abs().max().item()
    if worst > 1e-3:
        raise UserError(f"transferability: a row of source_probs sums to 1 {worst:+.3g}: {SOFTMAX}")
    return probs


def column_means(features: Tensor) -> Tensor:
    """The mean row, float64 [D]."""
    total = sum(chunk.to(torch.float64).sum(dim=0) for chunk in features.split(CHUNK_ROWS))
    return total / len(features)


def gram(features: Tensor, center: Tensor | None = None) -> Tensor:
    """(F - center)^T (F - center) in float64 [D, D], one chunk of rows at a time. Only the
    blocks on and above the diagonal are multiplied (the rest is their mirror): 10 of 16
    block products at D = 2,048, where this product is most of LogME's time."""
    dim = features.shape[1]
    blocks = [slice(start, start + GRAM_BLOCK) for start in range(0, dim, GRAM_BLOCK)]
    result = torch.zeros(dim, dim, dtype=torch.float64, device=features.device)
    for chunk in features.split(CHUNK_ROWS):
        rows = chunk.to(torch.float64)
        if center is not None:
            rows = rows - center
        for index, left in enumerate(blocks):
            for right in blocks[index:]:
                result[left, right].addmm_(rows[:, left].T, rows[:, right])
    for index, left in enumerate(blocks):
        for right in blocks[index + 1 :]:
            result[right, left] = result[left, right].T
    return result


def class_means(features: Tensor, labels: Tensor, classes: int) -> tuple[Tensor, Tensor]:
    """Per class: the mean row (float64 [C, D]) and the count (float64 [C])."""
    sums = torch.zeros(classes, features.shape[1], dtype=torch.float64, device=features.device)
    for chunk, chunk_labels in zip(
        features.split(CHUNK_ROWS), labels.split(CHUNK_ROWS), strict=True
    ):
        sums.index_add_(0, chunk_labels, chunk.to(torch.float64))
    counts = torch.bincount(labels, minlength=classes).to(torch.float64)
    return sums / counts[:, None], counts

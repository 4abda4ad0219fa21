"""Transferability scores: how well a candidate's frozen features (or its source classifier's
outputs) are expected to transfer to a target task, computed before any fine-tuning.

Every score is a function of (features float [N, D], labels int [N], source_probs float
[N, K] or None) returning a float, higher = expected to transfer better. Those named in
NEEDS_SOURCE read the candidate's source-classifier softmax outputs on the same samples.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from transferlab.transferability import hscore, leep, logme, nce, transrate

# Modules imported as modules (not their functions under the same names), so that
# `transferlab.transferability.logme` stays the module a reader looks for.
SCORES: dict[str, Callable[[Tensor, Tensor, Tensor | None], float]] = {
    "logme": logme.logme,
    "hscore": hscore.hscore,
    "shrinkage_hscore": hscore.shrinkage_hscore,
    "nce": nce.nce,
    "leep": leep.leep,
    "transrate": transrate.transrate,
}
NEEDS_SOURCE: frozenset[str] = frozenset({"nce", "leep"})

__all__ = ["NEEDS_SOURCE", "SCORES"]

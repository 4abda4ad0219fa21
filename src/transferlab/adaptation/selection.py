"""Deep embedded validation (DEV): an estimate of the target risk without target labels,
to choose checkpoints and hyperparameters in unsupervised domain adaptation.

You, Long, Wang & Jordan 2019, "Towards Accurate Model Selection in Deep Unsupervised
Domain Adaptation" (ICML). The labelled source validation losses are reweighted by the
density ratio w(x) = p_target(x) / p_source(x) of each validation example's features, so
that their mean estimates the loss on the target (importance-weighted cross-validation);
w comes from a domain classifier fitted on the source and target features, and a control
variate (E[w] = 1) cuts the variance the weights add. Choosing by plain source validation
loss ignores the shift; choosing with target labels is not unsupervised adaptation.
"""

from __future__ import annotations

import numpy as np

from transferlab.adaptation.diagnostics import (
    Features,
    as_values,
    domain_classifier,
    domain_pair,
    same_width,
)


def dev_risk(
    source_features: Features,
    target_features: Features,
    validation_features: Features,
    validation_losses: Features,
    seed: int = 0,
) -> float:
    """The DEV estimate of the target risk (lower is better).

    `source_features` and `target_features` (2-D, examples x features; the source training
    and unlabelled target features) fit the domain classifier (standardised logistic
    regression, seeded); `validation_features` and `validation_losses` (1-D, e.g. per-example
    cross-entropy) are the labelled source validation examples. With p = p(target | x),
    w = (n_s / n_t) p / (1 - p) (the prior ratio undoes the classifier's class balance),
    L = w l, eta = -Cov(L, w) / Var(w) (0 when the weights do not vary), and the risk is
    mean(L) + eta mean(w) - eta. A constant loss c thus has risk c exactly, whatever w.
    """
    source, target = domain_pair(source_features, target_features)
    validation = as_values("validation_features", validation_features, 2)
    losses = as_values("validation_losses", validation_losses, 1)
    if len(losses) != len(validation):
        raise ValueError(
            f"validation_losses has {len(losses)} values but validation_features has "
            f"{len(validation)} examples"
        )
    same_width("validation_features", validation, "source_features", source)
    classifier = domain_classifier(source, target, seed)
    # log(p / (1 - p)) is the decision function: no division by a probability near 0.
    weights = len(source) / len(target) * np.exp(classifier.decision_function(validation))
    weighted = weights * losses
    variance = weights.var(ddof=1)
    # Equal weights leave a variance of rounding error only: no control variate then.
    if variance <= np.finfo(float).eps * weights.max() ** 2:
        eta = 0.0
    else:
        eta = -np.cov(weighted, weights)[0, 1] / variance
    return float(weighted.mean() + eta * weights.mean() - eta)

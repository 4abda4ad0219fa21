"""Heads: the new classifier on the backbone's features, sized for the target's classes.

Chosen by `head._target_` and built with `in_features` and `num_classes` filled in; each
checks its own options (see transferlab.components).
"""

from __future__ import annotations

from torch import nn

from transferlab.components import fraction, whole_number

MAX_HIDDEN = 2**16  # head width; 65536 x a 2048-wide backbone is already 134M weights


class LinearHead(nn.Module):
    """Dropout (optional) then one linear layer: the classic replaced classifier."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.check_options(dropout=dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, num_classes)

    @staticmethod
    def check_options(dropout: float) -> None:
        fraction("dropout", dropout)

    def forward(self, features):
        return self.linear(self.dropout(features))


class MLPHead(nn.Module):
    """A hidden layer between features and classes: more capacity than a linear probe."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.check_options(hidden=hidden, dropout=dropout)
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    @staticmethod
    def check_options(hidden: int, dropout: float) -> None:
        whole_number("hidden", hidden, 1, MAX_HIDDEN)
        fraction("dropout", dropout)

    def forward(self, features):
        return self.layers(features)

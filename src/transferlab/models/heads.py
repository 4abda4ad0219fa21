"""Heads: the new classifier on the backbone's features, sized for the target's classes."""

from __future__ import annotations

from torch import nn

from transferlab.errors import UserError, one_of


class LinearHead(nn.Module):
    """Dropout (optional) then one linear layer: the classic replaced classifier."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features):
        return self.linear(self.dropout(features))


class MLPHead(nn.Module):
    """A hidden layer between features and classes: more capacity than a linear probe."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features):
        return self.layers(features)


HEADS: dict[str, type[nn.Module]] = {"linear": LinearHead, "mlp": MLPHead}


def build_head(name: str, in_features: int, num_classes: int, **options) -> nn.Module:
    if name not in HEADS:
        raise UserError(f"head.name={name!r} is unknown; use {one_of(HEADS)}")
    try:
        return HEADS[name](in_features, num_classes, **options)
    except TypeError as err:
        raise UserError(f"head={name}: {err}") from err

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


HEADS: dict[str, type[nn.Module]] = {"linear": LinearHead}


def build_head(name: str, in_features: int, num_classes: int, **options) -> nn.Module:
    if name not in HEADS:
        raise UserError(f"head.name={name!r} is unknown; use {one_of(HEADS)}")
    return HEADS[name](in_features, num_classes, **options)

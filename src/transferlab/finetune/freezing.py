"""Freeze strategies: which backbone stages train at a given epoch.

The state is derived from the config and the epoch alone, never accumulated, so a run
resumed from a checkpoint freezes exactly what the uninterrupted run froze. The optimizer
holds every parameter from the start; a frozen parameter simply gets no gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from transferlab.errors import UserError, one_of

# name -> (keys the strategy accepts besides `name`, frozen stage indices for (cfg, n, epoch))
FrozenStages = Callable[[Mapping[str, Any], int, int], set[int]]
FREEZE_STRATEGIES: dict[str, tuple[frozenset[str], FrozenStages]] = {}


def register_strategy(name: str, keys: frozenset[str] = frozenset()):
    """Adds a strategy: `fn(cfg, num_stages, epoch) -> indices of frozen stages`."""

    def add(fn: FrozenStages) -> FrozenStages:
        FREEZE_STRATEGIES[name] = (keys, fn)
        return fn

    return add


@register_strategy("none")
def _full_finetune(cfg: Mapping[str, Any], num_stages: int, epoch: int) -> set[int]:
    return set()


@register_strategy("linear_probe")
def _linear_probe(cfg: Mapping[str, Any], num_stages: int, epoch: int) -> set[int]:
    return set(range(num_stages))


@register_strategy("partial", frozenset({"k"}))
def _partial(cfg: Mapping[str, Any], num_stages: int, epoch: int) -> set[int]:
    return set(range(cfg["k"]))


def check_freeze_config(cfg: Mapping[str, Any]) -> None:
    """Rejects unknown strategies and keys; needs no model."""
    name = cfg.get("name")
    if name not in FREEZE_STRATEGIES:
        raise UserError(f"freeze.name={name!r} is unknown; use {one_of(FREEZE_STRATEGIES)}")
    keys, _ = FREEZE_STRATEGIES[name]
    unknown = set(cfg) - keys - {"name"}
    if unknown:
        raise UserError(
            f"freeze={name} does not take {one_of(sorted(unknown))}; it takes "
            f"{one_of(sorted(keys)) if keys else 'no options'}"
        )
    if "k" in keys and (not isinstance(cfg.get("k"), int) or cfg["k"] < 0):
        raise UserError(f"freeze.k={cfg.get('k')!r} must be a whole number >= 0")


def check_fits_backbone(cfg: Mapping[str, Any], num_stages: int, arch: str) -> None:
    """Checks stage counts against the built backbone."""
    k = cfg.get("k")
    if k is not None and k > num_stages:
        raise UserError(
            f"freeze.k={k} is beyond {arch}'s {num_stages} stages; use 0 to {num_stages}"
        )


def frozen_stages(cfg: Mapping[str, Any], num_stages: int, epoch: int) -> set[int]:
    """Indices (0 = nearest the input) of the stages frozen during `epoch`."""
    _, fn = FREEZE_STRATEGIES[cfg["name"]]
    return fn(cfg, num_stages, epoch)

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


@register_strategy("freeze_unfreeze", frozenset({"unfreeze_at"}))
def _freeze_unfreeze(cfg: Mapping[str, Any], num_stages: int, epoch: int) -> set[int]:
    return set(range(num_stages)) if epoch < cfg["unfreeze_at"] else set()


@register_strategy("gradual", frozenset({"milestones", "warmup_epochs"}))
def _gradual(cfg: Mapping[str, Any], num_stages: int, epoch: int) -> set[int]:
    """ULMFiT-style: at each milestone the frozen stage nearest the head starts training."""
    unfrozen = sum(m <= epoch for m in cfg["milestones"])
    return set(range(max(num_stages - unfrozen, 0)))


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
    for key in keys & {"k", "unfreeze_at", "warmup_epochs"}:
        _whole_number(cfg, key)
    if "milestones" in keys:
        milestones = cfg.get("milestones")
        if not isinstance(milestones, list) or not milestones:
            raise UserError(f"freeze.milestones={milestones!r} must list epochs, e.g. [1, 2, 3]")
        for m in milestones:
            if not isinstance(m, int) or isinstance(m, bool) or m < 0:
                raise UserError(f"freeze.milestones has {m!r}; epochs are whole numbers >= 0")
        if milestones != sorted(milestones):
            raise UserError(f"freeze.milestones={milestones} must be in increasing order")


def check_fits_training(cfg: Mapping[str, Any], max_epochs: int) -> None:
    """An unfreeze planned after the last epoch would silently never happen."""
    for epoch in [cfg.get("unfreeze_at"), *cfg.get("milestones", [])]:
        if epoch is not None and epoch >= max_epochs:
            key = "unfreeze_at" if epoch == cfg.get("unfreeze_at") else "milestones"
            raise UserError(
                f"freeze.{key} has epoch {epoch}, beyond trainer.max_epochs={max_epochs} "
                f"(epochs count from 0); use epochs below {max_epochs}"
            )


def check_fits_backbone(cfg: Mapping[str, Any], num_stages: int, arch: str) -> None:
    """Checks stage counts against the built backbone."""
    k = cfg.get("k")
    if k is not None and k > num_stages:
        raise UserError(
            f"freeze.k={k} is beyond {arch}'s {num_stages} stages; use 0 to {num_stages}"
        )
    milestones = cfg.get("milestones", [])
    if len(milestones) > num_stages:
        raise UserError(
            f"freeze.milestones has {len(milestones)} epochs but {arch} has {num_stages} "
            f"stages to unfreeze; give at most {num_stages}"
        )


def _whole_number(cfg: Mapping[str, Any], key: str) -> None:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UserError(f"freeze.{key}={value!r} must be a whole number >= 0")


def frozen_stages(cfg: Mapping[str, Any], num_stages: int, epoch: int) -> set[int]:
    """Indices (0 = nearest the input) of the stages frozen during `epoch`."""
    _, fn = FREEZE_STRATEGIES[cfg["name"]]
    return fn(cfg, num_stages, epoch)


def is_always_frozen(cfg: Mapping[str, Any], num_stages: int, max_epochs: int) -> bool:
    """True when no backbone stage ever trains: its features can be computed once."""
    every = set(range(num_stages))
    return all(frozen_stages(cfg, num_stages, e) == every for e in range(max_epochs))


def warmup_factor(cfg: Mapping[str, Any], num_stages: int, stage: int, epoch: float) -> float:
    """Learning-rate factor of a stage just unfrozen by `gradual`: ramps 0 -> 1 linearly over
    `warmup_epochs` after its milestone, so fresh gradients do not wreck pretrained weights.
    `epoch` may be fractional (the position within the epoch)."""
    warmup = cfg.get("warmup_epochs", 0)
    milestones = cfg.get("milestones", [])
    order_from_head = num_stages - 1 - stage
    if not warmup or order_from_head >= len(milestones):
        return 1.0
    return min(max((epoch - milestones[order_from_head]) / warmup, 0.0), 1.0)

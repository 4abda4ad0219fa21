"""`hydra.sweeper`'s settings, checked before any trial: each a known key with a value in
range, and the study's direction the objective's."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from omegaconf import OmegaConf

from hydra_plugins.transferlab_optuna._study import PRUNERS, SAMPLERS, check_choice, pick
from transferlab.errors import UserError, one_of
from transferlab.objective import direction

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Settings:
    """hydra.sweeper, checked (see conf/hydra/sweeper/optuna.yaml for what each key does)."""

    direction: str | None = None  # None: follows optimize_metric (objective.direction)
    n_trials: int = 20
    n_jobs: int = 1
    sampler: str = "tpe"
    samplers: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int | None = None
    pruner: str = "none"
    pruners: dict[str, dict[str, Any]] = field(default_factory=dict)
    storage: str | None = None
    study_name: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Settings:
        known = [f.name for f in fields(cls)]
        for key in raw:
            if key not in known:
                raise UserError(f"hydra.sweeper.{key} is not a setting; use {one_of(known)}")
        plain = {
            k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in raw.items()
        }
        settings = cls(**plain)
        settings.check()
        return settings

    def check(self) -> None:
        if self.direction is not None:
            check_choice("direction", self.direction, DIRECTIONS)
        pick(SAMPLERS, "sampler", self.sampler)
        pick(PRUNERS, "pruner", self.pruner)
        for key in ("n_trials", "n_jobs"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"hydra.sweeper.{key}={value!r} must be a whole number >= 1")
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool)
        ):
            raise UserError(f"hydra.sweeper.seed={self.seed!r} must be a whole number or null")


def with_direction(settings: Settings, metric: str) -> Settings:
    """The study's direction is the objective's (derived from `optimize_metric`, as the
    sweep's parent and the report derive it); a contradicting one is refused before any
    trial runs."""
    derived = direction(metric)
    if settings.direction not in (None, derived):
        raise UserError(
            f"hydra.sweeper.direction={settings.direction} contradicts "
            f"optimize_metric={metric!r}, which is {derived}d; leave hydra.sweeper.direction "
            "unset (it follows optimize_metric)"
        )
    return replace(settings, direction=derived)

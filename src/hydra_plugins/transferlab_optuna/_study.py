"""What the sweeper and its jobs share: samplers and pruners by name, the study's storage,
and a job's running trial (rebuilt from the storage, so it works in any process)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from transferlab.errors import UserError, one_of

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "grid": optuna.samplers.GridSampler,
}
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}
# The storage of each study this process sweeps, by study name: an in-memory study exists
# nowhere else, and jobs run in this process reuse the sweeper's database connection.
LIVE_STORAGES: dict[str, optuna.storages.BaseStorage] = {}
SQLITE = "sqlite:///"


def check_choice(key: str, value: Any, choices: Collection[str]) -> None:
    if value not in choices:
        raise UserError(f"hydra.sweeper.{key}={value} is unknown; use {one_of(choices)}")


def pick(registry: Mapping[str, Any], key: str, name: Any) -> Any:
    check_choice(key, name, registry)
    return registry[name]


def build(
    registry: Mapping[str, type],
    key: str,
    name: str,
    options: Mapping[str, Any] | None,
    **extra: Any,
) -> Any:
    """A sampler or pruner from its name and its options (`hydra.sweeper.<key>s.<name>`)."""
    kwargs = {**((options or {}).get(name) or {}), **extra}
    try:
        return pick(registry, key, name)(**kwargs)
    except (TypeError, ValueError) as error:
        raise UserError(f"hydra.sweeper.{key}s.{name}: {error}") from None


def build_pruner(name: str, options: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    return build(PRUNERS, "pruner", name, options)


def open_storage(url: str | None, cwd: str) -> optuna.storages.BaseStorage:
    """In memory without a URL. A relative sqlite path is taken from the directory the
    sweep was started in, so every job (whatever its working dir) opens the same file."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    path = url.removeprefix(SQLITE)
    if url.startswith(SQLITE) and path and not path.startswith(("/", ":memory:")):
        url = SQLITE + str(Path(cwd) / path)
    return optuna.storages.get_storage(url)


def trials_in(storage: optuna.storages.BaseStorage, study_name: str | None) -> int:
    """How many trials the study holds already (0 for a new one)."""
    try:
        return storage.get_n_trials(storage.get_study_id_from_name(study_name))
    except KeyError:
        return 0


def job_trial(study_name: str, trial_number: int) -> optuna.trial.Trial | None:
    """The job's trial, with the study's pruner built from the same sweeper config the
    sweeper used (Hydra hands every job the full config, also in other processes)."""
    hydra = HydraConfig.get()
    settings = OmegaConf.to_container(hydra.sweeper, resolve=True)
    if settings["pruner"] == "none":
        return None
    storage = LIVE_STORAGES.get(study_name)
    if storage is None and settings["storage"] is None:
        raise UserError(
            f"the Optuna study {study_name} is kept in the memory of the sweeper's process, "
            "which this job cannot reach; set hydra.sweeper.storage=sqlite:///optuna.db"
        )
    storage = storage or open_storage(settings["storage"], hydra.runtime.cwd)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # jobs sample nothing; the sweeper does
        pruner=build_pruner(settings["pruner"], settings.get("pruners")),
    )
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
    return optuna.trial.Trial(study, trial_id)

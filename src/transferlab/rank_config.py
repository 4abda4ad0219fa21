"""The checks of a ranking's config (conf/rank.yaml, transferlab-rank), before any run: its
plain values as a training run's are checked (config_values), the dataset and trainer
against their targets, then each candidate composed into its backbone node (the option's
YAML, with the candidate's keys set) and checked against its `_target_`. torch is imported
only to read the score names (transferlab.transferability), last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from transferlab.config import check_accelerator
from transferlab.config_keys import check_keys, no_missing_values, resolvable
from transferlab.config_targets import check_data_and_trainer, check_lightning_names, check_target
from transferlab.config_values import check_shared_values
from transferlab.errors import UserError, one_of

TIMM_PREFIX = "timm:"  # `timm:<model name>`: backbone=timm with that name
OWN_KEYS = ("backbone", "name")  # a mapping candidate's keys that are not its node's


@dataclass(frozen=True)
class Candidate:
    """One source to rank: where it was given (`rank.candidates[i]`), the name it is shown
    by, and its backbone node (the option's, with the candidate's keys set)."""

    key: str
    name: str
    backbone: DictConfig


def validate_ranking(cfg: DictConfig) -> tuple[list[Candidate], list[str]]:
    """The candidates and the score names, or a UserError for the first bad key: the plain
    values first (as config_values checks a training run's), then what the code accepts."""
    check_keys(cfg, "rank")
    resolvable(cfg)
    no_missing_values(cfg)
    check_shared_values(cfg)
    specs = _candidate_list(cfg.rank.candidates)
    check_data_and_trainer(cfg)
    check_lightning_names(cfg.trainer)
    check_accelerator(cfg.trainer.accelerator)
    candidates = [_candidate(f"rank.candidates[{i}]", spec) for i, spec in enumerate(specs)]
    _check_unique_names(candidates)
    return candidates, score_names(cfg.rank.scores)


def _candidate_list(candidates: Any) -> list[Any]:
    if not OmegaConf.is_list(candidates) or len(candidates) < 2:
        count = len(candidates) if OmegaConf.is_list(candidates) else "not a list"
        raise UserError(
            f"rank.candidates={_shown(candidates)} must list at least 2 candidates to rank "
            f"(got {count}); e.g. rank.candidates=[resnet18,timm:convnext_atto]"
        )
    return list(candidates)


def _candidate(key: str, spec: Any) -> Candidate:
    """A string names an option (or `timm:<name>`); a mapping adds keys of its node."""
    if isinstance(spec, str):
        return Candidate(key, spec, _option_node(key, spec))
    if not OmegaConf.is_dict(spec) or not isinstance(spec.get("backbone"), str):
        raise UserError(
            f"{key}={_shown(spec)} must be a backbone option, timm:<name>, or a mapping "
            "with a backbone key: {backbone: small_cnn, weights_path: FILE, name: NAME}"
        )
    keys = {k: v for k, v in OmegaConf.to_container(spec).items() if k not in OWN_KEYS}
    node = OmegaConf.merge(_option_node(key, spec.backbone), keys)
    check_target(node, key)
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise UserError(f"{key}.name={name!r} must be a non-empty name, or null to derive it")
    shown = ", ".join(f"{k}={v}" for k, v in keys.items())
    return Candidate(key, name or (f"{spec.backbone}({shown})" if shown else spec.backbone), node)


def _option_node(key: str, option: str) -> DictConfig:
    """The backbone option's node as Hydra composes it (its defaults list, the user's own
    config dirs inside the app), checked against its `_target_`."""
    group, name = (
        ("timm", option[len(TIMM_PREFIX) :]) if option.startswith(TIMM_PREFIX) else (option, None)
    )
    try:
        node = composed([f"+backbone={group}"]).backbone
    except MissingConfigException as error:
        options = [*(error.options or []), f"{TIMM_PREFIX}<name>"]
        raise UserError(f"{key}={option} is no backbone option; use {one_of(options)}") from None
    except HydraException as error:
        reason = str(error).partition("\n")[0]
        raise UserError(f"{key}={option} cannot be composed: {reason}") from None
    node = OmegaConf.create(OmegaConf.to_container(node))  # open: a candidate's keys merge in
    if name is not None:
        node.name = name
    check_target(node, key)
    return node


def composed(
    overrides: list[str], config_name: str | None = None, with_hydra: bool = False
) -> DictConfig:
    """A config Hydra composes from transferlab's (inside the app: with its search path, so
    the user's own config dirs too); `with_hydra`: its `hydra` node (the group choices)."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides, return_hydra_config=with_hydra)
    with initialize_config_module("transferlab.conf", version_base="1.3"):
        return compose(config_name, overrides, return_hydra_config=with_hydra)


def _check_unique_names(candidates: list[Candidate]) -> None:
    seen: dict[str, str] = {}
    for candidate in candidates:
        if candidate.name in seen:
            raise UserError(
                f"{candidate.key} is named {candidate.name}, as {seen[candidate.name]} is; "
                "give one its own name: {backbone: ..., name: NAME}"
            )
        seen[candidate.name] = candidate.key


def score_names(scores: Any) -> list[str]:
    """`rank.scores`: null for every score, else a list of their names (the first ranks)."""
    from transferlab.transferability import SCORES

    if scores is None:
        return list(SCORES)
    names = list(scores) if OmegaConf.is_list(scores) else None
    if not names or any(name not in SCORES for name in names):
        raise UserError(
            f"rank.scores={_shown(scores)} must list scores of {one_of(SCORES)}, or be null "
            "for all of them"
        )
    return names


def _shown(value: Any) -> str:
    plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return str(plain).replace("'", "")
